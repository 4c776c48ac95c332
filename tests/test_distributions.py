"""Distributions: log-densities against torch.distributions / high precision, masses, sampling."""

from __future__ import annotations

import math
import pickle

import mpmath
import pytest
import torch
from torch import nn

from setflow.distributions.discretized_logistic import (
    ConditionalDiscretizedLogistic,
    ConditionalDiscretizedLogisticMixture,
    DiscretizedLogistic,
    DiscretizedLogisticMixture,
    discretized_logistic_log_prob,
    discretized_logistic_mixture_cdf,
    discretized_logistic_mixture_log_prob,
    discretized_logistic_mixture_pmf,
    logistic_cdf,
    sample_discretized_logistic_mixture,
)
from setflow.distributions.normal import ConditionalNormal, DiagonalNormal, StandardHalfNormal, StandardNormal

pytestmark = pytest.mark.usefixtures("double")
D = torch.distributions


class ConstNet(nn.Module):
    """Returns a fixed parameter tensor for every context row (a test conditioner)."""

    def __init__(self, out: torch.Tensor):
        super().__init__()
        self.out = nn.Parameter(out)

    def forward(self, context):
        return self.out.expand(context.shape[0], *self.out.shape[1:])


# ----------------------------------------------------------------------------- Gaussians


def test_standard_normal_matches_torch():
    d = StandardNormal((2, 3))
    x = torch.randn(4, 2, 3)
    ref = D.Normal(0.0, 1.0).log_prob(x).sum((1, 2))
    torch.testing.assert_close(d.log_prob(x), ref, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match=r"\(B, 2, 3\)"):
        d.log_prob(torch.randn(4, 3, 2))


def test_diagonal_normal_matches_torch():
    d = DiagonalNormal((3,))
    with torch.no_grad():
        d.loc.copy_(torch.tensor([0.5, -1.0, 2.0]))
        d.log_scale.copy_(torch.tensor([0.1, -0.7, 1.3]))
    x = torch.randn(5, 3)
    ref = D.Normal(d.loc, d.log_scale.exp()).log_prob(x).sum(1)
    torch.testing.assert_close(d.log_prob(x), ref, rtol=0, atol=1e-12)
    s = d.sample(4000)
    torch.testing.assert_close(s.mean(0), d.loc.detach(), rtol=0, atol=0.25)
    assert s.requires_grad  # reparametrised


def test_half_normal_matches_torch_and_support():
    d = StandardHalfNormal((3,))
    x = torch.rand(6, 3) * 3
    ref = D.HalfNormal(1.0).log_prob(x).sum(1)
    torch.testing.assert_close(d.log_prob(x), ref, rtol=0, atol=1e-12)
    assert torch.isneginf(d.log_prob(torch.tensor([[1.0, -0.1, 2.0]]))).all()
    assert (d.sample(100) >= 0).all()


@pytest.mark.parametrize("cls", [StandardNormal, DiagonalNormal, StandardHalfNormal, DiscretizedLogistic])
def test_sample_follows_module_dtype(cls):
    d = cls((2, 3))
    assert d.sample(4).shape == (4, 2, 3)
    assert d.float().sample(2).dtype == torch.float32
    assert d.double().sample(2).dtype == torch.float64
    assert d.sample(context=torch.zeros(7, 1)).shape[0] == 7  # context fixes the batch size
    pickle.loads(pickle.dumps(d))


def test_conditional_normal():
    net = nn.Linear(3, 4)
    d = ConditionalNormal(net, split_dim=1)
    c = torch.randn(5, 3)
    x = torch.randn(5, 2)
    mean, log_std = net(c).chunk(2, dim=1)
    ref = D.Normal(mean, log_std.exp()).log_prob(x).sum(1)
    torch.testing.assert_close(d.log_prob(x, c), ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(d.mean(c), mean)
    s, lp = d.sample_with_log_prob(context=c)
    assert s.shape == (5, 2)
    torch.testing.assert_close(lp, d.log_prob(s, c), rtol=0, atol=1e-12)
    with pytest.raises(ValueError):
        d.sample(3, context=c)
    with pytest.raises(ValueError):
        d.log_prob(x)


# ----------------------------------------------------------------------------- discretized logistic


def _mp_log_mass(x: float, mu: float, s: float) -> float:
    """``log(sigma(a) - sigma(b))`` with 60 digits (right tail as ``sigma(-b) - sigma(-a)``: no cancellation)."""
    with mpmath.workdps(60):
        sig = lambda t: 1 / (1 + mpmath.exp(-t))  # noqa: E731
        a = (mpmath.mpf(x) + mpmath.mpf("0.5") - mpmath.mpf(mu)) / mpmath.mpf(s)
        b = (mpmath.mpf(x) - mpmath.mpf("0.5") - mpmath.mpf(mu)) / mpmath.mpf(s)
        mass = sig(-b) - sig(-a) if x >= mu else sig(a) - sig(b)
        return float(mpmath.log(mass))


@pytest.mark.parametrize("mu,log_s", [(0.3, 0.0), (-2.7, -1.5), (10.2, 2.0), (0.5, -3.0)])
def test_discretized_logistic_log_prob_high_precision(mu, log_s):
    s = math.exp(log_s)
    xs = [round(mu) + d for d in (-300, -40, -5, -1, 0, 1, 2, 7, 40, 300, 10_000, -10_000)]
    x = torch.tensor(xs, dtype=torch.float64)
    got = discretized_logistic_log_prob(x, torch.tensor(mu), torch.tensor(log_s))
    ref = torch.tensor([_mp_log_mass(v, mu, s) for v in xs])
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


def test_discretized_logistic_matches_naive_near_mode():
    mu, log_s = torch.tensor(1.3), torch.tensor(0.4)
    x = torch.arange(-5.0, 8.0)
    naive = torch.log(logistic_cdf(x + 0.5, mu, log_s) - logistic_cdf(x - 0.5, mu, log_s))
    torch.testing.assert_close(discretized_logistic_log_prob(x, mu, log_s), naive, rtol=0, atol=1e-12)


def test_far_tails_finite_in_float32_with_gradients():
    loc = torch.tensor([0.2, -3.0], dtype=torch.float32, requires_grad=True)
    log_scale = torch.tensor([-2.0, -1.0], dtype=torch.float32, requires_grad=True)
    for shift in (1e4, -1e4):
        x = torch.round(loc.detach() + shift)
        lp = discretized_logistic_log_prob(x, loc, log_scale)
        assert torch.isfinite(lp).all() and (lp < -1e3).all()
        loc.grad = log_scale.grad = None
        lp.sum().backward()
        assert torch.isfinite(loc.grad).all() and torch.isfinite(log_scale.grad).all()


@pytest.mark.parametrize("log_s", [-2.0, 0.0, 3.0])
def test_discretized_logistic_masses_sum_to_one(log_s):
    x = torch.arange(-2000.0, 2001.0)
    lp = discretized_logistic_log_prob(x, torch.tensor(4.6), torch.tensor(log_s))
    assert abs(float(lp.exp().sum()) - 1.0) < 1e-9


def _mixture_params(shape=(3,), k=4):
    logits = torch.randn(*shape, k)
    locs = torch.randn(*shape, k) * 20
    log_scales = torch.rand(*shape, k) * 4 - 2
    return logits, locs, log_scales


def test_mixture_log_prob_and_pmf_sum_to_one():
    logits, locs, log_scales = _mixture_params()
    bins = torch.arange(-2000.0, 2001.0)
    lp = discretized_logistic_mixture_log_prob(bins.view(-1, 1), logits, locs, log_scales)  # (M, 3)
    torch.testing.assert_close(lp.exp().sum(0), torch.ones(3), rtol=0, atol=1e-9)
    pmf = discretized_logistic_mixture_pmf(bins, logits, locs, log_scales)  # (3, M)
    assert pmf.dtype == torch.float64 and pmf.shape == (3, bins.numel())
    torch.testing.assert_close(pmf, lp.exp().T, rtol=1e-10, atol=1e-300)
    torch.testing.assert_close(pmf.sum(-1), torch.ones(3), rtol=0, atol=1e-9)
    # the mixture equals the weighted sum of single components
    w = torch.softmax(logits, -1)
    single = discretized_logistic_log_prob(bins.view(-1, 1, 1), locs, log_scales).exp()
    torch.testing.assert_close((single * w).sum(-1), lp.exp(), rtol=1e-10, atol=1e-300)


def test_mixture_cdf_consistent_with_pmf():
    logits, locs, log_scales = _mixture_params()
    lo, hi = -30, 25
    pmf = discretized_logistic_mixture_pmf(torch.arange(lo, hi + 1), logits, locs, log_scales)
    cdf_hi = discretized_logistic_mixture_cdf(torch.full((3,), hi), logits, locs, log_scales)
    cdf_lo = discretized_logistic_mixture_cdf(torch.full((3,), lo - 1), logits, locs, log_scales)
    torch.testing.assert_close(pmf.sum(-1), cdf_hi - cdf_lo, rtol=0, atol=1e-12)


def test_pmf_is_float64_from_float32_params_and_per_row_bins():
    logits, locs, log_scales = (t.float() for t in _mixture_params((2, 5)))
    bins = torch.arange(-3, 4).expand(2, 5, 7)
    pmf = discretized_logistic_mixture_pmf(bins, logits, locs, log_scales)
    assert pmf.dtype == torch.float64 and pmf.shape == (2, 5, 7)
    again = discretized_logistic_mixture_pmf(bins, logits, locs, log_scales)
    assert torch.equal(pmf, again)


def _chi2_per_dof(samples: torch.Tensor, pmf_fn) -> float:
    vals = torch.arange(int(samples.min()), int(samples.max()) + 1)
    counts = torch.stack([(samples == v).sum() for v in vals]).double()
    expected = pmf_fn(vals) * samples.numel()
    keep = expected > 10
    assert keep.sum() > 5
    chi2 = ((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum()
    return float(chi2) / int(keep.sum())


def test_sampling_histogram_matches_pmf():
    logits = torch.tensor([0.0, 1.0, -0.5])
    locs = torch.tensor([-6.3, 0.4, 7.5])
    log_scales = torch.tensor([0.3, -0.5, 0.8])
    n = 40_000
    s = sample_discretized_logistic_mixture(logits.expand(n, 3), locs.expand(n, 3), log_scales.expand(n, 3))
    assert torch.equal(s, s.round())
    chi = _chi2_per_dof(s, lambda v: discretized_logistic_mixture_pmf(v, logits, locs, log_scales))
    assert chi < 2.0, chi
    # a sampler off by half a bin (floor instead of round) is caught
    chi_bad = _chi2_per_dof(s + 1, lambda v: discretized_logistic_mixture_pmf(v, logits, locs, log_scales))
    assert chi_bad > 10.0


def test_discretized_logistic_modules():
    d = DiscretizedLogistic((2, 2))
    x = torch.randint(-5, 6, (3, 2, 2)).double()
    ref = discretized_logistic_log_prob(x, d.loc, d.log_scale).sum((1, 2))
    torch.testing.assert_close(d.log_prob(x), ref, rtol=0, atol=1e-12)
    logits, locs, log_scales = d.params()
    assert locs.shape == (1, 2, 2, 1)

    m = DiscretizedLogisticMixture((4,), num_components=5)
    assert m.locs[0].unique().numel() == 5  # components start apart
    logits, locs, log_scales = m.params()
    assert logits.shape == locs.shape == log_scales.shape == (1, 4, 5)
    x = m.sample(6)
    assert x.shape == (6, 4) and torch.equal(x, x.round()) and not x.requires_grad
    ref = discretized_logistic_mixture_log_prob(x, m.logit_weights, m.locs, m.log_scales).sum(1)
    torch.testing.assert_close(m.log_prob(x), ref, rtol=0, atol=1e-12)
    with pytest.raises(ValueError):
        m.log_prob(torch.zeros(2, 3))
    pickle.loads(pickle.dumps(m))


def test_conditional_discretized_logistic_layout():
    c_dim, k = 2, 3
    logits, locs, log_scales = torch.randn(c_dim, 4, k), torch.randn(c_dim, 4, k) * 3, torch.randn(c_dim, 4, k) * 0.5
    # net output (1, 3*K*C, 4): chunk j = channels [j*C:(j+1)*C]
    chunks = [t[..., i] for t in (logits, locs, log_scales) for i in range(k)]
    d = ConditionalDiscretizedLogisticMixture(ConstNet(torch.cat(chunks, 0).unsqueeze(0)), num_components=k)
    ctx = torch.zeros(5, 1)
    p = d.params(ctx)
    assert p[0].shape == (5, c_dim, 4, k)
    for got, want in zip(p, (logits, locs, log_scales)):
        torch.testing.assert_close(got[0], want, rtol=0, atol=0)
    x = d.sample(context=ctx)
    assert x.shape == (5, c_dim, 4)
    ref = discretized_logistic_mixture_log_prob(x, logits, locs, log_scales).sum((1, 2))
    torch.testing.assert_close(d.log_prob(x, ctx), ref, rtol=0, atol=1e-12)

    loc, log_scale = torch.randn(1, c_dim, 4), torch.randn(1, c_dim, 4)
    d1 = ConditionalDiscretizedLogistic(ConstNet(torch.cat([loc, log_scale], 1)))
    x = d1.sample(context=ctx)
    ref = discretized_logistic_log_prob(x, loc, log_scale).sum((1, 2))
    torch.testing.assert_close(d1.log_prob(x, ctx), ref, rtol=0, atol=1e-12)
    with pytest.raises(ValueError):
        d1.log_prob(x)
