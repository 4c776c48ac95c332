"""Sets of different sizes: the padded + mask representation, PyG adapters, and every set layer
giving, set for set, what each set gives alone (float64), whatever sits in the padding."""

import math

import pytest
import torch
from torch import nn

from setflow.distributions import StandardNormal
from setflow.flows import Flow
from setflow.set_flow import SetFlow
from setflow.sets import (check_mask, from_pyg, lengths_to_mask, mask_to_lengths, masked_sum, pad_sets, point_ranks,
                          real_first, to_pyg, unpad_sets)
from setflow.transforms import (ActNorm, AdditiveCoupling, AffineCoupling, CompositeTransform, OrderedIncrements,
                                Reverse, ScalarAffine, SetRoll, SetShuffle, Shuffle, SortSurjection,
                                StochasticPermutation)
from setflow.transforms.permutation_utils import fixed_rank_permutations, permute_real_points

pytestmark = pytest.mark.usefixtures("double", "one_thread")

SIZES = (5, 3, 8, 2, 6)


class MaskedNet(nn.Module):
    """A tiny conditioner with masks: per-point linear map + masked mean pool + a position term."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.point = nn.Linear(d_in, d_out)
        self.pool = nn.Linear(d_in, d_out)
        self.pos = nn.Parameter(0.1 * torch.randn(16, d_out))

    def forward(self, x, context=None, mask=None):
        if mask is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool)
        xm = torch.where(mask[..., None], x, torch.zeros(()))
        pooled = xm.sum(1, keepdim=True) / mask.sum(1).clamp_min(1)[:, None, None]
        return self.point(xm) + self.pool(pooled) + self.pos[: x.shape[1]]


class PlainNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(1, 2)

    def forward(self, x, context=None):
        return self.lin(x)


def ragged_batch(sizes=SIZES, dim=2, garbage=1e6, seed=0):
    g = torch.Generator().manual_seed(seed)
    sets = [torch.randn(n, dim, generator=g) for n in sizes]
    x, mask = pad_sets(sets)
    junk = garbage * torch.randn(x.shape, generator=g)
    return torch.where(mask[..., None], x, junk), mask, sets


def layers():
    torch.manual_seed(1)
    act = ActNorm(2, feature_dim=-1)
    act.initialize(torch.randn(40, 1, 2) * 3 + 1)
    return {
        "sort": SortSurjection(key=0),
        "scalar_affine": ScalarAffine(shift=0.5, scale=3.0),
        "actnorm": act,
        "coordinate_coupling": AffineCoupling(MaskedNet(1, 2), split_dim=-1, split_sizes=(1, 1), scale_fn="softplus"),
        "parity_coupling": AffineCoupling(MaskedNet(2, 4), split_dim=1, split="parity", params_dim=-1),
        "additive_parity": AdditiveCoupling(MaskedNet(2, 2), split_dim=1, split="parity"),
        "set_shuffle": SetShuffle(seed=4),
        "set_roll": SetRoll(shift=2),
        "reverse_coords": Reverse(dim=-1),
        "ordered_increments": OrderedIncrements(coord=0, gap_scale=0.3),
    }


def _input_for(name, x, mask):
    if name == "ordered_increments":  # needs sorted real points: sort first, then refill the padding with junk
        z, _ = SortSurjection(key=0)(x, mask=mask)
        m = SortSurjection(key=0).forward_mask(mask)
        return torch.where(m[..., None], z, 1e6 * torch.randn_like(z)), m
    return x, mask


# ---------------------------------------------------------------- representation


def test_pad_unpad_lengths_round_trip():
    x, mask, sets = ragged_batch()
    assert x.shape == (5, 8, 2) and mask_to_lengths(mask).tolist() == list(SIZES)
    assert torch.equal(lengths_to_mask(torch.tensor(SIZES)), mask)
    for a, b in zip(unpad_sets(x, mask), sets):
        assert torch.equal(a, b)
    x2, m2 = pad_sets(sets, max_points=10, value=-1.0)
    assert x2.shape == (5, 10, 2) and bool((x2[~m2] == -1).all())


def test_ranks_and_real_first():
    mask = torch.tensor([[False, True, False, True, True]])
    assert point_ranks(mask).tolist() == [[3, 0, 3, 1, 2]]
    assert real_first(mask)[0, :3].tolist() == [1, 3, 4]


def test_masked_sum_ignores_nan_padding_and_is_bitwise_plain_when_full():
    v = torch.randn(3, 4, 2)
    full = torch.ones(3, 4, dtype=torch.bool)
    assert torch.equal(masked_sum(v, full), v.reshape(3, -1).sum(1))
    v[0, 3] = float("nan")
    mask = full.clone()
    mask[0, 3] = False
    assert torch.isfinite(masked_sum(v, mask)).all()


def test_bad_masks_are_refused_with_clear_errors():
    x = torch.randn(2, 3, 2)
    with pytest.raises(ValueError, match="torch.bool"):
        check_mask(torch.ones(2, 3), x)
    with pytest.raises(ValueError, match=r"shape \(B, N\)"):
        check_mask(torch.ones(2, 4, dtype=torch.bool), x)
    with pytest.raises(ValueError, match="at least 1 real point"):
        check_mask(torch.tensor([[True, True, False], [False, False, False]]), x)


def test_pyg_batch_round_trip():
    from torch_geometric.data import Batch, Data

    _, _, sets = ragged_batch()
    batch = Batch.from_data_list([Data(pos=s) for s in sets])
    x, mask = from_pyg(batch)
    assert mask_to_lengths(mask).tolist() == list(SIZES)
    for a, b in zip(unpad_sets(x, mask), sets):
        assert torch.equal(a, b)
    back = to_pyg(x, mask)
    assert torch.equal(back.pos, batch.pos) and torch.equal(back.batch, batch.batch) and back.num_graphs == 5
    for d, s in zip(back.to_data_list(), sets):
        assert torch.equal(d.pos, s)
    xs, ms = from_pyg(Batch.from_data_list([Data(x=s) for s in sets]), max_points=10)  # features under .x
    assert xs.shape == (5, 10, 2) and torch.equal(ms[:, :8], mask)
    one, m1 = from_pyg(Data(pos=sets[0]))
    assert one.shape == (1, 5, 2) and bool(m1.all())
    with pytest.raises(ValueError, match="no point tensor"):
        from_pyg(Data(edge_index=torch.zeros(2, 0, dtype=torch.long)))


# ---------------------------------------------------------------- layers


@pytest.mark.parametrize("name", list(layers()))
def test_layer_padded_batch_equals_each_set_alone(name):
    t = layers()[name]
    x, mask = _input_for(name, *ragged_batch()[:2])
    z, ldj = t(x, mask=mask)
    zmask = t.forward_mask(mask)
    assert torch.equal(zmask.sum(1), mask.sum(1))
    for b in range(x.shape[0]):
        alone = x[b][mask[b]][None]
        z1, l1 = t(alone)
        assert torch.allclose(l1, ldj[b : b + 1], atol=1e-10), (name, b)
        assert torch.allclose(z1[0], z[b][zmask[b]], atol=1e-10), (name, b)
    if name not in ("sort", "reverse_coords"):  # padding passes through (the sort moves it, Reverse flips it)
        assert torch.equal(z[~zmask], x[~mask])
    x2 = torch.where(mask[..., None], x, -3e5 * torch.ones_like(x))  # other garbage: nothing changes
    z2, l2 = t(x2, mask=mask)
    assert torch.equal(l2, ldj) and torch.equal(z2[zmask], z[zmask])


@pytest.mark.parametrize("name", [n for n in layers() if n != "sort"])
def test_layer_inverse_with_mask(name):
    t = layers()[name]
    x, mask = _input_for(name, *ragged_batch()[:2])
    z, ldj = t(x, mask=mask)
    xr, inv = t.inverse_with_ldj(z, mask=mask)
    assert torch.allclose(xr[mask], x[mask], atol=1e-9)
    assert torch.allclose(inv, -ldj, atol=1e-9)


def test_sort_keeps_padding_at_the_end_and_counts_log_factorial_per_set():
    x, mask, sets = ragged_batch()
    mask = mask[:, torch.randperm(mask.shape[1])]  # padding anywhere, not only at the end
    x = torch.where(mask[..., None], torch.randn_like(x), 1e6 * torch.ones_like(x))
    sort = SortSurjection(key=0)
    z, ldj = sort(x, mask=mask)
    sizes = mask.sum(1)
    assert torch.equal(sort.forward_mask(mask), lengths_to_mask(sizes, mask.shape[1]))
    assert torch.allclose(ldj, -torch.lgamma(sizes.double() + 1))
    real = sort.forward_mask(mask)
    for b in range(x.shape[0]):
        keys = z[b][real[b]][:, 0]
        assert bool((keys[1:] >= keys[:-1]).all())
    x_back = sort.inverse(z, mask=real)  # a random permutation of the real points only
    for b in range(x.shape[0]):
        assert torch.equal(x_back[b][real[b]].sort(0).values, z[b][real[b]].sort(0).values)


def test_stochastic_permutation_permutes_real_points_only():
    x, mask, _ = ragged_batch()
    z, ldj = StochasticPermutation()(x, mask=mask)
    assert torch.equal(z[~mask], x[~mask]) and torch.equal(ldj, torch.zeros(5))
    for b in range(5):
        assert torch.equal(z[b][mask[b]].sort(0).values, x[b][mask[b]].sort(0).values)
    assert not torch.equal(z[mask], x[mask])


def test_set_shuffle_depends_on_the_set_size_only():
    sizes = torch.tensor([5, 7, 5])
    p = fixed_rank_permutations(sizes, 9, seed=3)
    assert torch.equal(p[0], p[2]) and not torch.equal(p[0, :5], torch.arange(5))
    assert torch.equal(p[0, 5:], torch.arange(5, 9))
    assert sorted(p[1, :7].tolist()) == list(range(7))
    mask = torch.tensor([[True, False, True, True]])
    x = torch.arange(4.0).view(1, 4, 1)
    y = permute_real_points(x, torch.tensor([[2, 0, 1, 3]]), mask)
    assert y[0, :, 0].tolist() == [3.0, 1.0, 0.0, 2.0]


def test_ordered_increments_counts_gaps_among_real_points():
    k = torch.tensor([[[0.0], [1.0], [9.0], [3.0]]])
    mask = torch.tensor([[True, True, False, True]])  # gaps 1 and 2 (the padding at 9 is skipped)
    z, ldj = OrderedIncrements(coord=0)(k, mask=mask)
    assert torch.allclose(ldj, torch.tensor([-math.log(2.0)]))
    assert z[0, :, 0].tolist() == [0.0, 0.0, 9.0, math.log(2.0)]


def test_actnorm_initialises_on_real_points_only():
    x, mask, sets = ragged_batch(garbage=1e4)
    act = ActNorm(2, feature_dim=-1)
    act(x, mask=mask)
    z = act(torch.cat(sets)[None])[0][0]
    assert torch.allclose(z.mean(0), torch.zeros(2), atol=1e-9)
    assert torch.allclose(z.std(0, unbiased=False), torch.ones(2), atol=1e-9)


def test_full_mask_is_bit_identical_to_no_mask():
    torch.manual_seed(2)
    x = torch.randn(4, 6, 2)
    full = torch.ones(4, 6, dtype=torch.bool)
    for name, t in layers().items():
        xin, m = _input_for(name, x, full)
        z0, l0 = t(xin)
        z1, l1 = t(xin, mask=m)
        assert torch.allclose(z0, z1, atol=1e-12) and torch.allclose(l0, l1, atol=1e-12), name
    flow = SetFlow(StandardNormal((6, 2)), [SortSurjection(), ScalarAffine(0.1, 2.0), OrderedIncrements(min_gap=1e-9),
                                         AffineCoupling(MaskedNet(1, 2), split_dim=-1, split_sizes=(1, 1))])
    assert torch.equal(flow.log_prob(x), flow.log_prob(x, mask=full))


def test_layers_without_masks_refuse_a_padded_batch():
    x, mask, _ = ragged_batch()
    with pytest.raises(ValueError, match="Shuffle.*does not take a mask"):
        CompositeTransform([ScalarAffine(), Shuffle(8)])(x, mask=mask)
    with pytest.raises(ValueError, match="halves needs equal-size sets"):
        AffineCoupling(MaskedNet(2, 4), split_dim=1, params_dim=-1)(x, mask=mask)
    with pytest.raises(ValueError, match="PlainNet does not take mask="):
        AffineCoupling(PlainNet(), split_dim=-1, split_sizes=(1, 1))(x, mask=mask)
    with pytest.raises(ValueError, match="Reverse"):
        Reverse(dim=1)(x, mask=mask)
    flow = SetFlow(StandardNormal((8, 2)), [ScalarAffine(), Shuffle(8)])
    with pytest.raises(ValueError, match="layer 1 \\(Shuffle\\) does not take a mask"):
        flow.log_prob(x, mask=mask)


def test_parity_coupling_handles_odd_sizes_and_is_triangular():
    t = AffineCoupling(MaskedNet(2, 4), split_dim=1, split="parity", params_dim=-1)
    x = torch.randn(2, 5, 2, requires_grad=True)
    z, _ = t(x)
    assert torch.equal(z[:, 0::2], x[:, 0::2])
    jac = torch.autograd.functional.jacobian(lambda v: t(v)[0], x[:1])
    jac = jac.reshape(10, 10)
    # odd points depend on themselves and on even points only; even points pass through
    odd = [2, 3, 6, 7]
    for i in odd:
        for j in odd:
            if i // 2 != j // 2:
                assert jac[i, j] == 0


def test_the_base_flow_keeps_no_set_machinery_and_refuses_a_mask():
    """Masks, PyG input, set sizes and size buckets are SetFlow's; the base Flow (images, toys) refuses a mask."""
    x, mask, _ = ragged_batch()
    plain = Flow(StandardNormal((8, 2)), [ScalarAffine()])
    for name in ("size_dist", "variable_size", "_buckets", "_prepare_masked", "max_buckets"):
        assert not hasattr(plain, name), name
    for call in (lambda: plain.log_prob(x, mask=mask), lambda: plain.iwbo(x, k=2, mask=mask),
                 lambda: plain.encode(x, mask=mask), lambda: plain.decode(x, mask=mask)):
        with pytest.raises(ValueError, match="Flow takes no mask="):
            call()
    as_set = SetFlow(StandardNormal((8, 2)), [ScalarAffine()])
    full = torch.ones(x.shape[:2], dtype=torch.bool)
    assert torch.equal(plain.log_prob(x), as_set.log_prob(x, mask=full))  # same maths on full sets
    assert as_set.log_prob(x, mask=mask).shape == (x.shape[0],)
