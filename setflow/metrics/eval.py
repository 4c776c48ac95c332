"""Sample-quality metrics of generated sets against reference sets (PointFlow's definitions).

For a distance ``d`` (Chamfer or EMD), generated sets ``S_g`` and reference sets ``S_r``:

- ``MMD = mean over Y in S_r of min over X in S_g of d(X, Y)`` (lower is better);
- ``COV = |{argmin over Y in S_r of d(X, Y) : X in S_g}| / |S_r|`` (higher is better);
- ``1-NNA``: leave-one-out 1-nearest-neighbour classification of ``S_g u S_r`` into generated
  vs reference; accuracy (50% is ideal for equal sizes; 100% means fully separable);
- ``JSD``: Jensen-Shannon divergence (bits) between the voxel-occupancy marginals of the two
  collections: each set marks the cells of a ``resolution^D`` grid it touches (once per set),
  the counts are normalised to distributions (PointFlow uses it for 3-D clouds).

Sets of different sizes (a :class:`~setflow.sets.SetBatch` with padding) are compared under CD
only: between sets of different sizes EMD needs an unbalanced (partial) transport, a different
distance from the equal-size EMD the papers report.

Every metric needs only nearest neighbours. Chamfer distances are computed densely (cheap,
chunked). EMD is exact: candidates are visited in order of the lower bound
of :func:`~setflow.metrics.distances.pairwise_chamfer` (nearest-point and sliced bounds) and an exact
assignment is solved only while the bound is below the best distance found so far, so the
nearest neighbours and their distances are those of the dense exact matrix.

Example::

    >>> from setflow.metrics import sample_metrics
    >>> res = sample_metrics(generated, reference)           # doctest: +SKIP
    >>> res["cd"]["1nna"], res["emd"]["cov"]                 # doctest: +SKIP
"""

from __future__ import annotations

from functools import cached_property
from typing import Optional, Sequence

import torch
from torch import Tensor

from setflow.registry import METRICS, register_metric
from setflow.sets import SetBatch

from .distances import DEFAULT_BLOCK_ELEMS, _one_size, _progress, check_set_batch, emd_pairs, pairwise_chamfer

__all__ = ["sample_metrics", "mmd_cov", "one_nna", "nearest_emd", "pairwise_emd", "voxel_jsd",
           "format_sample_metrics", "METRICS", "SetPairs", "DEFAULT_METRICS"]

#: the distances :func:`sample_metrics` reports by default (every metric in :data:`METRICS` can be asked for)
DEFAULT_METRICS = ("cd", "emd")


def mmd_cov(d_gr: Tensor) -> tuple[float, float]:
    """``(MMD, COV)`` from a generated x reference distance matrix ``(G, R)``."""
    mmd = d_gr.min(0).values.double().mean().item()
    cov = d_gr.argmin(1).unique().numel() / d_gr.shape[1]
    return mmd, cov


def _nna_from_nn(nn_idx: Tensor, num_gen: int) -> float:
    is_ref = torch.arange(nn_idx.numel()) >= num_gen
    return (is_ref[nn_idx] == is_ref).double().mean().item()


def one_nna(d_uu: Tensor, num_gen: int) -> float:
    """Leave-one-out 1-NN accuracy from the union distance matrix (generated first, then reference)."""
    d = d_uu.clone()
    d.fill_diagonal_(float("inf"))
    return _nna_from_nn(d.argmin(1), num_gen)


class _EMDCache:
    """Exact EMD between sets of one collection ``u`` (K, N, D), computed once per unordered pair."""

    def __init__(self, u: Tensor) -> None:
        self.u = u
        self.k = u.shape[0]
        self.known: dict[int, float] = {}
        self.solved = 0

    def __call__(self, i: Tensor, j: Tensor) -> Tensor:
        key = (torch.minimum(i, j) * self.k + torch.maximum(i, j)).tolist()
        todo = sorted({q for q in key if q not in self.known})
        if todo:
            t = torch.tensor(todo)
            vals = emd_pairs(self.u, self.u, t // self.k, t % self.k)
            self.known.update(zip(todo, vals.tolist()))
            self.solved += len(todo)
        return torch.tensor([self.known[q] for q in key], dtype=torch.float64)


def nearest_emd(lb: Tensor, oracle, queries: Tensor, candidates: Tensor, block: int = 4) -> tuple[Tensor, Tensor]:
    """Exact EMD nearest neighbours with lower-bound pruning.

    Args:
        lb: ``(Q, C)`` lower bounds of ``EMD(queries[q], candidates[c])``; ``inf`` excludes a pair.
        oracle: ``(i, j) -> exact EMD`` of index tensors (e.g. :class:`_EMDCache`).
        queries, candidates: index tensors passed to ``oracle``.
        block: candidates tried per query per round.

    Returns:
        ``(dist, arg)``: ``(Q,)`` float64 nearest distances and the candidate positions (``-1`` if none).
    """
    q_n, c_n = lb.shape
    lb = lb.double()
    lbs, order = lb.sort(1)
    best = torch.full((q_n,), float("inf"), dtype=torch.float64)
    arg = torch.full((q_n,), -1, dtype=torch.long)
    active = torch.arange(q_n)
    pos = 0
    while active.numel() and pos < c_n:
        cand = order[active, pos:pos + block]
        need = lbs[active, pos:pos + block] < best[active, None]
        dmat = torch.full(cand.shape, float("inf"), dtype=torch.float64)
        if bool(need.any()):
            qq = active[:, None].expand_as(cand)[need]
            dmat[need] = oracle(queries[qq], candidates[cand[need]])
        m, k = dmat.min(1)
        better = m < best[active]
        best[active[better]] = m[better]
        arg[active[better]] = cand[better, k[better]]
        pos += block
        if pos < c_n:
            active = active[lbs[active, pos] < best[active]]
    return best, arg


def pairwise_emd(a: Tensor, b: Tensor, pairs_per_block: int = 4096) -> Tensor:
    """Dense exact EMD matrix ``(A, B)`` (every pair solved; for checks and small collections)."""
    a, b = _one_size(a, "a"), _one_size(b, "b")
    ia = torch.arange(a.shape[0]).repeat_interleave(b.shape[0])
    ib = torch.arange(b.shape[0]).repeat(a.shape[0])
    return emd_pairs(a, b, ia, ib, pairs_per_block).view(a.shape[0], b.shape[0])


def voxel_jsd(gen: Tensor | SetBatch, ref: Tensor | SetBatch, resolution: int = 28,
              bounds: Optional[tuple[float, float]] = None) -> float:
    """JSD (bits) between voxel-occupancy marginals of two collections of sets ``(B, N, D)``
    (tensors or :class:`~setflow.sets.SetBatch` values: only real points mark cells).

    The grid spans ``bounds`` (default: the reference points' min and max over all
    coordinates) with ``resolution`` cells per axis; points outside are clamped to the border.
    """
    sg, sr = check_set_batch(gen, "gen"), check_set_batch(ref, "ref")
    gen, ref = sg.points, sr.points
    if gen.shape[2] != ref.shape[2]:
        raise ValueError(f"gen and ref must have the same point dimension, got {gen.shape[2]} and {ref.shape[2]}")
    lo, hi = (ref[sr.mask].min().item(), ref[sr.mask].max().item()) if bounds is None else bounds
    if not hi > lo:
        raise ValueError(f"bounds must satisfy lo < hi, got ({lo}, {hi})")
    d = gen.shape[2]
    cells = resolution ** d
    radix = resolution ** torch.arange(d - 1, -1, -1)

    def occupancy(x: Tensor, mask: Tensor) -> Tensor:
        v = ((x.double() - lo) / (hi - lo) * resolution).floor().long().clamp_(0, resolution - 1)
        flat = (v * radix).sum(-1) + torch.arange(x.shape[0])[:, None] * cells  # (B, N), per-set offset
        return torch.bincount(flat[mask].unique() % cells, minlength=cells).double()

    p, q = occupancy(gen, sg.mask), occupancy(ref, sr.mask)
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)

    def kl(a: Tensor) -> Tensor:
        nz = a > 0
        return (a[nz] * (a[nz] / m[nz]).log2()).sum()

    return (0.5 * (kl(p) + kl(q))).item()


class SetPairs:
    """The generated and reference collections one :func:`sample_metrics` call compares
    (:class:`~setflow.sets.SetBatch` values, generated first), with the Chamfer pass every metric
    shares done once, when a metric first asks for it.

    A metric registered in :data:`~setflow.registry.METRICS` is ``metric(pairs) -> dict`` (MMD, COV
    and 1-NNA under its distance, plus anything else it reports).
    """

    def __init__(self, gen: SetBatch, ref: SetBatch, block_elems: int = DEFAULT_BLOCK_ELEMS,
                 progress: Optional[bool] = None) -> None:
        self.gen, self.ref = gen, ref
        self.num_gen, self.num_ref = len(gen), len(ref)
        self.block_elems, self.progress = block_elems, progress

    @property
    def padded(self) -> bool:
        """Whether either collection holds sets of different sizes (padding under a mask)."""
        return not (self.gen.is_fixed and self.ref.is_fixed)

    @property
    def same_size(self) -> bool:
        """Whether every set of both collections has the same number of points."""
        return not self.padded and self.gen.num_points == self.ref.num_points

    @cached_property
    def union(self) -> Tensor:
        """``(G + R, N, D)``: the generated sets, then the reference sets (one set size only)."""
        return torch.cat([self.gen.points, self.ref.points])

    @cached_property
    def chamfer(self) -> tuple[Tensor, Optional[Tensor]]:
        """``(cd, lb)``: Chamfer distances over the union ``(G + R, G + R)`` (generated first) and, for
        one set size throughout, their lower bound of the EMD (else ``None``)."""
        kw = dict(block_elems=self.block_elems, progress=self.progress)
        if self.padded:  # one padded union (the sets' masks keep the padding out)
            return pairwise_chamfer(SetBatch.cat([self.gen, self.ref]), **kw), None
        if self.same_size:
            return pairwise_chamfer(self.union, lower_bound=True, **kw)
        gen, ref = self.gen.points, self.ref.points  # Chamfer only: the union matrix from its three blocks
        d_gr = pairwise_chamfer(gen, ref, **kw)
        cd = torch.cat([torch.cat([pairwise_chamfer(gen, **kw), d_gr], 1),
                        torch.cat([d_gr.T, pairwise_chamfer(ref, **kw)], 1)])
        return cd, None


@register_metric("cd")
def chamfer_metrics(pairs: SetPairs) -> dict:
    """MMD, COV and 1-NNA under the Chamfer distance (any set sizes)."""
    cd, _ = pairs.chamfer
    g = pairs.num_gen
    mmd, cov = mmd_cov(cd[:g, g:])
    return {"mmd": mmd, "cov": cov, "1nna": one_nna(cd, g)}


def _check_equal_sizes(sg: SetBatch, sr: SetBatch) -> None:
    padded = not (sg.is_fixed and sr.is_fixed)
    if padded or sg.num_points != sr.num_points:
        got = (f"sets of {int(sg.sizes.min())}..{int(sg.sizes.max())} (gen) and {int(sr.sizes.min())}.."
               f"{int(sr.sizes.max())} (ref) points" if padded else f"{sg.num_points} (gen) and {sr.num_points} (ref) points")
        raise ValueError(f"EMD needs equal set sizes, got {got}; compare sets of different sizes with metrics=('cd',)")


@register_metric("emd")
def emd_metrics(pairs: SetPairs) -> dict:
    """MMD, COV and 1-NNA under the exact EMD (equal set sizes), with ``solved``: exact assignments
    solved (candidates are pruned by the Chamfer pass's lower bound)."""
    _check_equal_sizes(pairs.gen, pairs.ref)
    _, lb = pairs.chamfer
    g, r = pairs.num_gen, pairs.num_ref
    oracle = _EMDCache(pairs.union)
    idx_g, idx_r, idx_u = torch.arange(g), torch.arange(g, g + r), torch.arange(g + r)
    res = {}
    for step in _progress(["mmd", "cov", "1nna"], pairs.progress, "emd", big=(g + r) ** 2 > 4e5):
        if step == "mmd":  # each reference set's nearest generated set
            res["mmd"] = nearest_emd(lb[g:, :g], oracle, idx_r, idx_g)[0].mean().item()
        elif step == "cov":  # each generated set's nearest reference set
            arg = nearest_emd(lb[:g, g:], oracle, idx_g, idx_r)[1]
            res["cov"] = arg.unique().numel() / r
        else:
            lbu = lb.clone()
            lbu.fill_diagonal_(float("inf"))
            res["1nna"] = _nna_from_nn(nearest_emd(lbu, oracle, idx_u, idx_u)[1], g)
    res["solved"] = oracle.solved
    return res


def sample_metrics(
    gen,
    ref,
    metrics: Sequence[str] = DEFAULT_METRICS,
    jsd: Optional[bool] = None,
    jsd_resolution: int = 28,
    block_elems: int = DEFAULT_BLOCK_ELEMS,
    progress: Optional[bool] = None,
) -> dict:
    """MMD, COV and 1-NNA of generated sets ``gen`` (G, N, D) against reference sets ``ref`` (R, M, D).

    Args:
        gen, ref: :class:`~setflow.sets.SetBatch` values, tensors or arrays of sets; the argument order
            matters (COV and MMD are asymmetric).
        metrics: names in :data:`~setflow.registry.METRICS`: ``"cd"`` and ``"emd"`` (EMD needs one set
            size throughout: sets of different sizes take ``metrics=("cd",)``), or any registered since.
        jsd: also the voxel-occupancy JSD (default: for 3-D points only).
        block_elems: memory bound of the Chamfer pass (floats per block).
        progress: tqdm bars (``None``: only for long jobs on a terminal).

    Returns:
        ``{"cd": {"mmd", "cov", "1nna"}, "emd": {... , "solved": exact assignments solved},
        "jsd": float (if computed), "num_gen": G, "num_ref": R}``; COV and 1-NNA as fractions. Sets of
        different sizes also give ``"sizes_gen"`` and ``"sizes_ref"``, the mean set sizes.
    """
    sg, sr = check_set_batch(gen, "gen"), check_set_batch(ref, "ref")
    run = [(m, METRICS.get(m)) for m in metrics]  # an unknown name: one line listing the registered metrics
    if sg.dim != sr.dim:
        raise ValueError(f"gen and ref must have the same point dimension, got {sg.dim} and {sr.dim}")
    if "emd" in metrics:  # before any distance is computed
        _check_equal_sizes(sg, sr)
    dtype = torch.promote_types(sg.dtype, sr.dtype)
    pairs = SetPairs(sg.to(dtype), sr.to(dtype), block_elems, progress)
    out: dict = {"num_gen": pairs.num_gen, "num_ref": pairs.num_ref}
    if pairs.padded:
        out.update(sizes_gen=sg.sizes.double().mean().item(), sizes_ref=sr.sizes.double().mean().item())
    for m, metric in run:
        out[m] = metric(pairs)
    if jsd or (jsd is None and sg.dim == 3):
        out["jsd"] = voxel_jsd(sg, sr, resolution=jsd_resolution)
    return out


def format_sample_metrics(res: dict, label: str) -> str:
    """One line: ``label: CD MMD .. COV ..% 1-NNA ..% | EMD ...`` (and JSD when present)."""
    parts = []
    for m in METRICS:  # every registered metric the result holds, in name order
        if m in res:
            v = res[m]
            parts.append(f"{m.upper()} MMD {v['mmd']:.4g} COV {100 * v['cov']:.1f}% 1-NNA {100 * v['1nna']:.1f}%")
    if "jsd" in res:
        parts.append(f"JSD {res['jsd']:.4g}")
    return f"{label}: " + " | ".join(parts) + f"  ({res['num_gen']} vs {res['num_ref']} sets)"
