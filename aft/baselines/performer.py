"""Performer attention with FAVOR+ positive orthogonal random features (Choromanski et al., 2021),
configured as the implementation behind the AFT paper's Table 4 row: fast-transformers'
``fast_transformers.feature_maps.Favor`` (github.com/idiap/fast-transformers)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from aft.baselines._common import check_heads, merge_heads, split_heads
from aft.baselines._linear_attention import causal_linear_attention, linear_attention


def orthogonal_gaussian_features(
    n_features: int,
    dim: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Orthogonal random features ω₁…ω_R ∈ ℝ^dim (Choromanski et al., 2021, §2.4), shape (R, dim).

    Rows come in blocks of ``dim`` exactly orthogonal directions (QR of a Gaussian matrix with
    the sign fix that makes Q Haar-distributed); each row is rescaled to the norm of an
    independent standard Gaussian vector, so marginally ωᵣ ~ N(0, I) as FAVOR+ requires.
    Drawn from ``generator`` (or the global RNG of ``device``).
    """

    def gaussian(rows: int) -> Tensor:
        return torch.randn(rows, dim, generator=generator, device=device, dtype=dtype)

    blocks = []
    for _ in range(-(-n_features // dim)):
        q, r = torch.linalg.qr(gaussian(dim))
        blocks.append((q * torch.sign(torch.diagonal(r))).T)
    directions = torch.cat(blocks)[:n_features]
    return directions * gaussian(n_features).norm(dim=1, keepdim=True)


def favor_features(x: Tensor, projection: Tensor) -> tuple[Tensor, Tensor]:
    """Positive random features in ±pairs, φ(x) = [exp(ωᵣ·x − ‖x‖²/2), exp(−ωᵣ·x − ‖x‖²/2)]ᵣ.

    The hyperbolic positive features of FAVOR+ (Choromanski et al., 2021, Lemma 1:
    exp(x·y) = E[exp(−‖x‖²/2 − ‖y‖²/2) cosh(ω·(x + y))] for ω ~ N(0, I)), as fast-transformers'
    ``Favor`` computes them: M = 2R features from R directions. The constant 1/√M is omitted
    since it cancels in the attention normalisation. Returned in factored form
    φ(x) = ψ · exp(ℓ) with ℓ = maxₘ log φ(x)ₘ computed from x alone and ψ ∈ (0, 1], so nothing
    overflows and no statistic mixes positions.

    Shapes: x (..., T, E) (already scaled by E^(-1/4)), projection (R, E) -> ψ (..., T, 2R), ℓ (..., T).
    """
    u = x @ projection.T
    logits = torch.cat([u, -u], dim=-1) - 0.5 * x.square().sum(-1, keepdim=True)
    log_scale = logits.amax(-1)
    return torch.exp(logits - log_scale[..., None]), log_scale


class PerformerAttention(nn.Module):
    """FAVOR+ attention, "Rethinking Attention with Performers" (Choromanski et al., 2021).

    softmax(QKᵀ/√E) is replaced by the unbiased random-feature estimate φ(Q)φ(K)ᵀ with positive
    orthogonal random features in ±pairs (:func:`favor_features`, applied to q·E^(-1/4) and
    k·E^(-1/4)), then normalised row-wise; causal attention uses prefix sums (§2.8).

    Random features as fast-transformers' ``Favor`` (the implementation the AFT paper's Table 4
    used): ``n_features`` M defaults to the head width E = dim // heads (its ``n_dims`` default),
    built from M/2 orthogonal directions ω (one (M/2, E) matrix shared by all heads), each giving
    the pair exp(±ω·x − ‖x‖²/2); and the directions are redrawn at every training forward (its
    attention layers call ``new_feature_map`` at each forward, ``redraw=1``), from the global RNG
    of the module's device. Under activation checkpointing the recomputed forward restores that
    RNG state, hence redraws the same directions. Evaluation is deterministic, as fast-transformers'
    ``deterministic_eval=True``: in eval mode the current directions — the last training draw,
    the ``projection`` buffer, saved in the state dict and so in every checkpoint — are used
    unchanged. Two differences from fast-transformers' draw, both keeping ωᵣ ~ N(0, I) exactly:
    the QR sign fix (Haar-distributed directions) and norms drawn independently of the directions.

    Numerical stabilisation without leaking the future: a query's features are divided by their
    own maximum (a per-query factor that cancels exactly in the normalisation). A key's features
    are kept as ψⱼ·exp(ℓⱼ) with ℓⱼ computed from key j alone; the causal prefix sums rescale by
    the running maximum of ℓ over keys ≤ i (see :mod:`aft.baselines._linear_attention`).
    fast-transformers' ``stabilize`` option (off by default) and performer-pytorch 1.1.4 instead
    subtract one maximum over all positions of the sequence, so in causal mode past outputs move
    when future tokens change; here outputs at ≤ t are invariant to tokens > t. No attention
    probabilities exist, hence no attention dropout.

    Shapes: x (B, T, dim) -> (B, T, dim).
    """

    projection: Tensor

    def __init__(
        self,
        dim: int,
        *,
        heads: int = 8,
        causal: bool = True,
        n_features: int | None = None,
        chunk_size: int = 128,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        head_dim = check_heads(dim, heads)
        self.heads = heads
        self.causal = causal
        self.n_features = n_features or head_dim
        if self.n_features % 2:
            raise ValueError(f"model.mixer.n_features={self.n_features} must be even: features come in ±pairs")
        self.chunk_size = chunk_size
        self.eps = eps
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.register_buffer("projection", orthogonal_gaussian_features(self.n_features // 2, head_dim))

    @torch.no_grad()
    def redraw_features(self, generator: torch.Generator | None = None) -> None:
        """Replace the random directions by a fresh draw (global RNG unless ``generator`` is given).

        A new tensor, not an in-place copy, so graphs of earlier forwards keep the draw they saved.
        """
        old = self.projection
        self.projection = orthogonal_gaussian_features(
            old.shape[0], old.shape[1], generator=generator, device=old.device, dtype=old.dtype
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            self.redraw_features()
        q, k, v = (split_heads(t, self.heads) for t in self.qkv(x).chunk(3, dim=-1))
        scale = q.shape[-1] ** -0.25
        q_feat, _ = favor_features(q * scale, self.projection)
        k_feat, k_log_scale = favor_features(k * scale, self.projection)
        if self.causal:
            out = causal_linear_attention(q_feat, k_feat, v, k_log_scale, eps=self.eps, chunk_size=self.chunk_size)
        else:
            out = linear_attention(q_feat, k_feat, v, k_log_scale, eps=self.eps)
        return self.proj(merge_heads(out))
