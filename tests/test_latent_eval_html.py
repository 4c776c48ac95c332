"""`setflow eval --num-points / --renormalize bbox` (sample metrics at another N, DPM's protocol) and
`setflow plot --html` (a self-contained interactive 3-D view)."""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from setflow.evaluate import bbox_normalize, sample_quality
from setflow.models import build_model


def _tiny3d(num_points: int = 12) -> torch.nn.Module:
    model = build_model("latent_setflow", num_points=num_points, dim=3, latent_dim=4, encoder="deepsets",
                        encoder_args={"d_model": 8, "num_layers": 1}, prior_steps=1, prior_hidden=8, encoder_hidden=8,
                        decoder="points", decoder_args={"num_steps": 2, "hidden": 8}, input_scale=1.0, input_shift=0.0)
    return model.eval()


# ------------------------------------------------------------------------------ DPM's per-shape box
def test_bbox_normalize_puts_every_cloud_in_its_own_unit_box_whatever_its_size_and_place():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 30, 3, generator=g, dtype=torch.float64) * torch.tensor([3.0, 1.0, 0.5], dtype=torch.float64)
    y = bbox_normalize(x)
    lo, hi = y.amin(1), y.amax(1)
    assert torch.allclose((lo + hi) / 2, torch.zeros(5, 3, dtype=torch.float64), atol=1e-6)
    assert torch.allclose((hi - lo).amax(1), torch.full((5,), 2.0, dtype=torch.float64), atol=1e-6)
    assert (hi - lo)[:, 2].max() < 0.5  # the box keeps the aspect ratio (not each axis stretched)
    moved = x * torch.tensor([7.0, 0.1, 2.0, 3.0, 0.5], dtype=torch.float64)[:, None, None] - 4.0
    assert torch.allclose(bbox_normalize(moved), y, atol=1e-5)
    assert bbox_normalize(x.float()).dtype == torch.float32


def test_renormalized_sample_metrics_ignore_each_clouds_size_and_place_but_plain_ones_do_not():
    torch.manual_seed(0)
    ref, other = torch.rand(8, 12, 3), torch.rand(8, 12, 3)
    model = _tiny3d()
    model.log_prob(ref)  # ActNorm initialised
    k = torch.linspace(0.5, 3.0, 8)[:, None, None]
    base = sample_quality(model, ref, other, 8, renormalize="bbox")
    moved = sample_quality(model, ref * 2.0 + 1.0, other * k - 2.0, 8, renormalize="bbox")
    for key in ("mmd", "1nna", "cov"):
        assert moved["real"]["cd"][key] == pytest.approx(base["real"]["cd"][key], rel=1e-4, abs=1e-6)
        assert moved["model"]["cd"][key] == pytest.approx(base["model"]["cd"][key], rel=1e-4, abs=1e-6)
    plain = sample_quality(model, ref, other * k, 8)
    assert plain["real"]["cd"]["mmd"] != pytest.approx(base["real"]["cd"]["mmd"], rel=1e-2)
    with pytest.raises(ValueError, match="renormalize"):
        sample_quality(model, ref, other, 8, renormalize="unit")


def test_sample_metrics_at_another_set_size_draw_that_many_points():
    torch.manual_seed(0)
    model = _tiny3d(num_points=12)
    ref, other = torch.rand(6, 40, 3), torch.rand(6, 40, 3)
    model.log_prob(ref)
    q = sample_quality(model, ref, other, 6, num_points=40)  # EMD needs equal sizes: it would refuse 12 vs 40
    assert q["num"] == 6 and 0.0 <= q["model"]["emd"]["1nna"] <= 1.0
    with pytest.raises(ValueError, match="equal set sizes"):
        sample_quality(model, ref, other, 6)


def test_eval_num_points_is_refused_for_a_model_of_one_set_size():
    from setflow.cli import _with_num_points

    fixed = SimpleNamespace(event_shape=(64, 3), variable_size=False)
    with pytest.raises(ValueError, match="draws sets of 64 points only"):
        _with_num_points(fixed, {"model": "sortflow", "data_args": {}}, 2048)
    cfg = {"model": "sortflow", "data_args": {"num_points": 64}}
    assert _with_num_points(fixed, cfg, 64)["data_args"]["num_points"] == 64
    anyn = SimpleNamespace(event_shape=(None, 3), variable_size=False)
    cfg = {"model": "latent_setflow", "data_args": {"num_points": 512, "pool_points": 1024}}
    out = _with_num_points(anyn, cfg, 2048)
    assert out["data_args"] == {"num_points": 2048, "pool_points": 2048}
    assert cfg["data_args"]["num_points"] == 512  # the checkpoint's config is left alone


# ------------------------------------------------------------------------------ --html
def _numbers(html: str) -> set:
    return set(re.findall(r"-?\d+\.\d+", html))


def test_the_html_view_is_self_contained_and_holds_the_points(tmp_path):
    from setflow.viz.html import write_clouds_html

    data = np.array([[[0.1234, -0.5678, 0.25], [0.3141, 0.2718, -0.1618], [np.nan, np.nan, np.nan]]])
    samples = np.array([[[0.4321, 0.8765, -0.3333], [-0.9111, 0.0707, 0.6061], [0.5, 0.5, 0.5]]])
    out = write_clouds_html(data, samples, tmp_path / "v.html", title="two clouds", up="y")
    html = out.read_text(encoding="utf-8")
    # plotly.js is inline: no script or stylesheet is fetched from anywhere
    assert not re.search(r"<script[^>]*\bsrc\s*=", html, re.I)
    assert not re.search(r"<link[^>]*\bhref\s*=", html, re.I)
    assert "Plotly.newPlot" in html and len(html) > 1_000_000 and "two clouds" in html
    nums = _numbers(html)
    for v in (0.1234, -0.5678, 0.3141, -0.1618, 0.4321, 0.8765, -0.9111, 0.0707, 0.6061):
        assert repr(v) in nums, v
    assert "NaN" not in html.split("Plotly.newPlot", 1)[1][:200_000].replace("isNaN", "")
    with pytest.raises(ValueError, match=r"\(n, N, 3\)"):
        write_clouds_html(np.zeros((2, 5, 2)), None, tmp_path / "bad.html")
    with pytest.raises(ValueError, match="up must be"):
        write_clouds_html(data, None, tmp_path / "bad.html", up="w")


def test_cli_eval_at_another_size_under_dpms_protocol_and_plot_html(tmp_path, capsys, monkeypatch, one_thread):
    from setflow.cli import main

    monkeypatch.setenv("SETFLOW_OFFLINE", "1")
    import yaml

    cfg = tmp_path / "tiny3d.yaml"
    model_args = dict(num_points=16, dim=3, latent_dim=4, encoder_args={"d_model": 8, "num_layers": 1},
                      prior_steps=1, prior_hidden=8, encoder_hidden=8, decoder="points",
                      decoder_args={"num_steps": 2, "hidden": 8}, input_scale=1.0, input_shift=0.0)
    cfg.write_text(yaml.safe_dump({
        "model": "latent_setflow", "model_args": model_args, "data": "pointclouds",
        "data_args": {"source": "shapes", "num_points": 16, "per_class": 4},
        "train": {"batch_size": 8, "max_steps": 2, "progress": False, "eval_every": 100000, "ckpt_every": 100},
        "eval": {"batch_size": 16, "iwbo_k": 2, "iwbo_chunk": 2}}))
    root = str(tmp_path / "data")
    run = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(run), "--data-root", root]) == 0
    ckpt = str(run / "last.pt")
    capsys.readouterr()
    assert main(["eval", ckpt, "--data-root", root, "--num-points", "40", "--samples", "5",
                 "--renormalize", "bbox"]) == 0
    out = capsys.readouterr().out
    assert "DPM's protocol" in out and "1-NNA" in out and "real train sets vs test" in out
    assert "40 surface points" in out or "40 points" in out
    assert main(["eval", ckpt, "--data-root", root, "--renormalize", "bbox"]) == 2
    assert "give --samples" in capsys.readouterr().err
    html = tmp_path / "view.html"
    assert main(["plot", ckpt, "--html", "-o", str(html), "-n", "2", "--data-root", root]) == 0
    text = html.read_text(encoding="utf-8")
    figure = text.rsplit("Plotly.newPlot", 1)[1]  # the figure, after the inline plotly.js
    assert not re.search(r"<script[^>]*\bsrc\s*=", text, re.I) 
    names = set(re.findall(r'"name":"((?:data|samples) \d+)"', figure))
    assert names == {"data 0", "data 1", "samples 0", "samples 1"}  # two rows: test clouds beside samples
    assert main(["plot", ckpt, "--html", "--open3d", "-o", str(html), "--data-root", root]) == 2


def test_the_points_decoder_draws_in_chunks_with_the_same_result():
    torch.manual_seed(0)
    model = _tiny3d(num_points=12).double()
    model.log_prob(torch.rand(3, 12, 3, dtype=torch.float64))
    z = torch.randn(3, 4, dtype=torch.float64)
    noise = torch.randn(3, 23, 3, dtype=torch.float64)
    whole = model.decode_code(z, noise=noise)
    model.point_chunk = 5  # 5 + 5 + 5 + 5 + 3 points
    chunked = model.decode_code(z, noise=noise)
    assert chunked.shape == (3, 23, 3) and torch.allclose(chunked, whole, atol=1e-12)
    assert model.sample(2, num_points=11).shape == (2, 11, 3)
