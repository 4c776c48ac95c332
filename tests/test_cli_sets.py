"""Every user command on one value for a batch of sets: ``demo``, ``train``, ``eval --samples``, ``sample`` and
``plot`` end to end for sets of one size, sets of different sizes and 3-D clouds (tiny models, offline data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from setflow.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["train.max_steps=2", "train.batch_size=8", "train.progress=false", "model_args.num_steps=1",
        "model_args.d_model=8", "model_args.num_heads=2", "model_args.num_layers=1", "model_args.dim_feedforward=16",
        "model_args.fused=false", "eval.max_examples=12", "eval.iwbo_k=2", "eval.batch_size=16"]
CASES = {
    "fixed": ("configs/spatial_mnist/sortflow_cpu.yaml", ["data_args.limit=48"], (50, 50)),
    "varsize": ("configs/spatial_mnist/sortflow_varsize_cpu.yaml",
                ["data_args.limit=48", "data_args.num_points=[4,12]", "model_args.max_points=12"], (4, 12)),
    "3d": ("configs/pointcloud/sortflow_shapes_cpu.yaml",
           ["data_args.per_class=4", "data_args.num_points=32", "model_args.num_points=32",
            "model_args.num_inducing=4"], (32, 32)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_command_end_to_end(case, tmp_path, capsys, monkeypatch, one_thread):
    config, extra, (lo, hi) = CASES[case]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SETFLOW_OFFLINE", "1")
    monkeypatch.setenv("SETFLOW_DATA", str(tmp_path / "data"))
    overrides = TINY + extra
    config = str(ROOT / config)

    assert main(["demo", "--config", config, "--minutes", "1", "--out", "demo", "--samples", "demo.png",
                 "--quality-samples", "10", "--eval-sets", "12", *overrides]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "trained 2 steps" in out and "samples vs test" in out and "nats/point" in out
    assert Path("demo.png").stat().st_size > 1000

    assert main(["train", config, "--out", "run", *overrides]) == 0, capsys.readouterr().err
    ckpt = "run/last.pt"
    assert main(["eval", ckpt, "--samples", "10", "--max-examples", "12"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "test samples vs test: CD MMD" in out and "reference: real train sets vs test" in out
    assert ("EMD" in out) == (lo == hi)  # sets of different sizes: Chamfer only
    if lo != hi:
        assert "points, mean" in out and "per real point" in out

    assert main(["sample", ckpt, "-n", "6", "-o", "s.npz"]) == 0, capsys.readouterr().err
    with np.load("s.npz") as f:
        x = f["samples"]
        assert x.shape[0] == 6 and x.shape[2] == (3 if case == "3d" else 2) and np.isfinite(x).all()
        if lo == hi:
            assert x.shape[1] == lo and "mask" not in f.files
        else:
            sizes = f["mask"].sum(1)
            assert sizes.min() >= lo and sizes.max() <= hi and x.shape[1] == sizes.max()
            assert (x[~f["mask"]] == 0).all()
    for source, png in (("s.npz", "s.png"), (ckpt, "c.png")):
        assert main(["plot", source, "-n", "4", "-o", png]) == 0, capsys.readouterr().err
        assert Path(png).stat().st_size > 1000
