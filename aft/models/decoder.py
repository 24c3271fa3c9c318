"""GPT-style autoregressive decoder (§5.1 image modeling, §5.2 character-level language modeling).

Token embedding + learned position embedding, ``depth`` pre-LN blocks
(:class:`aft.models.block.Block`) with a causal token mixer, a final LayerNorm and a linear
head. On CIFAR10 every sub-pixel is a token of a 256-way vocabulary, so "a set of shared token
embeddings and prediction heads across RGB" (§5.1) is simply ``vocab_size=256`` for the
``H * W * 3`` sequence; the data's BOS token (``data.pixel_sequence``) is one more input
embedding row (``input_vocab_size=257``) that the head never predicts.

Decoding. :meth:`Decoder.decode_step` advances one token with the per-layer caches of the
mixers' ``step`` (causal AFT layers), doing O(1) work in ``T`` per token for AFT-simple,
AFT-local and AFT-conv1d. :meth:`Decoder.generate` uses it when every mixer can step and
otherwise re-runs the full forward on the growing prefix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from timm.layers import LayerNorm
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from aft.models.block import Block

INIT_STD = 0.02  # GPT-2 / nanoGPT


@dataclass
class DecoderCache:
    """Incremental-decoding state: one mixer cache per block, ``t`` tokens consumed so far."""

    layers: list[Any]
    t: int = 0


class Decoder(nn.Module):
    """Causal Transformer decoder with a pluggable token mixer.

    Args:
        mixer: factory called once per block as ``mixer(dim=dim)``; must build a causal
            ``(B, T, D) -> (B, T, D)`` mixer (in Hydra a nested config with ``_partial_: true``).
        vocab_size: ``V``, the predicted token values (256: sub-pixel values on CIFAR10, bytes on Enwik8).
        seq_len: the largest ``T`` (learned position embeddings).
        depth: number of blocks ``L``.
        dim: feature width ``d``.
        mlp_ratio: MLP hidden width over ``d`` (§5.1, §5.2: 4).
        dropout: on the embeddings, the mixer outputs and inside the MLPs (§5.1: 0.1).
        activation_checkpointing: recompute each block in the backward pass
            (``torch.utils.checkpoint``, non-reentrant) while training.
        input_vocab_size: rows of the token embedding, ``V`` plus input-only tokens such as
            BOS; ``None`` means ``V``.
    """

    def __init__(
        self,
        mixer: Callable[..., nn.Module],
        vocab_size: int,
        seq_len: int,
        depth: int,
        dim: int,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        activation_checkpointing: bool = False,
        input_vocab_size: int | None = None,
    ) -> None:
        super().__init__()
        self.seq_len = seq_len
        self.activation_checkpointing = activation_checkpointing
        self.token_embedding = nn.Embedding(input_vocab_size or vocab_size, dim)
        self.position_embedding = nn.Embedding(seq_len, dim)
        self.embedding_drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(dim, mixer(dim=dim), mlp_ratio, dropout) for _ in range(depth))
        self.norm = LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size, bias=False)
        for block in self.blocks:
            if getattr(block.mixer, "causal", True) is False:
                raise ValueError(f"{type(block.mixer).__name__} is not causal: set model.mixer.causal=true")
        self.apply(_init_gpt2)

    @property
    def supports_recurrent_decoding(self) -> bool:
        """Whether every mixer is causal and has ``step`` (all causal AFT layers)."""
        return all(getattr(b.mixer, "causal", False) and hasattr(b.mixer, "step") for b in self.blocks)

    def forward(self, idx: Tensor) -> Tensor:
        """Next-token logits: ``idx`` ``(B, T)`` long, ``T <= seq_len`` -> ``(B, T, V)``."""
        T = idx.shape[1]
        if T > self.seq_len:
            raise ValueError(f"sequence length {T} exceeds seq_len={self.seq_len}: raise model.seq_len")
        positions = torch.arange(T, device=idx.device)
        x = self.embedding_drop(self.token_embedding(idx) + self.position_embedding(positions))
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=False) if recompute else block(x)
        return self.head(self.norm(x))

    def decode_step(self, token: Tensor, cache: DecoderCache | None = None) -> tuple[Tensor, DecoderCache]:
        """Consume the token at position ``t = cache.t`` (0 without a cache).

        Args:
            token: ``(B,)`` long.
            cache: the state returned by the previous call.

        Returns:
            ``(logits, cache)``: ``logits`` ``(B, V)`` equal ``forward(tokens[:, :t + 1])[:, t]``.
        """
        if not self.supports_recurrent_decoding:
            raise ValueError("decode_step needs causal mixers with a step method (the causal AFT layers)")
        cache = cache or DecoderCache(layers=[None] * len(self.blocks))
        if cache.t >= self.seq_len:
            raise ValueError(f"position {cache.t} exceeds seq_len={self.seq_len}: raise model.seq_len")
        position = torch.full_like(token, cache.t)
        x = self.embedding_drop(self.token_embedding(token) + self.position_embedding(position))
        layers = []
        for block, layer_cache in zip(self.blocks, cache.layers, strict=True):
            x, layer_cache = block.step(x, layer_cache)
            layers.append(layer_cache)
        return self.head(self.norm(x)), DecoderCache(layers=layers, t=cache.t + 1)

    @torch.no_grad()
    def generate(
        self,
        idx_prefix: Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Sample a continuation of ``idx_prefix`` ``(B, T0)``, ``T0 >= 1``: ``(B, T0 + max_new_tokens)``.

        Recurrent (:meth:`decode_step`) when :attr:`supports_recurrent_decoding`, otherwise
        the full forward is re-run on the prefix for every new token. The model reads all but
        the last token, so ``T0 + max_new_tokens - 1 <= seq_len`` (CIFAR10: BOS + 3072
        sub-pixels). Dropout follows the module's mode: call ``eval()`` first.
        """
        T0 = idx_prefix.shape[1]
        if T0 < 1 or T0 + max_new_tokens - 1 > self.seq_len:
            raise ValueError(f"need 1 <= prefix length ({T0}) and prefix + new tokens - 1 <= seq_len={self.seq_len}")
        recurrent = self.supports_recurrent_decoding
        if recurrent:
            cache = None
            for t in range(T0):
                logits, cache = self.decode_step(idx_prefix[:, t], cache)
        tokens = idx_prefix
        for i in range(max_new_tokens):
            if not recurrent:
                logits = self(tokens)[:, -1]
            token = sample_token(logits, temperature, top_k, generator)
            tokens = torch.cat([tokens, token[:, None]], dim=1)
            if recurrent and i + 1 < max_new_tokens:
                logits, cache = self.decode_step(token, cache)
        return tokens


def sample_token(
    logits: Tensor, temperature: float = 1.0, top_k: int | None = None, generator: torch.Generator | None = None
) -> Tensor:
    """Draw one token per row from ``softmax(logits / temperature)`` over the ``top_k`` best: ``(B, V) -> (B,)``."""
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} must be > 0")
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def _init_gpt2(module: nn.Module) -> None:
    """``N(0, 0.02)`` weights and zero biases for linear and embedding layers (GPT-2).

    Only ``nn.Linear``/``nn.Embedding`` are touched: AFT position biases
    (:mod:`aft.position_bias`) keep their own initialization (§5.1, Eq. 8).
    """
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=INIT_STD)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
