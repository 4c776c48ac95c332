"""Distances between point sets: Chamfer (CD) and earth mover's (EMD), batched and chunked.

Definitions (PointFlow's, for sets ``X`` of ``N`` and ``Y`` of ``M`` points in ``R^D``):

- ``CD(X, Y) = mean_x min_y |x - y|^2 + mean_y min_x |x - y|^2``
- ``EMD(X, Y) = min over bijections s of mean_i |x_i - y_s(i)|`` (Euclidean, not squared;
  equal sizes ``N = M``), solved exactly by :func:`scipy.optimize.linear_sum_assignment`.

The same code serves 2-D digit sets and 3-D point clouds, of one size or of different sizes (a
:class:`~setflow.sets.SetBatch` with padding: CD is defined for any two sizes, the padding takes no part).
Dense all-pairs matrices are built
block by block so the memory stays at ``block_elems`` floats whatever the number of sets.
A cheap lower bound of the EMD comes out of the same pass as the Chamfer distance: the
larger of ``mean_x min_y |x-y|`` and ``mean_y min_x |x-y|`` (each point's matched partner is
at least as far as its nearest one) and, for equal sizes, of the 1-D EMDs of the sets'
projections on the coordinate axes and 8 fixed directions (a projection shortens every
distance, and in 1-D sorted order is optimal); :mod:`setflow.metrics.eval` uses it to prune exact EMD calls.
"""

from __future__ import annotations

import math
from typing import Iterable, Optional

import numpy as np
import torch
from torch import Tensor

from setflow.sets import SetBatch, as_set_batch

__all__ = ["chamfer", "emd", "emd_pairs", "pairwise_chamfer", "check_sets", "check_set_batch", "DEFAULT_BLOCK_ELEMS"]

#: float elements of one ``(g, N, r, M)`` block of point-to-point distances (4 MiB in float32: stays in cache)
DEFAULT_BLOCK_ELEMS = 1 << 20


def check_sets(x, name: str = "sets") -> Tensor:
    """``x`` as a float tensor ``(B, N, D)``; a clear ``ValueError`` otherwise."""
    if not isinstance(x, Tensor):
        x = torch.as_tensor(np.asarray(x))
    if x.dim() != 3:
        raise ValueError(f"{name} must have shape (B, N, D) = (sets, points, coordinates), got {tuple(x.shape)}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must hold at least one set of at least one point, got {tuple(x.shape)}")
    if not x.is_floating_point():
        x = x.float()
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or Inf coordinates")
    return x


def check_set_batch(x, name: str = "sets") -> SetBatch:
    """``x`` (a :class:`~setflow.sets.SetBatch`, a tensor ``(B, N, D)`` or an array) as a float ``SetBatch``
    whose padding is zero; a clear ``ValueError`` for a wrong shape, an empty set or NaN/Inf at a real point."""
    batch = as_set_batch(x)
    points = batch.points
    if points.shape[0] == 0 or points.shape[1] == 0:
        raise ValueError(f"{name} must hold at least one set of at least one point, got {tuple(points.shape)}")
    if not points.is_floating_point():
        points = points.float()
    if batch.is_fixed:  # no padding: the points as given (bit-identical to the plain tensor)
        return SetBatch(check_sets(points, name), batch.mask, batch.labels)
    if bool((batch.sizes == 0).any()):
        raise ValueError(f"every set of {name} needs at least one real point")
    points = torch.where(batch.mask[..., None], points, torch.zeros((), dtype=points.dtype))
    return SetBatch(check_sets(points, name), batch.mask, batch.labels)


def _sq_dists(a: Tensor, b: Tensor) -> Tensor:
    """Squared distances between every point of ``a`` (g, N, D) and ``b`` (r, M, D): (g, N, r, M)."""
    g, n, d = a.shape
    r, m, _ = b.shape
    fa, fb = a.reshape(g * n, d), b.reshape(r * m, d)
    sq = torch.addmm((fa * fa).sum(-1)[:, None] + (fb * fb).sum(-1)[None, :], fa, fb.T, alpha=-2.0)
    return sq.clamp_min_(0.0).view(g, n, r, m)


def _directions(d: int, extra: int = 8, dtype=torch.float64) -> Tensor:
    """The ``d`` coordinate axes and ``extra`` fixed (seeded) random unit directions: (K, d)."""
    gen = torch.Generator().manual_seed(0)
    rnd = torch.randn(extra, d, generator=gen, dtype=torch.float64)
    return torch.cat([torch.eye(d, dtype=torch.float64), rnd / rnd.norm(dim=1, keepdim=True)]).to(dtype)


def chamfer(x: Tensor | SetBatch, y: Tensor | SetBatch) -> Tensor:
    """Chamfer distance of paired sets ``x`` (B, N, D) and ``y`` (B, M, D): (B,). Tensors or
    :class:`~setflow.sets.SetBatch` values (padding takes no part)."""
    sx, sy = check_set_batch(x, "x"), check_set_batch(y, "y")
    x, y = sx.points, sy.points
    if x.shape[0] != y.shape[0] or x.shape[2] != y.shape[2]:
        raise ValueError(f"x and y must pair up as (B, N, D) and (B, M, D), got {tuple(x.shape)} and {tuple(y.shape)}")
    sq = torch.cdist(x, y).square()
    if sx.is_fixed and sy.is_fixed:  # the plain means (bit-identical to the results before sets of any size)
        return sq.min(2).values.mean(1) + sq.min(1).values.mean(1)
    inf, zero = torch.tensor(math.inf, dtype=sq.dtype), torch.zeros((), dtype=sq.dtype)
    to_y = torch.where(sy.mask[:, None, :], sq, inf).min(2).values  # (B, N): each point of x to its nearest in y
    to_x = torch.where(sx.mask[:, :, None], sq, inf).min(1).values  # (B, M)
    return (torch.where(sx.mask, to_y, zero).sum(1) / sx.sizes + torch.where(sy.mask, to_x, zero).sum(1) / sy.sizes)


def _one_size(x, name: str) -> Tensor:
    """The points of ``x`` (a tensor or a :class:`~setflow.sets.SetBatch` without padding): EMD is for one size."""
    batch = check_set_batch(x, name)
    if not batch.is_fixed:
        raise ValueError(f"EMD needs equal set sizes; {name} holds sets of {int(batch.sizes.min())}.."
                         f"{int(batch.sizes.max())} points (padded)")
    return batch.points


def emd(x: Tensor | SetBatch, y: Tensor | SetBatch) -> Tensor:
    """Exact EMD (mean matched Euclidean distance) of paired equal-size sets (B, N, D): (B,) float64."""
    x, y = _one_size(x, "x"), _one_size(y, "y")
    if x.shape != y.shape:
        raise ValueError(f"EMD needs paired sets of equal size (B, N, D), got {tuple(x.shape)} and {tuple(y.shape)}")
    idx = torch.arange(x.shape[0])
    return emd_pairs(x, y, idx, idx)


def emd_pairs(a: Tensor, b: Tensor, ia: Tensor, ib: Tensor, pairs_per_block: int = 4096) -> Tensor:
    """Exact EMD of the pairs ``(a[ia[k]], b[ib[k]])``; ``a`` (A, N, D), ``b`` (B, N, D) -> (K,) float64.

    Cost matrices are computed in float64 by batched ``cdist``; each pair is one
    ``linear_sum_assignment`` (a Python loop over pairs, never over points).
    """
    from scipy.optimize import linear_sum_assignment

    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"EMD needs sets of equal size, got {tuple(a.shape[1:])} and {tuple(b.shape[1:])}")
    n = a.shape[1]
    out = np.empty(len(ia), dtype=np.float64)
    rows = np.arange(n)
    for s in range(0, len(ia), pairs_per_block):
        cost = torch.cdist(a[ia[s:s + pairs_per_block]].double(), b[ib[s:s + pairs_per_block]].double()).numpy()
        for k, c in enumerate(cost):
            out[s + k] = c[rows, linear_sum_assignment(c)[1]].mean()
    return torch.from_numpy(out)


def _blocks(n: int, size: int) -> list[tuple[int, int]]:
    return [(s, min(s + size, n)) for s in range(0, n, size)]


def pairwise_chamfer(
    a: Tensor | SetBatch,
    b: Optional[Tensor | SetBatch] = None,
    *,
    lower_bound: bool = False,
    block_elems: int = DEFAULT_BLOCK_ELEMS,
    progress: Optional[bool] = None,
    desc: str = "chamfer",
) -> Tensor | tuple[Tensor, Tensor]:
    """All-pairs Chamfer distances ``(A, B)`` between the sets ``a`` (A, N, D) and ``b`` (B, M, D).

    ``a`` and ``b`` are :class:`~setflow.sets.SetBatch` values (sets of different sizes: the padding
    takes no part, ``+inf`` in the nearest-point search and weight 0 in the means) or tensors (every
    point real). ``b=None`` means ``b = a`` and computes only the upper block triangle (the matrix is
    symmetric). With ``lower_bound=True`` (sets without padding) also returns the EMD lower bound
    matrix (see the module docstring). Work goes in blocks of ``g x r`` pairs with
    ``g * r * N * M <= block_elems``; ``progress`` shows a tqdm bar (``None``: only for long jobs on a terminal).
    """
    sa = check_set_batch(a, "a")
    same = b is None
    sb = sa if same else check_set_batch(b, "b")
    a, b = sa.points, sb.points
    if a.shape[2] != b.shape[2]:
        raise ValueError(f"a and b must have the same point dimension, got {a.shape[2]} and {b.shape[2]}")
    padded = not (sa.is_fixed and sb.is_fixed)
    if lower_bound and padded:
        raise ValueError("the EMD lower bound is for sets of one size each (no padding)")
    ma, mb = sa.mask, sb.mask
    dtype = torch.promote_types(a.dtype, b.dtype)
    shift = b[mb].mean(0).to(dtype)  # centring reduces cancellation in |x|^2 + |y|^2 - 2xy
    a, b = a.to(dtype) - shift, b.to(dtype) - shift
    na, nb = ma.sum(1).to(dtype), mb.sum(1).to(dtype)
    inf, zero = torch.tensor(math.inf, dtype=dtype), torch.zeros((), dtype=dtype)
    n, m = a.shape[1], b.shape[1]
    side = max(1, int(math.sqrt(block_elems / (n * m))))
    cd = torch.empty(a.shape[0], b.shape[0], dtype=dtype)
    lb = torch.empty_like(cd) if lower_bound else None
    sliced = lower_bound and n == m
    # |x|^2 + |y|^2 - 2xy loses ~eps * |x|^2; its square root up to sqrt(eps) |x|: keep the bound valid
    tol = math.sqrt(8 * torch.finfo(dtype).eps) * max(a.abs().max().item(), b.abs().max().item()) * math.sqrt(a.shape[2])
    if sliced:  # sorted projections: 1-D EMD along a direction is a lower bound of the EMD
        dirs = _directions(a.shape[2], dtype=dtype)
        pa, pb = (a @ dirs.T).sort(1).values, (b @ dirs.T).sort(1).values  # (A, N, K), (B, N, K)
    jobs = [(p, q) for p in _blocks(a.shape[0], side) for q in _blocks(b.shape[0], side) if not same or q[0] >= p[0]]
    for (i0, i1), (j0, j1) in _progress(jobs, progress, desc, big=a.shape[0] * b.shape[0] * n * m > 1e9):
        sq = _sq_dists(a[i0:i1], b[j0:j1])  # (g, N, r, M)
        sq_a = sq_b = sq
        if padded:  # only real points are neighbours
            sq_b = torch.where(mb[None, None, j0:j1], sq, inf)
            sq_a = torch.where(ma[i0:i1, :, None, None], sq, inf)
        min_a = sq_b.amin(3).transpose(1, 2)  # (g, r, N): each point of a to its nearest in b
        min_b = sq_a.transpose(1, 3).contiguous().amin(3).transpose(1, 2)  # (g, r, M)
        if padded:  # means over the real points only
            cd[i0:i1, j0:j1] = (torch.where(ma[i0:i1, None], min_a, zero).sum(2) / na[i0:i1, None]
                                + torch.where(mb[None, j0:j1], min_b, zero).sum(2) / nb[None, j0:j1])
        else:  # the plain means: bit-identical to the results before sets of any size
            cd[i0:i1, j0:j1] = min_a.mean(2) + min_b.mean(2)
        if lb is not None:
            bound = torch.maximum(min_a.sqrt().mean(2), min_b.sqrt().mean(2)) - tol
            if sliced:
                proj = (pa[i0:i1, None] - pb[None, j0:j1]).abs().mean(2).amax(-1)  # (g, r)
                bound = torch.maximum(bound, proj)
            lb[i0:i1, j0:j1] = bound
        if same and j0 != i0:
            cd[j0:j1, i0:i1] = cd[i0:i1, j0:j1].T
            if lb is not None:
                lb[j0:j1, i0:i1] = lb[i0:i1, j0:j1].T
    return (cd, lb) if lower_bound else cd


def _progress(items: Iterable, progress: Optional[bool], desc: str, big: bool):
    import sys

    show = (big and sys.stderr.isatty()) if progress is None else progress
    if not show:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, leave=False, dynamic_ncols=True)
