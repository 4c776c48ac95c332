"""Small sets and empty batches (float64).

A variable-size SortFlow / PermuteFlow scores a set of 1..4 points the same alone, inside a small
padded batch and inside any size bucket of a large batch, for every registered set conditioner
(the kNN nets take min(k, N - 1) neighbours; a parity coupling of a 1-point set is the identity).
PermuteFlow draws random permutations, and a set alone draws other ones than inside a batch: its
deterministic parts are compared with the permutations made the identity, and a 1-point set (one
permutation only, so the bound is exact) is compared as it is. An empty batch gives an empty result.
"""

import math

import pytest
import torch

import setflow.transforms.stochastic as stochastic
from setflow.models.idf import IDF
from setflow.models.image_flows import build_image_flow
from setflow.models.set_flows import build_set_flow
from setflow.registry import MODELS, SET_CONDITIONERS
from setflow.sets import pad_sets
from setflow.transforms import ActNorm

pytestmark = pytest.mark.usefixtures("double", "one_thread")

MAX = 8
BUCKET_SIZES = [1] * 8 + [2] * 8 + [3, 4] * 4 + [5, 6, 7, 8] * 2  # 32 sets: 4 buckets of 8, widths 1, 2, 4, 8


def tiny(permutation="sort", conditioner="transformer", num_points=None, knn_k=3):
    """A small randomised flow (off the zero-initialised identity), ActNorm marked initialised."""
    f = build_set_flow(num_points=num_points, max_points=MAX if num_points is None else None, num_steps=2, d_model=8,
                       num_heads=2, num_layers=1, dim_feedforward=8, conditioner=conditioner,
                       point_conditioner=conditioner, knn_k=knn_k, num_inducing=3, permutation=permutation).double()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in f.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
        for m in f.modules():
            if isinstance(m, ActNorm):
                m.initialized.fill_(True)
    return f.eval()


def make_sets(sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(n, 2, generator=g) * 28 for n in sizes]


def alone(flow, sets):
    return torch.cat([flow.log_prob(s[None], mask=torch.ones(1, s.shape[0], dtype=torch.bool)) for s in sets])


def identity_permutations(monkeypatch):
    monkeypatch.setattr(stochastic, "random_rank_permutations", lambda sizes, n, generator=None:
                        torch.arange(n).expand(sizes.shape[0], n))
    monkeypatch.setattr(stochastic, "random_permutations", lambda b, n, device=None: torch.arange(n).expand(b, n))


@pytest.mark.parametrize("permutation", ["sort", "stochastic"])
@pytest.mark.parametrize("conditioner", SET_CONDITIONERS.names())
def test_small_sets_score_the_same_alone_in_a_batch_and_in_any_bucket(conditioner, permutation, monkeypatch):
    if permutation == "stochastic":
        identity_permutations(monkeypatch)
    flow = tiny(permutation, conditioner)
    flow.bucket_call_cost = 0.0  # tiny sets: let the size buckets be used
    sets = make_sets(BUCKET_SIZES)
    ref = alone(flow, sets)
    assert torch.isfinite(ref).all()
    small = [0, 8, 16, 17]  # one set each of 1, 2, 3 and 4 points: a padded batch below the bucket threshold
    x, mask = pad_sets([sets[i] for i in small])
    torch.testing.assert_close(flow.log_prob(x, mask=mask), ref[small], rtol=0, atol=1e-9)
    x, mask = pad_sets(sets)
    groups = flow._buckets(mask)
    assert groups is not None and [int(mask[g].sum(1).max()) for g in groups] == [1, 2, 4, 8]
    torch.testing.assert_close(flow.log_prob(x, mask=mask), ref, rtol=0, atol=1e-9)
    perm = torch.randperm(len(sets), generator=torch.Generator().manual_seed(1))  # other neighbours in the batch
    xp, mp = pad_sets([sets[i] for i in perm])
    torch.testing.assert_close(flow.log_prob(xp, mask=mp), ref[perm], rtol=0, atol=1e-9)


@pytest.mark.parametrize("conditioner", ["transformer", "knn"])
def test_permuteflow_one_point_sets_are_exact_with_random_permutations(conditioner):
    """One point has one order: PermuteFlow's bound is exact, alone, in a batch and as an IWBO."""
    flow = tiny("stochastic", conditioner)
    sets = make_sets([1, 3, 1, 4, 2, 1], seed=2)
    x, mask = pad_sets(sets)
    lp = flow.log_prob(x, mask=mask)
    ones = [i for i, s in enumerate(sets) if s.shape[0] == 1]
    ref = alone(flow, [sets[i] for i in ones])
    torch.testing.assert_close(lp[ones], ref, rtol=0, atol=1e-9)
    torch.testing.assert_close(flow.iwbo(x, k=3, mask=mask)[ones], ref, rtol=0, atol=1e-9)


@pytest.mark.parametrize("permutation", ["sort", "stochastic"])
@pytest.mark.parametrize("conditioner", ["transformer", "edgeconv", "knn"])
def test_sampled_one_point_sets_score(conditioner, permutation):
    flow = tiny(permutation, conditioner)
    flow.size_dist.fit(torch.tensor([1, 1, 2, 3]), smoothing=0.0)  # p(N = 1) = 1/2
    torch.manual_seed(0)
    s = flow.sample(3, num_points=1)
    assert s.shape == (3, 1, 2) and s.is_fixed
    lp = flow.log_prob(s)
    assert torch.isfinite(lp).all()
    torch.testing.assert_close(lp, alone(flow, list(s.points)), rtol=0, atol=1e-9)  # one point: no randomness left
    s = flow.sample(40)
    assert (s.sizes == 1).any() and torch.isfinite(flow.log_prob(s)).all()


def test_fixed_size_edgeconv_with_k_above_the_set_size_works():
    """knn_k >= N: every point takes its N - 1 others (the model equals the one built with knn_k = N - 1)."""
    x = torch.rand(3, 4, 2) * 28
    for conditioner in ("edgeconv", "knn"):
        big, capped = (tiny(conditioner=conditioner, num_points=4, knn_k=k) for k in (8, 3))
        lp = big.log_prob(x)
        assert torch.isfinite(lp).all()
        assert torch.equal(lp, capped.log_prob(x))


@pytest.mark.parametrize("permutation", ["sort", "stochastic"])
def test_empty_batch_of_sets(permutation):
    fixed, ragged = tiny(permutation, num_points=5), tiny(permutation)
    lp = fixed.log_prob(torch.zeros(0, 5, 2))
    assert lp.shape == (0,) and lp.dtype == torch.float64
    assert fixed.iwbo(torch.zeros(0, 5, 2), k=3).shape == (0,)
    assert fixed.sample(0).shape == (0, 5, 2) and len(fixed.sample(0)) == 0
    if permutation == "sort":
        x, lp = fixed.sample_and_log_prob(0)
        assert x.shape == (0, 5, 2) and lp.shape == (0,)
    assert ragged.log_prob(torch.zeros(0, 5, 2), mask=torch.zeros(0, 5, dtype=torch.bool)).shape == (0,)
    assert ragged.iwbo(torch.zeros(0, 3, 2), k=2, mask=torch.zeros(0, 3, dtype=torch.bool)).shape == (0,)
    s = ragged.sample(0)
    assert s.shape == (0, 0, 2) and s.mask.shape == (0, 0) and ragged.log_prob(s).shape == (0,)
    with pytest.raises(ValueError, match=r"must have shape \(B, 5, 2\)"):  # still checked
        fixed.log_prob(torch.zeros(0, 4, 2))
    labelled = build_set_flow(num_points=5, num_steps=1, d_model=8, num_heads=2, num_layers=1, dim_feedforward=8,
                              conditional=True, num_classes=3, context_dim=4, permutation=permutation).double()
    none = torch.zeros(0, dtype=torch.long)
    assert labelled.log_prob(torch.zeros(0, 5, 2), context=none).shape == (0,)
    assert labelled.sample(context=none).shape == (0, 5, 2)
    fresh = build_set_flow(num_points=5, num_steps=1, d_model=8, num_heads=2, num_layers=1, dim_feedforward=8)
    fresh.log_prob(torch.zeros(0, 5, 2))  # ActNorm does not initialise on nothing
    assert not any(bool(m.initialized) for m in fresh.modules() if isinstance(m, ActNorm))


def test_empty_batch_of_images_and_toy_points():
    idf = IDF((1, 8, 8), num_levels=2, num_flows=1, hidden_channels=4, depth=1, coupling="shallow",
              split_prior="shallow").double()
    assert idf.log_prob(torch.zeros(0, 1, 8, 8, dtype=torch.uint8)).shape == (0,)
    assert idf.sample(0).shape == (0, 1, 8, 8)
    img = build_image_flow((1, 8, 8), num_scales=1, num_steps=1, densenet_channels=4, densenet_depth=1,
                           densenet_growth=4, dequant_steps=1, dequant_context=4, dequant_context_depth=1,
                           dequant_context_growth=4).double()
    empty = torch.zeros(0, 1, 8, 8, dtype=torch.uint8)
    assert img.log_prob(empty).shape == (0,) and img.iwbo(empty, k=2).shape == (0,)
    s = img.sample(0)
    assert s.shape == (0, 1, 8, 8) and s.dtype == torch.uint8
    toy = MODELS.get("toy_flow")().double()
    assert toy.log_prob(torch.zeros(0, 2)).shape == (0,) and toy.sample(0).shape == (0, 2)


def test_one_point_layers_are_well_defined():
    """The pieces: a parity coupling of one point is the identity; OrderedIncrements of one point too."""
    from setflow.transforms import AffineCoupling, OrderedIncrements

    calls = []

    def net(x, context=None, mask=None):
        calls.append(x.shape)
        return torch.ones(x.shape[0], x.shape[1], 4)

    coupling = AffineCoupling(net, split_dim=1, split="parity", scale_fn="exp", params_dim=-1)
    x = torch.randn(3, 1, 2)
    z, ldj = coupling(x)
    assert torch.equal(z, x) and torch.equal(ldj, torch.zeros(3)) and not calls
    assert torch.equal(coupling.inverse(z), x)
    z, ldj = coupling(torch.randn(3, 2, 2))  # two points: one conditions the other
    assert calls and torch.allclose(ldj, torch.full((3,), 2.0))
    inc = OrderedIncrements(coord=0, gap_scale=0.5)
    z, ldj = inc(x)
    assert torch.equal(z, x) and torch.equal(ldj, torch.zeros(3)) and torch.equal(inc.inverse(z), x)
    assert math.isclose(float(inc(torch.tensor([[[0.0, 1.0], [1.0, 2.0]]]))[1]), 0.0)
