"""One gather helper for everything that reorders the points of a set (sort, stochastic permutation)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

__all__ = ["permute_along", "random_permutations", "inverse_permutation"]


def permute_along(x: Tensor, perm: Tensor, dim: int = 1) -> Tensor:
    """Reorder ``x`` along ``dim`` with a different permutation per batch row.

    ``out[b, i, ...] = x[b, perm[b, i], ...]`` (for ``dim=1``).

    Shapes:
        - x: ``(B, ..., N, ...)`` with ``N = x.shape[dim]``
        - perm: ``(B, N)`` integer indices (each row a permutation, or any gather index)
        - output: same as ``x``

    Example:
        >>> x = torch.tensor([[[1.0], [2.0], [3.0]]])
        >>> permute_along(x, torch.tensor([[2, 0, 1]]), dim=1)[0, :, 0]
        tensor([3., 1., 2.])
    """
    d = dim % x.dim()
    if d == 0:
        raise ValueError("permute_along cannot permute the batch dimension")
    b, n = x.shape[0], x.shape[d]
    if perm.shape != (b, n):
        raise ValueError(f"perm must have shape (B, N) = ({b}, {n}), got {tuple(perm.shape)}")
    view = [b] + [1] * (x.dim() - 1)
    view[d] = n
    index = perm.to(device=x.device, dtype=torch.long).view(view).expand_as(x)
    return torch.gather(x, d, index)


def random_permutations(
    batch: int, n: int, device: Optional[torch.device] = None, generator: Optional[torch.Generator] = None
) -> Tensor:
    """``(batch, n)`` independent uniform random permutations (argsort of uniform noise, no Python loop)."""
    noise = torch.rand(batch, n, device=device, generator=generator)
    return torch.argsort(noise, dim=1)


def inverse_permutation(perm: Tensor) -> Tensor:
    """Row-wise inverse: ``permute_along(permute_along(x, p), inverse_permutation(p)) == x``."""
    inv = torch.empty_like(perm)
    ar = torch.arange(perm.shape[1], device=perm.device).expand_as(perm)
    inv.scatter_(1, perm, ar)
    return inv
