"""Experiment configs: YAML files validated against a schema of defaults, with typed overrides.

Unknown keys fail before anything trains, naming the key and the valid ones. Overrides on the
command line use dotted keys (``train.lr=3e-4``, ``model_args.num_steps=4``) and are parsed as
YAML scalars; values under ``train`` and ``eval`` must keep the type of their default.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable, Optional, Union

import yaml

__all__ = ["DEFAULTS", "ConfigError", "load_config", "apply_overrides", "validate_config"]


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the offending key."""


DEFAULTS: dict[str, Any] = {
    "name": None,
    "model": None,
    "model_args": {},
    "data": None,
    "data_args": {},
    "train": {
        "optimizer": "adam",  # adam | adamax | adamw
        "lr": 1e-3,
        "batch_size": 128,
        "epochs": 1,
        "max_steps": None,  # stop after this many optimiser steps (overrides epochs)
        "max_minutes": None,  # stop after this wall-clock budget (checkpoint written)
        "warmup_steps": 0,  # linear warm-up
        "lr_decay": 1.0,  # multiplicative decay applied once per epoch
        "grad_clip": None,  # max global grad norm
        "weight_decay": 0.0,
        "eval_every": 1000,  # steps between validation passes
        "ckpt_every": 500,  # steps between checkpoints
        "log_every": 50,
        "seed": 0,
        "device": "cpu",
        "dtype": "float32",
        "num_threads": None,
        "fused": False,  # set transformers' fused path with hash dropout (C++ blocks on CPU; setflow.nn.fused)
        "progress": True,
    },
    "eval": {
        "batch_size": 256,
        "iwbo_k": 10,
        "iwbo_chunk": 10,
        "max_examples": None,
        "split": "test",
    },
}

_FREE_SECTIONS = ("model_args", "data_args")  # checked by the builder, which names its own arguments


def _merge(base: dict, new: dict, path: str) -> dict:
    out = copy.deepcopy(base)
    for key, value in new.items():
        where = f"{path}{key}"
        if key not in base:
            raise ConfigError(f"unknown config key {where!r}; valid keys here: {sorted(base)}")
        if isinstance(base[key], dict) and key not in _FREE_SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"config key {where!r} must be a mapping, got {type(value).__name__}")
            out[key] = _merge(base[key], value, where + ".")
        elif key in _FREE_SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"config key {where!r} must be a mapping, got {type(value).__name__}")
            out[key] = copy.deepcopy(value)
        else:
            out[key] = _typed(value, base[key], where)
    return out


def _typed(value: Any, default: Any, where: str) -> Any:
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"config key {where!r} must be true/false, got {value!r}")
        return value
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, float) and isinstance(value, str):
        try:  # YAML 1.1 reads "3e-4" (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if isinstance(default, (int, float, str)) and not isinstance(value, type(default)):
        raise ConfigError(f"config key {where!r} must be {type(default).__name__}, got {value!r}")
    return value


def validate_config(cfg: dict) -> dict:
    """Merge ``cfg`` over :data:`DEFAULTS`, checking every key and type."""
    if not isinstance(cfg, dict):
        raise ConfigError(f"a config must be a mapping at the top level, got {type(cfg).__name__}")
    out = _merge(DEFAULTS, cfg, "")
    for required in ("model", "data"):
        if not out[required]:
            raise ConfigError(f"config needs a {required!r} entry")
    return out


def apply_overrides(cfg: dict, overrides: Iterable[str]) -> dict:
    """Apply ``key.sub=value`` strings (values parsed as YAML scalars) and re-validate."""
    raw = copy.deepcopy(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. train.lr=3e-4)")
        key, text = item.split("=", 1)
        value = yaml.safe_load(text) if text != "" else None
        parts = key.strip().split(".")
        node = raw
        for p in parts[:-1]:
            if p not in node or not isinstance(node[p], dict):
                if p in _FREE_SECTIONS or (node is raw and p in DEFAULTS):
                    node = node.setdefault(p, {})
                    continue
                raise ConfigError(f"unknown config key {key!r}; valid top-level keys: {sorted(DEFAULTS)}")
            node = node[p]
        node[parts[-1]] = value
    return validate_config(raw)


def load_config(path: Union[str, Path], overrides: Optional[Iterable[str]] = None) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    with open(path) as f:
        try:
            raw = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from e
    cfg = validate_config(raw)
    if cfg["name"] is None:
        cfg["name"] = path.stem
    return apply_overrides(cfg, overrides or [])
