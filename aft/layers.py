"""AFT token-mixing layers (§3): projections around the operators of :mod:`aft.ops`.

Every layer maps ``x`` to ``proj(sigmoid(Q) * avg)`` with ``Q, K, V`` linear projections
of ``x`` (§3.1), a drop-in replacement of multi-head attention. Sequence layers take
``(B, T, D)``; :class:`AFTConv2d` takes ``(B, Y, X, D)`` for any grid size.

Causal layers also decode one token at a time with :meth:`AFTLayer.step`, keeping
O(window * D) state for AFT-local and AFT-conv1d, O(D) for AFT-simple and O(t * D) for
AFT-full, and matching the full forward pass (:mod:`aft.ops.decode`).

Every layer takes ``backend`` (``model.mixer.backend``): ``"auto"`` (Triton kernels where
they run, else the PyTorch path), ``"triton"``, ``"torch"`` or ``"naive"`` (:mod:`aft.ops.dispatch`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from aft import ops
from aft.ops.decode import DecodeCache
from aft.position_bias import ConvPositionBias, DensePositionBias, FactorizedPositionBias


class AFTLayer(nn.Module):
    """Q, K, V and output projections shared by every AFT variant (§3.1).

    Args:
        dim: model width ``D``.
        key_dim: width of ``K``: ``D`` for AFT-full/local/simple, ``heads`` for AFT-conv.
        causal: restrict every position to its past (decoders, §5.1-5.2).
        use_query: ``False`` drops the query gate (Table 12, "w/o q").
        backend: which implementation runs the operator (:mod:`aft.ops.dispatch`); ``"auto"`` by default.
    """

    window: int | None = None  # positions kept in the decode cache; None keeps all
    # Causal subclasses define ``decode_bias(t, L) -> (Hb, L)``: the biases w[t, t'] of the
    # cached positions t' = t - L + 1 .. t, used by :meth:`step`.

    def __init__(self, dim: int, key_dim: int, causal: bool, use_query: bool, backend: ops.Backend = "auto") -> None:
        super().__init__()
        ops.dispatch.check_backend(backend)
        self.dim, self.causal, self.backend = dim, causal, backend
        self.to_q = nn.Linear(dim, dim) if use_query else None
        self.to_k = nn.Linear(dim, key_dim)
        self.to_v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def _qkv(self, x: Tensor) -> tuple[Tensor | None, Tensor, Tensor]:
        q = self.to_q(x) if self.to_q is not None else None
        return q, self.to_k(x), self.to_v(x)

    # ---------------------------------------------------------------- incremental decoding

    def step(self, x: Tensor, cache: DecodeCache | None = None) -> tuple[Tensor, DecodeCache]:
        """Process the next position of a causal layer.

        Args:
            x: ``(B, D)``, the input at position ``t = cache.t`` (0 when ``cache`` is None).
            cache: the state returned by the previous call.

        Returns:
            ``(y, cache)``: ``y`` ``(B, D)`` equals ``forward`` at position ``t``.
        """
        if not self.causal:
            raise ValueError(f"{type(self).__name__} was built with causal=False and cannot decode")
        q, k, v = self._qkv(x)
        y, cache = ops.decode_step(q, k, v, self.decode_bias, self.window, cache)
        return self.proj(y.to(x.dtype)), cache


def _position_bias(seq_len: int, bias_dim: int | None) -> FactorizedPositionBias | DensePositionBias:
    """Eq. 7 with ``d' = bias_dim``, or a dense ``(T, T)`` bias when ``bias_dim`` is None."""
    return DensePositionBias(seq_len) if bias_dim is None else FactorizedPositionBias(seq_len, bias_dim)


def _check_length(T: int, seq_len: int) -> None:
    if T > seq_len:
        raise ValueError(f"input length {T} exceeds the layer's seq_len={seq_len}: raise model.seq_len")


class AFTFull(AFTLayer):
    """AFT-full (Eq. 2) with a factorized (Eq. 7) or dense ``T x T`` position bias.

    Args:
        dim: ``D``. seq_len: the largest ``T``. bias_dim: ``d'`` of Eq. 7 (§5.3: 128),
        ``None`` for the dense bias of Table 9. causal, use_query: see :class:`AFTLayer`.
    """

    def __init__(
        self,
        dim: int,
        seq_len: int,
        bias_dim: int | None = 128,
        causal: bool = False,
        use_query: bool = True,
        backend: ops.Backend = "auto",
    ) -> None:
        super().__init__(dim, dim, causal, use_query, backend)
        self.seq_len = seq_len
        self.position_bias = _position_bias(seq_len, bias_dim)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, T, D) -> (B, T, D)``."""
        _check_length(x.shape[1], self.seq_len)
        q, k, v = self._qkv(x)
        return self.proj(ops.aft_full(q, k, v, self.position_bias.matrix(x.shape[1]), self.causal, self.backend))

    def decode_bias(self, t: int, length: int) -> Tensor:
        _check_length(t + 1, self.seq_len)
        return self.position_bias.matrix(t + 1)[t, t + 1 - length :].unsqueeze(0)


class AFTLocal(AFTLayer):
    """AFT-local (Eq. 4): the bias ``w`` inside a window of size ``s``, 0 outside it.

    Args:
        dim: ``D``. seq_len: the largest ``T``. window: ``s`` (§5.1: 256 on CIFAR10,
        §5.2: 32 on Enwik8); must be ``<= seq_len``. bias_dim: ``d'`` (§5.1: 64, §5.2: 256),
        ``None`` for the dense bias of Table 3, which AFT-local then reads only inside
        the band. causal, use_query: see :class:`AFTLayer`.
    """

    def __init__(
        self,
        dim: int,
        seq_len: int,
        window: int,
        bias_dim: int | None = 64,
        causal: bool = False,
        use_query: bool = True,
        backend: ops.Backend = "auto",
    ) -> None:
        if not 0 <= window <= seq_len:
            raise ValueError(
                f"window={window} must be in [0, seq_len={seq_len}]: set model.mixer.window <= model.seq_len"
            )
        super().__init__(dim, dim, causal, use_query, backend)
        self.seq_len, self.window = seq_len, window
        self.position_bias = _position_bias(seq_len, bias_dim)

    def _bias(self, T: int) -> Tensor | tuple[Tensor, Tensor]:
        if isinstance(self.position_bias, FactorizedPositionBias):
            return self.position_bias.factors(T)
        return self.position_bias.matrix(T)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, T, D) -> (B, T, D)``."""
        _check_length(x.shape[1], self.seq_len)
        q, k, v = self._qkv(x)
        return self.proj(ops.aft_local(q, k, v, self._bias(x.shape[1]), self.window, self.causal, self.backend))

    def decode_bias(self, t: int, length: int) -> Tensor:
        _check_length(t + 1, self.seq_len)
        start = t + 1 - length
        if isinstance(self.position_bias, FactorizedPositionBias):
            u, v = self.position_bias.factors(t + 1)
            return (v[start:] @ u[t]).unsqueeze(0)
        return self.position_bias.matrix(t + 1)[t, start:].unsqueeze(0)


class AFTSimple(AFTLayer):
    """AFT-simple (Eq. 5): no position bias, O(T D) time and memory."""

    window = 0

    def __init__(self, dim: int, causal: bool = False, use_query: bool = True, backend: ops.Backend = "auto") -> None:
        super().__init__(dim, dim, causal, use_query, backend)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, T, D) -> (B, T, D)``."""
        q, k, v = self._qkv(x)
        return self.proj(ops.aft_simple(q, k, v, self.causal, self.backend))

    def decode_bias(self, t: int, length: int) -> Tensor:
        return torch.zeros(1, length, device=self.to_k.weight.device)


class _AFTConv(AFTLayer):
    """Shared parts of AFT-conv (Eq. 6): ``heads`` key channels and a kernel per head.

    Args:
        dim: ``D``; ``heads`` must divide it. heads: ``H`` (= width of ``K``, §3.2).
        kernel_size: ``S`` (odd unless causal 1-d). reparam: Eq. 8 (default) or the naive
        parameterization (Table 10). global_connectivity: ``False`` is the §5.3 ablation
        (``-inf`` outside the kernel). use_query: Table 12. gumbel_tau: Eq. 10 (§8: 0.5).
        backend: see :class:`AFTLayer`.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        kernel_size: int,
        ndim: int,
        causal: bool,
        reparam: bool,
        global_connectivity: bool,
        use_query: bool,
        gumbel_tau: float | None,
        backend: ops.Backend,
    ) -> None:
        if dim % heads:
            raise ValueError(f"heads={heads} must divide dim={dim}: set model.mixer.heads to a divisor of model.dim")
        if kernel_size < 1 or (kernel_size % 2 == 0 and not (causal and ndim == 1)):
            raise ValueError(f"kernel_size={kernel_size} must be odd and >= 1: set model.mixer.kernel_size")
        super().__init__(dim, heads, causal, use_query, backend)
        self.heads, self.kernel_size = heads, kernel_size
        self.global_connectivity = global_connectivity
        self.position_bias = ConvPositionBias(heads, (kernel_size,) * ndim, reparam, gumbel_tau)


class AFTConv1d(_AFTConv):
    """AFT-conv over a 1-d sequence (Eq. 6); causal ``w[h, j]`` is the bias for ``t' = t - j``."""

    def __init__(
        self,
        dim: int,
        heads: int,
        kernel_size: int,
        causal: bool = False,
        reparam: bool = True,
        global_connectivity: bool = True,
        use_query: bool = True,
        gumbel_tau: float | None = None,
        backend: ops.Backend = "auto",
    ) -> None:
        super().__init__(
            dim, heads, kernel_size, 1, causal, reparam, global_connectivity, use_query, gumbel_tau, backend
        )
        self.window = kernel_size

    def forward(self, x: Tensor) -> Tensor:
        """``(B, T, D) -> (B, T, D)``."""
        q, k, v = self._qkv(x)
        w = self.position_bias()
        return self.proj(ops.aft_conv1d(q, k, v, w, self.causal, self.global_connectivity, self.backend))

    def decode_bias(self, t: int, length: int) -> Tensor:
        if not self.global_connectivity:
            raise ValueError("decoding supports AFT-conv1d with global_connectivity=True only")
        return self.position_bias()[:, :length].flip(-1)


class AFTConv2d(_AFTConv):
    """AFT-conv over a 2-d grid (Eq. 6), fully convolutional: any ``Y x X`` at call time."""

    def __init__(
        self,
        dim: int,
        heads: int,
        kernel_size: int,
        reparam: bool = True,
        global_connectivity: bool = True,
        use_query: bool = True,
        gumbel_tau: float | None = None,
        backend: ops.Backend = "auto",
    ) -> None:
        super().__init__(
            dim, heads, kernel_size, 2, False, reparam, global_connectivity, use_query, gumbel_tau, backend
        )

    def forward(self, x: Tensor) -> Tensor:
        """``(B, Y, X, D) -> (B, Y, X, D)``."""
        q, k, v = self._qkv(x)
        w = self.position_bias()
        return self.proj(ops.aft_conv2d(q, k, v, w, self.global_connectivity, self.backend))
