"""Reformer LSH attention (Kitaev et al., 2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aft.baselines._common import check_heads, look_around, merge_heads, split_heads

SELF_LOGIT = -1e5
"""Logit given to a query's own key: it receives weight only when nothing else is visible (Reformer §2)."""


class LSHAttention(nn.Module):
    """Shared-QK locality-sensitive-hashing attention, "Reformer: The Efficient Transformer" (Kitaev et al., 2020), §2.

    Per head and hash round r (``n_hashes`` rounds):

    1. shared queries/keys: one projection gives qᵢ; keys are kᵢ = qᵢ/‖qᵢ‖ (§2 "Shared-QK");
    2. angular LSH: h(qᵢ) = argmax([qᵢR; −qᵢR]) with a random rotation R ∈ ℝ^{E×n_buckets/2};
    3. positions are sorted by (bucket, position) and cut into chunks of C = ``chunk_size``;
       each chunk is attended against itself and the previous chunk (also the next one when
       non-causal), so a round costs O(T·C);
    4. query i attends to the keys of its own bucket (the mask m(j, Pᵢ) of their Eq. 4–5)
       within a sliding window of C sorted positions: the ≤ C most recent same-bucket keys
       (C before and C after when non-causal); logits qᵢ·kⱼ/√E, causal mask j ≤ i when
       ``causal``, and the query's own key set to −1e5 so it is attended only when nothing else
       is visible (§2);
    5. the rounds' outputs are combined with weights softmax_r(logsumexp of round r's logits),
       i.e. attention over the union of the rounds' key sets (their Eq. 6 without the duplicate-
       count correction: a key found in several rounds counts several times, as in trax and
       reformer-pytorch).

    Sliding versus chunk-aligned windows. The Reformer (and trax, reformer-pytorch) uses the
    chunk-aligned window P̃ᵢ = {j : ⌊sᵢ/C⌋ − 1 ≤ ⌊sⱼ/C⌋ ≤ ⌊sᵢ/C⌋} of sorted indices s. The
    boundaries of those chunks depend on how many *future* tokens hash to lower buckets, so in
    causal mode past outputs change when future tokens change (measured on a chunk-aligned version
    of this module, 8 buckets, C = 8, T = 128, float64: up to 0.7 at most past positions). Here
    the window is relative
    to the query, sᵢ − C ≤ sⱼ ≤ sᵢ within the same bucket; for same-bucket keys sᵢ − sⱼ counts only
    same-bucket tokens between positions j and i, so, for fixed rotations, y_t is exactly invariant
    to x_>t. Each query sees at most C + 1 positions per round.

    Hashing randomness: in training mode every call draws fresh rotations from the global RNG;
    in eval mode rotations come from a ``torch.Generator`` seeded with ``hash_seed`` on the
    input's device, so evaluation is deterministic (identical calls give identical outputs; the
    values differ between CPU and CUDA generators). reformer-pytorch 1.4.4 draws fresh rotations
    in every call, eval included. In training mode past outputs depend on the call's rotations,
    which are shared across positions but independent of the data.

    Shapes: x (B, T, dim) -> (B, T, dim); any T (zero-padded to a multiple of ``chunk_size``).
    """

    def __init__(
        self,
        dim: int,
        *,
        heads: int = 8,
        causal: bool = True,
        dropout: float = 0.0,
        n_hashes: int = 2,
        n_buckets: int = 16,
        chunk_size: int = 64,
        hash_seed: int = 0,
    ) -> None:
        super().__init__()
        check_heads(dim, heads)
        if n_buckets % 2:
            raise ValueError(f"n_buckets={n_buckets} must be even for angular LSH")
        self.heads = heads
        self.causal = causal
        self.dropout = dropout
        self.n_hashes = n_hashes
        self.n_buckets = n_buckets
        self.chunk_size = chunk_size
        self.hash_seed = hash_seed
        self.qk = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def rotations(self, head_dim: int, like: Tensor) -> Tensor:
        """Random rotations, (H, n_hashes, E, n_buckets/2): fresh in training, seeded in eval."""
        shape = (self.heads, self.n_hashes, head_dim, self.n_buckets // 2)
        generator = None
        if not self.training:
            generator = torch.Generator(device=like.device).manual_seed(self.hash_seed)
        return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)

    def buckets(self, qk: Tensor) -> Tensor:
        """Angular LSH bucket of every position per round: (B, H, L, E) -> (B, H, R, L)."""
        rotated = torch.einsum("bhle,hred->bhrld", qk, self.rotations(qk.shape[-1], qk))
        return torch.cat([rotated, -rotated], dim=-1).argmax(-1)

    def hidden_keys(self, order: Tensor, buckets: Tensor, length: int) -> tuple[Tensor, Tensor]:
        """Masks over each sorted query's key window: (own key, keys it may not attend to).

        ``order`` and ``buckets`` are (B, H, R, L); ``length`` is the unpadded T. Both masks have
        shape (B, H, R, L / C, C, W), W = 2·C gathered keys per chunk (3·C when non-causal).
        """
        c, after = self.chunk_size, 0 if self.causal else 1
        query = (
            order.unflatten(3, (-1, c)),  # position
            buckets.gather(3, order).unflatten(3, (-1, c)),  # bucket
            torch.arange(order.shape[-1], device=order.device).view(-1, c),  # sorted index
        )
        key = [look_around(z, z.dim() - 2, before=1, after=after, pad_value=-1)[..., None, :] for z in query]
        (pos_q, bucket_q, index_q), (pos_k, bucket_k, index_k) = [z[..., :, None] for z in query], key
        hidden = (pos_k < 0) | (pos_k >= length) | (bucket_k != bucket_q) | ((index_q - index_k).abs() > c)
        if self.causal:
            hidden = hidden | (pos_k > pos_q)
        return pos_k == pos_q, hidden

    def forward(self, x: Tensor) -> Tensor:
        t, c = x.shape[1], self.chunk_size
        x = F.pad(x, (0, 0, 0, -t % c))
        length = x.shape[1]
        qk, v = split_heads(self.qk(x), self.heads), split_heads(self.value(x), self.heads)
        buckets = self.buckets(qk.detach())  # (B, H, R, L)
        order = (buckets * length + torch.arange(length, device=x.device)).argsort(-1)

        after = 0 if self.causal else 1
        q_s, v_s = (_sorted_chunks(z, order, c) for z in (qk, v))  # (B, H, R, N, C, E)
        k_s, v_s = (look_around(z, 3, before=1, after=after, pad_value=0.0) for z in (F.normalize(q_s, dim=-1), v_s))
        logits = q_s @ k_s.transpose(-2, -1) * q_s.shape[-1] ** -0.5  # (B, H, R, N, C, W)
        own, hidden = self.hidden_keys(order, buckets, t)
        logits = logits.masked_fill(own, SELF_LOGIT).masked_fill(hidden, torch.finfo(logits.dtype).min)

        log_norm = logits.logsumexp(-1, keepdim=True)
        probs = F.dropout(torch.exp(logits - log_norm), self.dropout, self.training)
        out = torch.cat([probs @ v_s, log_norm], dim=-1).flatten(3, 4)  # (B, H, R, L, E + 1)
        unsorted = torch.empty_like(out).scatter_(3, order[..., None].expand_as(out), out)
        out, log_norm = unsorted[..., :-1], unsorted[..., -1:]
        out = (out * log_norm.softmax(dim=2)).sum(2)  # combine rounds
        return self.proj(merge_heads(out)[:, :t])


def _sorted_chunks(z: Tensor, order: Tensor, chunk_size: int) -> Tensor:
    """Permute positions into each round's hash order and chunk them.

    Shapes: z (B, H, L, E), order (B, H, R, L) -> (B, H, R, L / chunk_size, chunk_size, E).
    """
    rounds = z[:, :, None].expand(-1, -1, order.shape[2], -1, -1)
    permuted = rounds.gather(3, order[..., None].expand(-1, -1, -1, -1, z.shape[-1]))
    return permuted.unflatten(3, (-1, chunk_size))
