"""Experiment configs: YAML files validated against a schema of defaults, with typed overrides.

Unknown keys fail before anything trains, naming the key and the valid ones. Overrides on the
command line use dotted keys (``train.lr=3e-4``, ``model_args.num_steps=4``) and are parsed as
YAML scalars; values under ``train`` and ``eval`` must keep the type of their default.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Iterable, Optional, Union

import yaml

from setflow.migrate import SPEC_NAMES, migrate, override_path
from setflow.registry import DATASETS, MODELS, OPTIMIZERS

__all__ = ["DEFAULTS", "ConfigError", "load_config", "apply_overrides", "validate_config", "resolve_device",
           "check_positive", "config_path", "bundled_configs", "check_set_size"]


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the offending key."""


DEFAULTS: dict[str, Any] = {
    "name": None,
    "model": None,
    "model_args": {},
    "data": None,
    "data_args": {},
    "train": {
        "optimizer": "adam",  # a name in setflow.registry.OPTIMIZERS: adam | adamax | adamw
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
        "fused": None,  # deprecated: model_args.conditioner.fused (setflow.migrate maps an explicit true/false onto it)
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


_INT, _NUM = (int,), (int, float)
# key -> (types allowed besides None-when-default-is-None, test, what the test means (or a function saying it))
_RANGES: dict[str, tuple[tuple[type, ...], Any, str]] = {
    "train.lr": (_NUM, lambda v: v > 0, "> 0"),
    "train.batch_size": (_INT, lambda v: v >= 1, ">= 1"),
    "train.epochs": (_INT, lambda v: v >= 1, ">= 1"),
    "train.max_steps": (_INT, lambda v: v >= 0, "an integer >= 0 (or null)"),
    "train.max_minutes": (_NUM, lambda v: v > 0, "a number > 0 (or null)"),
    "train.warmup_steps": (_INT, lambda v: v >= 0, ">= 0"),
    "train.lr_decay": (_NUM, lambda v: 0 < v <= 1, "in (0, 1]"),
    "train.grad_clip": (_NUM, lambda v: v > 0, "a number > 0 (or null)"),
    "train.weight_decay": (_NUM, lambda v: v >= 0, ">= 0"),
    "train.eval_every": (_INT, lambda v: v >= 1, ">= 1"),
    "train.ckpt_every": (_INT, lambda v: v >= 1, ">= 1"),
    "train.log_every": (_INT, lambda v: v >= 1, ">= 1"),
    "train.seed": (_INT, lambda v: v >= 0, ">= 0"),
    "train.num_threads": (_INT, lambda v: v >= 1, "an integer >= 1 (or null)"),
    "train.optimizer": ((str,), lambda v: v in OPTIMIZERS, lambda: "one of " + ", ".join(OPTIMIZERS)),
    "train.dtype": ((str,), lambda v: v in ("float32", "float64"), "float32 or float64"),
    "train.device": ((str,), lambda v: _DEVICE.fullmatch(v) is not None, "cpu, cuda or cuda:N"),
    "eval.batch_size": (_INT, lambda v: v >= 1, ">= 1"),
    "eval.iwbo_k": (_INT, lambda v: v >= 1, ">= 1"),
    "eval.iwbo_chunk": (_INT, lambda v: v >= 1, ">= 1"),
    "eval.max_examples": (_INT, lambda v: v >= 1, "an integer >= 1 (or null)"),
    "eval.split": ((str,), lambda v: v in ("train", "valid", "test"), "train, valid or test"),
}

_DEVICE = re.compile(r"cpu|cuda(:\d+)?")


def _check_ranges(cfg: dict) -> None:
    for key, (types, ok, what) in _RANGES.items():
        section, name = key.split(".")
        value = cfg[section][name]
        if value is None and DEFAULTS[section][name] is None:
            continue
        if isinstance(value, bool) or not isinstance(value, types) or not ok(value):
            raise ConfigError(f"config key {key!r} must be {what() if callable(what) else what}, got {value!r}")


def check_positive(value: Optional[int], option: str) -> Optional[int]:
    """``value`` when it is ``None`` or >= 1, else a one-line :class:`ConfigError` naming ``option``."""
    if value is not None and value < 1:
        raise ConfigError(f"{option} must be >= 1, got {value}")
    return value


def resolve_device(name: Optional[str], what: str = "--device") -> str:
    """Check a device name (``cpu``, ``cuda``, ``cuda:N``) and that it exists; the one device
    error every command gives."""
    import torch

    name = "cpu" if name is None else str(name).strip()
    if _DEVICE.fullmatch(name) is None:
        raise ConfigError(f"{what}: unknown device {name!r}; expected cpu, cuda or cuda:N")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"{what}={name} but no CUDA device is available; use cpu")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"{what}={name} but only {torch.cuda.device_count()} CUDA device(s) exist")
    return name


def validate_config(cfg: dict, train_fused_wins: bool = False) -> dict:
    """Merge ``cfg`` over :data:`DEFAULTS`, checking every key, type and value range; old keys are
    mapped onto their current form by :func:`setflow.migrate.migrate` (``train_fused_wins``: see there)."""
    if not isinstance(cfg, dict):
        raise ConfigError(f"a config must be a mapping at the top level, got {type(cfg).__name__}")
    out = _merge(DEFAULTS, cfg, "")
    for required in ("model", "data"):
        if not out[required]:
            raise ConfigError(f"config needs a {required!r} entry")
    _check_ranges(out)
    try:
        return migrate(out, train_fused_wins=train_fused_wins)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def apply_overrides(cfg: dict, overrides: Iterable[str]) -> dict:
    """Apply ``key.sub=value`` strings (values parsed as YAML scalars) and re-validate."""
    raw = copy.deepcopy(cfg)
    given = set()
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. train.lr=3e-4)")
        key, text = item.split("=", 1)
        given.add(key.strip())
        value = yaml.safe_load(text) if text != "" else None
        parts = override_path(raw.get("model_args"), key.strip().split("."))
        node = raw
        for p in parts[:-1]:
            if node is raw.get("model_args") and p in SPEC_NAMES and isinstance(node.get(p, "transformer"), str):
                node[p] = {"name": node.get(p, "transformer")}  # a field of a spec given by name
            if p not in node or not isinstance(node[p], dict):
                if p in _FREE_SECTIONS or (node is raw and p in DEFAULTS):
                    node = node.setdefault(p, {})
                    continue
                raise ConfigError(f"unknown config key {key!r}; valid top-level keys: {sorted(DEFAULTS)}")
            node = node[p]
        node[parts[-1]] = value
    wins = "train.fused" in given and not any(k.startswith("model_args.") and k.endswith("fused") for k in given)
    return validate_config(raw, train_fused_wins=wins)  # the old key on the command line overrides the file's new key


_REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs"  # configs/ of a checkout (the source of truth)
_PACKAGE_CONFIGS = Path(__file__).resolve().parents[1] / "configs"  # setflow/configs: a link to it, a copy in a wheel
_CONFIG_DIRS = (_REPO_CONFIGS, _PACKAGE_CONFIGS)


def _config_dirs() -> list[Path]:
    """The folders of bundled configs that exist, each once."""
    out: list[Path] = []
    for base in _CONFIG_DIRS:
        if base.is_dir() and all(base.resolve() != b.resolve() for b in out):
            out.append(base)
    return out


def bundled_configs() -> list[tuple[str, Path]]:
    """``(name relative to configs/, path)`` of every bundled YAML config, sorted by name."""
    found: dict[str, Path] = {}
    for base in _config_dirs():
        for p in base.rglob("*.yaml"):
            found.setdefault(p.relative_to(base).as_posix(), p)
    return sorted(found.items())


def config_path(path: Union[str, Path]) -> Path:
    """``path`` as given when it exists; else a bundled config (from the checkout's ``configs/`` or
    the package's copy), so they work from any directory: ``configs/spatial_mnist/sortflow_cpu.yaml``,
    ``spatial_mnist/sortflow_cpu.yaml`` or a name alone, ``sortflow_cpu`` (``.yaml`` may be left out)."""
    path = Path(path)
    if path.is_file() or path.is_absolute():
        return path
    parts = path.parts[1:] if path.parts and path.parts[0] == "configs" else path.parts
    if not parts:
        return path
    rel = Path(*parts)
    rel = rel if rel.suffix in (".yaml", ".yml") else rel.with_name(rel.name + ".yaml")
    for base in _config_dirs():
        if (base / rel).is_file():
            return base / rel
    if len(parts) == 1:  # a name alone: the one bundled config of that name
        hits = [(name, p) for name, p in bundled_configs() if p.name == rel.name]
        if len(hits) > 1:
            raise ConfigError(f"config name {str(path)!r} is ambiguous: {', '.join(n for n, _ in hits)}; "
                              f"give the folder too")
        if hits:
            return hits[0][1]
    return path


def load_config(path: Union[str, Path], overrides: Optional[Iterable[str]] = None) -> dict:
    path = config_path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path} (`setflow configs` lists the bundled ones)")
    with open(path) as f:
        try:
            raw = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from e
    cfg = validate_config(raw)
    if cfg["name"] is None:
        cfg["name"] = path.stem
    return apply_overrides(cfg, overrides or [])


_SIZE_KEYS = ("num_points", "max_points", "min_points")


def check_set_size(config: dict) -> dict:
    """The set size said once: ``config`` (migrated) whose model takes its size range from
    ``data_args.num_points`` (an int, or ``[min, max]`` for sets of any size).

    A set model whose ``model_args`` name none of ``num_points`` / ``max_points`` / ``min_points`` gets
    the data's (``num_points: N``, or ``num_points: null, max_points: max, min_points: min``). One that
    names them must agree, else a one-line :class:`ConfigError` naming both keys, before any data loads: a
    fixed size equals the data's; sets of any size need ``min_points <= min`` and ``max <= max_points``
    (the data's padding is never trimmed to fit). Models or data sets without these keys pass unchanged.
    """
    from setflow.data.steps import point_range

    cfg = migrate(config)
    model, data = cfg.get("model"), cfg.get("data")
    if not set(_SIZE_KEYS) <= (MODELS.arg_names(model) or set()) or data not in DATASETS:
        return cfg
    if "num_points" not in (DATASETS.arg_names(data) or set()):
        return cfg
    data_args = cfg.get("data_args") or {}
    raw = data_args.get("num_points", DATASETS.arg_defaults(data).get("num_points"))
    if raw is None:
        return cfg
    lo, hi = point_range(raw, 1)
    margs = cfg.setdefault("model_args", {})
    if not any(k in margs for k in _SIZE_KEYS):
        margs.update({"num_points": hi} if lo == hi else {"num_points": None, "max_points": hi, "min_points": lo})
        return cfg
    size = {k: margs.get(k, MODELS.arg_defaults(model).get(k)) for k in _SIZE_KEYS}
    said = f"data_args.num_points={raw!r}".replace("'", "")
    if size["num_points"] is not None:
        if (lo, hi) != (size["num_points"],) * 2:
            raise ConfigError(f"{said} but model_args.num_points={size['num_points']}: state the set size once (leave "
                             f"model_args.num_points out and the model takes the data's)")
    elif size["max_points"] is not None and hi > size["max_points"]:
        raise ConfigError(f"{said} pads sets to {hi} points but model_args.max_points={size['max_points']}: the "
                         f"model takes sets of up to max_points (leave the model's size keys out to take the data's)")
    elif lo < (size["min_points"] or 1):
        raise ConfigError(f"{said} has sets of {lo} points but model_args.min_points={size['min_points']} (leave the "
                         f"model's size keys out to take the data's)")
    return cfg
