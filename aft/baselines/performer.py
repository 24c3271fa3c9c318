"""Performer attention with FAVOR+ positive orthogonal random features (Choromanski et al., 2021)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from aft.baselines._common import check_heads, merge_heads, split_heads
from aft.baselines._linear_attention import causal_linear_attention, linear_attention


def orthogonal_gaussian_features(
    n_features: int, dim: int, *, generator: torch.Generator | None = None
) -> Tensor:
    """Orthogonal random features ω₁…ω_M ∈ ℝ^dim (Choromanski et al., 2021, §2.4), shape (M, dim).

    Rows come in blocks of ``dim`` exactly orthogonal directions (QR of a Gaussian matrix with
    the sign fix that makes Q Haar-distributed); each row is rescaled to the norm of an
    independent standard Gaussian vector, so marginally ωᵣ ~ N(0, I) as FAVOR+ requires.
    """
    blocks = []
    for _ in range(-(-n_features // dim)):
        q, r = torch.linalg.qr(torch.randn(dim, dim, generator=generator))
        blocks.append((q * torch.sign(torch.diagonal(r))).T)
    directions = torch.cat(blocks)[:n_features]
    norms = torch.randn(n_features, dim, generator=generator).norm(dim=1, keepdim=True)
    return directions * norms


def favor_features(x: Tensor, projection: Tensor) -> tuple[Tensor, Tensor]:
    """Positive random features φ(x)ᵣ = exp(ωᵣ·x − ‖x‖²/2) (FAVOR+, Choromanski et al., 2021, Lemma 1).

    E[φ(q)·φ(k)] = exp(q·k) for ω ~ N(0, I); the constant 1/√M is omitted since it cancels in
    the attention normalisation. Returned in factored form φ(x) = ψ · exp(ℓ) with
    ℓ = maxᵣ(ωᵣ·x − ‖x‖²/2) computed from x alone and ψ = exp(… − ℓ) ∈ (0, 1], so nothing
    overflows and no statistic mixes positions.

    Shapes: x (..., T, E) (already scaled by E^(-1/4)), projection (M, E) -> ψ (..., T, M), ℓ (..., T).
    """
    logits = x @ projection.T - 0.5 * x.square().sum(-1, keepdim=True)
    log_scale = logits.amax(-1)
    return torch.exp(logits - log_scale[..., None]), log_scale


class PerformerAttention(nn.Module):
    """FAVOR+ attention, "Rethinking Attention with Performers" (Choromanski et al., 2021).

    softmax(QKᵀ/√E) is replaced by the unbiased random-feature estimate φ(Q)φ(K)ᵀ with positive
    orthogonal random features (:func:`favor_features`, applied to q·E^(-1/4) and k·E^(-1/4)),
    then normalised row-wise; causal attention uses prefix sums (§2.8). ``n_features`` defaults
    to ⌊E·ln E⌋ (E = dim // heads; 266 for E = 64), the Θ(d log d) of their Theorem 4.

    Numerical stabilisation without leaking the future: a query's features are divided by their
    own maximum (a per-query factor that cancels exactly in the normalisation). A key's features
    are kept as ψⱼ·exp(ℓⱼ) with ℓⱼ computed from key j alone; the causal prefix sums rescale by
    the running maximum of ℓ over keys ≤ i (see :mod:`aft.baselines._linear_attention`).
    performer-pytorch 1.1.4 instead subtracts one maximum over all keys of the sequence before
    adding its ``eps`` to the features, so in causal mode past outputs move when future tokens
    change; here outputs at ≤ t are invariant to tokens > t.

    Random features: one (M, E) matrix shared by all heads, a buffer (saved in the state dict)
    drawn at construction from the global RNG, fixed thereafter so evaluation is deterministic;
    :meth:`redraw_features` draws a new one (call it from the training loop to resample, as the
    Performer does periodically). No attention probabilities exist, hence no attention dropout.

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
        self.n_features = n_features or int(head_dim * math.log(head_dim))
        self.chunk_size = chunk_size
        self.eps = eps
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.register_buffer("projection", orthogonal_gaussian_features(self.n_features, head_dim))

    @torch.no_grad()
    def redraw_features(self, generator: torch.Generator | None = None) -> None:
        """Replace the random features by a fresh draw (global RNG unless ``generator`` is given)."""
        fresh = orthogonal_gaussian_features(self.n_features, self.projection.shape[1], generator=generator)
        self.projection.copy_(fresh)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = (split_heads(t, self.heads) for t in self.qkv(x).chunk(3, dim=-1))
        scale = q.shape[-1] ** -0.25
        q_feat, _ = favor_features(q * scale, self.projection)
        k_feat, k_log_scale = favor_features(k * scale, self.projection)
        if self.causal:
            out = causal_linear_attention(q_feat, k_feat, v, k_log_scale, eps=self.eps, chunk_size=self.chunk_size)
        else:
            out = linear_attention(q_feat, k_feat, v, k_log_scale, eps=self.eps)
        return self.proj(merge_heads(out))
