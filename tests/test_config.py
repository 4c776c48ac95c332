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


BASE = {"model": "sortflow", "data": "spatial_mnist"}


@pytest.mark.parametrize("key, value, expect", [
    ("train.batch_size", -1, ">= 1"), ("train.batch_size", 0, ">= 1"), ("train.epochs", -1, ">= 1"),
    ("train.warmup_steps", -10, ">= 0"), ("train.lr", 0.0, "> 0"), ("train.lr_decay", 1.5, "in \\(0, 1\\]"),
    ("train.ckpt_every", 0, ">= 1"), ("train.eval_every", 0, ">= 1"), ("train.log_every", 0, ">= 1"),
    ("train.max_steps", -1, "integer >= 0"), ("train.max_steps", "ten", "integer >= 0"),
    ("train.max_minutes", "abc", "number > 0"), ("train.max_minutes", 0, "number > 0"),
    ("train.grad_clip", -1.0, "> 0"), ("train.weight_decay", -0.1, ">= 0"), ("train.num_threads", 0, ">= 1"),
    ("train.optimizer", "sgd", "adam, adamax, adamw"), ("train.dtype", "float16", "float32 or float64"),
    ("train.device", "gpu", "cpu, cuda or cuda:N"), ("eval.batch_size", 0, ">= 1"), ("eval.iwbo_k", 0, ">= 1"),
    ("eval.iwbo_chunk", 0, ">= 1"), ("eval.max_examples", 0, ">= 1"), ("eval.split", "dev", "train, valid or test"),
])
def test_every_value_is_range_checked(key, value, expect):
    section, name = key.split(".")
    with pytest.raises(ConfigError, match=f"{key}' must be .*{expect}"):
        validate_config(dict(BASE, **{section: {name: value}}))


def test_valid_edge_values_pass():
    cfg = validate_config(dict(BASE, train={"max_steps": 0, "max_minutes": 0.5, "warmup_steps": 0, "lr_decay": 1,
                                            "grad_clip": 1, "num_threads": 1, "device": "cuda:1"}))
    assert cfg["train"]["max_steps"] == 0 and cfg["train"]["lr_decay"] == 1.0


def test_bundled_config_found_from_another_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config("configs/spatial_mnist/sortflow_cpu.yaml")["model"] == "sortflow"
    with pytest.raises(ConfigError, match="not found"):
        load_config("configs/spatial_mnist/nope.yaml")


def test_model_args_checked_against_the_builder_before_data_loads(monkeypatch):
    from setflow.models.build import check_model_args
    from setflow.train import trainer

    with pytest.raises(ValueError, match="unknown model_args for 'sortflow': num_stepz; valid: .*num_steps"):
        check_model_args(validate_config(dict(BASE, model_args={"num_stepz": 3})))
    with pytest.raises(ValueError, match="unknown model_args for 'toy_flow': depth; valid: abs, abs_dims"):
        check_model_args(validate_config(dict(BASE, model="toy_flow", model_args={"depth": 3})))
    with pytest.raises(ValueError, match="'sortflow': permutation;"):  # fixed by the sortflow builder itself
        check_model_args(validate_config(dict(BASE, model_args={"permutation": "sort"})))

    def no_data(*a, **k):
        raise AssertionError("data must not load before model_args are checked")

    monkeypatch.setattr(trainer, "load_data", no_data)
    with pytest.raises(ValueError, match="num_stepz"):
        trainer.Trainer(validate_config(dict(BASE, model_args={"num_stepz": 3})), "unused-out", log=lambda *_: None)
