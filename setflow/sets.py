"""Batches of sets of different sizes: padded ``(B, N_max, D)`` points plus a bool mask ``(B, N_max)``.

``mask[b, i]`` is True where ``x[b, i]`` is a real point of set ``b`` and False on padding. Every
set layer of setflow takes this pair (``mask=None`` means every point is real), and the values
in the padding never change a result. The helpers here build the pair from a list of sets or
from a PyG ``Data`` / ``Batch`` and back, without Python loops over points.

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

__all__ = ["pad_sets", "unpad_sets", "lengths_to_mask", "mask_to_lengths", "check_mask", "set_sizes",
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
