"""Batches of sets of different sizes: padded ``(B, N_max, D)`` points plus a bool mask ``(B, N_max)``.

``mask[b, i]`` is True where ``x[b, i]`` is a real point of set ``b`` and False on padding. Every
set layer of setflow takes this pair (``mask=None`` means every point is real), and the values
in the padding never change a result. The helpers here build the pair from a list of sets or
from a PyG ``Data`` / ``Batch`` and back, without Python loops over points.

Above the layer library a batch of sets is one value, :class:`SetBatch` (points, mask and optional
labels): the loaders build it, ``Flow.log_prob`` / ``iwbo`` take it, set flows' ``sample`` return it,
and the evaluator, the metrics, the plots and the CLI take it. A batch of sets of one size is the
same value with an all-True mask.

Example:
    >>> a, b = torch.zeros(3, 2), torch.ones(2, 2)
    >>> x, mask = pad_sets([a, b])
    >>> x.shape, mask.tolist()
    (torch.Size([2, 3, 2]), [[True, True, True], [True, True, False]])
    >>> mask_to_lengths(mask).tolist()
    [3, 2]
    >>> [s.shape[0] for s in unpad_sets(x, mask)]
    [3, 2]

Imports nothing from setflow (the transforms build on it).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

__all__ = ["SetBatch", "as_set_batch", "pad_sets", "unpad_sets", "lengths_to_mask", "mask_to_lengths", "check_mask", "set_sizes",
           "point_ranks", "real_first", "masked_sum", "keep_padding", "from_pyg", "to_pyg", "check_size_args"]


def check_size_args(num_points: Optional[int], max_points: Optional[int], min_points: int) -> bool:
    """Check a set model's size arguments; ``True`` for sets of any size (``num_points`` None).

    ``num_points: null`` needs ``max_points >= 2`` and ``1 <= min_points <= max_points``; a fixed
    size refuses a different ``max_points``. Raises a one-line ``ValueError`` naming the keys."""
    if num_points is None:
        if max_points is None or int(max_points) < 2:
            raise ValueError(f"num_points: null (sets of any size) needs max_points >= 2, got {max_points}")
        if not 1 <= int(min_points) <= int(max_points):
            raise ValueError(f"min_points must lie in 1..max_points={max_points}, got {min_points}")
        return True
    if max_points is not None and int(max_points) != int(num_points):
        raise ValueError(f"max_points={max_points} is for sets of any size (num_points: null); "
                         f"this model has num_points={num_points}")
    return False


def lengths_to_mask(lengths: Tensor, max_points: Optional[int] = None) -> Tensor:
    """``(B,)`` set sizes -> ``(B, max_points)`` bool mask with the real points first."""
    lengths = torch.as_tensor(lengths)
    if lengths.dim() != 1 or lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
        raise ValueError(f"lengths must be a 1-D integer tensor (B,), got {lengths.dtype} of shape {tuple(lengths.shape)}")
    n = int(lengths.max()) if max_points is None and lengths.numel() else int(max_points or 0)
    if lengths.numel() and (int(lengths.min()) < 0 or int(lengths.max()) > n):
        raise ValueError(f"lengths must lie in 0..{n}, got {int(lengths.min())}..{int(lengths.max())}")
    return torch.arange(n, device=lengths.device) < lengths[:, None]


def mask_to_lengths(mask: Tensor) -> Tensor:
    """``(B, N)`` bool mask -> ``(B,)`` int64 number of real points per set."""
    return mask.sum(dim=1)


def check_mask(mask: Tensor, x: Tensor, min_points: int = 1) -> Tensor:
    """Validate a mask for the sets ``x`` ``(B, N, ...)`` and return it (on ``x``'s device).

    Raises a ``ValueError`` that names what was expected: a bool tensor ``(B, N)`` with at least
    ``min_points`` real points in every set.
    """
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask must be a bool torch.Tensor (B, N), got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must have dtype torch.bool (True = real point), got {mask.dtype}")
    if mask.dim() != 2 or x.dim() < 2 or tuple(mask.shape) != tuple(x.shape[:2]):
        raise ValueError(f"mask must have shape (B, N) = {tuple(x.shape[:2])} of the sets x {tuple(x.shape)}, "
                         f"got {tuple(mask.shape)}")
    if min_points > 0 and mask.shape[0]:
        fewest = int(mask.sum(1).min())
        if fewest < min_points:
            raise ValueError(f"every set needs at least {min_points} real point(s) (mask True); a set has {fewest}")
    return mask.to(x.device)


def set_sizes(x: Tensor, mask: Optional[Tensor]) -> Tensor:
    """``(B,)`` int64 sizes: ``mask.sum(1)``, or ``N = x.shape[1]`` for every set when ``mask`` is None."""
    if mask is None:
        return torch.full((x.shape[0],), x.shape[1], dtype=torch.long, device=x.device)
    return mask.sum(dim=1)


def point_ranks(mask: Tensor) -> Tensor:
    """``(B, N)`` rank of each real point among the real points of its set (0, 1, ...); padding gets its
    set's size (so it sorts after every real point)."""
    ranks = torch.cumsum(mask, dim=1) - 1
    return torch.where(mask, ranks, mask.sum(1, keepdim=True))


def real_first(mask: Tensor) -> Tensor:
    """``(B, N)`` gather index that moves the real points of each set to the front, keeping their order."""
    return torch.sort((~mask).to(torch.uint8), dim=1, stable=True).indices


def masked_sum(values: Tensor, mask: Optional[Tensor]) -> Tensor:
    """Sum of ``values`` ``(B, N, ...)`` over everything but the batch, at real points only -> ``(B,)``.

    ``torch.where`` (not a product) keeps Inf/NaN in the padding out; with ``mask=None`` (or all True)
    the result is bit-identical to the plain sum.
    """
    if mask is not None:
        m = mask.view(*mask.shape, *([1] * (values.dim() - 2)))
        values = torch.where(m, values, torch.zeros((), dtype=values.dtype, device=values.device))
    return values.reshape(values.shape[0], -1).sum(dim=1)


def keep_padding(new: Tensor, old: Tensor, mask: Optional[Tensor]) -> Tensor:
    """``new`` at the real points (``mask`` ``(B, N)`` over dim 1), ``old`` in the padding (``new`` if no mask)."""
    if mask is None:
        return new
    return torch.where(mask.view(*mask.shape, *([1] * (new.dim() - 2))), new, old)


def pad_sets(sets: Sequence[Tensor], max_points: Optional[int] = None, value: float = 0.0) -> tuple[Tensor, Tensor]:
    """A list of ``(N_i, D)`` tensors -> ``(x, mask)``: ``x`` ``(B, N_max, D)`` padded with ``value``."""
    sets = list(sets)
    if not sets:
        raise ValueError("pad_sets needs at least one set")
    for i, s in enumerate(sets):
        if not isinstance(s, Tensor) or s.dim() != 2 or s.shape[-1] != sets[0].shape[-1]:
            got = tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__
            raise ValueError(f"pad_sets expects (N_i, D) tensors with one D; set {i} is {got}")
    lengths = torch.tensor([s.shape[0] for s in sets], device=sets[0].device)
    n = int(lengths.max()) if max_points is None else int(max_points)
    if int(lengths.max()) > n:
        raise ValueError(f"a set has {int(lengths.max())} points, more than max_points={n}")
    x = torch.nn.utils.rnn.pad_sequence(sets, batch_first=True, padding_value=value)
    if x.shape[1] < n:
        x = torch.cat([x, x.new_full((x.shape[0], n - x.shape[1], x.shape[2]), value)], dim=1)
    return x, lengths_to_mask(lengths, n)


def unpad_sets(x: Tensor, mask: Optional[Tensor] = None) -> list[Tensor]:
    """``(x, mask)`` -> the list of ``(N_i, D)`` sets (their real points, in order)."""
    if mask is None:
        return list(x.unbind(0))
    check_mask(mask, x, min_points=0)
    return list(x[mask].split(mask.sum(1).tolist()))


def _pyg_points(data, attr: Optional[str]) -> tuple[Tensor, str]:
    names = [attr] if attr is not None else ["pos", "x"]
    for name in names:
        value = getattr(data, name, None)
        if isinstance(value, Tensor):
            return value, name
    raise ValueError(f"the PyG object has no point tensor {' or '.join(repr(n) for n in names)} "
                     f"(node attributes: {sorted(data.keys()) if callable(getattr(data, 'keys', None)) else '?'})")


def from_pyg(data, attr: Optional[str] = None, max_points: Optional[int] = None, fill_value: float = 0.0
             ) -> tuple[Tensor, Tensor]:
    """A PyG ``Batch`` (or one ``Data``) -> ``(x, mask)`` via ``torch_geometric.utils.to_dense_batch``.

    The points are ``data.pos`` (else ``data.x``; or the attribute ``attr``) ``(sum N_i, D)``, the sets
    given by ``data.batch`` (a single ``Data`` is one set).
    """
    from torch_geometric.utils import to_dense_batch

    points, _ = _pyg_points(data, attr)
    if points.dim() != 2:
        raise ValueError(f"PyG points must be (num_nodes, D), got shape {tuple(points.shape)}")
    batch = getattr(data, "batch", None)
    if batch is None:
        batch = torch.zeros(points.shape[0], dtype=torch.long, device=points.device)
    num_graphs = getattr(data, "num_graphs", None)
    batch_size = int(num_graphs) if num_graphs is not None else None
    x, mask = to_dense_batch(points, batch, fill_value=fill_value, max_num_nodes=max_points, batch_size=batch_size)
    if max_points is not None and x.shape[1] < max_points:
        pad = max_points - x.shape[1]
        x = torch.cat([x, x.new_full((x.shape[0], pad, x.shape[2]), fill_value)], dim=1)
        mask = torch.cat([mask, mask.new_zeros(mask.shape[0], pad)], dim=1)
    return x, mask


def to_pyg(x: Tensor, mask: Optional[Tensor] = None, attr: str = "pos"):
    """``(x, mask)`` -> a PyG ``Batch`` with ``attr`` ``(sum N_i, D)``, ``batch`` and ``ptr``; its
    ``to_data_list()`` gives one ``Data`` per set."""
    from torch_geometric.data import Batch

    if mask is None:
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    check_mask(mask, x, min_points=0)
    lengths = mask.sum(1)
    ptr = torch.cat([lengths.new_zeros(1), torch.cumsum(lengths, 0)])
    batch_vec = torch.repeat_interleave(torch.arange(x.shape[0], device=x.device), lengths)
    out = Batch(batch=batch_vec, ptr=ptr, **{attr: x[mask]})
    out._num_graphs = int(x.shape[0])
    out._slice_dict = {attr: ptr.cpu()}
    out._inc_dict = {attr: torch.zeros(x.shape[0], dtype=torch.long)}
    return out


class SetBatch:
    """One batch of sets: ``points`` ``(B, N, D)`` padded to the largest set, ``mask`` ``(B, N)`` bool (True =
    a real point; all True when every set has ``N`` points) and optional ``labels`` ``(B,)`` (class labels:
    the context of a class-conditional flow).

    ``mask=None`` builds the all-True mask: a batch of fixed-size sets is the same value without padding.
    The padding's values are kept as given (every consumer ignores them).

    Shapes:
        - points: ``(B, N, D)`` float (or integer)
        - mask: ``(B, N)`` bool, on the points' device
        - labels: ``(B,)`` int64 or ``None``

    Example:
        >>> batch = SetBatch.from_list([torch.zeros(3, 2), torch.ones(1, 2)], labels=torch.tensor([4, 7]))
        >>> batch
        SetBatch(2 sets of 1..3 points in 2-D, padded to 3, labels)
        >>> batch.sizes.tolist(), batch.is_fixed, batch[1].tolist()
        ([3, 1], False, [[1.0, 1.0]])
        >>> SetBatch(torch.zeros(4, 5, 3)).is_fixed
        True
    """

    __slots__ = ("points", "mask", "labels")

    def __init__(self, points: Tensor, mask: Optional[Tensor] = None, labels: Optional[Tensor] = None) -> None:
        if not isinstance(points, Tensor) or points.dim() != 3:
            got = tuple(points.shape) if isinstance(points, Tensor) else type(points).__name__
            raise ValueError(f"SetBatch points must be a tensor (B, N, D) = (sets, points, coordinates), got {got}")
        if mask is None:
            mask = torch.ones(points.shape[:2], dtype=torch.bool, device=points.device)
        else:
            mask = check_mask(mask, points, min_points=0)
        if labels is not None:
            if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.shape[0] != points.shape[0]:
                got = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
                raise ValueError(f"SetBatch labels must be a tensor ({points.shape[0]},), one per set, got {got}")
        self.points, self.mask, self.labels = points, mask, labels

    # ----------------------------------------------------------------- building
    @classmethod
    def from_list(cls, sets: Sequence[Tensor], labels: Optional[Tensor] = None, max_points: Optional[int] = None,
                  value: float = 0.0) -> "SetBatch":
        """A list of ``(N_i, D)`` tensors, padded to ``max_points`` (default: the largest set)."""
        x, mask = pad_sets(sets, max_points, value)
        return cls(x, mask, labels)

    @classmethod
    def from_pyg(cls, data, attr: Optional[str] = None, max_points: Optional[int] = None) -> "SetBatch":
        """A PyG ``Batch`` (or one ``Data``): points ``pos`` (else ``x``, or ``attr``), labels ``y`` when it
        holds one integer per set."""
        x, mask = from_pyg(data, attr, max_points)
        y = getattr(data, "y", None)
        labels = y if isinstance(y, Tensor) and y.dim() == 1 and y.shape[0] == x.shape[0] else None
        return cls(x, mask, labels)

    @staticmethod
    def cat(batches: Sequence["SetBatch"]) -> "SetBatch":
        """Batches one after another, padded to the widest (labels kept when every batch has them)."""
        batches = list(batches)
        if not batches:
            raise ValueError("SetBatch.cat needs at least one batch")
        width = max(b.num_points for b in batches)

        def widen(t: Tensor, n: int) -> Tensor:
            return torch.cat([t, t.new_zeros(t.shape[0], width - n, *t.shape[2:])], 1) if n < width else t

        points = torch.cat([widen(b.points, b.num_points) for b in batches])
        mask = torch.cat([widen(b.mask, b.num_points) for b in batches])
        labelled = all(b.labels is not None for b in batches)
        return SetBatch(points, mask, torch.cat([b.labels for b in batches]) if labelled else None)

    # ----------------------------------------------------------------- giving back
    def to_list(self) -> list[Tensor]:
        """The ``(N_i, D)`` real points of each set."""
        return unpad_sets(self.points, self.mask)

    def to_pyg(self, attr: str = "pos"):
        """A PyG ``Batch`` with the real points as ``attr`` and the labels (if any) as ``y``."""
        out = to_pyg(self.points, self.mask, attr)
        if self.labels is not None:
            out.y = self.labels
            out._slice_dict["y"] = torch.arange(len(self) + 1)
            out._inc_dict["y"] = torch.zeros(len(self), dtype=torch.long)
        return out

    def nan_padded(self) -> Tensor:
        """The points as a float tensor with NaN in the padding (plots skip NaN points)."""
        x = self.points if self.points.is_floating_point() else self.points.double()
        return torch.where(self.mask[..., None], x, torch.full((), float("nan"), dtype=x.dtype, device=x.device))

    def with_labels(self, labels: Optional[Tensor]) -> "SetBatch":
        return SetBatch(self.points, self.mask, labels)

    # ----------------------------------------------------------------- properties
    @property
    def sizes(self) -> Tensor:
        """``(B,)`` int64 number of real points of each set."""
        return self.mask.sum(1)

    @property
    def is_fixed(self) -> bool:
        """True when no set is padded: every set has ``num_points`` points."""
        return bool(self.mask.all())

    @property
    def num_points(self) -> int:
        """``N``: the padded width (the largest set's size, or more)."""
        return int(self.points.shape[1])

    @property
    def dim(self) -> int:
        return int(self.points.shape[2])

    @property
    def shape(self) -> torch.Size:
        """The points' shape ``(B, N, D)``."""
        return self.points.shape

    @property
    def dtype(self) -> torch.dtype:
        return self.points.dtype

    @property
    def device(self) -> torch.device:
        return self.points.device

    def __len__(self) -> int:
        return int(self.points.shape[0])

    def __getitem__(self, idx):
        """``batch[i]``: the real points ``(N_i, D)`` of set ``i``; a slice or index tensor: a ``SetBatch``."""
        if isinstance(idx, int):
            return self.points[idx][self.mask[idx]]
        return SetBatch(self.points[idx], self.mask[idx], None if self.labels is None else self.labels[idx])

    def to(self, *args, **kwargs) -> "SetBatch":
        """``points.to(*args, **kwargs)`` (a device and/or dtype); the mask and labels follow the device."""
        points = self.points.to(*args, **kwargs)
        labels = None if self.labels is None else self.labels.to(points.device)
        return SetBatch(points, self.mask.to(points.device), labels)

    def cpu(self) -> "SetBatch":
        return self.to("cpu")

    def __repr__(self) -> str:
        if len(self) == 0:
            return f"SetBatch(0 sets, width {self.num_points}, {self.dim}-D)"
        sizes = self.sizes
        lo, hi = int(sizes.min()), int(sizes.max())
        span = f"{lo}" if lo == hi else f"{lo}..{hi}"
        pad = "" if lo == hi == self.num_points else f", padded to {self.num_points}"
        return (f"SetBatch({len(self)} sets of {span} points in {self.dim}-D{pad}"
                f"{', labels' if self.labels is not None else ''})")


def as_set_batch(x, mask: Optional[Tensor] = None, labels: Optional[Tensor] = None) -> SetBatch:
    """``x`` as a :class:`SetBatch`: a ``SetBatch`` as it is, a tensor ``(B, N, D)`` with ``mask`` (default:
    every point real) and ``labels``, a PyG ``Data`` / ``Batch``, or an array."""
    if isinstance(x, SetBatch):
        if mask is not None:
            raise ValueError("a SetBatch carries its own mask; pass it without mask=")
        return x if labels is None else x.with_labels(labels)
    if any(c.__module__.startswith("torch_geometric") for c in type(x).__mro__):
        if mask is not None:
            raise ValueError("a PyG Data/Batch carries its own sets (the batch vector); pass it without mask=")
        batch = SetBatch.from_pyg(x)
        return batch if labels is None else batch.with_labels(labels)
    if not isinstance(x, Tensor):
        import numpy as np

        x = torch.as_tensor(np.asarray(x))
    return SetBatch(x, mask, labels)
