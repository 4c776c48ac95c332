"""`setflow demo` with a class-conditional config: conditional likelihood, per-class sample metrics, a by-class picture."""

from __future__ import annotations

from pathlib import Path

from setflow.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["train.max_steps=2", "model_args.num_steps=1", "model_args.d_model=8", "model_args.num_heads=2",
        "model_args.num_layers=1", "model_args.dim_feedforward=16", "model_args.context_dim=4", "data_args.limit=80",
        "eval.max_examples=8", "eval.iwbo_k=2", "train.progress=false",
        "train.fused=false", "model_args.fused=false"]  # the eager path: no compile in a unit test


def test_conditional_demo_scores_and_draws_by_class(tmp_path, capsys, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SETFLOW_OFFLINE", "1")
    monkeypatch.setenv("SETFLOW_DATA", str(tmp_path / "data"))
    png = tmp_path / "s.png"
    argv = ["demo", "--config", str(ROOT / "configs/spatial_mnist/permuteflow_cond_cpu.yaml"), "--minutes", "1",
            "--out", "run", "--samples", str(png), "--quality-samples", "40", *TINY]
    assert main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "[conditional on the class label]" in out  # log p(x | label), not an unconditional score
    assert "per class (CD 1-NNA / COV" in out and "  class " in out
    assert "reference: real train sets vs test" in out
    from matplotlib.image import imread

    img = imread(png)
    # one row per class (10 rows of small panels): the picture is taller than wide, unlike the 32-set grid
    assert img.shape[0] > img.shape[1], img.shape
