"""Sort-consistent SortFlow: OrderedIncrements, a normalised density, sampling that matches log_prob.

The integral tests estimate ``I = int exp(log_prob(x)) dx`` over R^(N x D) by importance sampling
from a multivariate Student-t (heavier tails than the flow), with its standard error.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from setflow.distributions import StandardNormal
from setflow.flows import Flow
from setflow.models import build_model
from setflow.transforms import OrderedIncrements, ScalarAffine, SortSurjection, sorted_fraction

pytestmark = pytest.mark.usefixtures("double")

TINY = dict(num_points=3, dim=2, num_steps=2, d_model=8, num_heads=2, num_layers=1, dim_feedforward=16)
SMALL = dict(num_points=10, dim=2, num_steps=2, d_model=16, num_heads=2, num_layers=1, dim_feedforward=32)


def _model(args: dict, consistent: bool, scale: float = 0.3, seed: int = 3) -> Flow:
    """A built SortFlow with ActNorm initialised on data and every parameter moved off its identity init."""
    model = build_model("sortflow", **args, sort_consistent=consistent).double().eval()
    model.log_prob(torch.rand(64, args["num_points"], args["dim"]) * 28)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def _student_t(loc: torch.Tensor, scale_tril: torch.Tensor, df: float, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` draws of a d-variate Student-t and their log-density."""
    d = loc.numel()
    y = torch.randn(n, d)
    chi2 = torch.distributions.Chi2(torch.tensor(df)).sample((n,))
    x = loc + (y @ scale_tril.T) / torch.sqrt(chi2 / df).unsqueeze(1)
    r = torch.linalg.solve_triangular(scale_tril, (x - loc).T, upper=False).T
    maha = r.pow(2).sum(1)
    log_q = (math.lgamma((df + d) / 2) - math.lgamma(df / 2) - 0.5 * d * math.log(df * math.pi)
             - torch.log(torch.diagonal(scale_tril)).sum() - 0.5 * (df + d) * torch.log1p(maha / df))
    return x, log_q


def _to_gaps(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Test-side map of sets (B, N, 2) to (first key, log key gaps, other coordinate), sorted by coordinate 0.

    Returns ``u`` (B, 2N) and ``log|du/dx|`` on the sorted tuple; written here independently of the library.
    """
    s = torch.gather(x, 1, torch.argsort(x[..., 0], dim=1)[..., None].expand_as(x))
    gaps = s[:, 1:, 0] - s[:, :-1, 0]
    u = torch.cat([s[:, :1, 0], torch.log(gaps), s[..., 1]], dim=1)
    return u, -torch.log(gaps).sum(1)


@torch.no_grad()
def _integral(model: Flow, n: int = 100_000) -> tuple[float, float]:
    """Importance-sampling estimate of the integral of exp(log_prob) and its standard error.

    Proposal: a Student-t over (first key, log gaps, other coordinates) fitted to model samples,
    mapped to a sorted tuple and permuted uniformly: ``log q(x) = log t(u) + log|du/dx| - log N!``.
    """
    npts = model.num_points
    ref, _ = _to_gaps(model.transform.inverse(model.base.sample(20_000)))
    loc = ref.mean(0)
    cov = torch.cov(ref.T) + 1e-3 * torch.eye(ref.shape[1])
    u, log_t = _student_t(loc, 1.5 * torch.linalg.cholesky(cov), df=4.0, n=n)
    key = torch.cat([u[:, :1], u[:, :1] + torch.cumsum(torch.exp(u[:, 1:npts]), dim=1)], dim=1)
    x = torch.stack([key, u[:, npts:]], dim=-1)
    x = torch.gather(x, 1, torch.argsort(torch.rand(n, npts), dim=1)[..., None].expand_as(x))
    log_q = log_t + _to_gaps(x)[1] - math.lgamma(npts + 1)
    w = torch.exp(model.log_prob(x) - log_q)
    return float(w.mean()), float(w.std() / math.sqrt(n))


def test_ordered_increments_log_det_matches_autograd_jacobian():
    t = OrderedIncrements(coord=1, gap_scale=0.3)
    x = torch.randn(2, 5, 3)
    x[..., 1] = torch.cumsum(torch.rand(2, 5) + 0.05, dim=1) - 1.0
    _, ldj = t(x)
    for b in range(2):
        jac = torch.autograd.functional.jacobian(lambda v: t(v.reshape(1, 5, 3))[0].reshape(-1), x[b].reshape(-1))
        torch.testing.assert_close(ldj[b], torch.linalg.slogdet(jac).logabsdet)
    _, inv = t.inverse_with_ldj(t(x)[0])
    torch.testing.assert_close(inv, -ldj)


def test_ordered_increments_inverse_is_exact_and_always_sorted():
    t = OrderedIncrements(coord=0, gap_scale=0.1)
    z = 3 * torch.randn(50, 7, 2)
    x = t.inverse(z)
    assert bool((x[:, 1:, 0] > x[:, :-1, 0]).all())  # any latent gives a strictly increasing coordinate
    torch.testing.assert_close(t(x)[0], z, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(x[..., 1], z[..., 1], rtol=0, atol=0)  # other coordinates untouched
    x2 = torch.sort(torch.randn(4, 6), dim=1).values  # scalar points (B, N)
    torch.testing.assert_close(t.inverse(t(x2)[0]), x2, rtol=1e-12, atol=1e-12)


def test_ordered_increments_rejects_unsorted_and_tied_input_and_clamps_when_asked():
    x = torch.tensor([[[0.0, 1.0], [0.0, 2.0], [1.0, 0.0]]])
    with pytest.raises(ValueError, match="tied values in coordinate 0"):
        OrderedIncrements(coord=0)(x)
    with pytest.raises(ValueError, match="sorted by coordinate 0"):
        OrderedIncrements(coord=0)(x.flip(1))
    z, ldj = OrderedIncrements(coord=0, min_gap=1e-4)(x)
    torch.testing.assert_close(z[0, 1, 0], torch.tensor(math.log(1e-4)))
    torch.testing.assert_close(ldj, torch.tensor([-math.log(1e-4)]))
    with pytest.raises(ValueError, match="min_gap"):
        OrderedIncrements(min_gap=0.0)


@pytest.mark.parametrize("consistent", [True, False])
def test_sortflow_log_prob_identical_for_every_permutation_of_integer_sets(consistent):
    """Integer-valued sets (many ties in the key, duplicates): log_prob is bit-identical under permutation."""
    model = _model(SMALL, consistent, scale=0.1)
    x = torch.randint(0, 6, (6, 10, 2)).double() * 4
    x[:, 3] = x[:, 7]
    ref = model.log_prob(x)
    assert torch.isfinite(ref).all()
    for seed in range(10):
        g = torch.Generator().manual_seed(seed)
        perm = torch.stack([torch.randperm(10, generator=g) for _ in range(6)])
        assert torch.equal(model.log_prob(torch.gather(x, 1, perm[..., None].expand_as(x))), ref)


def test_sort_consistent_density_integrates_to_one():
    model = _model(TINY, consistent=True, scale=0.1)
    integral, se = _integral(model)
    assert se < 0.02, se
    assert abs(integral - 1.0) < 4 * se, (integral, se)


def test_paper_density_integrates_to_p_sorted():
    model = _model(TINY, consistent=False, scale=0.1)
    integral, se = _integral(model)
    p, p_se = sorted_fraction(model, 100_000)
    assert p < 0.8  # the test model is far from sort-consistent, so this can tell the two apart
    assert abs(integral - p) < 4 * math.hypot(se, p_se), (integral, se, p, p_se)
    assert abs(integral - 1.0) > 10 * se


def test_every_latent_of_a_sort_consistent_flow_is_sorted():
    model = _model(SMALL, consistent=True, scale=0.1)
    assert sorted_fraction(model, 5_000) == (1.0, 0.0)
    y = model.base.sample(500)
    for t in reversed(list(model.transforms)[1:]):
        y = t.inverse(y)
    assert bool((y[:, 1:, 0] > y[:, :-1, 0]).all())


def test_sample_and_log_prob_matches_log_prob_sample_by_sample():
    model = _model(SMALL, consistent=True, scale=0.1)
    x, log_p = model.sample_and_log_prob(300)
    assert x.shape == (300, 10, 2)
    torch.testing.assert_close(log_p, model.log_prob(x), rtol=1e-9, atol=1e-8)


def test_sample_and_log_prob_of_plain_flows_and_its_errors():
    flow = Flow(StandardNormal((3,)), [ScalarAffine(shift=1.0, scale=2.0), OrderedIncrements(coord=0, dim=1)])
    x, log_p = flow.sample_and_log_prob(100)
    torch.testing.assert_close(log_p, flow.log_prob(x))
    with pytest.raises(ValueError, match="exact flow"):
        build_model("permuteflow", **SMALL).sample_and_log_prob(2)


def test_sorted_fraction_of_an_identity_latent_flow_is_one_over_n_factorial():
    flow = Flow(StandardNormal((3, 2)), [SortSurjection(key=0)])
    p, se = sorted_fraction(flow, 60_000)
    assert abs(p - 1 / 6) < 4 * se
    with pytest.raises(ValueError, match="SortSurjection"):
        sorted_fraction(Flow(StandardNormal((3, 2)), [ScalarAffine()]), 10)


def test_old_state_dict_loads_as_the_paper_variant():
    paper = _model(SMALL, consistent=False)
    old = {k: v for k, v in paper.state_dict().items() if k != "sort_consistent"}  # pre-option checkpoint
    model = build_model("sortflow", **SMALL).double()
    assert bool(model.sort_consistent)
    with pytest.warns(UserWarning, match="paper SortFlow"):
        model.load_state_dict(old)
    x = torch.rand(4, 10, 2) * 28
    torch.testing.assert_close(model.eval().log_prob(x), paper.log_prob(x))
    with pytest.raises(ValueError, match="sort_consistent"):
        build_model("sortflow", **SMALL).double().load_state_dict(paper.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_model("sortflow", **SMALL).double().load_state_dict(_model(SMALL, consistent=True).state_dict())


def test_builder_rejects_sort_consistent_without_a_coordinate_key():
    with pytest.raises(ValueError, match="coordinate sort key"):
        build_model("sortflow", **SMALL, sort_key="norm")
    with pytest.raises(ValueError, match="PermuteFlow"):
        build_model("permuteflow", **SMALL, sort_consistent=True)
    assert not bool(build_model("sortflow", **SMALL, sort_key="norm", sort_consistent=False).sort_consistent)


def test_consistency_script_on_a_checkpoint(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    from setflow.train.checkpoint import save_checkpoint

    path = Path(__file__).resolve().parents[1] / "scripts" / "sortflow_consistency.py"
    spec = importlib.util.spec_from_file_location("sortflow_consistency", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    for consistent, want in [(False, None), (True, "P(sorted) = 1.000000 +- 0.000000")]:
        model = _model(TINY, consistent)
        config = {"model": "sortflow", "model_args": dict(TINY, sort_consistent=consistent),
                  "train": {"dtype": "float64"}}
        ckpt = save_checkpoint(tmp_path / f"c{consistent}.pt", {"config": config, "model": model.state_dict()})
        assert script.main([str(ckpt), "--samples", "5000"]) == 0
        out = capsys.readouterr().out
        if want:
            assert want in out
        else:
            p_script, se = (float(v) for v in out.split("P(sorted) = ")[1].split(" (")[0].split(" +- "))
            p, p_se = sorted_fraction(model, 5_000)
            assert 0 < p_script < 1 and abs(p_script - p) < 4 * math.hypot(se, p_se)
            assert "normalising adds" in out


def test_evaluate_reports_both_likelihood_conventions():
    from setflow.evaluate import evaluate, format_metrics

    model = _model(SMALL, consistent=True, scale=0.1)
    x = torch.rand(8, 10, 2) * 28
    res = evaluate(model, x, "nats_per_point")
    torch.testing.assert_close(torch.tensor(res["metric"]), model.log_prob(x).mean() / 10)
    torch.testing.assert_close(torch.tensor(res["set_metric"] - res["metric"]), torch.tensor(math.lgamma(11) / 10))
    line = format_metrics(res)
    assert f"PPLL {res['metric']:.4f} nats/point [papers" in line and f"set {res['set_metric']:.4f} nats/point" in line
