"""Build a model from a config: ``model`` names a registered builder, ``model_args`` its arguments.

:func:`check_model_args` compares ``model_args`` with the builder's signature without building
anything, so a typo is reported (with the valid names) before any data is loaded.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from setflow.migrate import migrate
from setflow.registry import MODELS

__all__ = ["build_from_config", "check_model_args", "model_arg_names", "model_args_of", "resolved_model_args"]


def model_arg_names(name: str) -> Optional[set[str]]:
    """The ``model_args`` a registered model accepts, or ``None`` when they cannot be known."""
    return MODELS.arg_names(name)


def check_model_args(config: dict) -> None:
    """Raise a one-line ``ValueError`` when ``config['model_args']`` (migrated: :func:`setflow.migrate.migrate`)
    has keys the builder lacks."""
    MODELS.check_args(config["model"], model_args_of(config))


def model_args_of(config: dict) -> dict:
    """``config['model_args']`` in the current form: old keys (``train.fused``, the set flows' flat
    conditioner keys) mapped by :func:`setflow.migrate.migrate`, so old configs and the checkpoints
    that carry them build the model they trained."""
    return dict(migrate(config).get("model_args") or {})


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively (a builder's tuple default equals the YAML list giving it)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def resolved_model_args(config: dict) -> dict:
    """The arguments the model of ``config`` is built with: :func:`model_args_of` over the builder's
    defaults, as plain values, so an argument given equal to its default compares equal to one left out
    (the set flows' conditioner specs spelled out in full)."""
    args = {**MODELS.arg_defaults(config["model"]), **model_args_of(config)}
    names = MODELS.arg_names(config["model"]) or ()
    if "conditioner" in names and "point_conditioner" in names:
        from setflow.models.set_flows import resolved_conditioners

        args = resolved_conditioners(args)
    return _plain(args)


def build_from_config(config: dict, check: bool = True) -> nn.Module:
    """The model of ``config`` (migrated first) in the config's ``train.dtype`` (on the CPU).

    ``check=False``: the caller already ran :func:`check_model_args` (the trainer does, before the
    data loads), so ``model_args`` are checked once per start."""
    args = model_args_of(config)
    if check:
        MODELS.check_args(config["model"], args)
    try:
        model = MODELS.get(config["model"])(**args)
    except TypeError as e:  # a builder whose arguments could not be read from its signature
        raise ValueError(f"bad model_args for {config['model']!r}: {e}") from e
    dtype = getattr(torch, (config.get("train") or {}).get("dtype") or "float32")
    return model.to(dtype)

