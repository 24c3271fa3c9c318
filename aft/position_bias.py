"""Parameterizations of the learned position biases ``w`` of AFT (§3.2, §8).

* :class:`FactorizedPositionBias`  ``w = u v^T`` (Eq. 7), for AFT-full and AFT-local.
* :class:`DensePositionBias`       a free ``(T, T)`` matrix (the "non factorized" rows of
  Tables 3 and 9).
* :class:`ConvPositionBias`        a kernel per head for AFT-conv, with the
  reparameterization of Eq. 8, the entropy regularizer of Eq. 9 and the Gumbel-softmax
  one-position mode of Eq. 10.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# §5.1: "u, v initialized with N(0, 10^-2)"; we read 10^-2 as the standard deviation.
INIT_STD = 1e-2


class FactorizedPositionBias(nn.Module):
    """``w[t, t'] = u_t . v_t'`` with ``u, v in R^{T x d'}`` (Eq. 7).

    Args:
        seq_len: the largest ``T``; shorter inputs use the first ``T`` rows.
        bias_dim: ``d'``.
    """

    def __init__(self, seq_len: int, bias_dim: int, init_std: float = INIT_STD) -> None:
        super().__init__()
        self.u = nn.Parameter(torch.randn(seq_len, bias_dim) * init_std)
        self.v = nn.Parameter(torch.randn(seq_len, bias_dim) * init_std)

    def factors(self, T: int) -> tuple[Tensor, Tensor]:
        """``(u, v)``, each ``(T, d')``."""
        return self.u[:T], self.v[:T]

    def matrix(self, T: int) -> Tensor:
        """The dense ``(T, T)`` bias ``u v^T``."""
        u, v = self.factors(T)
        return u @ v.T


class DensePositionBias(nn.Module):
    """A free ``(T, T)`` bias matrix, initialized ``N(0, 1e-2)`` as in §5.1 (Table 3)."""

    def __init__(self, seq_len: int, init_std: float = INIT_STD) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(seq_len, seq_len) * init_std)

    def matrix(self, T: int) -> Tensor:
        """``(T, T)``."""
        return self.w[:T, :T]


class ConvPositionBias(nn.Module):
    """Kernel of AFT-conv position biases, ``(H, *kernel_shape)``.

    Args:
        heads: ``H``.
        kernel_shape: ``(S,)`` for 1-d, ``(S, S)`` for 2-d.
        reparam: apply Eq. 8, ``w = gamma (w - mean(w)) / std(w) + beta`` per head, with
            ``gamma, beta`` initialized to 0 (the default of §3.2); ``False`` is the naive
            parameterization of Table 10.
        gumbel_tau: if set, Eq. 10: during training ``w <- w * gumbel_softmax(w, tau)``
            per head; in eval mode ``w <- w * one_hot(argmax w)`` (§8, tau = 0.5).
    """

    def __init__(
        self,
        heads: int,
        kernel_shape: tuple[int, ...],
        reparam: bool = True,
        gumbel_tau: float | None = None,
        init_std: float = INIT_STD,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(heads, *kernel_shape) * init_std)
        self.gain = nn.Parameter(torch.zeros(heads)) if reparam else None
        self.shift = nn.Parameter(torch.zeros(heads)) if reparam else None
        self.gumbel_tau = gumbel_tau

    def kernel(self) -> Tensor:
        """The effective kernel before Gumbel sampling: Eq. 8 if reparameterized."""
        if self.gain is None:
            return self.weight
        flat = self.weight.flatten(1)
        mean = flat.mean(dim=1, keepdim=True)
        std = flat.std(dim=1, keepdim=True, unbiased=False)
        normed = (flat - mean) / (std + 1e-5)
        return (self.gain[:, None] * normed + self.shift[:, None]).view_as(self.weight)

    def forward(self) -> Tensor:
        """``(H, *kernel_shape)`` biases to pass to :func:`aft.ops.aft_conv1d`/``2d``."""
        w = self.kernel()
        if self.gumbel_tau is None:
            return w
        flat = w.flatten(1)
        if self.training:
            mask = F.gumbel_softmax(flat, tau=self.gumbel_tau, hard=False, dim=-1)
        else:
            mask = F.one_hot(flat.argmax(dim=-1), flat.shape[-1]).to(flat.dtype)
        return (flat * mask).view_as(w)

    def entropy(self) -> Tensor:
        """Eq. 9: ``sum_h entropy(softmax(w_h))`` of the effective kernel."""
        return position_bias_entropy(self.kernel())


def position_bias_entropy(w: Tensor) -> Tensor:
    """Sparsity regularizer of Eq. 9: ``sum_h entropy(softmax(w[h]))``.

    Args:
        w: ``(H, ...)`` position biases; the softmax runs over all entries of a head.

    Returns:
        A scalar.
    """
    logits = w.reshape(w.shape[0], -1).float()
    log_p = torch.log_softmax(logits, dim=-1)
    return -(log_p.exp() * log_p).sum()


def sparsity_regularizer(model: nn.Module) -> Tensor:
    """Eq. 9 summed over every :class:`ConvPositionBias` of ``model`` (0 if none)."""
    terms = [m.entropy() for m in model.modules() if isinstance(m, ConvPositionBias)]
    if not terms:
        return torch.zeros((), device=next(model.parameters()).device)
    return torch.stack(terms).sum()
