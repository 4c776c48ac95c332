r"""Dequantization: from integers in ``[0, 2^b)`` to continuous values in ``[0, 1)``.

Both layers are generative surjections (``stochastic_forward``): with
``y = x + u``, ``u \in [0, 1)^D`` drawn from ``q(u | x)`` and ``z = y / 2^b``,

.. math::
    \log P(x) \ge \mathbb{E}_q[\log p(z) - \log q(u \mid x)] - D\,b \log 2,

so ``ldj = -log q(u | x) - D b log 2`` (``q`` uniform for :class:`UniformDequantization`).
``inverse`` returns ``floor(z * 2^b)`` clamped to ``[0, 2^b - 1]`` as floats holding integers.
"""

from __future__ import annotations

import math
from typing import Iterable, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from setflow.distributions.normal import normal_log_prob
from setflow.transforms.base import CompositeTransform, Surjection, Transform, sum_except_batch

__all__ = ["UniformDequantization", "VariationalDequantization"]


class _Dequantization(Surjection):
    stochastic_forward = True
    stochastic_inverse = False

    def __init__(self, num_bits: int = 8):
        super().__init__()
        if not 1 <= num_bits <= 16:
            raise ValueError(f"num_bits must be in [1, 16], got {num_bits}")
        self.num_bits = int(num_bits)
        self.num_bins = 2**self.num_bits

    def _as_float(self, x: Tensor) -> Tensor:
        xf = x if x.is_floating_point() else x.to(torch.get_default_dtype())
        if xf.numel() == 0:
            return xf
        lo, hi = float(xf.min()), float(xf.max())
        if lo < 0 or hi > self.num_bins - 1:
            raise ValueError(
                f"{type(self).__name__}(num_bits={self.num_bits}) expects integers in [0, {self.num_bins - 1}], "
                f"got values in [{lo}, {hi}]"
            )
        return xf

    def _to_unit(self, x: Tensor, u: Tensor) -> Tensor:
        """``(x + u) / 2^b``, keeping ``x + u < x + 1`` after float rounding so the inverse recovers ``x``."""
        y = torch.minimum(x + u, torch.nextafter(x + 1.0, x))
        return y / self.num_bins

    def _const_ldj(self, x: Tensor) -> float:
        return -x[0].numel() * self.num_bits * math.log(2.0)

    def inverse(self, z: Tensor, context: Optional[Tensor] = None) -> Tensor:
        return torch.floor(z * self.num_bins).clamp(0, self.num_bins - 1)

    def extra_repr(self) -> str:
        return f"num_bits={self.num_bits}"


class UniformDequantization(_Dequantization):
    r"""``z = (x + u) / 2^b`` with ``u ~ U(0, 1)^D``; ``ldj = -D b log 2``.

    Shapes:
        - x: ``(B, ...)`` integers in ``[0, 2^b)`` (any dtype); z: same shape, float in ``[0, 1)``
    """

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        xf = self._as_float(x)
        z = self._to_unit(xf, torch.rand_like(xf))
        return z, xf.new_full((x.shape[0],), self._const_ldj(xf))


class VariationalDequantization(_Dequantization):
    r"""Dequantization noise from a learned conditional flow ``q(u | x)``.

    ``u`` is produced as ``eps ~ N(0, I)`` (shape of ``x``) -> ``noise_transforms``
    applied in their **forward** direction with ``context = x / 2^b`` -> ``sigmoid``.
    With ``ldj_T`` the transforms' log-det,

    .. math::
        \log q(u \mid x) = \log N(\epsilon) - \mathrm{ldj}_T
            - \textstyle\sum \log\sigma'(y),\qquad \log \sigma'(y) = \log\sigma(y) + \log\sigma(-y).

    ``setflow.flows.Flow`` maps data -> latent and has no ``sample_with_log_prob``,
    so this small dedicated sampler is used instead. The transforms must be
    bijections that accept ``context`` (e.g. couplings whose conditioners take the
    ``x / 2^b`` image as context); an outer flow's own context is not forwarded.

    Shapes:
        - x: ``(B, ...)`` integers in ``[0, 2^b)``; z: same shape in ``[0, 1)``; ldj: ``(B,)``
    """

    def __init__(self, noise_transforms: Union[Transform, Iterable[Transform]], num_bits: int = 8):
        super().__init__(num_bits)
        if isinstance(noise_transforms, Transform):
            noise_transforms = [noise_transforms]
        self.noise = CompositeTransform(noise_transforms)
        if not self.noise.bijective:
            raise ValueError("VariationalDequantization needs bijective noise transforms")

    def sample_noise(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Draw ``u ~ q(u | x)`` in ``(0, 1)`` and return ``(u, log q(u | x))``."""
        eps = torch.randn_like(x)
        y, ldj_t = self.noise(eps, x / self.num_bins)
        log_q = sum_except_batch(normal_log_prob(eps) - F.logsigmoid(y) - F.logsigmoid(-y)) - ldj_t
        return torch.sigmoid(y), log_q

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        xf = self._as_float(x)
        u, log_q = self.sample_noise(xf)
        return self._to_unit(xf, u), self._const_ldj(xf) - log_q
