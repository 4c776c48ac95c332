"""The latent set flow (``model: latent_setflow``): permutation invariance, log-dets, bounds, sizes, configs, CLI."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from setflow.distributions import normal_log_prob
from setflow.models import build_model
from setflow.models.latent import build_point_decoder

REPO = Path(__file__).resolve().parents[1]
ENC = {"d_model": 8, "num_heads": 2, "num_layers": 1, "dim_feedforward": 16, "num_inducing": 4, "k": 3}
POINTS = {"num_steps": 2, "hidden": 8}
SET = {"num_steps": 2, "d_model": 8, "num_heads": 2, "num_layers": 1, "dim_feedforward": 16}


def _tiny(decoder: str = "points", encoder: str = "deepsets", **kw) -> torch.nn.Module:
    args = dict(num_points=10, dim=2, latent_dim=4, encoder=encoder, encoder_args=ENC, prior_steps=2, prior_hidden=8,
                encoder_hidden=8, decoder=decoder, decoder_args=POINTS if decoder == "points" else SET)
    args.update(kw)
    return build_model("latent_setflow", **args)


def _perturb(model: torch.nn.Module, scale: float = 0.1, seed: int = 3) -> None:
    """Move every parameter off its initialisation (zero read-outs, identity couplings)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def _ready(model: torch.nn.Module, x: torch.Tensor, mask=None) -> torch.nn.Module:
    """float64, ActNorm initialised on ``x``, parameters perturbed, eval mode."""
    model = model.double().eval()
    model.log_prob(x, mask=mask)
    _perturb(model)
    return model


def _with_ties(b: int = 4, n: int = 10) -> torch.Tensor:
    x = torch.rand(b, n, 2, dtype=torch.float64) * 28
    x[:, 1] = x[:, 0]  # a duplicate point
    x[:, 3, 0] = x[:, 2, 0]  # a tie in the sort key
    return x


def _permute(x: torch.Tensor, seed: int, mask=None):
    g = torch.Generator().manual_seed(seed)
    perm = torch.stack([torch.randperm(x.shape[1], generator=g) for _ in range(x.shape[0])])
    xp = torch.gather(x, 1, perm[..., None].expand_as(x))
    return xp if mask is None else (xp, torch.gather(mask, 1, perm))


# ------------------------------------------------------------------------------ permutation invariance
@pytest.mark.parametrize("encoder", ["deepsets", "isab", "transformer"])
def test_the_encoder_is_permutation_invariant(encoder):
    x = _with_ties()
    model = _ready(_tiny(encoder=encoder), x)
    mean, log_std = model.posterior(x)
    assert mean.abs().sum() > 0 and log_std.abs().sum() > 0
    for seed in range(4):
        m2, s2 = model.posterior(_permute(x, seed))
        torch.testing.assert_close(m2, mean, rtol=0, atol=1e-6)
        torch.testing.assert_close(s2, log_std, rtol=0, atol=1e-6)


@pytest.mark.parametrize("decoder", ["points", "set"])
def test_the_elbo_is_permutation_invariant_given_the_noise(decoder):
    x = _with_ties()
    model = _ready(_tiny(decoder), x)
    torch.manual_seed(7)
    ref = model.log_prob(x)
    assert torch.isfinite(ref).all()
    torch.manual_seed(8)
    assert not torch.allclose(model.log_prob(x), ref)  # the ELBO is random: the noise is what is fixed
    for seed in range(4):
        torch.manual_seed(7)
        torch.testing.assert_close(model.log_prob(_permute(x, seed)), ref, rtol=0, atol=1e-6)


def test_the_elbo_of_padded_sets_is_permutation_invariant():
    model = _tiny("set", num_points=None, max_points=12, min_points=2)
    x = torch.rand(3, 12, 2, dtype=torch.float64) * 28
    mask = torch.arange(12) < torch.tensor([[12], [7], [3]])
    model = _ready(model, x, mask)
    torch.manual_seed(1)
    ref = model.log_prob(x, mask=mask)
    for seed in range(3):
        xp, mp = _permute(x, seed, mask)  # real points and padding slots move together
        torch.manual_seed(1)
        torch.testing.assert_close(model.log_prob(xp, mask=mp), ref, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------ the ELBO's terms
def test_log_prob_is_the_reparametrised_elbo_term_by_term():
    x = torch.rand(3, 10, 2, dtype=torch.float64) * 28
    model = _ready(_tiny("points"), x)
    torch.manual_seed(5)
    elbo = model.log_prob(x)
    torch.manual_seed(5)
    mean, log_std = model.posterior(x)
    z = mean + log_std.exp() * torch.randn_like(mean)
    log_q = normal_log_prob(z, mean, log_std).sum(1)
    log_px = model.decoder.log_prob(x, context=z)
    torch.testing.assert_close(elbo, log_px + model.prior_log_prob(z) - log_q)
    # the points decoder is i.i.d. given z: log p(X | z) = sum_i log p(x_i | z), with no log N!
    per_point = sum(model.decoder.log_prob(x[:, i:i + 1], context=z) for i in range(10))
    torch.testing.assert_close(log_px, per_point)


def test_the_evaluator_reports_a_bound_and_the_set_convention():
    from setflow.evaluate import evaluate

    x = torch.rand(6, 10, 2) * 28
    model = _tiny("points")
    res = evaluate(model, x, "nats_per_point", iwbo_k=3, iwbo_chunk=2)
    assert res["exact"] is False and res["k"] == 3 and "of_set" not in res
    assert res["set_metric"] == pytest.approx(res["metric"] + math.lgamma(11) / 10)  # the sequence convention


# ------------------------------------------------------------------------------ log-dets
def _jacobian_check(fn, x: torch.Tensor, ldj: torch.Tensor) -> None:
    jac = torch.autograd.functional.jacobian(fn, x)
    jac = jac.reshape(x.numel(), x.numel())
    torch.testing.assert_close(torch.linalg.slogdet(jac).logabsdet, ldj.reshape(()), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dim", [2, 3])
def test_the_point_flow_log_det_matches_autograd_and_is_per_point(dim):
    flow = build_point_decoder(dim=dim, latent_dim=3, num_steps=3, hidden=8).double()
    flow.log_prob(torch.rand(8, 5, dim, dtype=torch.float64) * 28, context=torch.randn(8, 3, dtype=torch.float64))
    _perturb(flow, 0.3)
    x = torch.rand(1, 3, dim, dtype=torch.float64) * 28
    z = torch.randn(1, 3, dtype=torch.float64)
    _, ldj = flow.transform(x, z)
    _jacobian_check(lambda v: flow.transform(v, z)[0], x, ldj)
    jac = torch.autograd.functional.jacobian(lambda v: flow.transform(v, z)[0], x).reshape(3, dim, 3, dim)
    for i in range(3):  # point i's latent does not depend on point j: i.i.d. given z
        for j in range(3):
            if i != j:
                assert torch.count_nonzero(jac[i, :, j, :]) == 0
    # the alternating split couples every coordinate to the others (a fixed split with Reverse would
    # never transform the middle one of three: its row would be diagonal)
    for c in range(dim):
        others = [o for o in range(dim) if o != c]
        assert float(jac[0, c, 0, others].abs().max()) > 1e-6, c


def test_the_prior_log_det_matches_autograd():
    model = _tiny("points", latent_dim=5, prior_steps=3).double()
    model.prior(torch.randn(16, 5, dtype=torch.float64))  # ActNorm init
    _perturb(model, 0.3)
    z = torch.randn(1, 5, dtype=torch.float64)
    _, ldj = model.prior(z)
    _jacobian_check(lambda v: model.prior(v)[0], z, ldj)
    u = model.prior(z)[0]
    torch.testing.assert_close(model.prior.inverse(u), z)


# ------------------------------------------------------------------------------ bounds
def test_iwbo_is_above_the_elbo_and_grows_with_k():
    """Means over repeated draws, compared with their standard errors (fixed seeds: deterministic)."""
    x = torch.rand(4, 10, 2, dtype=torch.float64) * 28
    model = _ready(_tiny("points", latent_dim=2), x)

    def mean_se(draws: list) -> tuple[float, float]:
        d = torch.stack(draws).mean(1)  # the batch mean of each draw
        return float(d.mean()), float(d.std() / math.sqrt(len(d)))

    with torch.no_grad():  # a poor posterior, so the importance weights matter
        model.vae.encoder.net.net.head.layers[-1].bias.add_(torch.tensor([1.0, -1.0, -0.5, -0.5], dtype=torch.float64))
        torch.manual_seed(0)
        elbo = mean_se([model.log_prob(x) for _ in range(200)])
        iw = {k: mean_se([model.iwbo(x, k=k, chunk=7) for _ in range(reps)])
              for k, reps in ((1, 200), (3, 100), (30, 20), (300, 4))}

    def gap(a, b) -> tuple[float, float]:
        return a[0] - b[0], math.hypot(a[1], b[1])

    diff, se = gap(iw[1], elbo)
    assert abs(diff) < 4 * se  # k=1 is the ELBO
    for hi, lo in ((iw[3], elbo), (iw[30], iw[3]), (iw[300], iw[30])):
        diff, se = gap(hi, lo)
        assert diff > 3 * se and diff > 0.5, (diff, se)


# ------------------------------------------------------------------------------ sampling
def test_samples_reconstructions_and_interpolations_have_the_set_shapes():
    model = _tiny("points").eval()
    s = model.sample(5)
    assert s.shape == (5, 10, 2) and s.dtype == torch.float32 and s.is_fixed and torch.isfinite(s.points).all()
    assert model.sample(3, num_points=40).shape == (3, 40, 2)  # any N
    x = torch.rand(4, 10, 2) * 28
    assert model.reconstruct(x).shape == (4, 10, 2)
    assert model.reconstruct(torch.rand(2, 17, 2) * 28).shape == (2, 17, 2)
    path = model.interpolate(x[:2], x[2:], steps=4)
    assert path.shape == (2, 4, 10, 2) and torch.isfinite(path).all()
    z = model.posterior(x)[0]
    torch.testing.assert_close(model.prior.inverse(model.prior(z)[0]), z, rtol=1e-4, atol=1e-5)
    sf = _tiny("set").double().eval()
    assert sf.sample(3).shape == (3, 10, 2) and sf.sample(3).dtype == torch.float64
    with pytest.raises(ValueError, match="10 points"):
        sf.sample(2, num_points=12)  # a fixed-size SortFlow decoder
    with pytest.raises(ValueError, match="without a context"):
        model.sample(2, context=torch.zeros(2, 3))


def test_interpolation_ends_decode_the_two_codes_with_one_noise():
    model = _tiny("points").double().eval()
    x = torch.rand(4, 10, 2, dtype=torch.float64) * 28
    model.log_prob(x)
    _perturb(model)
    torch.manual_seed(2)
    path = model.interpolate(x[:2], x[2:], steps=3)
    torch.manual_seed(2)
    noise = model.decoder.flow.base.sample(2, None, num_points=10)
    first = model.decode_code(model.posterior(x[:2])[0], noise=noise)
    last = model.decode_code(model.posterior(x[2:])[0], noise=noise)
    torch.testing.assert_close(path[:, 0], first, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(path[:, -1], last, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------ sets of different sizes
@pytest.mark.parametrize("decoder", ["points", "set"])
def test_padded_sets_score_as_each_set_alone(decoder):
    model = _tiny(decoder, num_points=None, max_points=12, min_points=2)
    sizes = [12, 7, 3]
    x = torch.rand(3, 12, 2, dtype=torch.float64) * 28
    mask = torch.arange(12) < torch.tensor(sizes)[:, None]
    model = _ready(model, x, mask)
    assert model.variable_size and model.size_dist is not None
    mean, log_std = model.posterior(x, mask)
    z = torch.randn(3, 4, dtype=torch.float64)
    dec = model.decoder.log_prob(x, context=z, mask=mask)
    for i, n in enumerate(sizes):
        one = x[i:i + 1, :n]
        full = torch.ones(1, n, dtype=torch.bool)
        m1, s1 = model.posterior(one, full)
        torch.testing.assert_close(m1[0], mean[i], rtol=0, atol=1e-9)
        torch.testing.assert_close(s1[0], log_std[i], rtol=0, atol=1e-9)
        torch.testing.assert_close(model.decoder.log_prob(one, context=z[i:i + 1]), dec[i:i + 1], rtol=0, atol=1e-9)
    garbage = torch.where(mask[..., None], x, torch.full_like(x, float("nan")))  # padding never matters
    torch.manual_seed(4)
    ref = model.log_prob(x, mask=mask)
    torch.manual_seed(4)
    torch.testing.assert_close(model.log_prob(garbage, mask=mask), ref)
    # log p(N) is part of the likelihood: +1 on the logit of N=7 moves that set by 1 nat more than the others
    lse_old = torch.logsumexp(model.size_dist.logits, 0)
    with torch.no_grad():
        model.size_dist.logits[7 - 2] += 1.0
    shift = float(torch.logsumexp(model.size_dist.logits, 0) - lse_old)
    torch.manual_seed(4)
    moved = model.log_prob(x, mask=mask) - ref
    torch.testing.assert_close(moved, torch.tensor([-shift, 1.0 - shift, -shift], dtype=torch.float64),
                               rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match="mask"):
        model.log_prob(x)
    batch = model.sample(6)
    s, m = batch.points, batch.mask
    assert torch.isfinite(model.iwbo(batch, k=3)).all()
    assert s.shape[0] == 6 and m.shape == s.shape[:2] and int(m.sum(1).min()) >= 2
    assert bool((s[~m] == 0).all()) and torch.isfinite(s).all()
    assert torch.isfinite(model.iwbo(x, k=3, mask=mask)).all()
    rec = model.reconstruct(x, mask)
    assert rec.shape == x.shape and bool((rec[~mask] == 0).all())


def test_a_fixed_size_points_model_takes_an_all_true_mask_as_none():
    x = torch.rand(3, 10, 2, dtype=torch.float64) * 28
    model = _ready(_tiny("points"), x)
    torch.manual_seed(0)
    a = model.log_prob(x)
    torch.manual_seed(0)
    torch.testing.assert_close(model.log_prob(x, mask=torch.ones(3, 10, dtype=torch.bool)), a, rtol=0, atol=0)


# ------------------------------------------------------------------------------ builder
def test_the_builder_checks_its_arguments():
    with pytest.raises(ValueError, match=r"unknown model_args.decoder_args for decoder 'points': num_heads; valid: "
                                         r"activation, hidden, num_layers, num_steps, scale_fn"):
        _tiny("points", decoder_args={"num_heads": 2})
    with pytest.raises(ValueError, match=r"decoder_args for decoder 'set': hidden; valid: .*d_model.*permutation"):
        _tiny("set", decoder_args={"hidden": 8})
    with pytest.raises(ValueError, match=r"encoder_args for encoder 'deepsets': width; valid: d_model"):
        _tiny(encoder_args={"width": 8})
    with pytest.raises(ValueError, match=r"model_args.decoder: unknown latent decoder 'mlp'.*points, set"):
        _tiny(decoder="mlp")
    with pytest.raises(ValueError, match=r"model_args.encoder: unknown set conditioner 'pointnet'"):
        _tiny(encoder="pointnet")
    with pytest.raises(ValueError, match="latent_dim"):
        _tiny(latent_dim=1)
    with pytest.raises(ValueError, match="max_points"):
        _tiny(num_points=None)
    with pytest.raises(ValueError, match="pools"):
        _tiny(encoder_pool=["mean", "median"])
    a, b = _tiny(seed=1), _tiny(seed=1)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_permuteflow_decoder_is_a_bound_inside_the_bound():
    model = _tiny("set", decoder_args=dict(SET, permutation="stochastic"))
    x = torch.rand(3, 10, 2) * 28
    assert not model.is_exact and torch.isfinite(model.iwbo(x, k=2)).all()


# ------------------------------------------------------------------------------ configs and the trainer
CONFIGS = {
    "spatial_mnist/latent_setflow_cpu.yaml": ["data_args.limit=64", "model_args.decoder_args.num_steps=2",
                                              "model_args.decoder_args.fused=false"],
    "spatial_mnist/latent_setflow_points_cpu.yaml": ["data_args.limit=64", "model_args.decoder_args.num_steps=2"],
    "pointcloud/latent_setflow_points_cpu.yaml": ["data_args.per_class=2", "data_args.num_points=64",
                                                  "model_args.num_points=64", "train.batch_size=4",
                                                  "eval.batch_size=8", "model_args.decoder_args.num_steps=2"],
    "pointcloud/latent_setflow_shapes_cpu.yaml": ["data_args.per_class=2", "data_args.num_points=32",
                                                  "data_args.pool_points=64", "model_args.num_points=32",
                                                  "train.batch_size=4", "eval.batch_size=8",
                                                  "model_args.decoder_args.num_steps=2"],
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_the_configs_build_and_train_two_steps_through_the_trainer(name, tmp_path, monkeypatch, one_thread):
    from setflow.train.checkpoint import load_model
    from setflow.train.config import load_config
    from setflow.train.trainer import Trainer

    monkeypatch.setenv("SETFLOW_OFFLINE", "1")
    monkeypatch.setenv("SETFLOW_DATA", str(tmp_path / "data"))
    full = load_config(str(REPO / "configs" / name), [])
    assert full["model"] == "latent_setflow"
    cfg = load_config(str(REPO / "configs" / name), CONFIGS[name] + [
        "train.max_steps=2", "train.progress=false", "train.warmup_steps=0", "eval.iwbo_k=2", "eval.iwbo_chunk=1",
        "eval.max_examples=8"])
    trainer = Trainer(cfg, str(tmp_path / "run"), log=lambda *a: None)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    summary = trainer.fit()
    assert summary["step"] == 2
    assert any(not torch.equal(a, p) for a, p in zip(before, trainer.model.parameters()))
    res = trainer.validate()
    assert res["exact"] is False and res["k"] == 2 and math.isfinite(res["metric"])
    model, _ = load_model(tmp_path / "run" / "last.pt")
    assert type(model).__name__ == "LatentSetFlow" and model.sample(2).shape[0] == 2
    from setflow.viz.plot import plot_latent

    for mode in ("reconstruct", "interpolate"):
        plot_latent(model, cfg, trainer.data, str(tmp_path / f"{mode}.png"), mode, n=4, steps=3)
        assert (tmp_path / f"{mode}.png").stat().st_size > 1000


# ------------------------------------------------------------------------------ CLI
def test_cli_train_eval_sample_plot_with_reconstructions_and_interpolations(tmp_path, capsys, monkeypatch, one_thread):
    from setflow.cli import main

    monkeypatch.setenv("SETFLOW_OFFLINE", "1")
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(
        "model: latent_setflow\n"
        "model_args: {latent_dim: 4, encoder_args: {d_model: 8, num_layers: 1}, prior_steps: 1, prior_hidden: 8,\n"
        "             encoder_hidden: 8, decoder: points, decoder_args: {num_steps: 2, hidden: 8}}\n"
        "data: spatial_mnist\n"
        "data_args: {limit: 64}\n"
        "train: {batch_size: 16, max_steps: 3, progress: false, eval_every: 100000, ckpt_every: 100}\n"
        "eval: {batch_size: 64, iwbo_k: 2, iwbo_chunk: 2}\n")
    root = str(tmp_path / "data")
    run = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(run), "--data-root", root]) == 0
    assert "trained 3 steps" in capsys.readouterr().out
    ckpt = str(run / "last.pt")
    assert main(["eval", ckpt, "--data-root", root, "--samples", "8"]) == 0
    out = capsys.readouterr().out
    assert "IWBO k=2" in out and "ELBO" in out and "1-NNA" in out
    assert main(["sample", ckpt, "-n", "4", "-o", str(tmp_path / "s.npz")]) == 0
    with np.load(tmp_path / "s.npz") as f:
        assert f["samples"].shape == (4, 50, 2)
    for extra, png in (([], "c.png"), (["--reconstruct"], "r.png"), (["--interpolate", "--steps", "4"], "i.png")):
        assert main(["plot", ckpt, "-o", str(tmp_path / png), "-n", "4", "--data-root", root, *extra]) == 0
        assert (tmp_path / png).stat().st_size > 1000
    capsys.readouterr()
    assert main(["plot", str(tmp_path / "s.npz"), "--reconstruct", "-o", str(tmp_path / "x.png")]) == 2
    assert "latent model" in capsys.readouterr().err
