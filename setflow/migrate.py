"""Old configs and old checkpoints in one place: :func:`migrate` maps every retired key onto its
current form, so the loader, the builder and the trainer read one dialect.

Retired keys and where they went:

- ``train.fused`` (the set transformers' fused CPU path) -> the conditioner spec's ``fused``
  (``model_args.conditioner.fused``) of the models that take a conditioner spec, with one
  ``FutureWarning``; a model without one keeps ``train.fused`` (the trainer switches its set
  transformers). Both keys given with different values is an error naming both.
- the flat conditioner keys of the set flows (``d_model``, ``num_heads``, ``num_layers``,
  ``dim_feedforward``, ``dropout``, ``num_inducing``, ``knn_k``, ``fused``) -> the nested spec
  ``model_args.conditioner: {name: transformer, d_model: 64, ...}`` (also inside
  ``model_args.decoder_args`` of a latent set flow with the ``set`` decoder).

:func:`migrate` returns a new dict, never changes its input, and is idempotent (a current config
comes back equal). Imports nothing from setflow but the registry (layers below, builders above).

Example:
    >>> old = {"model": "sortflow", "model_args": {"d_model": 32, "knn_k": 4}, "train": {}}
    >>> migrate(old)["model_args"]
    {'conditioner': {'name': 'transformer', 'd_model': 32, 'k': 4}}
"""

from __future__ import annotations

import copy
import warnings
from typing import Optional

from setflow.registry import MODELS

__all__ = ["migrate", "fold_conditioner_args", "override_path", "SPEC_KEYS", "SPEC_NAMES"]

#: flat ``model_args`` key of a set flow -> its field in the nested conditioner spec
SPEC_KEYS = {"d_model": "d_model", "num_heads": "num_heads", "num_layers": "num_layers",
             "dim_feedforward": "dim_feedforward", "dropout": "dropout", "num_inducing": "num_inducing",
             "knn_k": "k", "fused": "fused"}

#: the set flows' ``model_args`` that hold a conditioner spec (a name or ``{name: ..., <field>: ...}``)
SPEC_NAMES = ("conditioner", "point_conditioner")


def override_path(model_args: Optional[dict], parts: list) -> list:
    """A dotted override's path in the current form: ``model_args.<flat key>`` (e.g. ``d_model``) becomes
    ``model_args.conditioner.<field>`` once the config's conditioner is a nested spec (so the override
    replaces that field rather than contradicting it); the same inside ``model_args.decoder_args``."""
    if len(parts) not in (2, 3) or parts[0] != "model_args" or parts[-1] not in SPEC_KEYS:
        return parts
    node = model_args if len(parts) == 2 or not isinstance(model_args, dict) else model_args.get(parts[1])
    if len(parts) == 3 and parts[1] != "decoder_args":
        return parts
    if isinstance(node, dict) and isinstance(node.get("conditioner"), dict):
        return parts[:-1] + ["conditioner", SPEC_KEYS[parts[-1]]]
    return parts


def _flag(value) -> str:
    return str(value).lower() if isinstance(value, bool) else repr(value)


def fold_conditioner_args(args: dict, where: str = "model_args", default: str = "transformer") -> dict:
    """``args`` with its flat conditioner keys (:data:`SPEC_KEYS`) folded into ``args['conditioner']``
    (a name becomes ``{name: ...}``; ``default`` when absent). A flat key that contradicts the nested
    one is a one-line ``ValueError`` naming both; ``args`` without flat keys comes back unchanged."""
    if not any(k in args for k in SPEC_KEYS):
        return args
    out = {k: v for k, v in args.items() if k not in SPEC_KEYS}
    cond = out.get("conditioner", default)
    if isinstance(cond, dict):
        cond = dict(cond)
    elif isinstance(cond, str):
        cond = {"name": cond}
    else:
        raise ValueError(f"{where}.conditioner must be a name or a mapping {{name: ..., d_model: ...}}, got {cond!r}")
    for old, new in SPEC_KEYS.items():
        if old not in args:
            continue
        if new in cond and cond[new] != args[old]:
            raise ValueError(f"{where}.{old}={_flag(args[old])} contradicts {where}.conditioner.{new}="
                             f"{_flag(cond[new])}; give {where}.conditioner.{new} only")
        cond[new] = args[old]
    out["conditioner"] = cond
    return out


def _takes_spec(model: Optional[str]) -> bool:
    """Whether ``model`` takes the nested conditioner spec (the set flows)."""
    try:
        names = MODELS.arg_names(model) if model is not None else None
    except (KeyError, ValueError):  # a model no longer registered (an old checkpoint): leave its keys
        return False
    return names is not None and "conditioner" in names and "point_conditioner" in names


def _existing_fused(args: dict) -> tuple[Optional[str], object]:
    """``(key, value)`` of the ``fused`` already in ``args`` (flat or nested), or ``(None, None)``."""
    if "fused" in args:
        return "model_args.fused", args["fused"]
    cond = args.get("conditioner")
    if isinstance(cond, dict) and "fused" in cond:
        return "model_args.conditioner.fused", cond["fused"]
    return None, None


def _train_fused(cfg: dict, train_fused_wins: bool) -> None:
    train = cfg.get("train")
    value = train.get("fused") if isinstance(train, dict) else None
    if value is None:
        return
    if not isinstance(value, bool):
        raise ValueError(f"config key 'train.fused' must be true/false, got {value!r}")
    if not _takes_spec(cfg.get("model")):
        return
    args = cfg["model_args"]
    key, have = _existing_fused(args)
    if key is not None and train_fused_wins:  # the old key given on the command line overrides the file's new one
        if key == "model_args.fused":
            args.pop("fused")
        else:
            args["conditioner"] = {k: v for k, v in args["conditioner"].items() if k != "fused"}
        key = None
    if key is not None and have != value:
        raise ValueError(f"train.fused={_flag(value)} contradicts {key}={_flag(have)}; give "
                         f"model_args.conditioner.fused only")
    warnings.warn(f"train.fused is deprecated; read as model_args.conditioner.fused={_flag(value)} (use that key)",
                  FutureWarning, stacklevel=4)
    if key is None:
        args["fused"] = value  # folded into the spec below
    train["fused"] = None


def migrate(config: dict, train_fused_wins: bool = False) -> dict:
    """``config`` (a config file's dict or a checkpoint's stored config) in the current form.

    ``train_fused_wins``: ``train.fused`` was given on the command line and replaces a ``fused``
    the file states (instead of having to agree with it).
    """
    if not isinstance(config, dict):
        return config
    cfg = copy.deepcopy(config)
    if not isinstance(cfg.get("model_args"), dict):
        return cfg
    _train_fused(cfg, train_fused_wins)
    if _takes_spec(cfg.get("model")):
        cfg["model_args"] = fold_conditioner_args(cfg["model_args"])
    dec = cfg["model_args"].get("decoder_args")
    if cfg["model_args"].get("decoder") == "set" and isinstance(dec, dict):
        cfg["model_args"]["decoder_args"] = fold_conditioner_args(dec, "model_args.decoder_args")
    return cfg
