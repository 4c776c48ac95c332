"""Config validation: unknown keys and wrong types fail before training, naming the key."""

from __future__ import annotations

import pytest

from setflow.train.config import ConfigError, apply_overrides, load_config, validate_config


def _write(tmp_path, text: str):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_unknown_key_names_key_and_valid_keys(tmp_path):
    p = _write(tmp_path, "model: sortflow\ndata: spatial_mnist\ntrain:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"'train\.lrr'.*valid keys.*'lr'"):
        load_config(p)
    with pytest.raises(ConfigError, match="'modle'"):
        validate_config({"modle": "x", "model": "sortflow", "data": "spatial_mnist"})


def test_types_and_overrides(tmp_path):
    p = _write(tmp_path, "model: sortflow\ndata: spatial_mnist\n")
    cfg = load_config(p, ["train.lr=3e-4", "train.batch_size=32", "model_args.num_steps=2", "train.lr_decay=1"])
    assert cfg["train"]["lr"] == 3e-4 and cfg["train"]["batch_size"] == 32
    assert cfg["model_args"] == {"num_steps": 2} and isinstance(cfg["train"]["lr_decay"], float)
    assert cfg["name"] == "c"
    with pytest.raises(ConfigError, match="'train.batch_size' must be int"):
        apply_overrides(cfg, ["train.batch_size=big"])
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides(cfg, ["train.lr"])
    with pytest.raises(ConfigError, match="unknown config key"):
        apply_overrides(cfg, ["nope.x=1"])


def test_missing_file_and_required_entries(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="'data'"):
        load_config(_write(tmp_path, "model: sortflow\n"))
