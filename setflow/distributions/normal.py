"""Gaussian densities: standard, diagonal (learned), half-normal and conditional.

Every ``log_prob`` sums over the event dimensions and returns shape ``(B,)``;
every ``sample`` draws on the module's device and in its dtype.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn

from setflow.sets import check_mask, masked_sum
from setflow.utils import sum_except_batch

from setflow.distributions.base import ConditionalDistribution, Distribution

__all__ = [
    "StandardNormal",
    "DiagonalNormal",
    "StandardHalfNormal",
    "ConditionalNormal",
    "normal_log_prob",
    "check_event_shape",
    "resolve_num_samples",
]

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)

ShapeLike = Union[int, Sequence[int]]


def _as_shape(shape: ShapeLike) -> tuple[int, ...]:
    if isinstance(shape, int):
        return (shape,)
    out = tuple(int(s) for s in shape)
    if any(s <= 0 for s in out):
        raise ValueError(f"event shape entries must be positive, got {out}")
    return out


def normal_log_prob(x: Tensor, loc: Union[Tensor, float] = 0.0, log_scale: Union[Tensor, float] = 0.0) -> Tensor:
    """Elementwise Gaussian log-density ``log N(x; loc, exp(log_scale)^2)``."""
    if not isinstance(log_scale, Tensor):
        log_scale = torch.as_tensor(log_scale, dtype=x.dtype, device=x.device)
    return -0.5 * ((x - loc) * torch.exp(-log_scale)) ** 2 - log_scale - _HALF_LOG_2PI


def check_event_shape(x: Tensor, shape: tuple[int, ...], name: str) -> None:
    """Raise a ``ValueError`` unless ``x`` is ``(B, *shape)``."""
    if tuple(x.shape[1:]) != shape or x.dim() != len(shape) + 1:
        raise ValueError(f"{name} expects inputs of shape (B, {', '.join(map(str, shape))}), got {tuple(x.shape)}")


def resolve_num_samples(num_samples: Optional[int], context: Optional[Tensor]) -> int:
    """Number of samples of an unconditional density (``context`` only fixes the batch size)."""
    if num_samples is None:
        if context is None:
            raise ValueError("sample() needs num_samples (or a context tensor fixing the batch size)")
        return int(context.shape[0])
    return int(num_samples)


class StandardNormal(Distribution):
    """``N(0, I)`` over events of shape ``shape``.

    For sets, ``shape = (None, D)`` leaves the number of points free (``sample`` then needs
    ``num_points``), and ``log_prob(z, mask=...)`` (``(B, N)`` bool) sums over the real points only.

    Shapes:
        - log_prob: ``(B, *shape) -> (B,)``
        - sample: ``num_samples -> (num_samples, *shape)``

    Example:
        >>> d = StandardNormal((3,))
        >>> d.log_prob(torch.zeros(2, 3)).shape
        torch.Size([2])
    """

    supports_mask = True

    def __init__(self, shape: ShapeLike):
        super().__init__()
        free = not isinstance(shape, int) and len(shape) > 1 and shape[0] is None
        self.shape = (None,) + _as_shape(shape[1:]) if free else _as_shape(shape)

    def log_prob(self, x: Tensor, context: Optional[Tensor] = None, mask: Optional[Tensor] = None) -> Tensor:
        if self.shape[0] is None:
            if x.dim() != len(self.shape) + 1 or tuple(x.shape[2:]) != self.shape[1:]:
                want = ", ".join(["N"] + [str(s) for s in self.shape[1:]])
                raise ValueError(f"{type(self).__name__} expects inputs of shape (B, {want}), got {tuple(x.shape)}")
        else:
            check_event_shape(x, self.shape, type(self).__name__)
        if mask is None:
            return sum_except_batch(-0.5 * x**2 - _HALF_LOG_2PI)
        return masked_sum(-0.5 * x**2 - _HALF_LOG_2PI, check_mask(mask, x, min_points=0))

    def sample(self, num_samples: Optional[int] = None, context: Optional[Tensor] = None,
               num_points: Optional[int] = None) -> Tensor:
        """``(num_samples, *shape)`` draws; ``num_points`` sets the free number of points (``shape[0] = None``)."""
        n = resolve_num_samples(num_samples, context)
        shape = self.shape
        if num_points is not None:
            if shape[0] is not None and num_points != shape[0]:
                raise ValueError(f"this StandardNormal has {shape[0]} points per event, not num_points={num_points}")
            shape = (int(num_points),) + shape[1:]
        elif shape[0] is None:
            raise ValueError("this StandardNormal leaves the number of points free: sample(..., num_points=N)")
        return torch.randn(n, *shape, device=self.device, dtype=self.dtype)

    def extra_repr(self) -> str:
        return f"shape={self.shape}"


class DiagonalNormal(Distribution):
    """Gaussian with learned per-element ``loc`` and ``log_scale`` (initialised to ``N(0, I)``).

    Shapes:
        - log_prob: ``(B, *shape) -> (B,)``
        - sample: ``num_samples -> (num_samples, *shape)`` (reparametrised, differentiable)
    """

    def __init__(self, shape: ShapeLike):
        super().__init__()
        self.shape = _as_shape(shape)
        self.loc = nn.Parameter(torch.zeros(self.shape))
        self.log_scale = nn.Parameter(torch.zeros(self.shape))

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.loc)
        nn.init.zeros_(self.log_scale)

    def log_prob(self, x: Tensor, context: Optional[Tensor] = None) -> Tensor:
        check_event_shape(x, self.shape, type(self).__name__)
        return sum_except_batch(normal_log_prob(x, self.loc, self.log_scale))

    def sample(self, num_samples: Optional[int] = None, context: Optional[Tensor] = None) -> Tensor:
        n = resolve_num_samples(num_samples, context)
        eps = torch.randn(n, *self.shape, device=self.loc.device, dtype=self.loc.dtype)
        return self.loc + torch.exp(self.log_scale) * eps

    def extra_repr(self) -> str:
        return f"shape={self.shape}"


class StandardHalfNormal(Distribution):
    """Half-normal on ``x >= 0``: ``log p(x) = log 2 + log N(x; 0, 1)``; ``-inf`` for ``x < 0``.

    Shapes:
        - log_prob: ``(B, *shape) -> (B,)``
        - sample: ``num_samples -> (num_samples, *shape)``, all entries ``>= 0``
    """

    def __init__(self, shape: ShapeLike):
        super().__init__()
        self.shape = _as_shape(shape)

    def log_prob(self, x: Tensor, context: Optional[Tensor] = None) -> Tensor:
        check_event_shape(x, self.shape, type(self).__name__)
        lp = math.log(2.0) - 0.5 * x**2 - _HALF_LOG_2PI
        lp = torch.where(x >= 0, lp, torch.full_like(lp, -math.inf))
        return sum_except_batch(lp)

    def sample(self, num_samples: Optional[int] = None, context: Optional[Tensor] = None) -> Tensor:
        n = resolve_num_samples(num_samples, context)
        return torch.randn(n, *self.shape, device=self.device, dtype=self.dtype).abs()

    def extra_repr(self) -> str:
        return f"shape={self.shape}"


class ConditionalNormal(ConditionalDistribution):
    """Diagonal Gaussian ``p(x | c)`` whose parameters come from a network.

    ``net(context)`` returns a tensor that is split in two equal chunks along
    ``split_dim``: ``(mean, log_std)``, each of the shape of ``x``.

    A context that is a padded batch of sets (e.g. the encoder ``q(z | X)`` of a latent set flow)
    comes with ``mask=`` (``(B, N)`` bool), passed on as ``net(context, mask=mask)``; the net must
    take it (:attr:`supports_mask` says whether it declares so).

    Shapes:
        - context: ``(B, ...)`` whatever ``net`` takes
        - net(context): ``x.shape`` with ``split_dim`` doubled
        - log_prob: ``(B, *event) -> (B,)``
        - sample: ``context -> (B, *event)`` (reparametrised, differentiable)

    Example:
        >>> d = ConditionalNormal(nn.Linear(3, 4), split_dim=1)
        >>> d.sample(context=torch.randn(5, 3)).shape
        torch.Size([5, 2])
    """

    def __init__(self, net: nn.Module, split_dim: int = 1):
        super().__init__()
        self.net = net
        self.split_dim = split_dim

    @property
    def supports_mask(self) -> bool:
        """True when the net declares that it takes ``mask=`` (a class attribute ``supports_mask``)."""
        return bool(getattr(self.net, "supports_mask", False))

    def mean_and_log_std(self, context: Tensor, mask: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        if context is None:
            raise ValueError("ConditionalNormal needs a context tensor")
        params = self.net(context) if mask is None else self.net(context, mask=mask)
        if params.shape[self.split_dim] % 2 != 0:
            raise ValueError(
                f"net output must have an even size along split_dim={self.split_dim}, got shape {tuple(params.shape)}"
            )
        mean, log_std = params.chunk(2, dim=self.split_dim)
        return mean, log_std

    def mean(self, context: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """The conditional mean ``E[x | context]``."""
        return self.mean_and_log_std(context, mask)[0]

    def log_prob(self, x: Tensor, context: Optional[Tensor] = None, mask: Optional[Tensor] = None) -> Tensor:
        mean, log_std = self.mean_and_log_std(context, mask)
        if mean.shape != x.shape:
            raise ValueError(f"ConditionalNormal: x has shape {tuple(x.shape)} but the net gives {tuple(mean.shape)}")
        return sum_except_batch(normal_log_prob(x, mean, log_std))

    def sample(self, num_samples: Optional[int] = None, context: Optional[Tensor] = None,
               mask: Optional[Tensor] = None) -> Tensor:
        return self.sample_with_log_prob(num_samples, context, mask)[0]

    def sample_with_log_prob(
        self, num_samples: Optional[int] = None, context: Optional[Tensor] = None, mask: Optional[Tensor] = None
    ) -> tuple[Tensor, Tensor]:
        self._num_from_context(num_samples, context)
        mean, log_std = self.mean_and_log_std(context, mask)
        eps = torch.randn_like(mean)
        x = mean + torch.exp(log_std) * eps
        lp = sum_except_batch(-0.5 * eps**2 - log_std - _HALF_LOG_2PI)
        return x, lp

    def extra_repr(self) -> str:
        return f"split_dim={self.split_dim}"
