"""Every bijection: exact inverse, and ldj equal to log|det J| from autograd (float64)."""

from __future__ import annotations

import io
import pickle

import pytest
import torch
from torch import nn
from torch.autograd.functional import jacobian

from setflow.transforms import (
    ActNorm,
    AdditiveCoupling,
    AffineCoupling,
    CompositeTransform,
    Conv1x1,
    InverseTransform,
    Logit,
    PermuteAxes,
    Reshape,
    Reverse,
    ScalarAffine,
    Shuffle,
    Sigmoid,
    Squeeze2d,
    Unsqueeze2d,
)

DT = torch.float64


def assert_bijection(t, x: torch.Tensor, context=None) -> None:
    """Round trip and per-datum log-det against the autograd Jacobian + slogdet."""
    z, ldj = t(x, context)
    assert ldj.shape == (x.shape[0],)
    x_rec = t.inverse(z, context)
    torch.testing.assert_close(x_rec, x, atol=1e-10, rtol=0)
    for i in range(x.shape[0]):
        ctx = None if context is None else context[i : i + 1]

        def f(xi: torch.Tensor) -> torch.Tensor:
            return t(xi.unsqueeze(0), ctx)[0].reshape(-1)

        jac = jacobian(f, x[i]).reshape(z[i].numel(), x[i].numel())
        sign, logabsdet = torch.linalg.slogdet(jac)
        assert sign != 0
        torch.testing.assert_close(ldj[i], logabsdet, atol=1e-8, rtol=1e-8)
    # the inverse direction carries minus the log-det, evaluated at the latent
    x_inv, ldj_inv = InverseTransform(t)(z, context)
    torch.testing.assert_close(x_inv, x, atol=1e-10, rtol=0)
    torch.testing.assert_close(ldj_inv, -ldj, atol=1e-8, rtol=1e-8)


class PointMLP(nn.Module):
    """Per-point map (B, N, Din) -> (B, N, Dout) (coordinate-wise coupling conditioner)."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, 16), nn.Tanh(), nn.Linear(16, d_out))

    def forward(self, x, context=None):
        out = self.net(x)
        return out if context is None else out + context[:, None, :1]


class FlatMLP(nn.Module):
    """(B, Na, D) -> (B, Nb, 2D), mixing all points (point-wise coupling conditioner)."""

    def __init__(self, n_a: int, n_b: int, d: int, mult: int = 2) -> None:
        super().__init__()
        self.n_b, self.d, self.mult = n_b, d, mult
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(n_a * d, 32), nn.Tanh(), nn.Linear(32, n_b * d * mult))

    def forward(self, x):
        return self.net(x).view(x.shape[0], self.n_b, self.d * self.mult)


def conv_net(c_in: int, c_out: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(c_in, 8, 3, padding=1), nn.Tanh(), nn.Conv2d(8, c_out, 3, padding=1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("scale_fn", ["exp", "softplus", "sigmoid", "tanh_exp"])
def test_affine_coupling_coordinatewise_set(scale_fn):
    t = AffineCoupling(PointMLP(2, 2 * 3), split_dim=-1, split_sizes=(2, 3), scale_fn=scale_fn).to(DT)
    assert_bijection(t, torch.randn(3, 4, 5, dtype=DT))


def test_affine_coupling_with_context():
    t = AffineCoupling(PointMLP(1, 2), split_dim=-1).to(DT)
    assert_bijection(t, torch.randn(2, 3, 2, dtype=DT), context=torch.randn(2, 4, dtype=DT))


def test_affine_coupling_pointwise_set():
    t = AffineCoupling(FlatMLP(3, 2, 2), split_dim=1, params_dim=-1, scale_fn="softplus").to(DT)
    assert_bijection(t, torch.randn(2, 5, 2, dtype=DT))


def test_affine_coupling_image_channels():
    t = AffineCoupling(conv_net(2, 4), split_dim=1, scale_fn="tanh_exp").to(DT)
    assert_bijection(t, torch.randn(2, 4, 3, 3, dtype=DT))


def test_additive_coupling_image():
    t = AdditiveCoupling(conv_net(3, 1), split_dim=1, split_sizes=(3, 1)).to(DT)
    assert_bijection(t, torch.randn(2, 4, 2, 2, dtype=DT))


def test_integer_additive_coupling_keeps_integers_and_inverts_exactly():
    t = AdditiveCoupling(conv_net(3, 1), split_dim=1, split_sizes=(3, 1), rounding=True)
    with torch.no_grad():
        for p in t.parameters():
            p.mul_(20)
    x = torch.randint(0, 256, (5, 4, 6, 6)).float()
    z, ldj = t(x)
    assert torch.equal(z, torch.round(z)) and torch.equal(ldj, torch.zeros(5))
    assert not torch.equal(z, x)
    assert torch.equal(t.inverse(z), x)


def test_round_ste_gradient_is_identity():
    x = torch.randn(4, 4, 2, 2, requires_grad=True)
    net = conv_net(2, 2)
    t = AdditiveCoupling(net, split_dim=1, rounding=True)
    z, _ = t(x)
    z.sum().backward()
    assert net[0].weight.grad is not None and net[0].weight.grad.abs().sum() > 0


def test_coupling_rejects_bad_split():
    t = AffineCoupling(PointMLP(2, 4), split_dim=-1, split_sizes=(2, 2))
    with pytest.raises(ValueError, match="split_sizes"):
        t(torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match="scale_fn"):
        AffineCoupling(PointMLP(2, 4), split_dim=-1, scale_fn="cube")


@pytest.mark.parametrize("shape,fd", [((6, 5, 3), -1), ((4, 3, 2, 2), 1)])
def test_actnorm_bijection_and_init(shape, fd):
    t = ActNorm(shape[fd], feature_dim=fd).to(DT)
    x = torch.randn(*shape, dtype=DT) * 3 + 1
    z, _ = t(x)
    dims = [d for d in range(x.dim()) if d != fd % x.dim()]
    torch.testing.assert_close(z.mean(dims), torch.zeros(shape[fd], dtype=DT), atol=1e-10, rtol=0)
    torch.testing.assert_close(z.var(dims, unbiased=False), torch.ones(shape[fd], dtype=DT), atol=1e-8, rtol=0)
    with torch.no_grad():
        t.log_scale.add_(0.3)
        t.shift.add_(-0.2)
    assert_bijection(t, torch.randn(*shape, dtype=DT))


def test_actnorm_constant_channel_is_safe():
    t = ActNorm(3, feature_dim=-1)
    x = torch.randn(8, 10, 3)
    x[..., 1] = 4.0
    z, ldj = t(x)
    assert torch.isfinite(z).all() and torch.isfinite(ldj).all()
    assert t.log_scale[1] == 0 and torch.allclose(z[..., 1], torch.zeros_like(z[..., 1]))


def test_actnorm_state_survives_save_and_load():
    t = ActNorm(2, feature_dim=-1)
    t(torch.randn(16, 5, 2) * 5 + 3)
    buf = io.BytesIO()
    torch.save(t.state_dict(), buf)
    buf.seek(0)
    fresh = ActNorm(2, feature_dim=-1)
    fresh.load_state_dict(torch.load(buf))
    assert bool(fresh.initialized)
    before = (fresh.shift.clone(), fresh.log_scale.clone())
    fresh(torch.randn(16, 5, 2))  # must not re-initialise on new data
    assert torch.equal(fresh.shift, before[0]) and torch.equal(fresh.log_scale, before[1])
    torch.testing.assert_close(fresh.shift, t.shift)


def test_actnorm_bad_shape():
    with pytest.raises(ValueError, match="3 features along dim -1"):
        ActNorm(3, feature_dim=-1)(torch.randn(2, 4, 2))


@pytest.mark.parametrize("shape,fd", [((2, 3, 2, 2), 1), ((3, 4, 3), -1)])
def test_conv1x1(shape, fd):
    t = Conv1x1(shape[fd], feature_dim=fd).to(DT)
    with torch.no_grad():
        t.log_s.add_(torch.randn_like(t.log_s) * 0.5)
        t.upper.add_(torch.randn_like(t.upper) * 0.3)
        t.lower.add_(torch.randn_like(t.lower) * 0.3)
    assert_bijection(t, torch.randn(*shape, dtype=DT))


def test_shape_and_permutation_layers():
    x_img = torch.randn(2, 2, 4, 6, dtype=DT)
    x_set = torch.randn(2, 5, 3, dtype=DT)
    for t, x in [
        (Squeeze2d(), x_img),
        (Unsqueeze2d(), torch.randn(2, 8, 2, 3, dtype=DT)),
        (Reshape((5, 3), (15,)), x_set),
        (PermuteAxes((1, 0)), x_set),
        (Reverse(dim=1), x_set),
        (Shuffle(5, dim=1, seed=3), x_set),
        (Shuffle(3, dim=-1, seed=1), x_set),
        (ScalarAffine(shift=0.5, scale=-1 / 28), x_set),
    ]:
        assert_bijection(t, x)


def test_squeeze_layout_and_errors():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    z, _ = Squeeze2d()(x)
    assert z.shape == (1, 4, 2, 2)
    # channel i*2+j holds pixel (i, j) of each 2x2 window
    assert torch.equal(z[0, :, 0, 0], torch.tensor([0.0, 1.0, 4.0, 5.0]))
    with pytest.raises(ValueError, match="divisible"):
        Squeeze2d()(torch.randn(1, 1, 3, 4))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        Squeeze2d()(torch.randn(1, 4, 4))


def test_logit_and_sigmoid():
    assert_bijection(Logit(eps=0.05), torch.rand(3, 4, dtype=DT) * 0.98 + 0.01)
    assert_bijection(Sigmoid(), torch.randn(3, 4, dtype=DT) * 3)
    z, ldj = Sigmoid()(torch.tensor([[-800.0, 800.0]], dtype=DT))
    assert torch.isfinite(ldj).all()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Logit()(torch.tensor([[1.5]]))


def test_composite_with_its_inverse_is_identity():
    layers = [
        AffineCoupling(PointMLP(1, 2), split_dim=-1),
        Shuffle(4, dim=1),
        ActNorm(2, feature_dim=-1),
    ]
    t = CompositeTransform(layers).to(DT)
    x = torch.randn(3, 4, 2, dtype=DT)
    t(x)  # initialise ActNorm
    both = CompositeTransform([t, InverseTransform(t)])
    y, ldj = both(x)
    torch.testing.assert_close(y, x, atol=1e-10, rtol=0)
    torch.testing.assert_close(ldj, torch.zeros(3, dtype=DT), atol=1e-10, rtol=0)
    assert_bijection(t, x)
    assert t.bijective and not t.stochastic_forward


def test_layers_pickle():
    t = CompositeTransform([AffineCoupling(PointMLP(1, 2), split_dim=-1, scale_fn="softplus"), ActNorm(2, -1)])
    clone = pickle.loads(pickle.dumps(t))
    x = torch.randn(2, 3, 2)
    torch.testing.assert_close(clone(x)[0], t(x)[0])


def test_actnorm_reads_its_flag_once_and_again_after_a_load():
    t = ActNorm(2, feature_dim=-1)
    t(torch.randn(16, 5, 2) * 5 + 3)  # initialises
    shift = t.shift.clone()
    t(torch.randn(16, 5, 2))  # initialised: no new statistics
    assert torch.equal(t.shift, shift)
    t.load_state_dict(ActNorm(2, feature_dim=-1).state_dict())  # an uninitialised state: the next batch initialises
    assert not bool(t.initialized)
    t(torch.randn(16, 5, 2) * 2 - 7)
    assert bool(t.initialized) and t.shift.abs().min() > 1.0
