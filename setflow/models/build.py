"""Build a model from a config: ``model`` names a registered builder, ``model_args`` its arguments.

:func:`check_model_args` compares ``model_args`` with the builder's signature without building
anything, so a typo is reported (with the valid names) before any data is loaded.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from setflow.models import build_model
from setflow.registry import MODELS

__all__ = ["build_from_config", "check_model_args", "model_arg_names", "model_args_of", "resolved_model_args"]


def model_arg_names(name: str) -> Optional[set[str]]:
    """The ``model_args`` a registered model accepts, or ``None`` when they cannot be known."""
    return MODELS.arg_names(name)


def check_model_args(config: dict) -> None:
    """Raise a one-line ``ValueError`` when ``config['model_args']`` has keys the builder lacks."""
    MODELS.check_args(config["model"], config.get("model_args") or {})


def model_args_of(config: dict) -> dict:
    """``config['model_args']``, with an old config's ``train.fused: true`` mapped onto
    ``model_args.fused`` for the models that take it (the set flows), so old configs and the
    checkpoints that carry them build the fused model they trained."""
    args = dict(config.get("model_args") or {})
    if (config.get("train") or {}).get("fused") and "fused" in (model_arg_names(config["model"]) or ()):
        if not args.setdefault("fused", True):
            raise ValueError("train.fused=true contradicts model_args.fused=false; set model_args.fused only")
    return args


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively (a builder's tuple default equals the YAML list giving it)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def resolved_model_args(config: dict) -> dict:
    """The arguments the model of ``config`` is built with: :func:`model_args_of` over the builder's
    defaults, as plain values, so an argument given equal to its default compares equal to one left out."""
    return _plain({**MODELS.arg_defaults(config["model"]), **model_args_of(config)})


def build_from_config(config: dict) -> nn.Module:
    """The model of ``config`` in the config's ``train.dtype`` (on the CPU)."""
    check_model_args(config)
    try:
        model = build_model(config["model"], **model_args_of(config))
    except TypeError as e:  # a builder whose arguments could not be read from its signature
        raise ValueError(f"bad model_args for {config['model']!r}: {e}") from e
    dtype = getattr(torch, config.get("train", {}).get("dtype", "float32"))
    return model.to(dtype)
