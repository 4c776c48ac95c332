"""Seeded 2-D toy densities for studying absolute-value surjections.

Every generator is ``f(n, seed=None) -> float32 tensor (n, 2)`` where ``seed`` is ``None``
(torch's global RNG), an ``int``, a :class:`torch.Generator` or a
:class:`numpy.random.Generator`. All four densities are symmetric under ``x -> -x``
(point reflection); ``corners``, ``eight_gaussians`` and ``four_circles`` are also
symmetric under each axis flip, so ``|x|`` folds them onto one quadrant without losing
information up to the signs. Data live roughly in ``[-4, 4]^2``. Each generator registers its name
in :data:`setflow.registry.TOY_DATASETS` (``data: toy2d`` with ``data_args.name``).

Example::

    >>> x = TOY_DATASETS["corners"](1000, seed=0)
    >>> x.shape, x.dtype
    (torch.Size([1000, 2]), torch.float32)
"""

from __future__ import annotations

import math
from typing import Optional, Union

import numpy as np
import torch
from torch import Tensor

from setflow.registry import TOY_DATASETS, register_toy_dataset

__all__ = ["TOY_DATASETS", "SeedLike", "checkerboard", "corners", "eight_gaussians", "four_circles", "sample_toy"]

SeedLike = Union[None, int, torch.Generator, np.random.Generator]


def _generator(seed: SeedLike) -> Optional[torch.Generator]:
    """A torch generator for ``seed`` (``None``: use torch's global RNG)."""
    if seed is None:
        return None
    if isinstance(seed, torch.Generator):
        return seed
    if isinstance(seed, np.random.Generator):
        return torch.Generator().manual_seed(int(seed.integers(0, 2**63 - 1)))
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        return torch.Generator().manual_seed(int(seed))
    raise TypeError(f"seed must be None, an int, a torch.Generator or a numpy Generator, got {type(seed).__name__}")


def _check_n(n: int) -> int:
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    return int(n)


def _random_signs(shape: tuple[int, ...], g: Optional[torch.Generator]) -> Tensor:
    return torch.randint(0, 2, shape, generator=g).float() * 2 - 1


@register_toy_dataset("checkerboard")
def checkerboard(n: int, seed: SeedLike = None) -> Tensor:
    """Uniform on the 8 black squares of a 4x4 board of side-2 squares over ``[-4, 4]^2``.

    Square ``(i, j)`` (``i, j`` in ``-2..1``, covering ``[2i, 2i+2) x [2j, 2j+2)``) is black
    when ``i + j`` is even; ``(i, j) -> (-1-i, -1-j)`` keeps the parity, so the density is
    symmetric under ``x -> -x``.
    """
    n, g = _check_n(n), _generator(seed)
    i = torch.randint(-2, 2, (n,), generator=g)
    j = torch.randint(-1, 1, (n,), generator=g) * 2 + (i % 2)  # even i+j, j in -2..1
    corner = torch.stack([i, j], dim=1).float()
    return ((corner + torch.rand(n, 2, generator=g)) * 2.0).float()


@register_toy_dataset("corners")
def corners(n: int, seed: SeedLike = None, offset: float = 1.0, length: float = 2.0, width: float = 0.5) -> Tensor:
    """Uniform on four L-shaped blocks, one at each corner of a square, mirror-symmetric.

    In the first quadrant the L is ``[o, o+l] x [o, o+w]`` (horizontal arm) united with
    ``[o, o+w] x [o+w, o+l]`` (vertical arm, not overlapping); each point then gets
    independent random signs per coordinate, which copies the L to all four corners.
    """
    n, g = _check_n(n), _generator(seed)
    area_h, area_v = length * width, width * (length - width)
    u = torch.rand(n, 2, generator=g)
    horizontal = torch.rand(n, generator=g) < area_h / (area_h + area_v)
    x_h = torch.stack([u[:, 0] * length, u[:, 1] * width], dim=1)
    x_v = torch.stack([u[:, 0] * width, width + u[:, 1] * (length - width)], dim=1)
    x = torch.where(horizontal[:, None], x_h, x_v) + offset
    return (x * _random_signs((n, 2), g)).float()


@register_toy_dataset("eight_gaussians")
def eight_gaussians(
    n: int, seed: SeedLike = None, radius: float = 2.0 * math.sqrt(2.0), std: float = 0.5 / math.sqrt(2.0)
) -> Tensor:
    """Equal mixture of 8 isotropic Gaussians centred at angles ``k * 45`` degrees on a circle."""
    n, g = _check_n(n), _generator(seed)
    angle = torch.randint(0, 8, (n,), generator=g).float() * (math.pi / 4)
    centres = radius * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    return (centres + std * torch.randn(n, 2, generator=g)).float()


@register_toy_dataset("four_circles")
def four_circles(n: int, seed: SeedLike = None, centre: float = 1.5, radius: float = 1.0, std: float = 0.05) -> Tensor:
    """Four noisy rings of radius ``radius`` centred at ``(+-centre, +-centre)``."""
    n, g = _check_n(n), _generator(seed)
    theta = torch.rand(n, generator=g) * (2 * math.pi)
    ring = radius * torch.stack([torch.cos(theta), torch.sin(theta)], dim=1)
    centres = centre * _random_signs((n, 2), g)
    return (centres + ring + std * torch.randn(n, 2, generator=g)).float()


def sample_toy(name: str, n: int, seed: SeedLike = None) -> Tensor:
    """Draw ``n`` points of the toy density ``name`` (registered in :data:`~setflow.registry.TOY_DATASETS`;
    an unknown name is a ``KeyError`` listing the registered ones)."""
    return TOY_DATASETS.get(name)(n, seed)
