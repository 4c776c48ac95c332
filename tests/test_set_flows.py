"""SortFlow / PermuteFlow: exact permutation invariance, bounds, sampling, input validation."""

from __future__ import annotations

import math

import pytest
import torch

from setflow.models import build_model

SMALL = dict(num_points=10, dim=2, num_steps=2, d_model=16, num_heads=2, num_layers=1, dim_feedforward=32)


def _perturb(model: torch.nn.Module) -> None:
    """Move every parameter off its (identity) initialisation so the test exercises real maps."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))


@pytest.mark.parametrize("conditioner", ["transformer", "deepsets", "edgeconv"])
def test_sortflow_log_prob_is_identical_for_every_permutation(conditioner):
    args = dict(SMALL, conditioner=conditioner)
    if conditioner == "edgeconv":
        args["d_model"] = 8
    model = build_model("sortflow", **args).double().eval()
    x = torch.rand(4, 10, 2, dtype=torch.float64) * 28
    model.log_prob(x)  # ActNorm data-dependent init
    _perturb(model)
    ref = model.log_prob(x)
    assert torch.isfinite(ref).all()
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        perm = torch.stack([torch.randperm(10, generator=g) for _ in range(4)])
        xp = torch.gather(x, 1, perm[..., None].expand_as(x))
        assert torch.equal(model.log_prob(xp), ref)
    assert model.is_exact


def test_sortflow_counts_sort_and_scaling_constants():
    """A freshly built paper SortFlow is N(0,1) after x/28 - 0.5 and the sort: check the constant terms."""
    model = build_model("sortflow", **SMALL, sort_consistent=False).double().eval()
    for m in model.modules():  # skip ActNorm init so the flow is the identity after scaling
        if hasattr(m, "initialized"):
            m.initialized.fill_(True)
    x = torch.rand(3, 10, 2, dtype=torch.float64) * 28
    u = x / 28 - 0.5
    expected = (-0.5 * u.pow(2) - 0.5 * math.log(2 * math.pi)).sum((1, 2)) - 20 * math.log(28) - math.lgamma(11)
    torch.testing.assert_close(model.log_prob(x), expected)


def test_permuteflow_is_a_bound_and_iwbo_tightens():
    torch.manual_seed(0)
    model = build_model("permuteflow", **SMALL).double().eval()
    x = torch.rand(6, 10, 2, dtype=torch.float64) * 28
    model.log_prob(x)
    _perturb(model)
    assert not model.is_exact
    elbo = torch.stack([model.log_prob(x) for _ in range(30)]).mean(0)
    iw1 = torch.stack([model.iwbo(x, k=1) for _ in range(30)]).mean(0)
    iw50 = model.iwbo(x, k=50, chunk=7)
    assert iw50.mean() > elbo.mean()
    torch.testing.assert_close(iw1.mean(), elbo.mean(), atol=0.5, rtol=0)


def test_samples_have_the_set_shape_device_and_dtype():
    model = build_model("sortflow", **SMALL).double().eval()
    s = model.sample(5)
    assert s.shape == (5, 10, 2) and s.dtype == torch.float64
    assert torch.isfinite(model.log_prob(s)).all()
    model = build_model("permuteflow", **SMALL).eval()
    assert model.sample(3).dtype == torch.float32


def test_bad_inputs_name_the_expected_shape():
    model = build_model("sortflow", **SMALL)
    with pytest.raises(ValueError, match=r"3 dimensions.*\(B, 10, 2\)"):
        model.log_prob(torch.rand(10, 2))
    with pytest.raises(ValueError, match=r"\(B, 10, 2\)"):
        model.log_prob(torch.rand(4, 10, 3))
    with pytest.raises(ValueError, match="floating dtype"):
        model.log_prob(torch.randint(0, 28, (4, 10, 2)))
    x = torch.rand(4, 10, 2)
    x[1, 3, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        model.log_prob(x)
    with pytest.raises(ValueError, match="conditioner"):
        build_model("sortflow", conditioner="mystery")
    with pytest.raises(ValueError, match="unknown model"):
        build_model("nosuchflow")
