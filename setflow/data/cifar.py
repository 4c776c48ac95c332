"""CIFAR-10 from the python pickle batches (``cifar-10-batches-py``).

Looks for ``<root>/cifar10/cifar-10-batches-py/`` then ``<root>/cifar-10-batches-py/``;
otherwise downloads ``cifar-10-python.tar.gz`` (SHA-256 verified) into ``<root>/cifar10/``
and extracts the batch files (only those, by name; atomically, via a temp folder).

Splits: train = the first 45,000 images of ``data_batch_1..5``, valid = the last 5,000
(the second half of ``data_batch_5``), test = ``test_batch`` (10,000). Train on
``train`` + ``valid`` for numbers comparable with papers that use all 50,000.

The pickles are read with a restricted unpickler that only rebuilds numpy arrays, so a
malicious or malformed file raises :class:`DataError` instead of running code.
"""

from __future__ import annotations

import os
import pickle
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .common import DataError, downloads_allowed, set_default_mode, warn
from .download import RemoteFile, fetch

__all__ = ["CIFAR10_REMOTE", "CIFAR10_DIRNAME", "read_cifar_batch", "find_cifar10", "load_cifar10"]

CIFAR10_DIRNAME = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
NUM_VALID = 5000
# SHA-256 of cifar-10-python.tar.gz as used by keras; the MD5 published on the CIFAR page
# (and used by torchvision) is c58f30108f718f92721af3b95e74349a.
CIFAR10_REMOTE = RemoteFile(
    "cifar-10-python.tar.gz",
    ("https://www.cs.toronto.edu/~kriz/",),
    sha256="6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
)
_EXTRACT = set(TRAIN_BATCHES) | {TEST_BATCH, "batches.meta", "readme.html"}

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that refuses every global except those needed to rebuild numpy arrays."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"forbidden global {module}.{name} (only numpy arrays are allowed)")
        return super().find_class(module, name)


def _get(batch: dict, key: str) -> Any:
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    raise KeyError(key)


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 pickle batch: ``(uint8 (N, 3, 32, 32), int64 labels (N,))``.

    Raises:
        DataError: naming ``path`` for a missing file, a malformed pickle, missing keys
            (``data``, ``labels``) or wrong shapes/dtypes (expected uint8 ``(N, 3072)``).
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise DataError(f"{path}: CIFAR-10 batch not found") from None
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError,
            KeyError, TypeError, ValueError, UnicodeDecodeError, MemoryError) as exc:
        raise DataError(f"{path}: malformed CIFAR-10 pickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(batch, dict):
        raise DataError(f"{path}: expected a pickled dict with keys 'data' and 'labels', got {type(batch).__name__}")
    try:
        data, labels = _get(batch, "data"), _get(batch, "labels")
    except KeyError as exc:
        found = sorted(k.decode() if isinstance(k, bytes) else str(k) for k in batch)
        raise DataError(f"{path}: CIFAR-10 batch lacks key {exc.args[0]!r} (expected 'data' and 'labels', "
                        f"found {found})") from None
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: 'data' must be a uint8 array of shape (N, 3072), got {got}")
    labels = np.asarray(labels)
    if labels.shape != (data.shape[0],) or labels.dtype.kind not in "iu" or labels.size and not (
            0 <= labels.min() and labels.max() <= 9):
        raise DataError(f"{path}: 'labels' must be {data.shape[0]} integers in 0..9, got {labels.dtype} {labels.shape}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def find_cifar10(root: Path) -> Optional[Path]:
    """The first ``cifar-10-batches-py`` folder under ``root`` holding all six batches.

    A folder with some batches missing raises :class:`DataError` listing them.
    """
    for folder in (root / "cifar10" / CIFAR10_DIRNAME, root / CIFAR10_DIRNAME):
        if folder.is_dir():
            missing = [n for n in (*TRAIN_BATCHES, TEST_BATCH) if not (folder / n).is_file()]
            if missing:
                raise DataError(f"{folder}: incomplete CIFAR-10 folder, missing {missing}")
            return folder
    return None


def _extract(archive: Path, dest: Path) -> None:
    """Extract the known batch files of ``archive`` into ``dest`` (atomically, by rename)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar.getmembers():
                base = os.path.basename(member.name)
                if member.isfile() and member.name == f"{CIFAR10_DIRNAME}/{base}" and base in _EXTRACT:
                    src = tar.extractfile(member)
                    if src is None:
                        raise DataError(f"{archive}: cannot read member {member.name}")
                    with src, open(tmp / base, "wb") as out:
                        shutil.copyfileobj(src, out)
        missing = [n for n in (*TRAIN_BATCHES, TEST_BATCH) if not (tmp / n).is_file()]
        if missing:
            raise DataError(f"{archive}: archive lacks {missing}")
        set_default_mode(tmp, directory=True)
        for child in tmp.iterdir():
            set_default_mode(child)
        os.replace(tmp, dest)
    except (tarfile.TarError, EOFError, OSError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"{archive}: cannot extract CIFAR-10 ({exc})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_cifar10(root: Path, download: bool) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], str]:
    """``(images, labels, source)`` for CIFAR-10; images uint8 ``(N, 3, 32, 32)`` per split."""
    folder = find_cifar10(root)
    source = f"CIFAR-10 pickle batches from {folder}"
    if folder is None:
        if not downloads_allowed(download):
            raise DataError(
                f"CIFAR-10 not found in {root / 'cifar10' / CIFAR10_DIRNAME} or {root / CIFAR10_DIRNAME} and downloads "
                f"are disabled (download=False or SETFLOW_OFFLINE=1); place the extracted {CIFAR10_DIRNAME} folder "
                "there by hand (see datasets/README.md); offline image data sets: 'mnist', 'fashion_mnist'"
            )
        archive, url = fetch(CIFAR10_REMOTE, root / "cifar10")
        folder = root / "cifar10" / CIFAR10_DIRNAME
        _extract(archive, folder)
        source = f"CIFAR-10 pickle batches from {folder} (downloaded from {url})"
    parts = [read_cifar_batch(folder / name) for name in TRAIN_BATCHES]
    train_x = np.concatenate([p[0] for p in parts])
    train_y = np.concatenate([p[1] for p in parts])
    test_x, test_y = read_cifar_batch(folder / TEST_BATCH)
    if train_x.shape[0] != 50000 or test_x.shape[0] != 10000:
        warn(f"{folder}: expected 50,000 training and 10,000 test images, got {train_x.shape[0]:,} and "
             f"{test_x.shape[0]:,}")
    n = train_x.shape[0] - min(NUM_VALID, train_x.shape[0] // 10)
    images = {"train": train_x[:n], "valid": train_x[n:], "test": test_x}
    labels = {"train": train_y[:n], "valid": train_y[n:], "test": test_y}
    return images, labels, source
