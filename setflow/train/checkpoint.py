"""Checkpoints: atomic writes, everything needed to resume exactly, and model rebuild without a config file."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import nn

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "load_model", "rng_state", "set_rng_state"]

FORMAT = "setflow-checkpoint-v1"


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated or not a setflow checkpoint."""


def rng_state() -> dict:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Union[str, Path], payload: dict) -> Path:
    """Write ``payload`` to ``path`` atomically: a temp file in the same folder, fsync, rename.

    An interrupted write leaves the previous checkpoint untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = dict(payload, format=FORMAT)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_checkpoint(path: Union[str, Path], map_location: Any = "cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # truncated zip, not a torch file, ...
        raise CheckpointError(f"{path}: not a readable setflow checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a setflow checkpoint (expected format {FORMAT!r})")
    for key in ("config", "model"):
        if key not in ckpt:
            raise CheckpointError(f"{path}: checkpoint lacks {key!r}")
    return ckpt


def build_from_config(config: dict) -> nn.Module:
    from setflow.models import build_model

    model = build_model(config["model"], **config.get("model_args", {}))
    dtype = getattr(torch, config.get("train", {}).get("dtype", "float32"))
    return model.to(dtype)


def load_model(path: Union[str, Path], device: Optional[str] = None) -> tuple[nn.Module, dict]:
    """Rebuild a model from a checkpoint alone (its config travels with the weights)."""
    ckpt = load_checkpoint(path)
    model = build_from_config(ckpt["config"])
    model.load_state_dict(ckpt["model"])
    model.eval()
    if device is not None:
        model.to(device)
    return model, ckpt["config"]
