"""Exact grid kNN (setflow.nn.neighbors) against an independent all-pairs reference."""

import pytest
import torch

import setflow.nn.neighbors as nbm
from setflow.nn.knn import knn_neighbors
from setflow.nn.neighbors import brute_knn, grid_knn, nearest_neighbors


def reference(x, k, mask=None, loop=False):
    """All distances, a stable sort (ties -> smaller index); rows short of k real neighbours padded with self."""
    B, N, _ = x.shape
    d = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")
    if mask is not None:
        d = d.masked_fill(~mask[:, None, :], float("inf"))
    if not loop:
        d = d.masked_fill(torch.eye(N, dtype=torch.bool), float("inf"))
    val, idx = d.sort(dim=-1, stable=True)
    own = torch.arange(N).view(1, N, 1).expand(B, N, k)
    out = torch.where(val[..., :k] < float("inf"), idx[..., :k], own)
    if mask is not None:
        out = torch.where(mask[..., None], out, own)
    return out


def clustered(B, N, D, gen):
    """Tight clusters of very different spreads plus far outliers: several grid passes."""
    centres = torch.randn(B, 4, D, generator=gen) * 5
    spread = torch.tensor([1e-2, 0.03, 0.3, 1.0])[torch.randint(0, 4, (B, N), generator=gen)]
    x = centres[torch.arange(B)[:, None], torch.randint(0, 4, (B, N), generator=gen)]
    x = x + torch.randn(B, N, D, generator=gen) * spread[..., None]
    x[:, :3] = torch.randn(B, 3, D, generator=gen) * 20
    return x


@pytest.mark.parametrize("D", [1, 2, 3])
@pytest.mark.parametrize("kind", ["uniform", "gaussian", "clustered", "lattice"])
@pytest.mark.parametrize("loop", [False, True])
def test_grid_equals_brute_force(D, kind, loop):
    gen = torch.Generator().manual_seed(D * 10 + len(kind))
    B, N, k = 2, 200, 8
    if kind == "uniform":
        x = torch.rand(B, N, D, generator=gen)
    elif kind == "gaussian":
        x = torch.randn(B, N, D, generator=gen)
    elif kind == "clustered":
        x = clustered(B, N, D, gen)
    else:  # duplicates and equal distances everywhere
        x = torch.randint(0, 4, (B, N, D), generator=gen).float()
    ref = reference(x, k, loop=loop)
    assert torch.equal(grid_knn(x, k, loop=loop), ref)
    assert torch.equal(brute_knn(x, k, loop=loop), ref)
    assert torch.equal(nearest_neighbors(x, k, loop=loop), ref)


def test_surface_points_float64_and_knn_neighbors():
    gen = torch.Generator().manual_seed(3)
    v = torch.randn(2, 1500, 3, generator=gen, dtype=torch.float64)
    x = v / v.norm(dim=-1, keepdim=True)  # points on a sphere (the 3-D data's case)
    ref = reference(x, 10)
    assert torch.equal(grid_knn(x, 10), ref)
    assert torch.equal(knn_neighbors(x, 10), ref)  # > GRID_MIN_POINTS: the grid route
    assert torch.equal(knn_neighbors(x.float(), 10, chunk=64), reference(x.float(), 10))


def test_mask_padding_never_a_neighbour():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(4, 120, 3, generator=gen)
    mask = torch.ones(4, 120, dtype=torch.bool)
    mask[0, 50:] = False  # 50 real points
    mask[1, ::3] = False  # holes
    mask[2, 5:] = False  # 5 real points < k: rows completed with self
    x[~mask] = 0.0  # padding sits on top of real points: must still be ignored
    got = grid_knn(x, 8, mask=mask)
    assert torch.equal(got, reference(x, 8, mask=mask))
    assert torch.equal(brute_knn(x, 8, mask=mask), got)
    real_nbr = torch.gather(mask, 1, got.reshape(4, -1)).view(4, 120, 8)
    own = torch.arange(120).view(1, 120, 1)
    assert (real_nbr | (got == own)).all()  # a neighbour is a real point, or the row's filler (self)
    assert torch.equal(got[2, :5, 4:], own[0, :5].expand(5, 4))  # 4 real others, then self
    assert torch.equal(got[3], reference(x[3:], 8)[0])  # a full set is unaffected by its neighbours' masks


def test_small_sets_and_errors():
    x = torch.rand(2, 9, 3)
    assert torch.equal(grid_knn(x, 8), reference(x, 8))  # N = k + 1: every other point
    assert torch.equal(grid_knn(x, 9, loop=True), reference(x, 9, loop=True))
    one = torch.zeros(1, 1, 2)
    assert torch.equal(grid_knn(one, 1, loop=True), torch.zeros(1, 1, 1, dtype=torch.long))
    same = torch.ones(1, 20, 3)  # all points equal: ties by index
    assert torch.equal(grid_knn(same, 4), reference(same, 4))
    with pytest.raises(ValueError, match="k=9 neighbours is impossible"):
        grid_knn(x, 9)
    with pytest.raises(ValueError, match="D=4"):
        grid_knn(torch.rand(1, 10, 4), 2)
    x4 = torch.rand(2, 30, 4)
    assert torch.equal(nearest_neighbors(x4, 3), reference(x4, 3))  # D > 3: all pairs
    with pytest.raises(ValueError, match="bool mask"):
        grid_knn(x, 2, mask=torch.ones(2, 9))
    with pytest.raises(ValueError, match="floating-point"):
        grid_knn(torch.ones(1, 5, 3, dtype=torch.long), 2)


def test_work_per_point_is_flat_and_blocks_are_bounded(monkeypatch):
    """Distances evaluated per point stay flat from 1k to 4k points; no block exceeds max_elements."""
    seen = []
    real = nbm._dist

    def counting(q, c):
        out = real(q, c)
        seen.append(out.numel())
        return out

    monkeypatch.setattr(nbm, "_dist", counting)
    gen = torch.Generator().manual_seed(0)
    per_point = {}
    for n in (1024, 4096):
        v = torch.randn(2, n, 3, generator=gen)
        x = v / v.norm(dim=-1, keepdim=True)
        seen.clear()
        got = grid_knn(x, 8, max_elements=1 << 16)
        assert max(seen) <= 1 << 16
        per_point[n] = sum(seen) / (2 * n)
        if n == 1024:
            assert torch.equal(got, reference(x, 8))
    assert per_point[4096] <= 1.5 * per_point[1024], per_point
    assert per_point[4096] < 0.1 * 4096  # far from all pairs


@pytest.mark.parametrize("D", [1, 2, 3, 4])
@pytest.mark.parametrize("kind", ["uniform", "gaussian", "clustered", "lattice"])
def test_window_equals_brute_force(D, kind):
    gen = torch.Generator().manual_seed(D * 7 + len(kind))
    B, N, k = 3, 300, 8
    x = {"uniform": lambda: torch.rand(B, N, D, generator=gen),
         "gaussian": lambda: torch.randn(B, N, D, generator=gen),
         "clustered": lambda: clustered(B, N, D, gen),
         "lattice": lambda: torch.randint(0, 4, (B, N, D), generator=gen).float()}[kind]()
    mask = torch.rand(B, N, generator=gen) < 0.7
    mask[0] = True
    mask[2, 12:] = False  # a set of 12 points: narrower than any window
    for loop in (False, True):
        ref, ref_m = reference(x, k, loop=loop), reference(x, k, mask=mask, loop=loop)
        garbage = torch.where(mask[..., None], x, torch.tensor(float("nan")))  # padding holds NaNs
        for width, block, elems in ((None, 64, nbm.MAX_ELEMENTS), (9, 1, nbm.MAX_ELEMENTS), (24, 16, 2000)):
            assert torch.equal(nbm.window_knn(x, k, loop=loop, width=width, block=block, max_elements=elems), ref)
            assert torch.equal(nbm.window_knn(garbage, k, mask=mask, loop=loop, width=width, block=block,
                                              max_elements=elems), ref_m)


def test_window_route_and_work_per_point(monkeypatch):
    """1-2-D sets above WINDOW_MIN_POINTS take the sorted windows; their distances per point grow far
    slower than N (all pairs: 4x from 1k to 4k points)."""
    calls, seen = [], []
    real_window, real_dist = nbm.window_knn, nbm._dist
    monkeypatch.setattr(nbm, "window_knn", lambda *a, **kw: calls.append(a[0].shape) or real_window(*a, **kw))
    monkeypatch.setattr(nbm, "_dist", lambda q, c: seen.append(q.shape[:-1].numel() * c.shape[-2]) or real_dist(q, c))
    gen = torch.Generator().manual_seed(2)
    per_point = {}
    for n in (1024, 4096):
        x = torch.randn(2, n, 2, generator=gen)
        seen.clear()
        assert torch.equal(nearest_neighbors(x, 8), reference(x, 8))
        per_point[n] = sum(seen) / (2 * n)
    assert len(calls) == 2 and per_point[4096] <= 2.0 * per_point[1024], per_point
    assert per_point[4096] < 0.15 * 4096  # far from all pairs
    nearest_neighbors(torch.randn(1, nbm.WINDOW_MIN_POINTS, 2), 4)  # at the threshold: all pairs
    assert len(calls) == 2


def reference_by_coordinates(x, k, mask=None):
    """All distances; ties by the lexicographically smaller point, then the smaller index (loop=False)."""
    B, N, D = x.shape
    d = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")
    if mask is not None:
        d = d.masked_fill(~mask[:, None, :], float("inf"))
    d = d.masked_fill(torch.eye(N, dtype=torch.bool), float("inf"))
    order = torch.arange(N).expand(B, N, N)  # per row: stable sorts from the last criterion to the first
    for key in [x[..., c] for c in reversed(range(D))] + [None]:
        v = (d.gather(-1, order) if key is None else key[:, None, :].expand(B, N, N).gather(-1, order))
        order = order.gather(-1, v.argsort(dim=-1, stable=True))
    val = d.gather(-1, order)[..., :k]
    own = torch.arange(N).view(1, N, 1).expand(B, N, k)
    out = torch.where(val < float("inf"), order[..., :k], own)
    return out if mask is None else torch.where(mask[..., None], out, own)


@pytest.mark.parametrize("D, N", [(2, 60), (2, 500), (3, 1100)])  # all pairs, sorted windows, grid
def test_ties_by_coordinates_are_permutation_equivariant(D, N):
    gen = torch.Generator().manual_seed(N)
    x = torch.randint(0, 4 if N < 100 else 9, (2, N, D), generator=gen).double()  # duplicates and equal distances
    mask = torch.rand(2, N, generator=gen) < 0.8
    mask[0] = True
    k = 6
    got = nearest_neighbors(x, k, ties="coordinates")
    assert torch.equal(got, reference_by_coordinates(x, k))
    assert torch.equal(nearest_neighbors(x, k, mask=mask, ties="coordinates"), reference_by_coordinates(x, k, mask))
    assert not torch.equal(got, nearest_neighbors(x, k))  # the index rule picks others on this grid
    perm = torch.randperm(N, generator=gen)
    gp = nearest_neighbors(x[:, perm], k, ties="coordinates")
    coords = lambda pts, nbr: pts.gather(1, nbr.reshape(2, -1, 1).expand(-1, -1, D)).view(2, N, k, D)
    assert torch.equal(coords(x[:, perm], gp), coords(x, got)[:, perm])  # the same neighbours (duplicates alike)
    smooth = torch.randn(2, N, D, generator=gen, dtype=torch.float64)  # no ties: the same as by index
    assert torch.equal(nearest_neighbors(smooth, k, ties="coordinates"), nearest_neighbors(smooth, k))
    with pytest.raises(ValueError, match="ties must be one of"):
        nearest_neighbors(x, k, ties="random")
