"""The bijection contract for every Transform exported by ``setflow.transforms`` (float64, tiny shapes).

Every exported :class:`~setflow.transforms.Transform` class has an entry in ``CASES``: a bijection
a constructor ``() -> (transform, x)``, any other class the reason it is not checked here (the
entry's claim is checked: such a class is not a bijection). A new export without an entry fails
``test_every_exported_transform_has_an_entry``. For each bijection: ``inverse(forward(x)) == x``,
``forward(inverse(z)) == z``, and ``ldj`` equals ``log|det J|`` of the autograd Jacobian, per example.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

import setflow.transforms as T
from setflow.nn import DeepSets

DT = torch.float64


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randomised(net: nn.Module, seed: int = 1) -> nn.Module:
    """Move a zero-initialised conditioner off zero, so the coupling does something."""
    g = _gen(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return net.to(DT)


def _points(b: int = 2, n: int = 4, d: int = 2) -> torch.Tensor:
    return torch.randn(b, n, d, generator=_gen(2), dtype=DT)


def _image(b: int = 2, c: int = 2, h: int = 4, w: int = 4) -> torch.Tensor:
    return torch.randn(b, c, h, w, generator=_gen(3), dtype=DT)


class _PointMLP(nn.Module):
    """Point-wise map (B, N, 1) -> (B, N, 2) for a coordinate split."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.lin = nn.Linear(d_in, d_out)

    def forward(self, x: torch.Tensor, context=None) -> torch.Tensor:
        return torch.tanh(self.lin(x))


class _ImageNet(nn.Module):
    """(B, 1, H, W) -> (B, C_out, H, W), a 3x3 convolution."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)

    def forward(self, x: torch.Tensor, context=None) -> torch.Tensor:
        return self.conv(x)


def _affine_set():
    net = _randomised(DeepSets(1, 2, hidden=8, num_layers=2))  # (B, N, 1) -> (B, N, 2): shift, scale of x_b
    return T.AffineCoupling(net, split_dim=-1, split_sizes=(1, 1), scale_fn="softplus"), _points()


def _affine_points():
    # a point-wise split (points 0..1 condition points 2..3); params laid out on the last axis
    net = _randomised(_PointMLP(2, 4))
    return T.AffineCoupling(net, split_dim=1, split_sizes=(2, 2), scale_fn="exp", params_dim=-1), _points()


def _additive_image():
    return T.AdditiveCoupling(_randomised(_ImageNet(1, 1)), split_dim=1, split_sizes=(1, 1)), _image()


def _actnorm():
    t = T.ActNorm(2, feature_dim=-1).to(DT)
    t(_points(4) * 3 + 1)  # data-dependent initialisation on its own batch
    with torch.no_grad():
        t.log_scale.add_(0.1)  # not exactly the standardising map
    return t, _points()


def _ordered():
    x = _points(n=5)
    x = torch.gather(x, 1, x[..., :1].argsort(dim=1).expand_as(x))  # sorted by coordinate 0
    return T.OrderedIncrements(coord=0, gap_scale=0.2), x


#: class name -> constructor ``() -> (transform, x)`` for a bijection, or the reason it is not one
CASES: dict[str, object] = {
    "Transform": "abstract base class",
    "Bijection": "abstract base class",
    "Surjection": "abstract base class",
    "CompositeTransform": lambda: (T.CompositeTransform([T.Reverse(dim=1), T.ScalarAffine(0.3, 1.7),
                                                        _affine_set()[0]]), _points()),
    "InverseTransform": lambda: (T.InverseTransform(_affine_set()[0]), _points()),
    "AffineCoupling": _affine_set,
    "AffineCoupling/pointwise": _affine_points,
    "AdditiveCoupling": _additive_image,
    "ActNorm": _actnorm,
    "Conv1x1": lambda: (T.Conv1x1(3, seed=1).to(DT), _image(c=3)),
    "Reverse": lambda: (T.Reverse(dim=1), _points()),
    "Shuffle": lambda: (T.Shuffle(4, dim=1, seed=5), _points()),
    "SetShuffle": lambda: (T.SetShuffle(seed=3), _points(n=5)),
    "SetRoll": lambda: (T.SetRoll(shift=2), _points(n=5)),
    "ScalarAffine": lambda: (T.ScalarAffine(shift=-0.5, scale=1.0 / 28.0), _points()),
    "Squeeze2d": lambda: (T.Squeeze2d(2), _image(c=1)),
    "Unsqueeze2d": lambda: (T.Unsqueeze2d(2), _image(c=4, h=2, w=2)),
    "Reshape": lambda: (T.Reshape((4, 2), (8,)), _points()),
    "PermuteAxes": lambda: (T.PermuteAxes((1, 0)), _points()),
    "Logit": lambda: (T.Logit(), torch.rand(2, 3, 2, generator=_gen(4), dtype=DT) * 0.9 + 0.05),
    "Sigmoid": lambda: (T.Sigmoid(), _points()),
    "OrderedIncrements": _ordered,
    "SortSurjection": "surjection (inference); tests/test_surjections.py",
    "AbsSurjection": "surjection (inference); tests/test_surjections.py",
    "MaxPool2dSurjection": "surjection (inference); tests/test_surjections.py",
    "Slice": "surjection (inference); tests/test_surjections.py",
    "Augment": "surjection (generative); tests/test_surjections.py",
    "UniformDequantization": "surjection (generative); tests/test_surjections.py",
    "VariationalDequantization": "surjection (generative); tests/test_surjections.py",
    "StochasticPermutation": "stochastic both ways; tests/test_set_flows.py",
    "VAE": "stochastic both ways; tests/test_bijections.py",
}

_ABSTRACT = {"Transform", "Bijection", "Surjection"}
BIJECTIONS = sorted(k for k, v in CASES.items() if callable(v))


def _exported_transforms() -> list[str]:
    return [n for n in T.__all__ if inspect.isclass(getattr(T, n)) and issubclass(getattr(T, n), T.Transform)]


def test_every_exported_transform_has_an_entry() -> None:
    missing = [n for n in _exported_transforms() if n not in CASES]
    assert not missing, f"exported Transform classes without an entry in CASES: {missing}"
    stale = [k for k in CASES if k.split("/")[0] not in T.__all__]
    assert not stale, f"CASES entries for names setflow.transforms does not export: {stale}"


def test_entries_that_are_not_checked_are_not_bijections() -> None:
    for name, entry in CASES.items():
        if callable(entry) or name in _ABSTRACT:
            continue
        assert not getattr(T, name).bijective, f"{name} is a bijection: give it a constructor in CASES"


@pytest.mark.parametrize("name", BIJECTIONS)
def test_exact_inverse(name: str) -> None:
    t, x = CASES[name]()
    assert t.bijective, name
    z, ldj = t(x)
    assert ldj.shape == (x.shape[0],) and ldj.dtype == DT
    torch.testing.assert_close(t.inverse(z), x, rtol=1e-10, atol=1e-10)
    z2 = z + 0.01 * torch.randn(z.shape, generator=_gen(9), dtype=DT)  # a latent the forward did not produce
    if name == "OrderedIncrements" or name == "Logit":
        z2 = z  # their inverse's range must stay in the forward's domain: reuse z
    torch.testing.assert_close(t(t.inverse(z2))[0], z2, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", BIJECTIONS)
def test_log_det_matches_autograd_jacobian(name: str) -> None:
    t, x = CASES[name]()
    _, ldj = t(x)
    for b in range(x.shape[0]):
        xb = x[b : b + 1]

        def f(v: torch.Tensor) -> torch.Tensor:
            return t(v.view_as(xb))[0].reshape(-1)

        jac = torch.autograd.functional.jacobian(f, xb.reshape(-1))
        assert jac.shape[0] == jac.shape[1], f"{name}: not dimension-preserving {tuple(jac.shape)}"
        sign, logabsdet = torch.linalg.slogdet(jac)
        assert sign != 0, name
        torch.testing.assert_close(ldj[b], logabsdet, rtol=1e-8, atol=1e-8, msg=f"{name}, example {b}")


def test_surjections_declare_their_stochastic_direction() -> None:
    with pytest.raises(TypeError, match="must declare which direction is stochastic"):
        class _Undeclared(T.Surjection):
            pass
    with pytest.raises(TypeError, match="at least one True"):
        class _Deterministic(T.Surjection):
            stochastic_forward = False
            stochastic_inverse = False

    class _Base(T.Surjection, abstract=True):  # an intermediate base may opt out
        pass

    class _Declared(_Base):
        stochastic_inverse = True

    class _Inherits(_Declared):  # a declaration in a Surjection base class counts
        pass

    assert _Inherits.stochastic_inverse and not _Inherits.stochastic_forward
    exported = [getattr(T, n) for n in _exported_transforms()]
    for cls in [c for c in exported if issubclass(c, T.Surjection) and c is not T.Surjection]:
        assert cls.stochastic_forward or cls.stochastic_inverse, cls.__name__
