"""Model registry: config name -> builder (``model: sortflow`` in a YAML config)."""

from __future__ import annotations

import importlib
from typing import Callable

from torch import nn

__all__ = ["MODELS", "register_model", "build_model"]

MODELS: dict[str, Callable[..., nn.Module]] = {}

_FAMILIES = ("set_flows", "idf", "image_flows", "toy", "set_codec")


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: ``@register_model("sortflow") def build(**args) -> nn.Module``."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in MODELS and MODELS[name] is not fn:
            raise ValueError(f"model name {name!r} is registered twice")
        MODELS[name] = fn
        return fn

    return deco


def _load_families() -> None:
    for fam in _FAMILIES:
        try:
            importlib.import_module(f"setflow.models.{fam}")
        except ModuleNotFoundError as e:  # a family module not present in this build
            if e.name != f"setflow.models.{fam}":
                raise


def build_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model; unknown names list the valid ones."""
    _load_families()
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; registered models: {sorted(MODELS)}")
    return MODELS[name](**kwargs)
