"""Downsampled ImageNet (32x32 and 64x64, Chrabaszcz et al. 2017) from its ``.npz`` files.

There is no public mirror any more (the files need an image-net.org account), so nothing
is downloaded: a missing data set raises :class:`DataError` with placement instructions.
Accepted layouts, searched in ``<root>/imagenet{S}/`` then ``<root>/``:

* the official batches: ``Imagenet{S}_train*/train_data_batch_{1..10}.npz`` and
  ``Imagenet{S}_val*/val_data.npz``, key ``data`` of shape ``(N, 3*S*S)`` (channel planes
  R, G, B, each row-major) and ``labels`` (1..1000 as stored);
* single files ``train.npz`` and ``valid.npz`` (the official validation set) and, if
  present, ``test.npz``; key ``data`` flat ``(N, 3*S*S)``, ``(N, 3, S, S)`` or ``(N, S, S, 3)``.

Splits: test = the official validation set (or ``test.npz``), valid = the last 10,000
training images (or ``valid.npz`` when ``test.npz`` exists), train = the rest. Only the
requested rows are copied into one preallocated array (ImageNet64's train set is 15.7 GB).
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Optional

import numpy as np

from .common import DataError

__all__ = ["load_imagenet", "read_npz_rows", "imagenet_instructions"]

NUM_VALID = 10000


def imagenet_instructions(size: int, root: Path) -> str:
    """How to place the downsampled ImageNet files by hand."""
    return (
        f"ImageNet{size} not found under {root / f'imagenet{size}'} or {root}. It has no public mirror any more: "
        f"log in at https://image-net.org/download-images, download 'Train(32x32)'/'Val(32x32)' (or 64x64) "
        f"i.e. Imagenet{size}_train_npz.zip and Imagenet{size}_val_npz.zip, and unzip both into "
        f"{root / f'imagenet{size}'}/ so that Imagenet{size}_train_npz/train_data_batch_1.npz and "
        f"Imagenet{size}_val_npz/val_data.npz exist (see datasets/README.md)"
    )


def _npz_shape(path: Path, key: str) -> tuple[int, ...]:
    """Shape of ``key`` in an ``.npz`` without loading it (reads the .npy header only)."""
    try:
        with zipfile.ZipFile(path) as zf, zf.open(f"{key}.npy") as f:
            version = np.lib.format.read_magic(f)
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, _ = reader(f)
    except KeyError:
        raise DataError(f"{path}: no array {key!r} in the .npz (expected keys 'data' and 'labels')") from None
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc})") from None
    return tuple(shape)


def _to_nchw(data: np.ndarray, size: int, path: Path) -> np.ndarray:
    d = 3 * size * size
    if data.dtype != np.uint8:
        raise DataError(f"{path}: 'data' must be uint8, got {data.dtype}")
    if data.ndim == 2 and data.shape[1] == d:
        return data.reshape(-1, 3, size, size)
    if data.ndim == 4 and data.shape[1:] == (3, size, size):
        return data
    if data.ndim == 4 and data.shape[1:] == (size, size, 3):
        return np.ascontiguousarray(data.transpose(0, 3, 1, 2))
    raise DataError(f"{path}: 'data' has shape {data.shape}, expected (N, {d}), (N, 3, {size}, {size}) "
                    f"or (N, {size}, {size}, 3)")


def read_npz_rows(files: list[Path], size: int, start: int, stop: int) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Rows ``[start, stop)`` of the concatenation of ``files`` as uint8 ``(n, 3, size, size)``
    plus their labels (``None`` when a file has no ``labels``). Files outside the range are
    not opened beyond their header."""
    counts = [_npz_shape(f, "data")[0] for f in files]
    offsets = np.concatenate([[0], np.cumsum(counts)])
    out = np.empty((max(stop - start, 0), 3, size, size), dtype=np.uint8)
    labels: Optional[list[np.ndarray]] = []
    for f, lo, hi in zip(files, offsets[:-1], offsets[1:]):
        a, b = max(lo, start), min(hi, stop)
        if a >= b:
            continue
        with np.load(f, allow_pickle=False) as z:
            out[a - start:b - start] = _to_nchw(z["data"], size, f)[a - lo:b - lo]
            if labels is not None and "labels" in z.files:
                labels.append(np.asarray(z["labels"]).astype(np.int64).reshape(-1)[a - lo:b - lo])
            else:
                labels = None
    return out, (np.concatenate(labels) if labels else None)


def _batch_number(path: Path) -> int:
    m = re.search(r"(\d+)\.npz$", path.name)
    return int(m.group(1)) if m else 0


def _find(root: Path, size: int) -> Optional[tuple[list[Path], list[Path], list[Path], Path]]:
    """``(train_files, valid_files, test_files, folder)``; ``valid_files`` empty = hold out."""
    for folder in (root / f"imagenet{size}", root):
        train = sorted(folder.glob(f"Imagenet{size}_train*/train_data_batch_*.npz"),
                       key=lambda p: (_batch_number(p), str(p)))
        val = sorted(folder.glob(f"Imagenet{size}_val*/val_data.npz"))
        if train or val:
            if not (train and val):
                raise DataError(f"{folder}: found {'train batches' if train else 'val_data.npz'} of ImageNet{size} "
                                f"but not {'val_data.npz' if train else 'train_data_batch_*.npz'}")
            return train, [], val[:1], folder
        single = {n: folder / f"{n}.npz" for n in ("train", "valid", "test")}
        if single["train"].is_file() and single["valid"].is_file():
            if single["test"].is_file():
                return [single["train"]], [single["valid"]], [single["test"]], folder
            return [single["train"]], [], [single["valid"]], folder
    return None


def load_imagenet(size: int, root: Path, max_examples: Optional[int] = None
                  ) -> tuple[dict[str, np.ndarray], Optional[dict[str, np.ndarray]], str]:
    """``(images, labels, source)`` for ImageNet{size}; ``max_examples`` caps every split."""
    found = _find(root, size)
    if found is None:
        raise DataError(imagenet_instructions(size, root))
    train_files, valid_files, test_files, folder = found
    cap = max_examples if max_examples is not None else np.iinfo(np.int64).max
    n_train_total = sum(_npz_shape(f, "data")[0] for f in train_files)
    ranges = {"test": (test_files, 0, sum(_npz_shape(f, "data")[0] for f in test_files))}
    if valid_files:
        ranges["train"] = (train_files, 0, n_train_total)
        ranges["valid"] = (valid_files, 0, sum(_npz_shape(f, "data")[0] for f in valid_files))
    else:
        n_valid = min(NUM_VALID, n_train_total // 10)
        ranges["train"] = (train_files, 0, n_train_total - n_valid)
        ranges["valid"] = (train_files, n_train_total - n_valid, n_train_total)
    images, labels = {}, {}
    for split in ("train", "valid", "test"):
        files, lo, hi = ranges[split]
        images[split], labels[split] = read_npz_rows(files, size, lo, min(hi, lo + cap))
    all_labels = labels if all(v is not None for v in labels.values()) else None
    return images, all_labels, f"ImageNet{size} npz files from {folder}"
