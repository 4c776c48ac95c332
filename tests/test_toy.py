"""2-D toy flows with an abs surjection: folds, normalisation, and training on a symmetric mixture."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.autograd.functional import jacobian

from setflow.models import build_model
from setflow.models.toy import CoordinateAbs, SoftplusInverse, fold_layers
from setflow.viz.toy import grid_mass


pytestmark = pytest.mark.usefixtures("one_thread")


def symmetric_mixture(n: int, seed: int = 0) -> torch.Tensor:
    """Four Gaussians at (+-2, +-2), std 0.4: symmetric under both axis flips."""
    g = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, (n, 2), generator=g).float() * 2 - 1
    return 2.0 * signs + 0.4 * torch.randn(n, 2, generator=g)


def _perturb(model: torch.nn.Module, std: float = 0.1) -> None:
    """Move the zero-initialised output layers off zero so the tests see a non-trivial model."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(std * torch.randn_like(p))


def test_softplus_inverse_is_a_bijection_with_exact_logdet(double):
    t = SoftplusInverse(dims=[1])
    x = torch.tensor([[-1.3, 0.2], [0.7, 3.5], [2.0, 1e-3]])
    z, ldj = t(x)
    torch.testing.assert_close(t.inverse(z), x, atol=1e-10, rtol=0)
    for i in range(x.shape[0]):
        jac = jacobian(lambda xi: t(xi.unsqueeze(0))[0].reshape(-1), x[i])
        torch.testing.assert_close(ldj[i], torch.linalg.slogdet(jac)[1], atol=1e-10, rtol=0)
    assert torch.isfinite(t(torch.zeros(1, 2))[0]).all()  # a point on the axis stays finite


@pytest.mark.parametrize("abs_", ["learned", "uniform"])
def test_fold_round_trip(abs_):
    folds = torch.nn.ModuleList(fold_layers(abs_, [0, 1], sign_hidden=[16], activation="relu"))
    _perturb(folds)
    z = torch.rand(64, 2) * 3
    x = z
    for t in reversed(folds):
        x = t.inverse(x)
    assert torch.equal(x.abs(), z)
    out = x
    for t in folds:
        out, _ = t(out)
    assert torch.equal(out, z)  # forward(inverse(z)) == z


def test_learned_fold_is_a_normalised_joint_sign_distribution():
    """sum over the 4 sign patterns of p(s | z) = 1, and the two signs can be correlated."""
    folds = torch.nn.ModuleList(fold_layers("learned", [0, 1], sign_hidden=[16], activation="relu"))
    _perturb(folds, std=1.0)
    z = torch.rand(32, 2) * 3 + 0.1
    total = torch.zeros(32)
    log_p = {}
    for s in itertools.product([-1.0, 1.0], repeat=2):
        x = z * torch.tensor(s)
        ldj = torch.zeros(32)
        for t in folds:
            x, l = t(x)
            ldj = ldj + l
        log_p[s] = ldj
        total = total + ldj.exp()
    torch.testing.assert_close(total, torch.ones(32), atol=1e-6, rtol=0)
    # correlation: p(+,+) p(-,-) != p(+,-) p(-,+) for some z (independent signs would give equality)
    gap = (log_p[(1.0, 1.0)] + log_p[(-1.0, -1.0)] - log_p[(1.0, -1.0)] - log_p[(-1.0, 1.0)]).abs()
    assert gap.max() > 1e-3


def test_coordinate_abs_folds_one_coordinate():
    t = CoordinateAbs(1)
    x = torch.tensor([[-1.0, -2.0], [3.0, 4.0]])
    z, ldj = t(x)
    assert torch.equal(z, torch.tensor([[-1.0, 2.0], [3.0, 4.0]]))
    torch.testing.assert_close(ldj, torch.full((2,), -math.log(2.0)))


@pytest.mark.parametrize("abs_", ["none", "learned", "uniform"])
def test_toy_density_integrates_to_one(abs_):
    model = build_model("toy_flow", abs=abs_, num_flows=3, hidden_units=[16], sign_hidden=[16])
    _perturb(model, std=0.05)
    assert grid_mass(model, bounds=(-7.0, 7.0), grid_size=300) == pytest.approx(1.0, abs=5e-3)
    assert model.sample(10).shape == (10, 2)
    assert model.is_exact


def test_toy_flow_rejects_bad_arguments():
    with pytest.raises(ValueError, match="abs must be one of"):
        build_model("toy_flow", abs="sometimes")
    with pytest.raises(ValueError, match="abs_dims"):
        build_model("toy_flow", abs="learned", abs_dims=[2])
    with pytest.raises(ValueError, match="wrong|shape|dimensions"):
        build_model("toy_flow").log_prob(torch.zeros(3, 3))


def _train(model, data, steps: int, lr: float = 3e-3, batch: int = 128) -> tuple[float, float]:
    test = data[-2000:]
    with torch.no_grad():
        before = -model.log_prob(test).mean().item()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = data[torch.randint(0, data.shape[0] - 2000, (batch,), generator=g)]
        loss = -model.log_prob(x).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = -model.log_prob(test).mean().item()
    return before, after


def test_abs_flow_training_reduces_nll_fast():
    data = symmetric_mixture(6000)
    model = build_model("toy_flow", abs="learned", num_flows=2, hidden_units=[32], sign_hidden=[16])
    before, after = _train(model, data, steps=150)
    assert after < before - 1.0, (before, after)


@pytest.mark.slow
def test_abs_flow_training_reduces_nll_well_below_initial():
    data = symmetric_mixture(20000)
    model = build_model("toy_flow", abs="learned", num_flows=4, hidden_units=[100, 100])
    before, after = _train(model, data, steps=600, lr=1e-3)
    # the mixture's entropy is log 4 + log(2 pi e 0.4^2) ~= 2.38 nats
    assert after < before - 2.0 and after < 2.8, (before, after)
