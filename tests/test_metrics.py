"""Point-set metrics: distances against hand values and brute force, MMD / COV / 1-NNA / JSD behaviour."""

import itertools
import math

import pytest
import torch

from setflow.metrics import (chamfer, emd, format_sample_metrics, pairwise_chamfer, pairwise_emd, sample_metrics,
                             voxel_jsd)
from setflow.metrics.eval import _EMDCache, nearest_emd


def test_chamfer_by_hand():
    x = torch.tensor([[[0.0, 0.0], [1.0, 0.0]]])
    y = torch.tensor([[[0.0, 0.0]]])
    # mean_x min_y |x-y|^2 = (0 + 1) / 2, mean_y min_x = 0
    assert chamfer(x, y).item() == pytest.approx(0.5)
    y2 = torch.tensor([[[0.0, 2.0], [1.0, 3.0]]])
    # x->y: (4, 5) -> 4.5 ; y->x: (4, 9) -> 6.5
    assert chamfer(x, y2).item() == pytest.approx(4.5 + 6.5)


def test_emd_by_hand():
    x = torch.tensor([[[0.0, 0.0], [2.0, 0.0]]])
    y = torch.tensor([[[2.0, 1.0], [0.0, 1.0]]])
    assert emd(x, y).item() == pytest.approx(1.0)
    # a crossing matching would cost sqrt(5); the optimum is not the index order
    y3 = torch.tensor([[[3.0, 0.0], [0.0, 0.0], [1.0, 0.0]]])
    x3 = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]]])
    assert emd(x3, y3).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("n,d", [(1, 2), (3, 2), (5, 3), (6, 2)])
def test_emd_equals_brute_force(n, d):
    x, y = torch.randn(4, n, d, dtype=torch.float64), torch.randn(4, n, d, dtype=torch.float64)
    got = emd(x, y)
    for b in range(4):
        cost = torch.cdist(x[b], y[b])
        brute = min(cost[torch.arange(n), torch.tensor(p)].mean().item() for p in itertools.permutations(range(n)))
        assert got[b].item() == pytest.approx(brute, rel=1e-12, abs=1e-12)


def test_pairwise_chamfer_chunked_matches_loop_and_bounds_emd():
    a = torch.rand(7, 6, 2, dtype=torch.float64) * 28
    b = torch.rand(5, 6, 2, dtype=torch.float64) * 28
    loop = torch.stack([chamfer(a[i].expand(5, 6, 2), b) for i in range(7)])
    tiny = 2 * 2 * 36  # blocks of 2 x 2 pairs: exercises the chunking and the edges
    cd, lb = pairwise_chamfer(a, b, lower_bound=True, block_elems=tiny, progress=False)
    torch.testing.assert_close(cd, loop)
    dense = pairwise_emd(a, b)
    assert bool((lb <= dense + 1e-12).all())
    assert bool((lb > 0.5 * dense).all())  # not a vacuous bound
    # symmetric path (b=None) fills the lower triangle from the upper one
    u = torch.cat([a, b])
    cdu = pairwise_chamfer(u, block_elems=tiny, progress=False)
    torch.testing.assert_close(cdu, pairwise_chamfer(u, u.clone(), block_elems=tiny, progress=False))
    torch.testing.assert_close(cdu, cdu.T)


def test_pruned_nearest_emd_equals_dense():
    u = torch.randn(30, 8, 2, dtype=torch.float64) + torch.randn(30, 1, 2, dtype=torch.float64)
    _, lb = pairwise_chamfer(u, lower_bound=True, progress=False)
    lb.fill_diagonal_(float("inf"))
    oracle = _EMDCache(u)
    idx = torch.arange(30)
    dist, arg = nearest_emd(lb, oracle, idx, idx)
    dense = pairwise_emd(u, u)
    dense.fill_diagonal_(float("inf"))
    torch.testing.assert_close(dist, dense.min(1).values)
    assert torch.equal(arg, dense.argmin(1))
    assert oracle.solved < 30 * 29 // 2  # pruning skipped some pairs


def _blob_sets(n_sets, n_points=10, shift=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_sets, 1, 2, generator=g, dtype=torch.float64)
    return centres + 0.3 * torch.randn(n_sets, n_points, 2, generator=g, dtype=torch.float64) + shift


def test_two_halves_of_one_distribution_give_half_1nna():
    sets = _blob_sets(240)
    res = sample_metrics(sets[:120], sets[120:], progress=False)
    for m in ("cd", "emd"):
        assert 0.4 <= res[m]["1nna"] <= 0.6, res
        assert res[m]["cov"] > 0.4


def test_disjoint_distributions_give_full_1nna():
    res = sample_metrics(_blob_sets(40, seed=1, shift=20.0), _blob_sets(40, seed=2), progress=False)
    for m in ("cd", "emd"):
        assert res[m]["1nna"] == 1.0
    assert res["cd"]["mmd"] > 100


def test_generated_vs_reference_order_is_pinned():
    # reference: one set at the origin and one at (10, 0); generated: three sets near the origin
    pts = torch.tensor([[0.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    ref = torch.stack([pts, pts + torch.tensor([10.0, 0.0], dtype=torch.float64)])
    gen = torch.stack([pts + torch.tensor([0.0, 0.1 * k], dtype=torch.float64) for k in (1, 2, 3)])
    res = sample_metrics(gen, ref, progress=False)
    # COV: every generated set's nearest reference is the origin one -> 1 of 2 references
    assert res["cd"]["cov"] == 0.5 and res["emd"]["cov"] == 0.5
    # MMD: mean over the 2 references of the nearest generated set (the one at 0.1 up)
    assert res["emd"]["mmd"] == pytest.approx((0.1 + math.hypot(10.0, 0.1)) / 2)
    # CD to the far reference: each side's squared nearest distances are (100.01, 81.01)
    assert res["cd"]["mmd"] == pytest.approx((0.02 + 2 * (100.01 + 81.01) / 2) / 2)
    swapped = sample_metrics(ref, gen, progress=False)
    assert swapped["cd"]["cov"] == pytest.approx(1 / 3)
    # 1-NNA: the generated sets are each other's neighbours (3 right); the origin reference's nearest
    # is generated (wrong); the far reference's nearest is the origin reference (CD 181 < 181.02, right)
    assert res["cd"]["1nna"] == pytest.approx(4 / 5)


def test_voxel_jsd():
    a = torch.rand(20, 30, 3, dtype=torch.float64)
    assert voxel_jsd(a, a) == pytest.approx(0.0, abs=1e-12)
    assert voxel_jsd(a * 0.4, a * 0.4 + 0.6, bounds=(0.0, 1.0), resolution=10) == pytest.approx(1.0)
    res = sample_metrics(a, a.flip(0), progress=False)  # 3-D: JSD by default
    assert res["jsd"] == pytest.approx(0.0, abs=1e-12)
    assert "JSD" in format_sample_metrics(res, "x")


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match=r"\(B, N, D\)"):
        sample_metrics(torch.zeros(3, 2), torch.zeros(3, 4, 2))
    with pytest.raises(ValueError, match="equal set sizes"):
        sample_metrics(torch.zeros(3, 5, 2), torch.zeros(3, 4, 2))
    with pytest.raises(ValueError, match="point dimension"):
        sample_metrics(torch.zeros(3, 4, 3), torch.zeros(3, 4, 2))
    with pytest.raises(ValueError, match="unknown metric"):
        sample_metrics(torch.zeros(3, 4, 2), torch.zeros(3, 4, 2), metrics=("fid",))
    with pytest.raises(ValueError, match="NaN"):
        chamfer(torch.full((1, 2, 2), float("nan")), torch.zeros(1, 2, 2))
    assert sample_metrics(torch.rand(3, 5, 2), torch.rand(3, 4, 2), metrics=("cd",), progress=False)["cd"]
