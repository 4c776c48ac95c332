r"""Augmentation: a generative surjection that appends sampled noise, ``z = [x, e]``."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from setflow.distributions.base import ConditionalDistribution, Distribution
from setflow.transforms.base import Surjection

__all__ = ["Augment"]


class Augment(Surjection):
    r"""Append noise ``e ~ q(e | x)`` along ``dim``: ``z = [x, e]``, ``ldj = -log q(e | x)``.

    ``noise_dist`` is a :class:`ConditionalDistribution` (called with ``context=x``)
    or an unconditional :class:`Distribution` drawing ``B`` samples. Its samples
    should be reparametrised (e.g. :class:`~setflow.distributions.ConditionalNormal`)
    so that ``q`` trains by gradient. ``inverse`` drops the appended part.
    ``log_prob`` of a flow with this layer is a lower bound (``stochastic_forward``).

    Args:
        noise_dist: density of the appended noise.
        x_size: size of ``x`` along ``dim`` (where the inverse cuts).
        dim: dimension to concatenate along (``1``: channels / points, ``-1``: coordinates).

    Shapes:
        - x: ``(B, ..., x_size, ...)``; z: ``(B, ..., x_size + e_size, ...)``; ldj: ``(B,)``
    """

    stochastic_forward = True
    stochastic_inverse = False

    def __init__(self, noise_dist: Distribution, x_size: int, dim: int = 1):
        super().__init__()
        if not isinstance(noise_dist, Distribution):
            raise TypeError(f"noise_dist must be a Distribution, got {type(noise_dist).__name__}")
        if dim == 0:
            raise ValueError("Augment cannot concatenate along the batch dimension")
        self.noise_dist = noise_dist
        self.x_size = int(x_size)
        self.dim = dim

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        if x.shape[self.dim] != self.x_size:
            raise ValueError(f"Augment(x_size={self.x_size}) got x of shape {tuple(x.shape)} along dim={self.dim}")
        if isinstance(self.noise_dist, ConditionalDistribution):
            e, log_q = self.noise_dist.sample_with_log_prob(context=x)
        else:
            e, log_q = self.noise_dist.sample_with_log_prob(x.shape[0])
        z = torch.cat([x, e.to(x.dtype)], dim=self.dim)
        return z, -log_q

    def inverse(self, z: Tensor, context: Optional[Tensor] = None) -> Tensor:
        if z.shape[self.dim] <= self.x_size:
            raise ValueError(f"Augment(x_size={self.x_size}) got z of shape {tuple(z.shape)} along dim={self.dim}")
        return z.narrow(self.dim, 0, self.x_size)

    def extra_repr(self) -> str:
        return f"x_size={self.x_size}, dim={self.dim}"
