"""One gather helper for everything that reorders the points of a set (sort, stochastic permutation)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from setflow.sets import real_first

__all__ = ["permute_along", "random_permutations", "inverse_permutation", "random_rank_permutations",
           "fixed_rank_permutations", "permute_real_points"]


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


def random_rank_permutations(sizes: Tensor, n: int, generator: Optional[torch.Generator] = None) -> Tensor:
    """``(B, n)``: row ``b`` a uniform random permutation of ``0..sizes[b]-1``, then ``sizes[b]..n-1`` in place."""
    ar = torch.arange(n, device=sizes.device)
    noise = torch.rand(sizes.shape[0], n, device=sizes.device, generator=generator)
    keys = torch.where(ar < sizes[:, None], noise, 1.0 + ar.to(noise.dtype))
    return torch.argsort(keys, dim=1)


def fixed_rank_permutations(sizes: Tensor, n: int, seed: int) -> Tensor:
    """``(B, n)``: for each row a fixed pseudo-random permutation of ``0..sizes[b]-1`` that depends only on
    ``(seed, sizes[b])`` (an integer hash of the rank, no table), then ``sizes[b]..n-1`` in place."""
    ar = torch.arange(n, device=sizes.device, dtype=torch.long)
    m32 = 0xFFFFFFFF
    h = (ar[None, :] * 0x2545F491 + sizes[:, None].long() * 0x1B873593 + (int(seed) & 0x7FFFFFF) * 0x27D4EB2F) & m32
    for mult in (0x7FEB352D, 0x446F3A9B):  # xorshift-multiply rounds (products stay below 2**63)
        h = ((h ^ (h >> 15)) * mult) & m32
    h = h ^ (h >> 16)
    keys = torch.where(ar < sizes[:, None], h * (1 << 20) + ar, (1 << 53) + ar)  # rank breaks hash ties
    return torch.argsort(keys, dim=1, stable=True)


def permute_real_points(x: Tensor, rank_perm: Tensor, mask: Optional[Tensor], dim: int = 1) -> Tensor:
    """Reorder the real points of each set: the ``r``-th real slot receives the ``rank_perm[b, r]``-th real
    point; the padding stays where it is. With ``mask=None`` this is ``permute_along(x, rank_perm, dim)``."""
    if mask is None:
        return permute_along(x, rank_perm, dim)
    pos = real_first(mask)  # slots of the real points first
    src = torch.gather(pos, 1, rank_perm.to(pos.device))
    index = torch.empty_like(pos).scatter_(1, pos, src)
    return permute_along(x, index, dim)
