"""Reading and writing images for the codec CLI: PNG and NPY files, and folders of them."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import imagecodecs
import numpy as np

from setflow.coding.format import SOURCE_ARRAY, SOURCE_PNG

__all__ = ["IMAGE_SUFFIXES", "collect_files", "read_image", "write_image", "output_paths"]

IMAGE_SUFFIXES = (".png", ".npy")


def collect_files(paths: Iterable[str], suffixes: Sequence[str]) -> list[Path]:
    """Expand files and folders (their direct children with a matching suffix, sorted)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(c for c in p.iterdir() if c.is_file() and c.suffix.lower() in suffixes)
            if not found:
                raise FileNotFoundError(f"no {'/'.join(suffixes)} files in folder {p}")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"no such file or folder: {p}")
    return out


def read_image(path: Path) -> tuple[np.ndarray, int]:
    """``(array, source kind)``; PNG gives ``(H, W)`` or ``(H, W, C)`` uint8, NPY any integer array."""
    suffix = path.suffix.lower()
    if suffix == ".png":
        try:
            arr = imagecodecs.png_decode(path.read_bytes())
        except Exception as e:
            raise ValueError(f"{path}: not a readable PNG ({e})") from e
        if arr.dtype != np.uint8:
            raise ValueError(f"{path}: only 8-bit PNGs are supported, got {arr.dtype}")
        return arr, SOURCE_PNG
    if suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except Exception as e:
            raise ValueError(f"{path}: not a readable .npy file ({e})") from e
        return arr, SOURCE_ARRAY
    raise ValueError(f"{path}: unsupported image type {suffix!r}; expected one of {IMAGE_SUFFIXES}")


def write_image(path: Path, arr: np.ndarray) -> None:
    """Write ``arr`` as PNG (``(H, W)``/``(H, W, C)`` uint8; ``(1, H, W)``/``(C, H, W)`` are moved) or NPY."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".npy":
        np.save(path, arr, allow_pickle=False)
        return
    path.write_bytes(imagecodecs.png_encode(png_layout(arr)))


def png_layout(arr: np.ndarray) -> np.ndarray:
    """``arr`` as ``(H, W)`` or ``(H, W, C)`` uint8 for PNG; raises for batches."""
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
        a = np.moveaxis(a, 0, -1)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
        raise ValueError(f"an array of shape {a.shape} cannot be written as PNG; use .npy")
    return np.ascontiguousarray(a, dtype=np.uint8)


def output_paths(inputs: Sequence[Path], out: str, suffix_of) -> list[Path]:
    """Map inputs to outputs: ``out`` is the file itself for one input when it has a suffix and is no
    folder; otherwise a folder receiving ``<stem><suffix>`` per input (name clashes are errors)."""
    o = Path(out)
    if len(inputs) == 1 and o.suffix and not o.is_dir():
        return [o]
    paths = [o / (p.stem + suffix_of(p)) for p in inputs]
    seen: dict[Path, Path] = {}
    for src, dst in zip(inputs, paths):
        if dst in seen:
            raise ValueError(f"{src} and {seen[dst]} would both be written to {dst}")
        seen[dst] = src
    return paths
