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


def _one_error_line(capsys, cmd: str, *parts: str) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if not line.startswith(("DataWarning", "data:"))]
    assert len(lines) == 1 and lines[0].startswith(f"setflow {cmd}: error: "), err
    for part in parts:
        assert part in lines[0], (part, lines[0])
    return lines[0]


@pytest.mark.parametrize("argv, parts", [
    (["data", "spatial-mnist", "--offline", "--seed", "-1"], ["--seed must be >= 0"]),
    (["train", "missing.yaml"], ["config file not found"]),
    (["train", "configs/toy/corners_flow.yaml", "train.batch_size=0"], ["train.batch_size", ">= 1"]),
    (["train", "configs/toy/corners_flow.yaml", "train.epochs=-1"], ["train.epochs", ">= 1"]),
    (["train", "configs/toy/corners_flow.yaml", "model_args.num_flowz=2"], ["num_flowz", "valid: ", "num_flows"]),
    (["train", "configs/toy/corners_flow.yaml", "--device", "gpu"], ["unknown device 'gpu'"]),
    (["eval", "x.pt", "--device", "gpu"], ["unknown device 'gpu'"]),
    (["eval", "x.pt", "--batch-size", "0"], ["--batch-size must be >= 1"]),
    (["eval", "x.pt", "--iwbo-k", "0"], ["--iwbo-k must be >= 1"]),
    (["sample", "x.pt", "-n", "0"], ["-n/--num must be >= 1"]),
    (["sample", "x.pt", "--device", "gpu"], ["unknown device 'gpu'"]),
    (["plot", "missing.npz"], ["not a file"]),
    (["demo", "--config", "missing.yaml"], ["config file not found"]),
])
def test_each_command_fails_with_one_line(argv, parts, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SETFLOW_DATA", str(tmp_path / "data"))
    argv = [str(tmp_path / a) if a in ("x.pt", "missing.yaml", "missing.npz") else a for a in argv]
    assert main(argv) == 2
    _one_error_line(capsys, argv[0], *parts)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("cmd", ["train", "eval", "sample"])
def test_cuda_without_cuda_is_the_same_error_for_every_command(cmd, tiny_cfg, tmp_path, capsys):
    target = str(tiny_cfg) if cmd == "train" else str(tmp_path / "x.pt")
    assert main([cmd, target, "--device", "cuda"]) == 2
    line = _one_error_line(capsys, cmd)
    assert line.split("error: ", 1)[1] == "--device=cuda but no CUDA device is available; use cpu"


def test_offline_flag_never_touches_the_network(tmp_path, tiny_cfg, capsys, monkeypatch):
    import os
    import urllib.request

    def no_network(*a, **k):
        raise AssertionError("--offline must not download")

    monkeypatch.delenv("SETFLOW_OFFLINE", raising=False)
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    root = str(tmp_path / "data")
    assert main(["data", "spatial-mnist", "--offline", "--data-root", root]) == 0
    assert main(["train", str(tiny_cfg), "--offline", "--data-root", root, "--out", str(tmp_path / "r")]) == 0
    ckpt = str(tmp_path / "r" / "last.pt")
    assert main(["eval", ckpt, "--offline", "--data-root", root, "--max-examples", "8"]) == 0
    assert main(["plot", "data", "--offline", "--data-root", root, "-o", str(tmp_path / "d.png")]) == 0
    assert "offline fallback" in capsys.readouterr().out
    assert "SETFLOW_OFFLINE" not in os.environ, "the flag must not leak out of main()"
    for cmd in ("data", "train", "eval", "plot", "demo"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        assert "--offline" in capsys.readouterr().out


def test_demo_finds_its_default_config_from_another_directory(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SETFLOW_OFFLINE", "1")
    monkeypatch.setenv("SETFLOW_DATA", str(tmp_path / "data"))
    argv = ["demo", "--minutes", "1", "--out", "run", "--samples", "s.png", "--quality-samples", "8", "train.max_steps=1",
            "model_args.num_steps=1", "model_args.d_model=8", "model_args.num_heads=2", "model_args.num_layers=1",
            "model_args.dim_feedforward=16", "data_args.limit=64", "eval.max_examples=8", "train.progress=false"]
    assert main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "1-NNA" in out and "reference: real train sets vs test" in out  # sample quality beside the PPLL
    assert (tmp_path / "s.png").is_file() and (tmp_path / "run" / "last.pt").is_file()
    assert main(argv) == 2  # the run folder holds a checkpoint now
    _one_error_line(capsys, "demo", "--resume", "--overwrite")
