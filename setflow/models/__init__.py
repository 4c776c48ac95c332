"""The model families; each registers its builders in :data:`setflow.registry.MODELS`.

``model: sortflow`` in a YAML config names a registered builder and ``model_args`` its keyword
arguments. The families are imported here by name; any other module of this package is imported
too (:func:`import_model_modules`), so a new file that calls ``@register_model("name")`` is found
without editing a list.
"""

from __future__ import annotations

from torch import nn

from setflow.registry import MODELS, import_submodules, register_model

# the families (each module's import registers its builders)
from setflow.models import idf, image_flows, set_codec, set_flows, toy  # noqa: F401  (registers)

__all__ = ["MODELS", "register_model", "build_model", "import_model_modules"]


def build_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model; an unknown name or argument is a one-line error listing the valid ones."""
    from setflow.migrate import migrate  # old keyword names (flat conditioner keys) in the current form

    return MODELS.build(name, **migrate({"model": name, "model_args": kwargs})["model_args"])


def import_model_modules() -> list[str]:
    """Import every module of this package (every folder on ``__path__``) not imported yet
    (:func:`setflow.registry.import_submodules`); returns the names imported. A module that fails
    to import raises: a broken model file is an error, not a model that silently goes missing.
    """
    return import_submodules(__name__)


import_model_modules()
