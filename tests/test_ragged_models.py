"""Whole SortFlow / PermuteFlow models over sets of any size (model_args.num_points: null):
a padded batch scores, set for set, what each set scores alone (float64), for every registered
set conditioner; the padding never matters; log p(X) = log p(N) + log p(X | N)."""

import math

import pytest
import torch

from setflow.sets import SetBatch

from setflow.distributions import SetSizeDistribution
from setflow.models.set_flows import CONDITIONERS, build_set_flow
from setflow.sets import pad_sets

pytestmark = pytest.mark.usefixtures("double", "one_thread")

SIZES = (9, 6, 12, 7)  # kNN conditioners need more than k points in each half of a set


def tiny(permutation="sort", conditioner="transformer", **kw):
    f = build_set_flow(num_points=None, max_points=16, num_steps=2, d_model=16, num_heads=2, num_layers=1,
                       dim_feedforward=16, conditioner=conditioner, point_conditioner=conditioner, knn_k=2,
                       num_inducing=4, permutation=permutation, **kw).double()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():  # leave the zero-initialised identity: every layer must do something
        for p in f.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return f.eval()


def batch(garbage=1e5, seed=0):
    g = torch.Generator().manual_seed(seed)
    sets = [torch.rand(n, 2, generator=g) * 28 for n in SIZES]
    x, mask = pad_sets(sets)
    return torch.where(mask[..., None], x, garbage * torch.randn(x.shape, generator=g)), mask, sets


def full(s):
    return torch.ones(s.shape[:2], dtype=torch.bool)


def each_alone(flow, sets):
    return torch.cat([flow.log_prob(s[None], mask=full(s[None])) for s in sets])


@pytest.mark.parametrize("conditioner", list(CONDITIONERS))
def test_sortflow_padded_batch_equals_each_set_alone(conditioner):
    flow = tiny(conditioner=conditioner)
    x, mask, sets = batch()
    lp = flow.log_prob(x, mask=mask)
    alone = each_alone(flow, sets)
    assert torch.allclose(lp, alone, atol=1e-9, rtol=0)
    x2 = torch.where(mask[..., None], x, torch.full_like(x, float("nan")))  # garbage in the padding: no change
    assert torch.equal(flow.log_prob(x2, mask=mask), lp)
    g = torch.Generator().manual_seed(1)
    shuffled = [s[torch.randperm(s.shape[0], generator=g)] for s in sets]  # permutation invariance, per set
    xp, mp = pad_sets(shuffled)
    assert torch.allclose(flow.log_prob(xp, mask=mp), lp, atol=1e-9, rtol=0)


@pytest.mark.parametrize("conditioner", ["transformer", "deepsets"])
def test_permuteflow_padded_batch_equals_each_set_alone(conditioner, monkeypatch):
    import setflow.transforms.stochastic as stochastic

    def identity(sizes, n, generator=None):  # make the random permutations deterministic (the identity)
        return torch.arange(n).expand(sizes.shape[0], n)

    monkeypatch.setattr(stochastic, "random_rank_permutations", identity)
    monkeypatch.setattr(stochastic, "random_permutations", lambda b, n, device=None: torch.arange(n).expand(b, n))
    flow = tiny("stochastic", conditioner)
    x, mask, sets = batch()
    assert torch.allclose(flow.log_prob(x, mask=mask), each_alone(flow, sets), atol=1e-9, rtol=0)


def test_log_prob_is_size_term_plus_conditional():
    flow = tiny()
    x, mask, _ = batch()
    sizes = mask.sum(1)
    flow.size_dist.fit(sizes, smoothing=0.5)
    lp = flow.log_prob(x, mask=mask)
    log_pn = flow.size_dist.log_prob(sizes)
    counts = torch.bincount(sizes - 1, minlength=16).double() + 0.5
    assert torch.allclose(log_pn, torch.log(counts / counts.sum())[sizes - 1])
    saved = flow.size_dist
    flow.size_dist = SetSizeDistribution(16)  # uniform over 1..16: log p(N) = -log 16
    assert torch.allclose(flow.log_prob(x, mask=mask) - (lp - log_pn), torch.full((4,), -math.log(16.0)))
    flow.size_dist = saved


def test_variable_size_model_refuses_a_batch_without_mask():
    flow = tiny()
    x, mask, _ = batch()
    with pytest.raises(ValueError, match="cannot tell padding from points: pass mask"):
        flow.log_prob(x)
    with pytest.raises(ValueError, match="sizes must lie in 1..16"):
        flow.log_prob(torch.rand(1, 17, 2) * 28, mask=torch.ones(1, 17, dtype=torch.bool))


def test_padding_beyond_max_points_is_trimmed():
    flow = tiny()
    x, mask, _ = batch()
    wide = torch.cat([x, torch.randn(4, 9, 2)], 1)
    wmask = torch.cat([mask, torch.zeros(4, 9, dtype=torch.bool)], 1)
    assert torch.allclose(flow.log_prob(wide, mask=wmask), flow.log_prob(x, mask=mask), atol=1e-12, rtol=0)


def test_fixed_size_model_full_mask_bit_identical_and_ragged_refused():
    f = build_set_flow(num_points=8, num_steps=2, d_model=16, num_heads=2, num_layers=1, dim_feedforward=16).double()
    x = torch.rand(3, 8, 2) * 28
    assert torch.equal(f.log_prob(x), f.log_prob(x, mask=torch.ones(3, 8, dtype=torch.bool)))
    mask = torch.ones(3, 8, dtype=torch.bool)
    mask[0, 5:] = False
    with pytest.raises(ValueError, match="does not take a mask"):
        f.log_prob(x, mask=mask)
    with pytest.raises(ValueError, match="max_points=9 is for sets of any size"):
        build_set_flow(num_points=8, max_points=9)


def test_sampling_draws_sizes_or_takes_them():
    flow = tiny()
    flow.size_dist.fit(torch.tensor([5, 5, 6, 11]), smoothing=0.0)
    torch.manual_seed(0)
    s = flow.sample(40)
    assert isinstance(s, SetBatch) and s.labels is None
    x, mask = s.points, s.mask
    assert set(mask.sum(1).tolist()) <= {5, 6, 11} and x.shape[1] == int(mask.sum(1).max())
    assert bool((x[~mask] == 0).all())
    assert torch.isfinite(flow.log_prob(x, mask=mask)).all()
    assert torch.equal(flow.log_prob(s), flow.log_prob(x, mask=mask))  # the batch value scores as its parts
    s = flow.sample(3, num_points=7)
    assert s.shape == (3, 7, 2) and s.is_fixed
    assert flow.sample(num_points=torch.tensor([3, 9])).sizes.tolist() == [3, 9]
    with pytest.raises(ValueError, match="sizes must lie in 1..16"):
        flow.sample(2, num_points=17)


def test_sort_consistent_sample_scores_like_its_carried_density():
    """A sorted latent round trip: encode(decode(z)) == z with masks (the parity coupling, SetShuffle and
    ordered increments are exact inverses of each other on ragged batches)."""
    flow = tiny()
    x, mask, _ = batch(garbage=0.0)
    z = flow.encode(x, mask=mask)
    zmask = flow.transform.forward_mask(mask)
    xr = flow.decode(z, mask=zmask)
    # decode draws a fresh permutation of each set's points: compare the sorted sets
    for b in range(4):
        a = xr[b][zmask[b]]
        ref = x[b][mask[b]]
        assert torch.allclose(a[a[:, 0].argsort()], ref[ref[:, 0].argsort()], atol=1e-8)


def test_large_padded_batch_is_scored_in_size_buckets_with_the_same_result():
    flow = tiny()
    flow.bucket_call_cost = 10.0  # tiny sets: make the extra calls look cheap, so the groups are used
    g = torch.Generator().manual_seed(3)
    sets = [torch.rand(int(n), 2, generator=g) * 28 for n in torch.randint(4, 17, (130,), generator=g)]
    x, mask = pad_sets(sets)
    assert flow._buckets(mask) is None  # ActNorm initialises on the first whole batch
    flow.log_prob(x, mask=mask)
    groups = flow._buckets(mask)
    assert len(groups) >= 2 and sorted(torch.cat(groups).tolist()) == list(range(130))
    bucketed = flow.log_prob(x, mask=mask)
    flow.max_buckets = 1
    assert flow._buckets(mask) is None
    assert torch.allclose(flow.log_prob(x, mask=mask), bucketed, atol=1e-9, rtol=0)
    assert torch.allclose(bucketed[:5], each_alone(flow, sets[:5]), atol=1e-9, rtol=0)


def test_log_prob_takes_a_pyg_batch():
    from torch_geometric.data import Batch, Data

    flow = tiny()
    x, mask, sets = batch()
    pyg = Batch.from_data_list([Data(pos=s) for s in sets])
    assert torch.allclose(flow.log_prob(pyg), flow.log_prob(x, mask=mask), atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="without mask="):
        flow.log_prob(pyg, mask=mask)


def test_permuteflow_iwbo_with_masks(monkeypatch):
    import setflow.transforms.stochastic as stochastic

    flow = tiny("stochastic")
    x, mask, sets = batch()
    torch.manual_seed(0)
    bound = flow.iwbo(x, k=6, chunk=4, mask=mask)
    assert bound.shape == (4,) and torch.isfinite(bound).all()
    monkeypatch.setattr(stochastic, "random_rank_permutations",
                        lambda sizes, n, generator=None: torch.arange(n).expand(sizes.shape[0], n))
    monkeypatch.setattr(stochastic, "random_permutations", lambda b, n, device=None: torch.arange(n).expand(b, n))
    # with one fixed permutation every importance weight is the same: the IWBO is that log-probability
    assert torch.allclose(flow.iwbo(x, k=3, mask=mask), flow.log_prob(x, mask=mask), atol=1e-9, rtol=0)
