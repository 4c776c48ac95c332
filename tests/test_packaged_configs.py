"""The YAML configs ship in the wheel (``setflow/configs``, built from the top-level ``configs/``) and
resolve by name from any directory: ``sortflow_cpu``, ``spatial_mnist/sortflow_cpu.yaml``,
``configs/spatial_mnist/sortflow_cpu.yaml``; ``setflow configs`` lists them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from setflow.cli import main
from setflow.train.config import ConfigError, bundled_configs, config_path, load_config

REPO = Path(__file__).resolve().parents[1]
SOURCE = sorted(p.relative_to(REPO / "configs").as_posix() for p in (REPO / "configs").rglob("*.yaml"))


def test_bundled_configs_resolve_by_name_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    want = (REPO / "configs" / "spatial_mnist" / "sortflow_cpu.yaml").resolve()
    for given in ("sortflow_cpu", "sortflow_cpu.yaml", "spatial_mnist/sortflow_cpu.yaml", "spatial_mnist/sortflow_cpu",
                  "configs/spatial_mnist/sortflow_cpu.yaml"):
        assert config_path(given).resolve() == want, given
    assert load_config("sortflow_cpu")["name"] == "sortflow_cpu"
    (tmp_path / "sortflow_cpu.yaml").write_text("model: toy_flow\ndata: toy2d\n")  # a file given wins
    assert load_config("sortflow_cpu.yaml")["model"] == "toy_flow"
    with pytest.raises(ConfigError, match="config file not found: nope.*setflow configs"):
        load_config("nope")


def test_an_ambiguous_name_is_a_one_line_error(tmp_path, monkeypatch):
    import setflow.train.config as config

    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "same.yaml").write_text("model: toy_flow\ndata: toy2d\n")
    monkeypatch.setattr(config, "_CONFIG_DIRS", (tmp_path,))
    with pytest.raises(ConfigError) as e:
        config_path("same")
    assert "\n" not in str(e.value) and "a/same.yaml" in str(e.value) and "b/same.yaml" in str(e.value)
    assert config_path("a/same").resolve() == (tmp_path / "a" / "same.yaml").resolve()


def test_setflow_configs_lists_every_bundled_config(capsys):
    assert [name for name, _ in bundled_configs()] == SOURCE
    assert main(["configs"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out if line.strip()] == SOURCE
    assert any(line.startswith("spatial_mnist/sortflow_cpu.yaml") and "sortflow" in line.split()[1:] for line in out)


def test_the_wheel_ships_the_configs_and_an_installed_copy_finds_them(tmp_path):
    """Build the wheel from a copy of the project (nothing written into the checkout), install it into a
    folder and resolve a config by name from another directory."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(REPO / "setflow", src / "setflow", symlinks=True, ignore=ignore)
    shutil.copytree(REPO / "configs", src / "configs", ignore=ignore)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "wheel"), str(src)],
                   check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = (tmp_path / "wheel").glob("setflow-*.whl")
    with zipfile.ZipFile(wheel) as z:
        shipped = sorted(n[len("setflow/configs/"):] for n in z.namelist()
                         if n.startswith("setflow/configs/") and n.endswith(".yaml"))
    assert shipped == SOURCE
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)], check=True,
                   capture_output=True, cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = ("import setflow.train.config as c; print(c.config_path('sortflow_cpu').resolve()); "
            "print(c.load_config('configs/spatial_mnist/sortflow_cpu.yaml')['model'])")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=elsewhere,
                         env=dict(os.environ, PYTHONPATH=str(site), PYTHONNOUSERSITE="1")).stdout.split()
    assert out[0] == str((site / "setflow" / "configs" / "spatial_mnist" / "sortflow_cpu.yaml").resolve())
    assert out[1] == "sortflow"


@pytest.mark.parametrize("name", SOURCE)
def test_every_bundled_config_loads_and_builds_its_model(name):
    from setflow.models.build import build_from_config
    from setflow.registry import DATASETS
    from setflow.train.config import load_config

    cfg = load_config(str(REPO / "configs" / name), [])
    DATASETS.check_args(cfg["data"], dict(cfg.get("data_args", {})))
    model = build_from_config(cfg)
    assert sum(p.numel() for p in model.parameters()) > 0


def test_the_3d_cpu_config_trains_a_step_on_its_data():
    import torch

    from setflow.models.build import build_from_config
    from setflow.train.config import load_config
    from setflow.data.experiments import load_data

    cfg = load_config(str(REPO / "configs" / "pointcloud" / "permuteflow_shapes_cond_cpu.yaml"), ["data_args.per_class=2"])
    d = load_data(cfg)
    assert "canonical pose" in d.source and "fresh subset" in d.source
    model = build_from_config(cfg)
    x, y = d.train_epoch(1)[:4], d.labels["train"][:4]
    loss = -model.log_prob(x, context=y).mean()
    loss.backward()
    assert torch.isfinite(loss)
