"""Class-conditional set flows, context misuse errors, labels through trainer and CLI, per-epoch redraw."""

import numpy as np
import pytest
import torch

from setflow.cli import main
from setflow.flows import Flow, LabelContext, VectorContext
from setflow.models.set_flows import build_permuteflow, build_sortflow
from setflow.transforms import ScalarAffine
from setflow.distributions import StandardNormal

TINY = dict(num_steps=2, d_model=8, num_heads=2, num_layers=1, dim_feedforward=16, num_points=6)


def _perturbed(model):
    """Move every parameter off its (partly zero) initialisation so the context matters
    (after the data-dependent ActNorm initialisation, so it stays fixed)."""
    n = model.num_points
    model.log_prob(torch.rand(8, n, 2, dtype=torch.float64) * 28, torch.arange(8) % 3)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model.eval()


def _sets(b=5, n=6):
    return torch.rand(b, n, 2, dtype=torch.float64) * 28


@pytest.mark.parametrize("build", [build_sortflow, build_permuteflow])
def test_label_changes_the_density_and_the_samples(build):
    m = _perturbed(build(conditional=True, num_classes=3, context_dim=4, **TINY).double())
    x = _sets()
    zeros, twos = torch.zeros(5, dtype=torch.long), torch.full((5,), 2, dtype=torch.long)
    torch.manual_seed(0)
    lp0 = m.iwbo(x, k=2, context=zeros) if not m.is_exact else m.log_prob(x, zeros)
    torch.manual_seed(0)
    lp2 = m.iwbo(x, k=2, context=twos) if not m.is_exact else m.log_prob(x, twos)
    assert (lp0 - lp2).abs().min() > 1e-6
    torch.manual_seed(0)
    s0 = m.sample(context=zeros)
    torch.manual_seed(0)
    s2 = m.sample(context=twos)
    assert s0.shape == (5, 6, 2) and not torch.allclose(s0.points, s2.points)
    assert torch.equal(s2.labels, twos)  # the samples carry their labels: log_prob reads them as the context
    torch.manual_seed(0)
    lp_labels = m.iwbo(s2, k=2) if not m.is_exact else m.log_prob(s2)
    torch.manual_seed(0)
    lp_context = m.iwbo(s2.points, k=2, context=twos) if not m.is_exact else m.log_prob(s2.points, twos)
    assert torch.equal(lp_labels, lp_context)


def test_conditional_sortflow_sample_log_prob_agree_and_is_invariant():
    m = _perturbed(build_sortflow(conditional=True, num_classes=3, context_dim=4, **TINY).double())
    labels = torch.tensor([0, 1, 2, 1])
    x, lp = m.sample_and_log_prob(context=labels)
    torch.testing.assert_close(m.log_prob(x, labels), lp, rtol=1e-9, atol=1e-8)
    perm = torch.randperm(6)
    torch.testing.assert_close(m.log_prob(x[:, perm], labels), lp, rtol=1e-9, atol=1e-8)


def test_context_misuse_is_a_clear_error():
    x = _sets(4).float()
    plain = build_sortflow(**TINY)
    with pytest.raises(ValueError, match="built without a context"):
        plain.log_prob(x, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="built without a context"):
        plain.sample(4, context=torch.zeros(4, dtype=torch.long))
    cond = build_sortflow(conditional=True, num_classes=10, **TINY)
    with pytest.raises(ValueError, match="needs a context"):
        cond.log_prob(x)
    with pytest.raises(ValueError, match="needs a context"):
        cond.sample(4)
    with pytest.raises(ValueError, match="dtype torch.float32"):
        cond.log_prob(x, torch.zeros(4))
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        cond.log_prob(x, torch.zeros(4, 10, dtype=torch.long))  # one-hot instead of labels
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        cond.log_prob(x, torch.zeros(3, dtype=torch.long))  # batch mismatch
    with pytest.raises(ValueError, match=r"0\.\.9"):
        cond.log_prob(x, torch.full((4,), 10, dtype=torch.long))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        cond.sample(3, context=torch.zeros(4, dtype=torch.long))
    vec = Flow(StandardNormal((2,)), [ScalarAffine(shift=1.0, scale=2.0)], context_encoder=VectorContext(3))
    with pytest.raises(ValueError, match=r"\(B, 3\)"):
        vec.log_prob(torch.zeros(2, 2), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="float"):
        vec.log_prob(torch.zeros(2, 2), torch.zeros(2, 3, dtype=torch.long))
    assert vec.log_prob(torch.zeros(2, 2), torch.zeros(2, 3)).shape == (2,)
    assert "num_classes=10" in repr(LabelContext(10, 4))


def test_conditional_train_eval_sample_plot(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SETFLOW_OFFLINE", "1")
    root, run = tmp_path / "data", tmp_path / "run"
    cfg = tmp_path / "cond.yaml"
    cfg.write_text(
        "model: sortflow\n"
        "model_args: {conditional: true, num_classes: 10, context_dim: 8, num_steps: 1, d_model: 8, num_heads: 2,"
        " num_layers: 1, dim_feedforward: 16}\n"
        "data: spatial_mnist\n"
        "data_args: {limit: 64, redraw: true}\n"
        "train: {batch_size: 16, max_steps: 6, progress: false, eval_every: 100000, ckpt_every: 100}\n"
        "eval: {batch_size: 64}\n")
    assert main(["train", str(cfg), "--out", str(run), "--data-root", str(root)]) == 0
    assert "redrawn every epoch" in capsys.readouterr().out
    ckpt = str(run / "last.pt")
    assert main(["eval", ckpt, "--data-root", str(root), "--samples", "30"]) == 0
    out = capsys.readouterr().out
    assert "conditional on the class label" in out and "1-NNA" in out and "real train sets vs test" in out
    assert "class 1 (" in out
    assert main(["sample", ckpt, "--label", "7", "-n", "5", "-o", str(tmp_path / "s.npz")]) == 0
    with np.load(tmp_path / "s.npz") as f:
        assert f["samples"].shape == (5, 50, 2) and (f["labels"] == 7).all()
    assert main(["sample", ckpt, "--label", "all", "-n", "2", "-o", str(tmp_path / "a.npz")]) == 0
    with np.load(tmp_path / "a.npz") as f:  # two of every class, in class order
        assert f["samples"].shape == (20, 50, 2) and np.array_equal(f["labels"], np.repeat(np.arange(10), 2))
    capsys.readouterr()
    assert main(["sample", ckpt, "-n", "5", "-o", str(tmp_path / "t.npz")]) == 2
    assert "--label" in capsys.readouterr().err
    for bad in ("10", "seven"):
        assert main(["sample", ckpt, "--label", bad, "-o", str(tmp_path / "t.npz")]) == 2
        assert "--label" in capsys.readouterr().err
    assert main(["plot", ckpt, "-o", str(tmp_path / "c.png"), "-n", "20", "--data-root", str(root)]) == 0
    assert (tmp_path / "c.png").stat().st_size > 1000


def test_unconditional_checkpoint_rejects_label(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SETFLOW_OFFLINE", "1")
    cfg = tmp_path / "plain.yaml"
    cfg.write_text(
        "model: permuteflow\n"
        "model_args: {num_steps: 1, d_model: 8, num_heads: 2, num_layers: 1, dim_feedforward: 16}\n"
        "data: spatial_mnist\ndata_args: {limit: 32}\n"
        "train: {batch_size: 16, max_steps: 2, progress: false, eval_every: 100000, ckpt_every: 100}\n"
        "eval: {batch_size: 64, iwbo_k: 2}\n")
    run = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(run), "--data-root", str(tmp_path / "data")]) == 0
    capsys.readouterr()
    assert main(["sample", str(run / "last.pt"), "--label", "3", "-o", str(tmp_path / "s.npz")]) == 2
    assert "conditional checkpoint" in capsys.readouterr().err


def test_redraw_gives_new_points_per_epoch_reproducibly():
    from setflow.data.spatial_mnist import TrainRedraw

    g = np.random.default_rng(0)
    images = (g.random((6, 28, 28)) > 0.7) * g.integers(1, 256, (6, 28, 28))
    calls = []

    def load():
        calls.append(1)
        return images

    r = TrainRedraw(load, seed=3)
    assert not calls  # lazy: nothing loaded until an epoch is drawn
    e0, e1 = r(0), r(1)
    assert e0.shape == (6, 50, 2) and e0.dtype == torch.float32
    assert not torch.equal(e0, e1)
    assert torch.equal(TrainRedraw(images, seed=3)(1), e1)
    assert not torch.equal(TrainRedraw(images, seed=4)(1), e1)
    # every point lies on a non-zero pixel of its own digit (same order as the images)
    for x in (e0, e1):
        col, row = x[..., 0].floor().long(), 27 - x[..., 1].floor().long()
        assert (torch.as_tensor(images)[torch.arange(6)[:, None], row, col] > 0).all()
    assert len(calls) == 1
    with pytest.raises(ValueError, match="epoch"):
        r(-1)


def test_trainer_uses_the_redrawn_epoch(tmp_path):
    from setflow.train.config import load_config
    from setflow.train.data import ExperimentData
    from setflow.train.trainer import Trainer

    base = torch.rand(32, 6, 2) * 28
    seen = []

    def epoch_sets(epoch):
        seen.append(epoch)
        return base + 0.01 * epoch

    data = ExperimentData(base, base[:8], base[:8], "data: test", "nats_per_point", "sets", train_epoch=epoch_sets)
    p = tmp_path / "c.yaml"
    p.write_text("model: sortflow\nmodel_args: {num_points: 6, num_steps: 1, d_model: 8, num_heads: 2, num_layers: 1,"
                 " dim_feedforward: 16}\ndata: spatial_mnist\n"
                 "train: {batch_size: 16, epochs: 3, progress: false, eval_every: 100000, ckpt_every: 100}\n")
    Trainer(load_config(str(p), []), str(tmp_path / "run"), data=data, log=lambda *_: None).fit()
    assert seen == [0, 1, 2]  # 2 steps per epoch: epochs 0, 1, 2
