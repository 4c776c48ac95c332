"""Coupling layers: one part of the input conditions an elementwise map of the other part.

The split can run along any dimension: features of a set ``(B, N, D)`` (coordinate-wise coupling),
points of a sorted set (point-wise coupling) or channels of an image ``(B, C, H, W)``.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from setflow.registry import SCALE_FNS, register_scale_fn
from setflow.sets import check_mask, keep_padding, masked_sum, real_first
from setflow.transforms.base import Bijection
from setflow.transforms.permutation_utils import inverse_permutation, permute_along
from setflow.utils import call_net

__all__ = ["AffineCoupling", "AdditiveCoupling", "SCALE_FNS", "round_ste"]

_SOFTPLUS_SHIFT = math.log(math.e - 1.0)  # softplus(0 + shift) == 1: a zero-initialised net gives the identity


@register_scale_fn("exp")
def _scale_exp(s: Tensor) -> tuple[Tensor, Tensor]:
    return torch.exp(s), s


@register_scale_fn("softplus")
def _scale_softplus(s: Tensor) -> tuple[Tensor, Tensor]:
    s = s + _SOFTPLUS_SHIFT
    scale = F.softplus(s)
    # log(softplus(s)) -> s for s << 0, where softplus underflows; keep it finite there.
    log_scale = torch.where(s < -30.0, s, torch.log(scale))
    return scale, log_scale


@register_scale_fn("sigmoid")
def _scale_sigmoid(s: Tensor) -> tuple[Tensor, Tensor]:
    s = s + 2.0  # as in Glow: the zero-initialised layer starts near (not at) the identity, scale 0.88
    return torch.sigmoid(s), F.logsigmoid(s)


@register_scale_fn("tanh_exp")
def _scale_tanh_exp(s: Tensor) -> tuple[Tensor, Tensor]:
    log_scale = 2.0 * torch.tanh(s / 2.0)  # scale in (e^-2, e^2)
    return torch.exp(log_scale), log_scale


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


#: how a coupling splits its input: ``"halves"`` (the first ``n_a`` entries condition the last ``n_b``)
#: or ``"parity"`` (along the points of sets of any size: the real points at even positions condition
#: those at odd positions; the conditioner's output at the ``j``-th even point parametrises the ``j``-th odd one;
#: a 1-point set has no odd point and passes through unchanged, ``ldj = 0``)
SPLITS = ("halves", "parity")


class _Coupling(Bijection):
    supports_mask = True

    def __init__(
        self,
        conditioner: nn.Module,
        split_dim: int,
        split_sizes: Optional[Sequence[int]] = None,
        params_dim: Optional[int] = None,
        split: str = "halves",
    ) -> None:
        super().__init__()
        self.conditioner = conditioner
        self.split_dim = split_dim
        self.split_sizes = None if split_sizes is None else tuple(int(s) for s in split_sizes)
        if self.split_sizes is not None and (len(self.split_sizes) != 2 or min(self.split_sizes) < 1):
            raise ValueError(f"split_sizes must be two positive sizes (n_a, n_b), got {split_sizes}")
        self.params_dim = split_dim if params_dim is None else params_dim
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        if split == "parity" and (split_sizes is not None or split_dim not in (1, -2)):
            raise ValueError("split='parity' splits the points (split_dim=1) of sets of any size and takes no split_sizes")
        self.split = split

    def _split_input(self, x: Tensor, mask: Optional[Tensor]):
        """``(x_a, x_b, mask_a, mask_b, order)``; ``order`` is the gather index that moved the real
        points to the front (parity split with a mask), else ``None``."""
        if mask is not None:
            mask = check_mask(mask, x, min_points=0)
        if self.split == "halves":
            if mask is not None and self.split_dim % x.dim() == 1:
                raise ValueError("a coupling that splits the points into halves needs equal-size sets; "
                                 "use split='parity' for sets of different sizes")
            x_a, x_b = x.split(self._sizes(x), dim=self.split_dim)
            return x_a, x_b, mask, mask, None
        if x.dim() < 2:
            raise ValueError(f"a parity coupling needs sets (B, N, ...), got shape {tuple(x.shape)}")
        order = None
        if mask is not None:
            order = real_first(mask)
            x, mask = permute_along(x, order, 1), torch.gather(mask, 1, order)
        return (x[:, 0::2], x[:, 1::2], None if mask is None else mask[:, 0::2],
                None if mask is None else mask[:, 1::2], order)

    def _join(self, x_a: Tensor, z_b: Tensor, order: Optional[Tensor]) -> Tensor:
        if self.split == "halves":
            return torch.cat([x_a, z_b], dim=self.split_dim)
        out = x_a.new_empty(x_a.shape[0], x_a.shape[1] + z_b.shape[1], *x_a.shape[2:])
        out[:, 0::2] = x_a
        out[:, 1::2] = z_b
        return out if order is None else permute_along(out, inverse_permutation(order), 1)

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

    def _condition(self, x_a: Tensor, context: Optional[Tensor], x_b: Tensor, factor: int,
                   mask_a: Optional[Tensor] = None) -> Tensor:
        """The conditioner's output, checked to have ``x_b``'s shape with ``params_dim`` times ``factor``.

        With nothing to transform (``x_b`` empty: a 1-point set under a parity split) the coupling is
        the identity: zeros, without calling the conditioner."""
        want = list(x_b.shape)
        want[self.params_dim] *= factor
        if x_b.numel() == 0:
            return x_b.new_zeros(want)
        params = call_net(self.conditioner, x_a, context, mask_a)
        if self.split == "parity" and params.dim() > 1 and params.shape[1] == x_a.shape[1] > x_b.shape[1]:
            params = params[:, : x_b.shape[1]]  # one output per even point; the j-th serves the j-th odd point
        if list(params.shape) != want:
            what = "(shift, scale) pairs" if factor == 2 else "shifts"
            raise ValueError(
                f"{type(self).__name__}: the conditioner {type(self.conditioner).__name__} returned shape "
                f"{tuple(params.shape)}, but {what} for x_b of shape {tuple(x_b.shape)} need shape {tuple(want)} "
                f"(dim {self.params_dim} = {factor} x {x_b.shape[self.params_dim]}); fix the conditioner's output width"
            )
        return params

    def extra_repr(self) -> str:
        s = f"split_dim={self.split_dim}, split_sizes={self.split_sizes}, params_dim={self.params_dim}"
        return s + (f", split={self.split!r}" if self.split != "halves" else "")


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
        split: ``"halves"`` (default) or ``"parity"`` (points of sets of any size, see :data:`SPLITS`).

    With ``mask`` (``(B, N)`` bool over the points, sets of different sizes) the conditioner is
    called as ``conditioner(x_a, context, mask=mask_a)``, ``ldj`` sums over the real points only
    and the padding passes through unchanged.

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
        split: str = "halves",
    ) -> None:
        super().__init__(conditioner, split_dim, split_sizes, params_dim, split)
        SCALE_FNS.get(scale_fn)  # an unknown name: a RegistryError listing the registered ones
        self.scale_fn = scale_fn

    def _params(self, x_a: Tensor, x_b: Tensor, context: Optional[Tensor], mask_a: Optional[Tensor] = None
                ) -> tuple[Tensor, Tensor, Tensor]:
        params = self._condition(x_a, context, x_b, 2, mask_a)
        shift, raw = params.chunk(2, dim=self.params_dim)
        scale, log_scale = SCALE_FNS[self.scale_fn](raw)
        return shift, scale, log_scale

    def forward(self, x: Tensor, context: Optional[Tensor] = None, mask: Optional[Tensor] = None
                ) -> tuple[Tensor, Tensor]:
        x_a, x_b, mask_a, mask_b, order = self._split_input(x, mask)
        shift, scale, log_scale = self._params(x_a, x_b, context, mask_a)
        z_b = keep_padding(x_b * scale + shift, x_b, mask_b)
        return self._join(x_a, z_b, order), masked_sum(log_scale, mask_b)

    def inverse_with_ldj(self, z: Tensor, context: Optional[Tensor] = None, mask: Optional[Tensor] = None
                         ) -> tuple[Tensor, Tensor]:
        z_a, z_b, mask_a, mask_b, order = self._split_input(z, mask)
        shift, scale, log_scale = self._params(z_a, z_b, context, mask_a)
        x_b = keep_padding((z_b - shift) / scale, z_b, mask_b)
        return self._join(z_a, x_b, order), -masked_sum(log_scale, mask_b)

    def inverse(self, z: Tensor, context: Optional[Tensor] = None, mask: Optional[Tensor] = None) -> Tensor:
        return self.inverse_with_ldj(z, context, mask)[0]

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
        split: str = "halves",
    ) -> None:
        super().__init__(conditioner, split_dim, split_sizes, split=split)
        self.rounding = rounding

    def _shift(self, x_a: Tensor, x_b: Tensor, context: Optional[Tensor], mask_a: Optional[Tensor] = None) -> Tensor:
        t = self._condition(x_a, context, x_b, 1, mask_a)
        return round_ste(t) if self.rounding else t

    def forward(self, x: Tensor, context: Optional[Tensor] = None, mask: Optional[Tensor] = None
                ) -> tuple[Tensor, Tensor]:
        x_a, x_b, mask_a, mask_b, order = self._split_input(x, mask)
        z_b = keep_padding(x_b + self._shift(x_a, x_b, context, mask_a), x_b, mask_b)
        return self._join(x_a, z_b, order), x.new_zeros(x.shape[0])

    def inverse_with_ldj(self, z: Tensor, context: Optional[Tensor] = None, mask: Optional[Tensor] = None
                         ) -> tuple[Tensor, Tensor]:
        z_a, z_b, mask_a, mask_b, order = self._split_input(z, mask)
        x_b = keep_padding(z_b - self._shift(z_a, z_b, context, mask_a), z_b, mask_b)
        return self._join(z_a, x_b, order), z.new_zeros(z.shape[0])

    def inverse(self, z: Tensor, context: Optional[Tensor] = None, mask: Optional[Tensor] = None) -> Tensor:
        return self.inverse_with_ldj(z, context, mask)[0]

    def extra_repr(self) -> str:
        return super().extra_repr() + f", rounding={self.rounding}"
