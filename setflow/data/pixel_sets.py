"""SpatialMNIST as integer pixel multisets: the pixel of each point, before the jitter.

A SpatialMNIST point ``(x, y)`` lies in pixel ``(row = 27 - floor(y), col = floor(x))``
(:func:`setflow.data.spatial_mnist.sample_spatial_points`). Here each point is that pixel's
linear index ``row * 28 + col`` in ``0..783``, and each set is sorted (ties allowed), the
canonical order of a multiset: duplicates occur where a digit has fewer than 50 lit pixels.

Test and valid sets are exactly the pixels of the SpatialMNIST sets of the same seed (same
cache), so the discrete codec and the continuous set flows see the same sets. The training
split can hold ``draws`` independent point draws per training image (seeds ``seed``,
``seed + 1``, ...): more sets from the same images, nothing from valid or test.

Example::

    >>> sets, source = pixel_set_splits(draws=1)                   # doctest: +SKIP
    >>> sets["test"].shape, sets["test"].dtype                       # doctest: +SKIP
    ((500, 50), dtype('int64'))
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from .common import DataError, PathLike, resolve_data_root
from .mnist import SPLITS, load_digit_splits
from .spatial_mnist import NUM_POINTS, sample_spatial_points, spatial_mnist_splits

__all__ = ["GRID", "points_to_pixels", "pixels_to_points", "canonical_sets", "pixel_set_splits"]

GRID = 28  #: pixels per side; indices run over 0..GRID**2 - 1


def points_to_pixels(points: np.ndarray, grid: int = GRID) -> np.ndarray:
    """``(M, N, 2)`` SpatialMNIST points -> ``(M, N)`` int64 sorted linear pixel indices."""
    points = np.asarray(points)
    if points.ndim != 3 or points.shape[-1] != 2:
        raise DataError(f"expected points of shape (M, N, 2), got {points.shape}")
    col = np.floor(points[..., 0]).astype(np.int64)
    row = grid - 1 - np.floor(points[..., 1]).astype(np.int64)
    if col.size and (col.min() < 0 or col.max() >= grid or row.min() < 0 or row.max() >= grid):
        raise DataError(f"points must lie in [0, {grid})^2")
    return np.sort(row * grid + col, axis=1)


def pixels_to_points(idx: np.ndarray, grid: int = GRID) -> np.ndarray:
    """``(M, N)`` linear indices -> ``(M, N, 2)`` float32 pixel centres ``(col + .5, grid - .5 - row)``."""
    idx = np.asarray(idx, dtype=np.int64)
    return np.stack([idx % grid + 0.5, grid - 0.5 - idx // grid], axis=-1).astype(np.float32)


def canonical_sets(sets, grid: int = GRID, absent: bool = False) -> np.ndarray:
    """Check ``(M, N)`` integer pixel sets (or ``(M, N, 2)`` integer ``(col, row)`` pairs) and
    return them as ``(M, N)`` int64 linear indices sorted per set (the canonical order).

    With ``absent=True``, ``-1`` (or ``(-1, -1)``) marks an absent point, so sets of different
    sizes share one padded array; each returned row is sorted with its ``-1`` entries last, and a
    sequence of 1-D index arrays of different lengths is padded that way. Every set keeps at
    least one point."""
    if absent and isinstance(sets, (list, tuple)) and len({np.shape(s) for s in sets}) > 1:
        rows = [np.asarray(s) for s in sets]
        if any(r.ndim != 1 for r in rows):
            raise DataError("expected a sequence of 1-D index arrays for sets of different sizes")
        padded = np.full((len(rows), max(len(r) for r in rows)), -1, dtype=np.result_type(*rows, np.int8))
        for k, r in enumerate(rows):
            padded[k, :len(r)] = r
        sets = padded
    arr = np.asarray(sets)
    if arr.dtype.kind not in "iu":
        raise DataError(f"expected integer pixel sets, got dtype {arr.dtype}")
    if arr.ndim == 3 and arr.shape[-1] == 2:
        gone = (arr == -1).all(-1) if absent else np.zeros(arr.shape[:2], bool)
        col, row = arr[..., 0].astype(np.int64), arr[..., 1].astype(np.int64)
        if arr.size and (min(col[~gone].min(initial=0), row[~gone].min(initial=0)) < 0
                         or max(col.max(), row.max()) >= grid):
            raise DataError(f"(col, row) pairs must lie in 0..{grid - 1}"
                            + (" ((-1, -1) marks an absent point)" if absent else ""))
        arr = np.where(gone, -1, row * grid + col)
    if arr.ndim != 2:
        raise DataError(f"expected sets of shape (M, N) (linear indices) or (M, N, 2) (col, row), got {arr.shape}")
    arr = arr.astype(np.int64)
    gone = arr == -1 if absent else np.zeros(arr.shape, bool)
    if arr.size and (arr[~gone].min(initial=0) < 0 or arr.max() >= grid * grid):
        raise DataError(f"pixel indices must lie in 0..{grid * grid - 1}"
                        + (" (-1 marks an absent point)" if absent else "")
                        + f", got {arr[~gone].min(initial=0)}..{arr.max()}")
    if not gone.any():
        return np.sort(arr, axis=1)
    if gone.all(1).any():
        raise DataError(f"set {int(np.flatnonzero(gone.all(1))[0])} has no points: every set needs at least one")
    out = np.sort(np.where(gone, grid * grid, arr), axis=1)  # absent points sort last
    out[out == grid * grid] = -1
    return out


def pixel_set_splits(
    data_root: Optional[PathLike] = None,
    seed: int = 0,
    download: bool = True,
    num_points: int = NUM_POINTS,
    draws: int = 1,
) -> tuple[dict[str, np.ndarray], str]:
    """``({"train", "valid", "test"} -> int64 (M, num_points) sorted pixel indices, source)``.

    Args:
        data_root, seed, download, num_points: as in :func:`load_spatial_mnist`.
        draws: point draws per training image (``draws * M_train`` training sets).
    """
    if draws < 1:
        raise DataError(f"draws must be >= 1, got {draws}")
    points, source = spatial_mnist_splits(data_root, seed=seed, download=download, num_points=num_points)
    out = {s: points_to_pixels(points[s]) for s in SPLITS}
    if draws > 1:
        digits = load_digit_splits("mnist", resolve_data_root(data_root), download, target="SpatialMNIST pixels")
        extra = [points_to_pixels(sample_spatial_points(digits.images["train"], num_points, seed + k))
                 for k in range(1, draws)]
        out["train"] = np.concatenate([out["train"], *extra])
    return out, f"{source} -> integer pixel multisets, {draws} draw(s) per training image"
