"""Exact k-nearest neighbours of small-dimensional point sets in ``O(N k)`` work per set.

:func:`grid_knn` hashes every set's points into a uniform grid of cubic cells (side: 1.5 x the
median ``k``-th neighbour distance of 32 sampled points), sorts the points by cell
(``torch.sort``) and finds a cell's candidates in the ``3^D`` cells around it with
``torch.searchsorted``: in row-major cell order the three cells along the last axis are
consecutive, so a cell reads ``3^(D-1)`` contiguous runs of the sorted points. The queries of a
cell share its candidate list (distance blocks ``(groups, group, candidates)``). A query's
answer is exact when its ``k``-th candidate is nearer than one cell side (every point outside
the searched block is farther) or when the block holds its whole set; the others (sparse
regions) are searched again on a grid of twice the side. So the result equals the brute-force
kNN exactly. :func:`window_knn` sorts each set along one axis and compares blocks of queries with the
sorted points around them, proving exactness by the key gap to the window's edges.
:func:`brute_knn` ranks all pairs (chunked); :func:`nearest_neighbors` picks one.

Order and ties: neighbours are sorted by distance, ties by the smaller index. Every search
takes distances from ``torch.cdist`` without its matrix-product shortcut, where a pair's value
depends on the two points only, so all searches rank the same numbers. A float ``topk``
selects; a row whose cut runs through a tie is ranked whole, lexicographically.
``nearest_neighbors(..., ties="coordinates")`` searches the points in :func:`lexicographic_order`,
so ties go to the lexicographically smaller point instead: a rule that does not depend on the
order of the points (the set conditioners use it).

Rows that have fewer than ``k`` admissible neighbours (a masked set with few real points,
or a padded query) are filled with the query's own index after the real neighbours; padded
points (``mask`` False) are never neighbours.

Memory: the transient blocks hold at most ``max_elements`` distances (and at least one row);
what is kept is ``(B, N, k)``.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

__all__ = ["nearest_neighbors", "grid_knn", "window_knn", "brute_knn", "lexicographic_order", "TIES"]

MAX_ELEMENTS = 1 << 22  # distances per transient block (16 MiB in float32)
GRID_MIN_POINTS = 1024  # 3-D: up to this many points all pairs are cheaper on a CPU (docs/results/pointclouds.md)
WINDOW_MIN_POINTS = 384  # 1-2-D: above this many points sorted windows are cheaper than all pairs
_GUARD = 1.0 - 1e-4  # a point outside the searched block is farther than _GUARD cell sides


def _check(x: Tensor, k: int, mask: Optional[Tensor], loop: bool) -> None:
    if x.dim() != 3:
        raise ValueError(f"expected points of shape (B, N, D); got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"expected floating-point points; got dtype {x.dtype}")
    B, N, _ = x.shape
    k_max = N if loop else N - 1
    if not 1 <= k <= k_max:
        raise ValueError(f"k={k} neighbours is impossible for sets of N={N} points (need 1 <= k <= {k_max})")
    if mask is not None and (mask.shape != (B, N) or mask.dtype != torch.bool):
        raise ValueError(f"expected a bool mask of shape {(B, N)}; got {mask.dtype} {tuple(mask.shape)}")


def _dist(q: Tensor, c: Tensor) -> Tensor:
    """Euclidean distances ``(..., M, D)`` x ``(..., W, D)`` -> ``(..., M, W)``, each pair summed on its own.

    ``torch.cdist`` without the matrix-product shortcut: a pair's distance depends on its two
    points only, not on the block it is computed in, so every search ranks the same values.
    """
    return torch.cdist(q, c, compute_mode="donot_use_mm_for_euclid_dist")


def _smallest(d2: Tensor, idx: Tensor, kk: int, skip: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """The ``kk`` smallest ``(d2, idx)`` pairs of every row, ordered by distance then index.

    ``d2, idx (..., W)`` with ``W >= kk``. A float ``topk`` picks the rows' ``kk`` smallest; a row
    whose ``kk``-th and ``kk + 1``-th distances are equal (the cut runs through a tie) is ranked
    whole instead. ``skip (...)`` bool: rows not to repair (padding). Returns ``(d2, idx) (..., kk)``.
    """
    wide = d2.shape[-1] > kk
    val, at = d2.topk(kk + int(wide), dim=-1, largest=False, sorted=True)
    val, sel = val[..., :kk].contiguous(), idx.gather(-1, at[..., :kk])
    if wide:
        tie = ~(val[..., -1] < d2.gather(-1, at[..., kk:]).squeeze(-1))
        if skip is not None:
            tie &= ~skip
        if bool(tie.any()):
            o = idx[tie].argsort(dim=-1, stable=True)
            v, o2 = d2[tie].gather(-1, o).sort(dim=-1, stable=True)
            val[tie], sel[tie] = v[..., :kk], idx[tie].gather(-1, o.gather(-1, o2[..., :kk]))
    o = sel.argsort(dim=-1, stable=True)  # lexicographic (distance, index) of the kk picked
    val, o2 = val.gather(-1, o).sort(dim=-1, stable=True)
    return val, sel.gather(-1, o.gather(-1, o2))


def _drop_self(val: Tensor, idx: Tensor, own: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """From ``k + 1`` nearest ``(val, idx) (..., k + 1)`` drop the query itself (index ``own (...)``,
    distance 0); a row without it (duplicates of smaller index fill it) keeps its first ``k``."""
    after = (idx == own.unsqueeze(-1)).cumsum(-1)[..., :k] > 0
    return torch.where(after, val[..., 1:], val[..., :k]), torch.where(after, idx[..., 1:], idx[..., :k])


def brute_knn(x: Tensor, k: int, mask: Optional[Tensor] = None, loop: bool = False,
              max_elements: int = MAX_ELEMENTS) -> Tensor:
    r"""Exact kNN by all pairwise distances, in blocks of ``max_elements`` pairs: ``O(N^2)`` work.

    Same arguments, order and ties as :func:`nearest_neighbors`; ``(B, N, k)`` long.
    """
    _check(x, k, mask, loop)
    B, N, _ = x.shape
    step = max(1, max_elements // max(1, B * N))
    cols = torch.arange(N, device=x.device)
    out = torch.empty(B, N, k, dtype=torch.long, device=x.device)
    with torch.no_grad():
        x = x.detach()
        for i0 in range(0, N, step):
            rows = cols[i0:i0 + step]
            d = _dist(x[:, rows], x)  # (B, c, N)
            if mask is not None:
                d = d.masked_fill(~mask.unsqueeze(1), float("inf"))
            if not loop:
                d[:, rows - i0, rows] = float("inf")
            val, idx = _smallest(d, cols.expand_as(d), k)
            out[:, rows] = torch.where(val < float("inf"), idx, rows.view(1, -1, 1))
        if mask is not None:  # padded queries: self
            out = torch.where(mask.unsqueeze(-1), out, cols.view(1, N, 1))
    return out


def _first_side(x: Tensor, valid: Tensor, k: int, loop: bool, max_elements: int, samples: int = 32) -> Tensor:
    """Cell side per set: 1.5 x the median k-th neighbour distance of ``samples`` spread-out real points."""
    B, N, _ = x.shape
    samples = max(1, min(samples, max_elements // N))
    rank = valid.long().cumsum(1)  # (B, N): real points up to and including i
    want = ((torch.arange(samples, device=x.device) + 0.5) * rank[:, -1:] / samples).long() + 1  # (B, S) ranks
    pos = torch.searchsorted(rank, want.clamp(max=N)).clamp(max=N - 1)
    xq = x.gather(1, pos.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # (B, S, D)
    kk = min(N, k + (0 if loop else 1))
    step = max(1, max_elements // (samples * N))
    r = torch.cat([_dist(xq[b:b + step], x[b:b + step]).masked_fill(~valid[b:b + step].unsqueeze(1), float("inf"))
                   .topk(kk, dim=-1, largest=False, sorted=True).values[..., -1] for b in range(0, B, step)])
    return r.median(dim=1).values * 1.5  # self is among the kk nearest at distance 0


def _grid_pass(x: Tensor, valid: Tensor, lo: Tensor, extent: Tensor, side: Tensor, want: Tensor, k: int,
               loop: bool, group: int, max_elements: int) -> tuple[Tensor, Tensor]:
    """One grid search at cell side ``side (B,)`` for the flat queries where ``want (B*N,)``.

    Returns ``(nbr (B*N, k), exact (B*N,))``, meaningful where ``want``. The queries of a cell are
    taken ``group`` at a time: a group shares its cell's candidate list, so the candidate
    positions are built per group and the distances form ``(groups, group, candidates)`` blocks.
    """
    B, N, D = x.shape
    dev, Q = x.device, B * N
    cap = 2.0 ** ((62 - max(1, B).bit_length()) // D)  # cells per axis: keys fit in int64
    side = torch.maximum(side, extent.amax(1) / cap)
    side = torch.where(side > 0, side, 1.0)  # all points equal: one cell
    dims = (extent / side.unsqueeze(-1)).floor().long() + 1  # (B, D) cells per axis
    stride = torch.ones(B, D, dtype=torch.long, device=dev)
    for a in range(D - 2, -1, -1):
        stride[:, a] = stride[:, a + 1] * dims[:, a + 1]
    cells_per_set = int((stride[:, 0] * dims[:, 0]).max())
    cell = ((x - lo.unsqueeze(1)) / side.view(B, 1, 1)).floor().long()
    cell = torch.minimum(cell.clamp(min=0), dims.unsqueeze(1) - 1)
    key = (cell * stride.unsqueeze(1)).sum(-1) + torch.arange(B, device=dev).view(B, 1) * cells_per_set
    key = torch.where(valid, key, B * cells_per_set).reshape(-1)  # padded points: a cell nobody reads
    sorted_key, order = key.sort()
    inf = torch.full((1,), float("inf"), device=dev, dtype=x.dtype)
    inf = inf.expand(1, D)
    xs = torch.cat([x.reshape(Q, D)[order], inf])  # sorted coordinates + an inf row
    local = torch.cat([order.remainder(N), order.new_full((1,), N)])
    order = torch.cat([order, order.new_full((1,), Q)])
    want_s = torch.cat([want[order[:-1]], want.new_zeros(1)])

    # occupied cells holding wanted queries, cut into groups of `group` queries
    ckey, occ = torch.unique_consecutive(sorted_key, return_counts=True)
    cstart = occ.cumsum(0) - occ
    need = torch.zeros(ckey.shape[0], dtype=torch.long, device=dev).index_add_(
        0, torch.repeat_interleave(torch.arange(ckey.shape[0], device=dev), occ), want_s[:-1].long()) > 0
    ckey, occ, cstart = ckey[need], occ[need], cstart[need]
    cb = ckey // cells_per_set
    cid = ckey - cb * cells_per_set
    ccell = (cid.unsqueeze(-1) // stride[cb]) % dims[cb]  # (C, D)

    # a cell's candidates: 3^(D-1) runs of sorted points (offsets on the leading axes, 3 cells on the last)
    offs = (torch.cartesian_prod(*[torch.arange(-1, 2, device=dev)] * (D - 1)).view(-1, D - 1) if D > 1
            else torch.zeros(1, 0, dtype=torch.long, device=dev))
    nb = ccell.unsqueeze(1)[..., :-1] + offs  # (C, R, D-1)
    inside = ((nb >= 0) & (nb < dims[cb].unsqueeze(1)[..., :-1])).all(-1)
    lead = (nb * stride[cb].unsqueeze(1)[..., :-1]).sum(-1) + (cb * cells_per_set).unsqueeze(-1)
    last = ccell[:, -1:]
    first = lead + (last - 1).clamp(min=0)
    final = lead + torch.minimum(last + 1, dims[cb, -1:] - 1)
    start = torch.searchsorted(sorted_key, first)
    count = torch.where(inside, torch.searchsorted(sorted_key, final, right=True) - start, 0)  # (C, R)
    total = count.sum(-1)
    # every cell's candidates, flat: cell c's are at coff[c] : coff[c] + total[c]; an inf slot at the end
    cnt = count.reshape(-1)
    run_id = torch.repeat_interleave(torch.arange(cnt.shape[0], device=dev), cnt)
    flat = torch.arange(run_id.shape[0], device=dev) - (cnt.cumsum(0) - cnt)[run_id] + start.reshape(-1)[run_id]
    flat = torch.cat([flat, flat.new_full((1,), Q)])
    cx = xs[flat]
    cl = local[flat]
    coff = total.cumsum(0) - total
    done_all = total == valid.sum(1)[cb]  # every real point of the set is a candidate
    guard = (side * _GUARD)[cb]

    ng = (occ + group - 1) // group
    gcell = torch.repeat_interleave(torch.arange(occ.shape[0], device=dev), ng)  # group -> cell
    gfirst = (torch.arange(gcell.shape[0], device=dev) - (ng.cumsum(0) - ng)[gcell]) * group  # within the cell
    j = torch.arange(group, device=dev)
    qpos_all = torch.where(gfirst.unsqueeze(-1) + j < occ[gcell].unsqueeze(-1),
                           cstart[gcell].unsqueeze(-1) + gfirst.unsqueeze(-1) + j, Q)  # (G, group) sorted positions

    kk = k if loop else k + 1
    nbr = torch.empty(Q + 1, k, dtype=torch.long, device=dev)
    exact = torch.zeros(Q + 1, dtype=torch.bool, device=dev)
    gorder = total[gcell].argsort()
    tsorted = total[gcell[gorder]]
    g0, G = 0, gcell.shape[0]
    while g0 < G:  # blocks of groups of similar candidate counts, <= max_elements distances each
        g1 = min(G, g0 + max(1, max_elements // (group * max(int(tsorted[g0]), kk))))
        width = max(int(tsorted[g1 - 1]), kk + 1)
        g1 = min(g1, g0 + max(1, max_elements // (group * width)))
        c = gcell[gorder[g0:g1]]  # (n,) cell of each group
        t = torch.arange(width, device=dev)
        at = torch.where(t < total[c].unsqueeze(-1), coff[c].unsqueeze(-1) + t, flat.shape[0] - 1)  # (n, width)
        qpos = qpos_all[gorder[g0:g1]]  # (n, group)
        d2 = _dist(xs[qpos], cx[at])  # (n, group, width)
        own = local[qpos]  # (n, group); padding rows: N
        val, idx = _smallest(d2, cl[at].unsqueeze(1).expand_as(d2), kk, skip=qpos == Q)
        if not loop:
            val, idx = _drop_self(val, idx, own, k)
        q = order[qpos]  # flat query indices (Q = padding)
        nbr[q] = torch.where(val < float("inf"), idx, own.unsqueeze(-1))
        exact[q] = (val[..., -1] < guard[c].unsqueeze(-1)) | done_all[c].unsqueeze(-1)
        g0 = g1
    return nbr[:-1], exact[:-1]


def grid_knn(x: Tensor, k: int, mask: Optional[Tensor] = None, loop: bool = False, group: int = 4,
             max_elements: int = MAX_ELEMENTS) -> Tensor:
    r"""Exact kNN through uniform grids per set (``D <= 3``): ``O(N k)`` work for evenly spread sets.

    The first grid's cell side is 1.2 x the largest ``k``-th neighbour distance among 16 sampled
    points of the set; queries whose answer is not provably exact are searched again on a grid
    of twice the side, until the searched block holds the whole set.

    Args:
        x: ``(B, N, D)`` points, ``1 <= D <= 3`` (distances in float32).
        k: neighbours per point, ``1 <= k < N`` (``<= N`` with ``loop``).
        mask: ``(B, N)`` bool, True = a point; padded points are never neighbours.
        loop: whether a point is its own neighbour.
        group: queries of one cell that share a distance block.
        max_elements: candidate pairs per transient block.

    Returns:
        ``(B, N, k)`` long, nearest first, ties by the smaller index; equal to :func:`brute_knn`.
    """
    _check(x, k, mask, loop)
    B, N, D = x.shape
    if not 1 <= D <= 3:
        raise ValueError(f"grid_knn needs 1 <= D <= 3 coordinates; got D={D} (use brute_knn)")
    dev = x.device
    with torch.no_grad():
        x = x.detach()
        valid = torch.ones(B, N, dtype=torch.bool, device=dev) if mask is None else mask
        big = torch.finfo(torch.float32).max
        lo = torch.where(valid.unsqueeze(-1), x, big).amin(1)  # (B, D)
        hi = torch.where(valid.unsqueeze(-1), x, -big).amax(1)
        some = valid.any(1, keepdim=True)
        lo, extent = torch.where(some, lo, 0.0), torch.where(some, hi - lo, 0.0)
        side = _first_side(x, valid, k, loop, max_elements)
        side = torch.where(torch.isfinite(side), side, extent.amax(1))  # fewer than k + 1 points: one pass
        side = torch.maximum(side, extent.amax(1) * 2.0 ** -20)  # many duplicates: a median of 0
        side = torch.where(side > 0, side, 1.0)  # all points equal: one cell
        out = torch.arange(N, device=dev).repeat(B).unsqueeze(-1).repeat(1, k)  # padded queries: self
        want = valid.reshape(-1).clone()
        while bool(want.any()):
            nbr, exact = _grid_pass(x, valid, lo, extent, side, want, k, loop, group, max_elements)
            done = want & exact
            out[done] = nbr[done]
            want &= ~exact
            side = side * 2.0
        return out.view(B, N, k)


def _window_pass(xs: Tensor, ks: Tensor, order: Tensor, n_real: Tensor, pb: Tensor, pj: Tensor, width: int, k: int,
                 loop: bool, block: int, max_elements: int) -> tuple[Tensor, Tensor, Tensor]:
    """One sorted-window search of the query blocks ``(pb, pj)`` (set, block number) at ``width``.

    Returns ``(flat, nbr, exact, pos)``, ``(P, block)`` each (``nbr`` with ``k`` more): the
    queries' flat indices ``b * N + i`` (``-1`` for positions past the set's real points), their
    neighbours, whether the answer is proven exact, and their sorted positions.
    """
    B, N, D = xs.shape
    dev = xs.device
    kk = k if loop else k + 1
    start = (pj * block + block // 2 - width // 2).clamp(min=0)
    start = torch.minimum(start, (n_real[pb] - width).clamp(min=0))
    tw, tb = torch.arange(width, device=dev), torch.arange(block, device=dev)
    flat_all, nbr_all, exact_all, pos_all = [], [], [], []
    step = max(1, max_elements // (block * width))
    for p0 in range(0, pb.shape[0], step):
        b, s, j = pb[p0:p0 + step], start[p0:p0 + step], pj[p0:p0 + step]
        nr = n_real[b].unsqueeze(-1)
        cpos = s.unsqueeze(-1) + tw  # (n, W) a contiguous run of the sorted points
        cval, cpos = cpos < nr, cpos.clamp(max=N - 1)
        qpos = j.unsqueeze(-1) * block + tb  # (n, block)
        qval, qpos = qpos < nr, qpos.clamp(max=N - 1)
        rows = b.unsqueeze(-1)
        d2 = _dist(xs[rows, qpos], xs[rows, cpos]).masked_fill(~cval.unsqueeze(1), float("inf"))
        own = order[rows, qpos]
        val, idx = _smallest(d2, order[rows, cpos].unsqueeze(1).expand_as(d2), kk, skip=~qval)
        # every point left of the window has a key <= ks[s - 1], every point right of it >= ks[s + W]:
        # it is farther than the key gap, so a k-th distance below the gap is exact
        qk = ks[rows, qpos]
        left = torch.where(s > 0, ks[b, (s - 1).clamp(min=0)], float("-inf"))
        e = s + width
        right = torch.where(e < n_real[b], ks[b, e.clamp(max=N - 1)], float("inf"))
        gap = torch.minimum(qk - left.unsqueeze(-1), right.unsqueeze(-1) - qk)
        exact = torch.isinf(gap) | (val[..., -1] < gap * _GUARD)
        if not loop:
            val, idx = _drop_self(val, idx, own, k)
        flat_all.append(torch.where(qval, rows * N + own, -1))
        nbr_all.append(torch.where(val < float("inf"), idx, own.unsqueeze(-1)))
        exact_all.append(exact & qval)
        pos_all.append(qpos)
    return torch.cat(flat_all), torch.cat(nbr_all), torch.cat(exact_all), torch.cat(pos_all)


def window_knn(x: Tensor, k: int, mask: Optional[Tensor] = None, loop: bool = False, width: Optional[int] = None,
               block: int = 64, max_elements: int = MAX_ELEMENTS) -> Tensor:
    r"""Exact kNN from sorted windows: ``O(N W)`` work per set for a window of ``W`` points.

    Each set's real points are sorted along its axis of largest extent; the queries are taken
    ``block`` consecutive sorted points at a time and compared with the ``width`` sorted points
    centred on their block (one dense distance block, shared). Every point outside the window
    lies beyond its first or last key, so a query whose ``k``-th distance is below its key gap
    to the window's edges is exact; each other query is searched again in a window twice as
    wide centred on itself, until it is exact or its window holds the whole set (queries far
    from the sort axis in sparse regions pay most). The result equals
    :func:`brute_knn` (same distances, ties by the smaller index).

    Args:
        x: ``(B, N, D)`` points (any ``D``; the bound uses one axis, so it pays for small ``D``).
        k: neighbours per point, ``1 <= k < N`` (``<= N`` with ``loop``).
        mask: ``(B, N)`` bool, True = a point; padded points are never neighbours.
        loop: whether a point is its own neighbour.
        width: first window (``None``: ``32 k`` in 1-2-D, ``64 k`` above); at least ``block``.
        block: queries that share a window.
        max_elements: candidate pairs per transient block.

    Returns:
        ``(B, N, k)`` long, nearest first, ties by the smaller index.
    """
    _check(x, k, mask, loop)
    B, N, D = x.shape
    dev = x.device
    with torch.no_grad():
        x = x.detach()
        valid = torch.ones(B, N, dtype=torch.bool, device=dev) if mask is None else mask
        n_real = valid.sum(1)
        big = torch.finfo(x.dtype).max
        extent = (torch.where(valid.unsqueeze(-1), x, -big).amax(1) - torch.where(valid.unsqueeze(-1), x, big).amin(1))
        axis = extent.argmax(1)  # (B,)
        key = x.gather(2, axis.view(B, 1, 1).expand(B, N, 1)).squeeze(-1)
        key = torch.where(valid, key, float("inf"))  # padded points last
        ks, order = key.sort(dim=1, stable=True)
        xs = x.gather(1, order.unsqueeze(-1).expand(B, N, D))
        block = max(1, min(int(block), N))
        width = (32 if D <= 2 else 64) * k if width is None else int(width)
        width = min(max(width, block, k + 1), N)
        out = torch.arange(N, device=dev).repeat(B).unsqueeze(-1).repeat(1, k)  # padded queries: self
        nblk = (n_real + block - 1) // block
        pb = torch.repeat_interleave(torch.arange(B, device=dev), nblk)
        pj = torch.arange(pb.shape[0], device=dev) - (nblk.cumsum(0) - nblk)[pb]
        while pb.numel():
            flat, nbr, exact, pos = _window_pass(xs, ks, order, n_real, pb, pj, width, k, loop, block, max_elements)
            out[flat[exact]] = nbr[exact]
            retry = (flat >= 0) & ~exact  # searched again one by one, each in a window centred on itself
            pb, pj = pb.unsqueeze(-1).expand_as(retry)[retry], pos[retry]
            block, width = 1, min(2 * width, N)
        return out.view(B, N, k)


#: how :func:`nearest_neighbors` orders neighbours at equal distance: ``"index"`` (the smaller point
#: index first; depends on the order of the points) or ``"coordinates"`` (the lexicographically smaller
#: point first, then the smaller index: only exact duplicates are told apart by their index, so
#: permuting a set permutes its neighbour table, up to swapping duplicates, which are the same point)
TIES = ("index", "coordinates")


def lexicographic_order(x: Tensor) -> Tensor:
    """``(B, N)`` indices putting the points of each set of ``x`` ``(B, N, D)`` in lexicographic order of
    their coordinates (equal points keep their order): one stable sort per coordinate, last to first."""
    order = torch.arange(x.shape[1], device=x.device).expand(x.shape[0], -1)
    for c in range(x.shape[-1] - 1, -1, -1):
        order = order.gather(1, x[..., c].gather(1, order).argsort(dim=1, stable=True))
    return order


def nearest_neighbors(x: Tensor, k: int, mask: Optional[Tensor] = None, loop: bool = False,
                      max_elements: int = MAX_ELEMENTS, ties: str = "index") -> Tensor:
    r"""Exact kNN of every point of every set: sorted windows (:func:`window_knn`) for 1-2
    coordinates above ``WINDOW_MIN_POINTS`` points, the grid (:func:`grid_knn`) for 3 above
    ``GRID_MIN_POINTS``, all pairs (:func:`brute_knn`) otherwise.

    With ``ties="coordinates"`` the search runs on the points in :func:`lexicographic_order`, so
    "the smaller index" among points at equal distance becomes "the lexicographically smaller
    point" (see :data:`TIES`); without ties the result is the same as with ``"index"``.

    Args:
        x: ``(B, N, D)`` points.
        k: neighbours per point, ``1 <= k < N`` (``<= N`` with ``loop``).
        mask: ``(B, N)`` bool, True = a point; padded points are never neighbours, and a row
            with fewer than ``k`` admissible neighbours is completed with the query's own index.
        loop: whether a point is its own neighbour.
        max_elements: candidate pairs per transient block (memory ``O(max_elements + N k)``).
        ties: ``"index"`` or ``"coordinates"``, the order of neighbours at equal distance (:data:`TIES`).

    Returns:
        ``(B, N, k)`` long, nearest first, ties by the smaller index (or point, ``ties="coordinates"``).

    Example:
        >>> x = torch.tensor([[[0.0, 0.0], [3.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])
        >>> nearest_neighbors(x, 2)[0].tolist()
        [[2, 3], [2, 0], [0, 3], [0, 2]]
        >>> nearest_neighbors(x, 2, ties="coordinates")[0].tolist()  # points 2 and 3 tie for point 0: (0, 1) < (1, 0)
        [[3, 2], [2, 0], [0, 3], [0, 2]]
    """
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}")
    if ties == "coordinates":
        _check(x, k, mask, loop)
        B, N, _ = x.shape
        x = x.detach()
        order = lexicographic_order(x)
        xs = x.gather(1, order.unsqueeze(-1).expand_as(x))
        nbr = nearest_neighbors(xs, k, None if mask is None else mask.gather(1, order), loop, max_elements)
        nbr = order.gather(1, nbr.reshape(B, -1)).view(B, N, -1)  # sorted positions -> point indices
        return torch.empty_like(nbr).scatter_(1, order.unsqueeze(-1).expand_as(nbr), nbr)  # rows back in place
    if x.dim() == 3 and 1 <= x.shape[-1] <= 2 and x.shape[1] > WINDOW_MIN_POINTS:
        return window_knn(x, k, mask=mask, loop=loop, block=32, max_elements=max_elements)
    if x.dim() == 3 and x.shape[-1] == 3 and x.shape[1] > GRID_MIN_POINTS:
        return grid_knn(x, k, mask=mask, loop=loop, max_elements=max_elements)
    return brute_knn(x, k, mask=mask, loop=loop, max_elements=max_elements)
