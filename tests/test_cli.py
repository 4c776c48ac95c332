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
            "model_args.decoder_args.num_steps=1", "model_args.prior_steps=1", "model_args.latent_dim=4",
            "data_args.limit=64", "eval.max_examples=8", "eval.iwbo_k=2", "train.progress=false"]
    assert main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "1-NNA" in out and "reference: real train sets vs test" in out  # sample quality beside the PPLL
    assert (tmp_path / "s.png").is_file() and (tmp_path / "run" / "last.pt").is_file()
    assert main(argv) == 2  # the run folder holds a checkpoint now
    _one_error_line(capsys, "demo", "--resume", "--overwrite")


def _samples_files(folder):
    """A gallery of bad samples files: name -> (path, expected parts of the one-line error)."""
    import zipfile

    pts = np.random.default_rng(0).random((4, 10, 2)).astype(np.float32) * 28
    mask = np.ones((4, 10), bool)
    mask[:, 7:] = False
    nan, half_nan, real_nan = pts.copy(), pts.copy(), pts.copy()
    nan[:] = np.nan
    half_nan[1:3, 2] = np.nan
    real_nan[~mask] = np.nan
    real_nan[0, 0] = np.nan
    np.savez(folder / "nan.npz", samples=nan)
    np.savez(folder / "half_nan.npz", samples=half_nan)
    np.savez(folder / "real_nan.npz", samples=real_nan, mask=mask)
    np.savez(folder / "d4.npz", samples=np.zeros((4, 10, 4), np.float32))
    images = np.zeros((3, 1, 4, 4), np.float32)
    images[1, 0, 2, 2] = np.inf
    np.savez(folder / "images_inf.npz", samples=images)
    np.savez(folder / "words.npz", samples=np.array(["a", "b"]))
    np.savez(folder / "good.npz", samples=pts)
    (folder / "empty.npz").write_bytes(b"")
    (folder / "junk.npz").write_bytes(bytes(range(256)) * 4)
    (folder / "truncated.npz").write_bytes((folder / "good.npz").read_bytes()[:150])
    np.save(folder / "array.npy", pts)
    (folder / "array.npy").rename(folder / "npy.npz")
    with zipfile.ZipFile(folder / "damaged.npz", "w") as zf:  # a zip whose member fails its CRC
        zf.writestr("samples.npy", (folder / "good.npz").read_bytes())
    raw = bytearray((folder / "damaged.npz").read_bytes())
    raw[60] ^= 0xFF
    (folder / "damaged.npz").write_bytes(bytes(raw))
    return {
        "nan": ["nan.npz", "4 of 4 sets contain NaN", "no 'mask'"],
        "half_nan": ["half_nan.npz", "2 of 4 sets contain NaN"],
        "real_nan": ["real_nan.npz", "1 of 4 sets contain NaN", "outside its mask"],
        "d4": ["d4.npz", "shape (4, 10, 4)", "expected point sets (n, N, 2) or (n, N, 3)"],
        "images_inf": ["images_inf.npz", "1 of 3 images contain NaN or inf"],
        "words": ["words.npz", "expected point sets"],
        "empty": ["empty.npz", "an empty file", "expected a samples .npz"],
        "junk": ["junk.npz", "not a zip archive", "expected a samples .npz"],
        "truncated": ["truncated.npz", "damaged or unreadable .npz", "expected a samples .npz"],
        "npy": ["npy.npz", "a .npy array", "expected a samples .npz"],
        "damaged": ["damaged.npz", "damaged or unreadable .npz", "expected a samples .npz"],
    }


def test_plot_refuses_bad_samples_files_in_one_line(tmp_path, capsys):
    cases = _samples_files(tmp_path)
    for name, parts in cases.items():
        for extra in ([], ["--open3d"]):
            assert main(["plot", str(tmp_path / f"{name}.npz"), "-o", str(tmp_path / "x.png"), *extra]) == 2, name
            _one_error_line(capsys, "plot", *parts)
    for n in ("0", "-3"):
        assert main(["plot", str(tmp_path / "good.npz"), "-n", n, "-o", str(tmp_path / "x.png")]) == 2
        _one_error_line(capsys, "plot", f"-n/--num must be >= 1, got {n}")
    assert main(["plot", str(tmp_path / "good.npz"), "-o", str(tmp_path)]) == 2
    _one_error_line(capsys, "plot", "is a folder")
    assert not (tmp_path / "x.png").exists() and not (tmp_path.parent / f"{tmp_path.name}.png").exists()


def test_plot_draws_padded_samples_whose_padding_is_nan(tmp_path, capsys):
    pts = np.random.default_rng(0).random((4, 10, 2)).astype(np.float32) * 28
    mask = np.ones((4, 10), bool)
    mask[:, 6:] = False
    pts[~mask] = np.nan  # NaN as padding is fine where the mask says so
    np.savez(tmp_path / "pad.npz", samples=pts, mask=mask)
    assert main(["plot", str(tmp_path / "pad.npz"), "-o", str(tmp_path / "pad")]) == 0
    assert f"wrote {tmp_path / 'pad.png'}" in capsys.readouterr().out  # the file matplotlib really writes
    assert (tmp_path / "pad.png").stat().st_size > 1000


@pytest.mark.parametrize("content, found", [(b"", "an empty file"), (b"not a checkpoint\n", "not a zip archive"),
                                            (b"\x93NUMPY\x01\x00", "a .npy array")])
@pytest.mark.parametrize("cmd", ["eval", "sample", "plot"])
def test_a_checkpoint_that_is_no_checkpoint_is_one_line(cmd, content, found, tmp_path, capsys):
    (tmp_path / "c.pt").write_bytes(content)
    assert main([cmd, str(tmp_path / "c.pt")] + ([] if cmd == "eval" else ["-o", str(tmp_path / "x.png")])) == 2
    _one_error_line(capsys, cmd, "c.pt: not a setflow checkpoint", found, "expected the .pt archive")


@pytest.fixture
def set_codec_ckpt(tmp_path):
    import torch

    from setflow.models.set_codec import SortedSetAR
    from setflow.train.checkpoint import save_checkpoint

    args = dict(grid=5, num_points=6, d_model=16, num_heads=2, num_layers=1, dim_feedforward=16, dropout=0.0)
    torch.manual_seed(0)
    cfg = {"model": "set_codec", "model_args": args, "data": "spatial_mnist_pixels", "train": {"dtype": "float32"}}
    return save_checkpoint(tmp_path / "codec.pt", {"config": cfg, "model": SortedSetAR(**args).state_dict()})


def test_sample_a_set_codec_checkpoint_gives_points_to_plot(set_codec_ckpt, tmp_path, capsys):
    from setflow.data.pixel_sets import points_to_pixels

    out = tmp_path / "s.npz"
    assert main(["sample", str(set_codec_ckpt), "-n", "5", "-o", str(out)]) == 0
    assert "pixel centres" in capsys.readouterr().out
    with np.load(out) as f:
        sets, pts = f["sets"], f["samples"]
    assert sets.shape == (5, 6) and pts.shape == (5, 6, 2)
    assert np.all(np.diff(sets, axis=1) >= 0) and sets.min() >= 0 and sets.max() < 25  # sorted, on the 5 x 5 grid
    assert np.array_equal(points_to_pixels(pts, grid=5), sets)  # the SpatialMNIST convention, inverted exactly
    assert main(["plot", str(out), "-o", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").stat().st_size > 1000
    # the checkpoint itself: test pixel sets beside samples, both drawn at pixel centres
    assert main(["plot", str(set_codec_ckpt), "-n", "4", "-o", str(tmp_path / "c.png"), "--offline",
                 "--data-root", str(tmp_path / "data")]) == 0
    assert (tmp_path / "c.png").stat().st_size > 1000
    assert main(["sample", str(set_codec_ckpt), "--label", "1", "-o", str(tmp_path / "l.npz")]) == 2
    _one_error_line(capsys, "sample", "--label needs a conditional checkpoint")
    assert main(["sample", str(set_codec_ckpt), "-o", str(tmp_path)]) == 2
    _one_error_line(capsys, "sample", "is a folder")


@pytest.mark.parametrize("argv, parts", [
    (["data", "cgal", "--per-class", "2"], ["2 clouds per mesh", "valid and test splits empty", "use 3 or more"]),
    (["data", "shapes", "--per-class", "0"], ["per_class must be >= 1; got 0"]),
    (["data", "shapes", "--seed", "-2"], ["--seed must be >= 0, got -2"]),
    (["data", "spatial-mnist-pixels", "--seed", "-1"], ["--seed must be >= 0, got -1"]),
])
def test_data_options_that_give_nothing_are_refused(argv, parts, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SETFLOW_DATA", str(tmp_path / "data"))
    assert main(argv + ["--offline", "-o", str(tmp_path / "out.npz")]) == 2
    _one_error_line(capsys, "data", *parts)
    assert not (tmp_path / "out.npz").exists()
