"""Coupling layers: one part of the input conditions an elementwise map of the other part.

The split can run along any dimension: features of a set ``(B, N, D)`` (coordinate-wise coupling),
points of a sorted set (point-wise coupling) or channels of an image ``(B, C, H, W)``.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from setflow.transforms.base import Bijection, sum_except_batch

__all__ = ["AffineCoupling", "AdditiveCoupling", "SCALE_FNS", "round_ste"]

_SOFTPLUS_SHIFT = math.log(math.e - 1.0)  # softplus(0 + shift) == 1: a zero-initialised net gives the identity


def _scale_exp(s: Tensor) -> tuple[Tensor, Tensor]:
    return torch.exp(s), s


def _scale_softplus(s: Tensor) -> tuple[Tensor, Tensor]:
    s = s + _SOFTPLUS_SHIFT
    scale = F.softplus(s)
    # log(softplus(s)) -> s for s << 0, where softplus underflows; keep it finite there.
    log_scale = torch.where(s < -30.0, s, torch.log(scale))
    return scale, log_scale


def _scale_sigmoid(s: Tensor) -> tuple[Tensor, Tensor]:
    s = s + 2.0  # as in Glow: the zero-initialised layer starts near (not at) the identity, scale 0.88
    return torch.sigmoid(s), F.logsigmoid(s)


def _scale_tanh_exp(s: Tensor) -> tuple[Tensor, Tensor]:
    log_scale = 2.0 * torch.tanh(s / 2.0)  # scale in (e^-2, e^2)
    return torch.exp(log_scale), log_scale


#: name -> ``s -> (scale, log_scale)``. Every function is a module-level def, so couplings pickle.
SCALE_FNS: dict[str, Callable[[Tensor], tuple[Tensor, Tensor]]] = {
    "exp": _scale_exp,
    "softplus": _scale_softplus,
    "sigmoid": _scale_sigmoid,
    "tanh_exp": _scale_tanh_exp,
}


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        return grad


def round_ste(x: Tensor) -> Tensor:
    """``round(x)`` with a straight-through (identity) gradient."""
    return _RoundSTE.apply(x)


class _Coupling(Bijection):
    def __init__(
        self,
        conditioner: nn.Module,
        split_dim: int,
        split_sizes: Optional[Sequence[int]] = None,
        params_dim: Optional[int] = None,
    ) -> None:
        super().__init__()
        self.conditioner = conditioner
        self.split_dim = split_dim
        self.split_sizes = None if split_sizes is None else tuple(int(s) for s in split_sizes)
        if self.split_sizes is not None and (len(self.split_sizes) != 2 or min(self.split_sizes) < 1):
            raise ValueError(f"split_sizes must be two positive sizes (n_a, n_b), got {split_sizes}")
        self.params_dim = split_dim if params_dim is None else params_dim

    def _sizes(self, x: Tensor) -> tuple[int, int]:
        n = x.shape[self.split_dim]
        if self.split_sizes is None:
            if n < 2:
                raise ValueError(f"coupling needs at least 2 entries along dim {self.split_dim}, got shape {tuple(x.shape)}")
            return n - n // 2, n // 2
        if sum(self.split_sizes) != n:
            raise ValueError(
                f"split_sizes {self.split_sizes} must add up to the size {n} of dim {self.split_dim} "
                f"(input shape {tuple(x.shape)})"
            )
        return self.split_sizes

    def _condition(self, x_a: Tensor, context: Optional[Tensor], x_b: Tensor, factor: int) -> Tensor:
        """The conditioner's output, checked to have ``x_b``'s shape with ``params_dim`` times ``factor``."""
        params = self.conditioner(x_a) if context is None else self.conditioner(x_a, context)
        want = list(x_b.shape)
        want[self.params_dim] *= factor
        if list(params.shape) != want:
            what = "(shift, scale) pairs" if factor == 2 else "shifts"
            raise ValueError(
                f"{type(self).__name__}: the conditioner {type(self.conditioner).__name__} returned shape "
                f"{tuple(params.shape)}, but {what} for x_b of shape {tuple(x_b.shape)} need shape {tuple(want)} "
                f"(dim {self.params_dim} = {factor} x {x_b.shape[self.params_dim]}); fix the conditioner's output width"
            )
        return params

    def extra_repr(self) -> str:
        return f"split_dim={self.split_dim}, split_sizes={self.split_sizes}, params_dim={self.params_dim}"


class AffineCoupling(_Coupling):
    r"""Affine coupling: :math:`z_a = x_a,\ z_b = x_b \odot \sigma(s(x_a)) + t(x_a)`.

    Args:
        conditioner: module ``(x_a[, context]) -> params``; ``params`` has the shape of ``x_b``
            except along ``params_dim``, where it is twice as large: the first half is the shift
            ``t``, the second the unconstrained scale ``s``.
        split_dim: dimension split into ``(x_a, x_b)``; ``x_a`` is the first part.
        split_sizes: ``(n_a, n_b)``; default ``(ceil(n/2), floor(n/2))``.
        scale_fn: ``"exp"``, ``"softplus"`` (shifted so ``s=0`` is the identity), ``"sigmoid"``
            (Glow's ``sigmoid(s + 2)``) or ``"tanh_exp"`` (``exp(2 tanh(s/2))``).
        params_dim: dimension of ``params`` holding (shift, scale); default ``split_dim``.

    Shapes:
        input ``x``: any ``(B, ...)``; output ``z`` same shape; ``ldj``: ``(B,)``.

    Example:
        >>> net = nn.Linear(2, 4)   # (B, N, 2) coordinate a-part -> shift and scale for 2 coords
        >>> layer = AffineCoupling(net, split_dim=-1, split_sizes=(2, 2))
        >>> z, ldj = layer(torch.randn(3, 5, 4))
        >>> z.shape, ldj.shape
        (torch.Size([3, 5, 4]), torch.Size([3]))
    """

    def __init__(
        self,
        conditioner: nn.Module,
        split_dim: int,
        split_sizes: Optional[Sequence[int]] = None,
        scale_fn: str = "exp",
        params_dim: Optional[int] = None,
    ) -> None:
        super().__init__(conditioner, split_dim, split_sizes, params_dim)
        if scale_fn not in SCALE_FNS:
            raise ValueError(f"unknown scale_fn {scale_fn!r}; expected one of {sorted(SCALE_FNS)}")
        self.scale_fn = scale_fn

    def _params(self, x_a: Tensor, x_b: Tensor, context: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        params = self._condition(x_a, context, x_b, 2)
        shift, raw = params.chunk(2, dim=self.params_dim)
        scale, log_scale = SCALE_FNS[self.scale_fn](raw)
        return shift, scale, log_scale

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        x_a, x_b = x.split(self._sizes(x), dim=self.split_dim)
        shift, scale, log_scale = self._params(x_a, x_b, context)
        z_b = x_b * scale + shift
        return torch.cat([x_a, z_b], dim=self.split_dim), sum_except_batch(log_scale)

    def inverse_with_ldj(self, z: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        z_a, z_b = z.split(self._sizes(z), dim=self.split_dim)
        shift, scale, log_scale = self._params(z_a, z_b, context)
        x_b = (z_b - shift) / scale
        return torch.cat([z_a, x_b], dim=self.split_dim), -sum_except_batch(log_scale)

    def inverse(self, z: Tensor, context: Optional[Tensor] = None) -> Tensor:
        return self.inverse_with_ldj(z, context)[0]

    def extra_repr(self) -> str:
        return super().extra_repr() + f", scale_fn={self.scale_fn!r}"


class AdditiveCoupling(_Coupling):
    r"""Additive coupling :math:`z_b = x_b + t(x_a)`, volume preserving (``ldj = 0``).

    With ``rounding=True`` the shift is rounded, ``z_b = x_b + round(t(x_a))`` with a
    straight-through gradient, so integers map to integers (integer discrete flows).

    Args:
        conditioner: module ``(x_a[, context]) -> t`` with exactly the shape of ``x_b``.
        split_dim, split_sizes: as in :class:`AffineCoupling`.
        rounding: round the shift (integer discrete flows).
    """

    def __init__(
        self,
        conditioner: nn.Module,
        split_dim: int,
        split_sizes: Optional[Sequence[int]] = None,
        rounding: bool = False,
    ) -> None:
        super().__init__(conditioner, split_dim, split_sizes)
        self.rounding = rounding

    def _shift(self, x_a: Tensor, x_b: Tensor, context: Optional[Tensor]) -> Tensor:
        t = self._condition(x_a, context, x_b, 1)
        return round_ste(t) if self.rounding else t

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        x_a, x_b = x.split(self._sizes(x), dim=self.split_dim)
        z_b = x_b + self._shift(x_a, x_b, context)
        return torch.cat([x_a, z_b], dim=self.split_dim), x.new_zeros(x.shape[0])

    def inverse_with_ldj(self, z: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        z_a, z_b = z.split(self._sizes(z), dim=self.split_dim)
        x_b = z_b - self._shift(z_a, z_b, context)
        return torch.cat([z_a, x_b], dim=self.split_dim), z.new_zeros(z.shape[0])

    def inverse(self, z: Tensor, context: Optional[Tensor] = None) -> Tensor:
        return self.inverse_with_ldj(z, context)[0]

    def extra_repr(self) -> str:
        return super().extra_repr() + f", rounding={self.rounding}"
