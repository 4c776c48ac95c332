"""Surjections and stochastic layers: round trips, analytic constants, densities that integrate to one."""

from __future__ import annotations

import itertools
import math
import pickle

import pytest
import torch
from torch import nn

from setflow.distributions.normal import ConditionalNormal, StandardHalfNormal, StandardNormal
from setflow.flows import Flow
from setflow.transforms.augment import Augment
from setflow.transforms.base import Bijection
from setflow.transforms.dequantization import UniformDequantization, VariationalDequantization
from setflow.transforms.permutation_utils import inverse_permutation, permute_along, random_permutations
from setflow.transforms.stochastic import VAE, StochasticPermutation
from setflow.transforms.surjections import AbsSurjection, MaxPool2dSurjection, Slice, SortSurjection

pytestmark = pytest.mark.usefixtures("double")
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class FixedLinear(Bijection):
    """z = A x over the flattened event: deliberately not permutation equivariant."""

    def __init__(self, shape):
        super().__init__()
        n = math.prod(shape)
        self.shape = tuple(shape)
        self.register_buffer("A", torch.eye(n) + 0.3 * torch.randn(n, n))

    def forward(self, x, context=None):
        z = (x.reshape(x.shape[0], -1) @ self.A.T).reshape(x.shape)
        return z, torch.linalg.slogdet(self.A).logabsdet.expand(x.shape[0])

    def inverse(self, z, context=None):
        return torch.linalg.solve(self.A, z.reshape(z.shape[0], -1).T).T.reshape(z.shape)


class ContextAffine(Bijection):
    """Elementwise y = a(c) * x + b(c) with a, b linear in the context (a test conditional bijection)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([0.7, -0.4, 0.2]))

    def params(self, context):
        return self.w[0] + self.w[1] * context, self.w[2] * context + 0.1

    def forward(self, x, context=None):
        log_a, b = self.params(context)
        return x * log_a.exp() + b, log_a.reshape(x.shape[0], -1).sum(1)

    def inverse(self, z, context=None):
        log_a, b = self.params(context)
        return (z - b) * torch.exp(-log_a)


def sort_by_y(x):
    """A module-level (picklable) sort key."""
    return x[..., 1]


# ----------------------------------------------------------------------------- permutation helpers


def test_permute_along_and_inverse():
    x = torch.randn(4, 6, 3)
    perm = random_permutations(4, 6)
    assert torch.equal(perm.sort(1).values, torch.arange(6).expand(4, 6))
    y = permute_along(x, perm, dim=1)
    for b in range(4):
        assert torch.equal(y[b], x[b, perm[b]])
    assert torch.equal(permute_along(y, inverse_permutation(perm), dim=1), x)
    # images: permute channels
    img = torch.randn(2, 5, 3, 3)
    p = random_permutations(2, 5)
    assert torch.equal(permute_along(img, p, dim=1)[1], img[1, p[1]])
    with pytest.raises(ValueError):
        permute_along(x, perm[:, :5], dim=1)


def test_random_permutations_uniform():
    perms = random_permutations(6000, 3)
    counts = {}
    for row in perms.tolist():
        counts[tuple(row)] = counts.get(tuple(row), 0) + 1
    assert len(counts) == 6
    assert all(abs(c - 1000) < 150 for c in counts.values()), counts


# ----------------------------------------------------------------------------- sort


@pytest.mark.parametrize("key", [0, 1, "y", "norm", sort_by_y])
def test_sort_round_trip_and_constant(key):
    t = SortSurjection(key=key)
    assert t.stochastic_inverse and not t.stochastic_forward and not t.bijective
    x = torch.randn(5, 7, 2)
    z, ldj = t(x)
    scores = t.scores(z)
    assert (scores[:, 1:] >= scores[:, :-1]).all()
    assert torch.equal(ldj, torch.full((5,), -math.lgamma(8.0)))
    assert torch.equal(t(t.inverse(z))[0], z)
    assert torch.equal(z.sort(1).values, x.sort(1).values)  # same points
    pickle.loads(pickle.dumps(t))


def test_sort_inverse_permutes_randomly_and_rejects_bad_keys():
    t = SortSurjection()
    z, _ = t(torch.randn(3, 10, 2))
    assert not torch.equal(t.inverse(z), t.inverse(z))
    with pytest.raises(TypeError, match="picklable"):
        SortSurjection(key=lambda x: x[..., 0])
    with pytest.raises(ValueError):
        SortSurjection(key="w")
    with pytest.raises(ValueError):
        SortSurjection(key=5)(torch.randn(2, 4, 2))


def test_sort_flow_is_permutation_invariant():
    n, d = 6, 2
    flow = Flow(StandardNormal((n, d)), [SortSurjection(key=0), FixedLinear((n, d))])
    plain = Flow(StandardNormal((n, d)), [FixedLinear((n, d))])
    x = torch.randn(4, n, d)
    lp = flow.log_prob(x)
    changed = False
    for _ in range(5):
        xp = permute_along(x, random_permutations(4, n), dim=1)
        assert torch.equal(flow.log_prob(xp), lp)
        changed |= not torch.allclose(plain.log_prob(xp), plain.log_prob(x))
    assert changed  # without the sort the same model is not invariant


# ----------------------------------------------------------------------------- stochastic permutation


def test_stochastic_permutation():
    t = StochasticPermutation()
    assert t.stochastic_forward and t.stochastic_inverse and not t.bijective
    x = torch.randn(8, 10, 3)
    z1, ldj = t(x)
    z2, _ = t(x)
    assert torch.equal(ldj, torch.zeros(8))
    assert torch.equal(z1.sort(1).values, x.sort(1).values)
    assert torch.equal(t.inverse(x).sort(1).values, x.sort(1).values)
    # rows are permuted whole (points keep their coordinates together)
    assert torch.equal(z1[:, :, 0].sort(1).values, x[:, :, 0].sort(1).values)
    assert not torch.equal(z1, z2) and not torch.equal(z1, x)


def test_iwbo_tightens_with_k_on_permute_flow():
    n, d, b = 3, 1, 6
    flow = Flow(StandardNormal((n, d)), [StochasticPermutation(), FixedLinear((n, d))])
    assert not flow.is_exact
    x = torch.randn(b, n, d) * 1.5
    # exact log p(x) = log mean over the 6 orderings; ELBO = mean of the per-ordering values
    per = torch.stack(
        [flow.base.log_prob(flow.transforms[1](x[:, list(p)])[0]) + flow.transforms[1](x)[1]
         for p in itertools.permutations(range(n))],
        dim=1,
    )
    exact = torch.logsumexp(per, 1) - math.log(per.shape[1])
    elbo = per.mean(1)
    assert (exact - elbo).mean() > 0.05  # the posterior over orderings is imperfect
    reps = 30
    xr = x.repeat(reps, 1, 1)
    bounds = {k: flow.iwbo(xr, k=k, chunk=25).view(reps, b).mean(0) for k in (1, 10, 100)}
    draws = 2000
    mean_elbo = flow.log_prob(x.repeat(draws, 1, 1)).view(draws, b).mean(0)
    assert ((mean_elbo - elbo).abs() < 4 * per.std(1) / math.sqrt(draws)).all()
    assert bounds[1].mean() < bounds[10].mean() < bounds[100].mean()
    assert (bounds[100] >= elbo).all()
    # E[IWBO_k] <= log p(x), and with k >> 6 orderings the bound is nearly tight
    torch.testing.assert_close(bounds[100], exact, rtol=0, atol=0.05)


# ----------------------------------------------------------------------------- abs


def test_abs_fair_coin():
    t = AbsSurjection()
    x = torch.randn(4, 3, 2)
    z, ldj = t(x)
    assert torch.equal(z, x.abs())
    assert torch.equal(ldj, torch.full((4,), -6 * math.log(2)))
    assert torch.equal(t(t.inverse(z))[0], z)
    signs = torch.sign(t.inverse(torch.ones(2000, 1)))
    assert abs(float((signs > 0).double().mean()) - 0.5) < 0.05


def test_abs_learned_sign_and_zero_convention():
    net = nn.Linear(1, 1)
    with torch.no_grad():
        net.weight.fill_(2.0)
        net.bias.fill_(-1.0)
    t = AbsSurjection(sign_net=net)
    x = torch.tensor([[-0.5], [0.0], [1.5]])
    z, ldj = t(x)
    logits = 2 * z - 1
    ref = torch.nn.functional.logsigmoid(torch.tensor([-1.0, 1.0, 1.0]).view(3, 1) * logits).view(3)
    torch.testing.assert_close(ldj, ref, rtol=0, atol=1e-12)
    zz = torch.full((4000, 1), 1.0)
    frac = float((t.inverse(zz) > 0).double().mean())
    assert abs(frac - torch.sigmoid(torch.tensor(1.0)).item()) < 0.03
    assert torch.equal(t(t.inverse(zz))[0], zz)


@pytest.mark.parametrize("learned", [False, True])
def test_abs_flow_density_integrates_to_one(learned):
    sign_net = nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1)) if learned else None
    flow = Flow(StandardHalfNormal((1,)), [AbsSurjection(sign_net)])
    h = 1e-3  # midpoint rule: no node at 0, where a learned sign probability makes p(x) jump
    grid = (-12 + h * (torch.arange(24_000) + 0.5)).view(-1, 1)
    with torch.no_grad():
        total = flow.log_prob(grid).exp().sum() * h
    assert abs(float(total) - 1.0) < 1e-6


# ----------------------------------------------------------------------------- max pool


def _brute_force_maxpool_ldj(x: torch.Tensor, log_scale=None) -> torch.Tensor:
    b, c, h, w = x.shape
    out = torch.zeros(b)
    for i in range(b):
        total = 0.0
        for ch in range(c):
            sc = 1.0 if log_scale is None else math.exp(float(log_scale[ch]))
            for r in range(0, h, 2):
                for q in range(0, w, 2):
                    win = x[i, ch, r : r + 2, q : q + 2].flatten().tolist()
                    m = max(win)
                    win.remove(m)
                    total += math.log(0.25)
                    for v in win:
                        g = (m - v) / sc
                        total += math.log(2) - HALF_LOG_2PI - 0.5 * g * g - math.log(sc)
        out[i] = total
    return out


def test_maxpool_ldj_brute_force_and_round_trip():
    t = MaxPool2dSurjection()
    x = torch.randn(3, 2, 4, 6)
    z, ldj = t(x)
    torch.testing.assert_close(z, torch.nn.functional.max_pool2d(x, 2), rtol=0, atol=0)
    torch.testing.assert_close(ldj, _brute_force_maxpool_ldj(x), rtol=0, atol=1e-12)
    xr = t.inverse(z)
    assert xr.shape == x.shape
    assert torch.equal(t(xr)[0], z)
    # a decoder given explicitly (SurVAE's StandardHalfNormal) gives the same ldj
    t2 = MaxPool2dSurjection(decoder=StandardHalfNormal((3 * 2, 2, 3)))
    torch.testing.assert_close(t2(x)[1], ldj, rtol=0, atol=1e-12)
    assert torch.equal(t2(t2.inverse(z))[0], z)


def test_maxpool_learned_scale_and_errors():
    t = MaxPool2dSurjection(num_channels=2, learn_scale=True)
    with torch.no_grad():
        t.log_scale.copy_(torch.tensor([0.5, -0.3]))
    x = torch.randn(2, 2, 2, 4)
    z, ldj = t(x)
    torch.testing.assert_close(ldj, _brute_force_maxpool_ldj(x, t.log_scale.detach()), rtol=0, atol=1e-12)
    assert torch.equal(t(t.inverse(z))[0], z)
    with pytest.raises(ValueError, match="divisible"):
        t(torch.randn(1, 2, 3, 4))
    with pytest.raises(ValueError):
        MaxPool2dSurjection(learn_scale=True)


def test_maxpool_density_normalised():
    # p(x) = N(maxpool(x)) * exp(ldj) on R^4 must integrate to one: importance sampling from N(0, 2^2 I)
    flow = Flow(StandardNormal((1, 1, 1)), [MaxPool2dSurjection()])
    q = torch.distributions.Normal(0.0, 2.0)
    x = q.sample((200_000, 1, 2, 2))
    w = (flow.log_prob(x) - q.log_prob(x).sum((1, 2, 3))).exp()
    assert abs(float(w.mean()) - 1.0) < 0.02


# ----------------------------------------------------------------------------- slice


def test_slice_default_and_densities():
    x = torch.randn(4, 5, 3)
    t = Slice(2, dim=1)
    with pytest.raises(RuntimeError, match="num_drop"):
        t.inverse(torch.randn(4, 2, 3))
    z, ldj = t(x)
    assert torch.equal(z, x[:, :2])
    ref = torch.distributions.Normal(0.0, 1.0).log_prob(x[:, 2:]).sum((1, 2))
    torch.testing.assert_close(ldj, ref, rtol=0, atol=1e-12)
    xr = t.inverse(z)
    assert xr.shape == x.shape and torch.equal(t(xr)[0], z)

    t2 = Slice(2, dim=1, density=StandardNormal((3, 3)))
    torch.testing.assert_close(t2(x)[1], ref, rtol=0, atol=1e-12)
    assert torch.equal(t2(t2.inverse(z))[0], z)

    net = nn.Sequential(nn.Flatten(), nn.Linear(6, 18), nn.Unflatten(1, (6, 3)))
    t3 = Slice(2, dim=1, density=ConditionalNormal(net, split_dim=1))
    z3, ldj3 = t3(x)
    mean, log_std = net(z3).chunk(2, dim=1)
    ref3 = torch.distributions.Normal(mean, log_std.exp()).log_prob(x[:, 2:]).sum((1, 2))
    torch.testing.assert_close(ldj3, ref3, rtol=0, atol=1e-12)
    assert torch.equal(t3(t3.inverse(z3))[0], z3)


def test_slice_flow_density_normalised():
    flow = Flow(StandardNormal((1,)), [FixedLinear((3,)), Slice(1, dim=1, num_drop=2)])
    q = torch.distributions.Normal(0.0, 2.0)
    x = q.sample((100_000, 3))
    w = (flow.log_prob(x) - q.log_prob(x).sum(1)).exp()
    assert abs(float(w.mean()) - 1.0) < 0.02
    assert flow.sample(5).shape == (5, 3)


# ----------------------------------------------------------------------------- augment and VAE


def test_augment():
    enc = ConditionalNormal(nn.Linear(2, 4), split_dim=1)
    t = Augment(enc, x_size=2, dim=1)
    assert t.stochastic_forward and not t.stochastic_inverse
    x = torch.randn(5, 2)
    torch.manual_seed(1)
    z, ldj = t(x)
    torch.manual_seed(1)
    e_ref, lq_ref = enc.sample_with_log_prob(context=x)
    assert torch.equal(z[:, :2], x) and torch.equal(z[:, 2:], e_ref)
    torch.testing.assert_close(ldj, -lq_ref, rtol=0, atol=0)
    assert torch.equal(t.inverse(z), x)
    # unconditional noise
    t2 = Augment(StandardNormal((3,)), x_size=2)
    z2, ldj2 = t2(x)
    assert z2.shape == (5, 5)
    torch.testing.assert_close(ldj2, -StandardNormal((3,)).log_prob(z2[:, 2:]), rtol=0, atol=1e-12)
    with pytest.raises(ValueError):
        t2(torch.randn(5, 3))


def test_vae_layer():
    enc = ConditionalNormal(nn.Linear(3, 2), split_dim=1)
    dec = ConditionalNormal(nn.Linear(1, 6), split_dim=1)
    t = VAE(enc, dec)
    assert t.stochastic_forward and t.stochastic_inverse
    x = torch.randn(4, 3)
    torch.manual_seed(3)
    z, ldj = t(x)
    torch.manual_seed(3)
    z_ref, lq = enc.sample_with_log_prob(context=x)
    assert torch.equal(z, z_ref)
    torch.testing.assert_close(ldj, dec.log_prob(x, z) - lq, rtol=0, atol=1e-12)
    assert t.inverse(z).shape == x.shape
    flow = Flow(StandardNormal((1,)), [t])
    assert not flow.is_exact
    b1 = flow.iwbo(x.repeat(20, 1), k=1).view(20, 4).mean()
    b50 = flow.iwbo(x.repeat(20, 1), k=50).view(20, 4).mean()
    assert b50 > b1
    with pytest.raises(TypeError):
        VAE(StandardNormal((2,)), dec)


# ----------------------------------------------------------------------------- dequantization


def test_uniform_dequantization():
    t = UniformDequantization(num_bits=8)
    assert t.stochastic_forward
    x = torch.randint(0, 256, (6, 3, 4, 4))
    x[0, 0, 0, :2] = torch.tensor([0, 255])
    z, ldj = t(x)
    assert z.dtype == torch.float64 and (z >= 0).all() and (z < 1).all()
    assert torch.equal(ldj, torch.full((6,), -48 * 8 * math.log(2)))
    assert torch.equal(t.inverse(z), x.double())
    xf = x.float()
    zf, _ = t(xf)
    assert zf.dtype == torch.float32 and torch.equal(t.inverse(zf), xf)
    # u that rounds x + u up to x + 1 in float32 is kept below the next integer
    u = torch.full_like(xf, 1.0 - 2.0**-30)
    assert torch.equal(t.inverse(t._to_unit(xf, u)), xf)
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        t(torch.tensor([[256]]))


def test_variational_dequantization_log_q():
    t = VariationalDequantization([ContextAffine()], num_bits=3)
    x = torch.randint(0, 8, (5, 4)).double()
    torch.manual_seed(7)
    z, ldj = t(x)
    assert (z >= 0).all() and (z < 1).all()
    assert torch.equal(t.inverse(z), x)
    torch.manual_seed(7)
    u, log_q = t.sample_noise(x)
    torch.testing.assert_close(z, (x + u) / 8, rtol=0, atol=1e-15)
    # q(u|x) as a torch TransformedDistribution: N(0,1) -> affine(context) -> sigmoid
    log_a, b = t.noise.transforms[0].params(x / 8)
    TD = torch.distributions
    q = TD.TransformedDistribution(
        TD.Normal(torch.zeros_like(x), 1.0), [TD.AffineTransform(b, log_a.exp()), TD.SigmoidTransform()]
    )
    torch.testing.assert_close(log_q, q.log_prob(u).sum(1), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ldj, -log_q - 4 * 3 * math.log(2), rtol=0, atol=1e-12)
    # gradients reach the noise flow
    ldj.sum().backward()
    assert t.noise.transforms[0].w.grad is not None


# ----------------------------------------------------------------------------- repr and devices


def test_reprs():
    assert "key='norm'" in repr(SortSurjection(key="norm"))
    assert "key='sort_by_y'" in repr(SortSurjection(key=sort_by_y))
    assert "kernel_size=2" in repr(MaxPool2dSurjection())
    assert "num_keep=2" in repr(Slice(2))
    assert "num_bits=5" in repr(UniformDequantization(5))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_layers_run_on_cuda():
    dev = torch.device("cuda")
    sets = torch.randn(3, 5, 2, device=dev)
    for t in (SortSurjection(), StochasticPermutation(), AbsSurjection(), Slice(2, num_drop=3)):
        t = t.to(dev)
        z, ldj = t(sets)
        assert z.device.type == ldj.device.type == "cuda" and t.inverse(z).device.type == "cuda"
    img = torch.randn(2, 3, 4, 4, device=dev)
    mp = MaxPool2dSurjection(num_channels=3, learn_scale=True).to(dev)
    z, ldj = mp(img)
    assert torch.equal(mp(mp.inverse(z))[0], z)
    deq = UniformDequantization().to(dev)
    x = torch.randint(0, 256, (2, 3, 4, 4), device=dev).double()
    assert torch.equal(deq.inverse(deq(x)[0]), x)
    assert StandardNormal((2,)).to(dev).sample(3).device.type == "cuda"


def _lex_reference(x: torch.Tensor, order: list[int]) -> torch.Tensor:
    """Brute force: each set's points sorted as Python tuples of the coordinates in ``order``."""
    rows = [sorted(pts, key=lambda p: tuple(p[c] for c in order)) for pts in x.tolist()]
    return torch.tensor(rows, dtype=x.dtype)


@pytest.mark.parametrize("key, order", [(0, [0, 1, 2]), (1, [1, 0, 2]), ("z", [2, 0, 1])])
def test_sort_is_lexicographic_on_integer_sets_with_ties(key, order):
    """Integer-valued sets with many ties and duplicates: the sort matches the brute-force lexicographic order."""
    x = torch.randint(0, 3, (16, 12, 3)).double()
    z, _ = SortSurjection(key=key)(x)
    assert torch.equal(z, _lex_reference(x, order))


@pytest.mark.parametrize("key", [0, 1, "norm"])
def test_sorted_tuple_is_identical_for_every_permutation_with_ties_and_duplicates(key):
    x = torch.randint(0, 3, (8, 10, 2)).double()
    x[:, 1] = x[:, 0]  # exact duplicates in every set
    t = SortSurjection(key=key)
    ref, ldj = t(x)
    for _ in range(20):
        xp = permute_along(x, random_permutations(8, 10))
        z, l = t(xp)
        assert torch.equal(z, ref) and torch.equal(l, ldj)


def test_norm_key_ties_broken_by_coordinates():
    x = torch.tensor([[[0.0, 1.0], [1.0, 0.0], [0.0, -1.0]]])  # equal norms
    z, _ = SortSurjection(key="norm")(x)
    assert torch.equal(z, torch.tensor([[[0.0, -1.0], [0.0, 1.0], [1.0, 0.0]]]))


def test_sort_inverse_with_ldj_is_minus_the_forward_constant():
    t = SortSurjection(key=0)
    z, ldj = t(torch.randn(4, 5, 2))
    x, inv = t.inverse_with_ldj(z)
    assert torch.equal(t(x)[0], z)
    torch.testing.assert_close(inv, -ldj)
