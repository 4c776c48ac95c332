"""CLI: every subcommand's --help, and train -> eval -> sample -> plot end to end on offline data."""

from __future__ import annotations

import numpy as np
import pytest

from setflow.cli import build_parser, main


def _subcommands() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)


def test_top_level_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("data", "train", "eval", "sample", "plot", "demo"):
        assert cmd in out


@pytest.mark.parametrize("cmd", _subcommands())
def test_subcommand_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    assert "usage: setflow " + cmd in capsys.readouterr().out


def test_no_command_prints_help(capsys):
    assert main([]) == 0
    assert "usage" in capsys.readouterr().out


@pytest.fixture
def tiny_cfg(tmp_path):
    p = tmp_path / "tiny.yaml"
    p.write_text(
        "model: sortflow\n"
        "model_args: {num_steps: 1, d_model: 8, num_heads: 2, num_layers: 1, dim_feedforward: 16}\n"
        "data: spatial_mnist\n"
        "data_args: {limit: 64}\n"
        "train: {batch_size: 16, max_steps: 3, progress: false, eval_every: 100000, ckpt_every: 100}\n"
        "eval: {batch_size: 64}\n"
    )
    return p


def test_train_eval_sample_plot_end_to_end(tmp_path, tiny_cfg, capsys, monkeypatch):
    monkeypatch.setenv("SETFLOW_OFFLINE", "1")
    root = tmp_path / "data"
    run = tmp_path / "run"
    assert main(["train", str(tiny_cfg), "--out", str(run), "--data-root", str(root), "train.lr=5e-4"]) == 0
    out = capsys.readouterr().out
    assert "data:" in out and "trained 3 steps" in out
    ckpt = run / "last.pt"
    assert main(["eval", str(ckpt), "--data-root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "test PPLL" in out and "nats/point" in out
    assert main(["sample", str(ckpt), "-n", "8", "-o", str(tmp_path / "s.npz")]) == 0
    with np.load(tmp_path / "s.npz") as f:
        assert f["samples"].shape == (8, 50, 2)
    assert main(["plot", str(tmp_path / "s.npz"), "-o", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").stat().st_size > 1000
    assert main(["plot", str(ckpt), "-o", str(tmp_path / "c.png"), "-n", "4", "--data-root", str(root)]) == 0
    assert (tmp_path / "c.png").exists()


def test_bad_config_key_fails_before_training(tmp_path, capsys):
    p = tmp_path / "bad.yaml"
    p.write_text("model: sortflow\ndata: spatial_mnist\ntrain: {bacth_size: 3}\n")
    assert main(["train", str(p), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "bacth_size" in err and "batch_size" in err
    assert not (tmp_path / "r").exists()


def test_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nope.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
