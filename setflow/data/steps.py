"""Pre-processing of set splits as small composable steps (the way PyG composes its transforms).

A loader produces :class:`SetSplits` (train / valid / test point tensors ``(M, N, D)``, optional
labels) and runs a :class:`Compose` of steps over them, each one small and tested alone:

- :class:`FirstPoints` keeps the first ``n`` points of every set (surface samples and the
  SpatialMNIST draws are i.i.d., so the first ``n`` are a random subset);
- :class:`RandomSizes` gives each set its own size in ``min..max`` (seeded): the sets stay padded
  to ``max`` with zeros and the splits gain boolean masks ``(M, max)``;
- :class:`Limit` keeps the first ``limit`` sets of every split;
- :class:`PoolRedraw` trains on a fresh ``n`` of each set's pooled points every epoch.

Each step also appends a phrase to :attr:`SetSplits.notes`, which the loader puts in its source
line. The size helpers :func:`point_range` and :func:`variable_size_masks` live here too.

Example:
    >>> x = torch.arange(24.0).view(4, 3, 2)
    >>> s = Compose([FirstPoints(2), Limit(3)])(SetSplits({"train": x, "valid": x, "test": x}))
    >>> tuple(s.points["train"].shape), s.masks is None
    ((3, 2, 2), True)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from setflow.data.common import DataError

__all__ = ["SPLITS", "SetSplits", "Compose", "FirstPoints", "RandomSizes", "Limit", "PoolRedraw", "SubsetRedraw",
           "point_range", "variable_size_masks", "zero_padding"]

SPLITS = ("train", "valid", "test")


@dataclass
class SetSplits:
    """The three splits of a set data set on their way through the pre-processing steps.

    ``points``: split -> ``(M, N, D)``; ``masks``: split -> bool ``(M, N)`` (True = a real point)
    for sets of different sizes, else ``None``; ``labels``: split -> int64 ``(M,)`` or ``None``;
    ``train_epoch``: ``epoch -> training points`` when the training sets are redrawn;
    ``notes``: phrases for the source line.
    """

    points: dict
    masks: Optional[dict] = None
    labels: Optional[dict] = None
    train_epoch: Optional[Callable[[int], Tensor]] = None
    notes: list = field(default_factory=list)

    def __post_init__(self) -> None:
        if sorted(self.points) != sorted(SPLITS):
            raise ValueError(f"SetSplits needs the splits {', '.join(SPLITS)}, got {', '.join(sorted(self.points))}")


class Compose:
    """Run ``steps`` in order; each maps :class:`SetSplits` to :class:`SetSplits`."""

    def __init__(self, steps: Sequence[Callable[[SetSplits], SetSplits]]) -> None:
        self.steps = [s for s in steps if s is not None]

    def __call__(self, splits: SetSplits) -> SetSplits:
        for step in self.steps:
            splits = step(splits)
        return splits

    def __repr__(self) -> str:
        return "Compose([" + ", ".join(repr(s) for s in self.steps) + "])"


def zero_padding(x: Tensor, mask: Tensor) -> Tensor:
    """``x`` ``(M, N, D)`` with the points outside ``mask`` ``(M, N)`` set to zero."""
    return torch.where(mask[..., None], x, torch.zeros((), dtype=x.dtype))


class FirstPoints:
    """Keep the first ``n`` points of every set (the data's draws are i.i.d., so they are a random subset)."""

    def __init__(self, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"FirstPoints needs n >= 1, got {n!r}")
        self.n = n

    def __call__(self, s: SetSplits) -> SetSplits:
        have = min(t.shape[1] for t in s.points.values())
        if have < self.n:
            raise ValueError(f"FirstPoints({self.n}): the sets hold only {have} points")
        s.points = {k: t[:, : self.n] for k, t in s.points.items()}
        return s

    def __repr__(self) -> str:
        return f"FirstPoints({self.n})"


class RandomSizes:
    """Give each set its own size drawn uniformly in ``lo..hi`` (seeded; one stream over train, valid,
    test in order). A set keeps its first ``N`` points; the rest become zero padding under a mask.
    Nothing changes when ``lo == hi``."""

    def __init__(self, lo: int, hi: int, seed: int = 0, what: str = "set") -> None:
        if not 1 <= lo <= hi:
            raise ValueError(f"RandomSizes needs 1 <= lo <= hi, got {lo}..{hi}")
        self.lo, self.hi, self.seed, self.what = int(lo), int(hi), int(seed), what

    def __call__(self, s: SetSplits) -> SetSplits:
        if self.lo == self.hi:
            return s
        widths = {t.shape[1] for t in s.points.values()}
        if widths != {self.hi}:
            raise ValueError(f"RandomSizes({self.lo}, {self.hi}) needs sets of {self.hi} points, got {sorted(widths)}")
        s.masks = variable_size_masks([s.points[k].shape[0] for k in SPLITS], self.lo, self.hi, self.seed)
        s.points = {k: zero_padding(s.points[k], s.masks[k]) for k in SPLITS}
        s.notes.append(f"{self.lo}..{self.hi} points per {self.what}")
        return s

    def __repr__(self) -> str:
        return f"RandomSizes({self.lo}, {self.hi}, seed={self.seed})"


class Limit:
    """Keep the first ``limit`` sets of every split (with their labels and masks); ``None`` keeps all."""

    def __init__(self, limit: Optional[int]) -> None:
        self.limit = limit

    def __call__(self, s: SetSplits) -> SetSplits:
        if self.limit is None:
            return s
        cut = slice(None, self.limit)
        s.points = {k: t[cut] for k, t in s.points.items()}
        s.labels = None if s.labels is None else {k: t[cut] for k, t in s.labels.items()}
        s.masks = None if s.masks is None else {k: t[cut] for k, t in s.masks.items()}
        return s

    def __repr__(self) -> str:
        return f"Limit({self.limit})"


class SubsetRedraw:
    """``epoch -> (M, n, D)``: a fresh random ``n`` of each set's ``P`` pooled points, seeded by
    (seed, epoch); with ``mask`` ``(M, n)`` the padded places are zero, as in the fixed splits."""

    def __init__(self, pool: Tensor, n: int, seed: int = 0, mask: Optional[Tensor] = None) -> None:
        if pool.dim() != 3 or not 1 <= int(n) <= pool.shape[1]:
            raise ValueError(f"expected a pool (M, P, D) with P >= n={n}, got {tuple(pool.shape)}")
        self.pool, self.n, self.seed, self.mask = pool, int(n), int(seed), mask

    def __call__(self, epoch: int) -> Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(epoch))
        idx = torch.rand(self.pool.shape[:2], generator=g).argsort(dim=1)[:, : self.n]
        out = torch.gather(self.pool, 1, idx[..., None].expand(-1, -1, self.pool.shape[2]))
        return out if self.mask is None else zero_padding(out, self.mask)


class PoolRedraw:
    """Train on a fresh ``n`` of each training set's pooled points every epoch (:class:`SubsetRedraw`,
    PointFlow's recipe); ``pool`` ``(M, P, D)`` are the training sets' ``P >= n`` points. Run it after
    :class:`RandomSizes` so a redrawn set keeps its size. Nothing changes when ``P == n``."""

    def __init__(self, pool: Tensor, n: int, seed: int = 0) -> None:
        self.pool, self.n, self.seed = pool, int(n), int(seed)

    def __call__(self, s: SetSplits) -> SetSplits:
        if self.pool.shape[1] == self.n:
            return s
        s.train_epoch = SubsetRedraw(self.pool, self.n, self.seed, None if s.masks is None else s.masks["train"])
        s.notes.append(f"training sets a fresh subset of their {self.pool.shape[1]} points every epoch")
        return s

    def __repr__(self) -> str:
        return f"PoolRedraw(n={self.n}, pool={self.pool.shape[1]})"


def point_range(num_points, default: int) -> tuple[int, int]:
    """``data_args.num_points`` (``None``, an int or ``[min, max]``) -> ``(min, max)`` points per set
    (equal for a fixed size); a bad value is a one-line ``ValueError`` naming the key."""
    if num_points is None:
        return default, default
    if isinstance(num_points, int) and not isinstance(num_points, bool):
        value = (num_points, num_points)
    elif isinstance(num_points, (list, tuple)) and len(num_points) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in num_points):
        value = (int(num_points[0]), int(num_points[1]))
    else:
        raise ValueError(f"data_args.num_points must be an int or [min, max] (sets of any size), got {num_points!r}")
    if not 1 <= value[0] <= value[1]:
        raise ValueError(f"data_args.num_points [min, max] needs 1 <= min <= max, got {list(value)}")
    return value


def variable_size_masks(counts: list, min_points: int, max_points: int, seed: int = 0) -> dict[str, Tensor]:
    """Per-set point counts for sets of different sizes: split -> bool ``(M, max_points)``.

    ``counts`` are the numbers of sets of train, valid and test; each set's size is drawn uniformly
    in ``min_points..max_points`` (one seeded stream over the three splits in order). A set keeps
    the first ``N`` of its ``max_points`` points: SpatialMNIST's draws come in the order of
    sequential draws without replacement and surface samples are i.i.d., so those are a draw of
    ``N`` points.
    """
    if not 1 <= min_points <= max_points:
        raise DataError(f"point counts need 1 <= min_points <= max_points, got {min_points}..{max_points}")
    rng = np.random.default_rng([int(seed), 15, int(min_points), int(max_points)])
    sizes = torch.from_numpy(rng.integers(min_points, max_points + 1, size=int(sum(counts))))
    parts = sizes.split([int(c) for c in counts])
    ar = torch.arange(max_points)
    return {s: ar < part[:, None] for s, part in zip(SPLITS, parts)}
