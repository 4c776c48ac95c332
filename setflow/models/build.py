"""Build a model from a config: ``model`` names a registered builder, ``model_args`` its arguments.

:func:`check_model_args` compares ``model_args`` with the builder's signature without building
anything, so a typo is reported (with the valid names) before any data is loaded.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Optional

import torch
from torch import nn

from setflow.models import MODELS, _load_families, build_model

__all__ = ["build_from_config", "check_model_args", "model_arg_names"]

# Builders that take ``**kwargs`` and forward them: where their real signature lives, and the
# arguments the wrapper fixes itself (not settable from ``model_args``).
_FORWARDED: dict[str, tuple[str, tuple[str, ...]]] = {
    "sortflow": ("setflow.models.set_flows:build_set_flow", ("permutation",)),
    "permuteflow": ("setflow.models.set_flows:build_set_flow", ("permutation",)),
    "idf": ("setflow.models.idf:IDF", ()),
    "baseline_image_flow": ("setflow.models.image_flows:build_image_flow", ()),
    "maxpool_flow": ("setflow.models.image_flows:build_image_flow", ()),
}


def _signature_names(fn: Any) -> tuple[Optional[set[str]], bool]:
    """(named parameters, takes **kwargs) of a function or a class's ``__init__``."""
    target = fn.__init__ if inspect.isclass(fn) else fn
    params = inspect.signature(target).parameters.values()
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"self"}
    return names, any(p.kind is p.VAR_KEYWORD for p in params)


def model_arg_names(name: str) -> Optional[set[str]]:
    """The ``model_args`` a registered model accepts, or ``None`` when they cannot be known."""
    _load_families()
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; registered models: {sorted(MODELS)}")
    names, var_kw = _signature_names(MODELS[name])
    if var_kw and name in _FORWARDED:
        where, fixed = _FORWARDED[name]
        module, attr = where.split(":")
        inner, var_kw = _signature_names(getattr(importlib.import_module(module), attr))
        names = (names | inner) - set(fixed)
    return None if var_kw else names


def check_model_args(config: dict) -> None:
    """Raise a one-line ``ValueError`` when ``config['model_args']`` has keys the builder lacks."""
    name = config["model"]
    valid = model_arg_names(name)
    given = config.get("model_args") or {}
    unknown = sorted(set(given) - valid) if valid is not None else []
    if unknown:
        raise ValueError(f"unknown model_args for {name!r}: {', '.join(unknown)}; valid: {', '.join(sorted(valid))}")


def build_from_config(config: dict) -> nn.Module:
    """The model of ``config`` in the config's ``train.dtype`` (on the CPU)."""
    check_model_args(config)
    try:
        model = build_model(config["model"], **config.get("model_args", {}))
    except TypeError as e:  # a builder whose arguments could not be read from its signature
        raise ValueError(f"bad model_args for {config['model']!r}: {e}") from e
    dtype = getattr(torch, config.get("train", {}).get("dtype", "float32"))
    return model.to(dtype)
