"""Checkpoints: atomic writes, everything needed to resume exactly, and model rebuild without a config file.

Files are read with ``torch.load(weights_only=True)``: only tensors and plain Python values
(dict, list, tuple, str, int, float, bool, None) are accepted, so a crafted file cannot run
code. Everything a checkpoint carries, RNG states included, is stored as such plain values.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import tempfile
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import nn

from setflow.data.common import not_a_zip, set_default_mode

__all__ = ["CheckpointError", "FORMAT", "save_checkpoint", "load_checkpoint", "load_model", "rng_state",
           "set_rng_state", "clean_stale_temp_files"]

FORMAT = "setflow-checkpoint-v2"  # v2: plain types only (v1 pickled numpy RNG state)


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, unsafe or not a setflow checkpoint."""


def rng_state() -> dict:
    """The torch, NumPy, Python (and CUDA) RNG states as tensors, lists and numbers."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": int(version), "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def clean_stale_temp_files(folder: Union[str, Path], name: str = "last.pt") -> list[Path]:
    """Remove ``.{name}.*.tmp`` files a killed save left in ``folder``; return what was removed."""
    removed = []
    for tmp in Path(folder).glob(f".{name}.*.tmp"):
        try:
            tmp.unlink()
            removed.append(tmp)
        except FileNotFoundError:
            pass
    return removed


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
        set_default_mode(tmp)  # mkstemp makes 0600 files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _refused(path: Path, e: Exception) -> CheckpointError:
    found = re.search(r"(?:Unsupported global|GLOBAL|global)[:\s]+([\w.]+(?: [\w.]+)?)", str(e))
    what = f" ({found.group(1).strip()})" if found else ""
    return CheckpointError(
        f"{path}: refused to load: the file holds pickled Python objects{what}, not only tensors and plain "
        f"values; it is either a checkpoint from an older setflow (before {FORMAT}; retrain it) or a crafted "
        f"file, and is never unpickled"
    )


def load_checkpoint(path: Union[str, Path], map_location: Any = "cpu") -> dict:
    """Read a checkpoint safely (``weights_only=True``) and check its format.

    Raises:
        CheckpointError: missing, truncated, carrying pickled objects, or of another format.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    found = not_a_zip(path)  # torch.save writes a zip archive; anything else is no checkpoint of ours
    if found:
        raise CheckpointError(f"{path}: not a setflow checkpoint ({found}); expected the .pt archive `setflow train` "
                              "writes")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:  # a global outside the allow-list: never executed
        raise _refused(path, e) from None
    except Exception as e:  # truncated zip, not a torch file, ...
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise _refused(path, e) from None
        raise CheckpointError(f"{path}: not a readable setflow checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or not str(ckpt.get("format", "")).startswith("setflow-checkpoint"):
        raise CheckpointError(f"{path}: not a setflow checkpoint (expected format {FORMAT!r})")
    if ckpt["format"] != FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {ckpt['format']!r} is not supported by this setflow "
                              f"(expected {FORMAT!r}); retrain the model")
    for key in ("config", "model"):
        if key not in ckpt:
            raise CheckpointError(f"{path}: checkpoint lacks {key!r}")
    return ckpt


def load_model(path: Union[str, Path], device: Optional[str] = None) -> tuple[nn.Module, dict]:
    """Rebuild a model from a checkpoint alone (its config travels with the weights)."""
    from setflow.models.build import build_from_config

    ckpt = load_checkpoint(path)
    model = build_from_config(ckpt["config"])
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the model its config builds "
                              f"({str(e).splitlines()[0]})") from None
    model.eval()
    if device is not None:
        model.to(device)
    return model, ckpt["config"]
