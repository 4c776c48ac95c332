r"""Ordered tuples <-> unconstrained values: the layer that makes a SortFlow sort-consistent.

After a :class:`~setflow.transforms.surjections.SortSurjection` the points of a set are in
increasing order of one coordinate ``k``. :class:`OrderedIncrements` maps that ordered
coordinate bijectively onto ``R^N`` (the other coordinates pass through)::

    z_1 = x_1,        z_i = log((x_i - x_{i-1}) / c)   (i = 2..N, c = gap_scale)

with ``log|det dz/dx| = -sum_{i>=2} log(x_i - x_{i-1})`` (the Jacobian is lower triangular,
diagonal ``1, 1/g_2, ..., 1/g_N``). The inverse builds the coordinate from cumulative positive
increments, ``x_i = z_1 + c * sum_{2<=j<=i} exp(z_j)``, so *every* latent value maps to a strictly
increasing tuple: a flow ``sort -> OrderedIncrements -> any bijection -> base`` is a density on
sorted tuples that integrates to 1 over them, and ``sample()`` draws from exactly that density.

:func:`sorted_fraction` measures how far a flow *without* this layer is from that: the share of
base samples whose inverse latent flow comes out sorted, which is what its density integrates to.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from setflow.sets import check_mask
from setflow.transforms.base import Bijection

__all__ = ["OrderedIncrements", "sorted_fraction"]


class OrderedIncrements(Bijection):
    r"""Strictly increasing coordinate ``k`` of ``(B, N, D)`` sets <-> ``(first value, log increments)``.

    Args:
        coord: the ordered coordinate (the sort key's index).
        dim: the points dimension (``1``).
        gap_scale: the increments are divided by ``c = gap_scale`` before the log, so that
            typical gaps map near 0 (e.g. ``range / N``); a constant, part of the log-det.
        min_gap: ``None`` (default): exact ties in ``k`` (a zero gap) raise a ``ValueError``,
            the bijection being defined on strictly increasing tuples only. A positive value:
            gaps in ``[0, min_gap)`` are clamped to ``min_gap`` (documented approximation: the
            density is exact for every set whose gaps in ``k`` are all ``>= min_gap``; ties of a
            continuous key have probability zero). A negative gap (input not sorted by ``k``) is
            always an error.

    With ``mask`` (``(B, N)`` bool, sets of different sizes) the increments are those between
    consecutive *real* points (each real point after the first minus the previous real point);
    the padding passes through unchanged and takes no part.

    Shapes:
        - x, z: ``(B, N, D)`` (or ``(B, N)`` scalar points); mask: ``(B, N)`` or None; ldj: ``(B,)``

    Example:
        >>> t = OrderedIncrements(coord=0)
        >>> x = torch.tensor([[[0.0, 5.0], [1.0, 6.0], [3.0, 7.0]]])
        >>> z, ldj = t(x)
        >>> z[0, :, 0], round(float(ldj[0]), 4)
        (tensor([0.0000, 0.0000, 0.6931]), -0.6931)
        >>> torch.equal(t.inverse(z), x)
        True
    """

    def __init__(self, coord: int = 0, dim: int = 1, gap_scale: float = 1.0, min_gap: Optional[float] = None):
        super().__init__()
        if not gap_scale > 0:
            raise ValueError(f"gap_scale must be > 0, got {gap_scale}")
        if min_gap is not None and not min_gap > 0:
            raise ValueError(f"min_gap must be None or > 0, got {min_gap}")
        if dim not in (1, -2):
            raise ValueError(f"OrderedIncrements expects the points along dim=1 of (B, N, D), got dim={dim}")
        self.coord = int(coord)
        self.dim = 1
        self.gap_scale = float(gap_scale)
        self.min_gap = None if min_gap is None else float(min_gap)

    def _split(self, x: Tensor) -> Tensor:
        if x.dim() == 2:
            return x
        if x.dim() != 3:
            raise ValueError(f"OrderedIncrements expects sets (B, N, D) or (B, N), got shape {tuple(x.shape)}")
        if not -x.shape[-1] <= self.coord < x.shape[-1]:
            raise ValueError(f"coord={self.coord} is out of range for points with {x.shape[-1]} coordinates")
        return x.select(-1, self.coord)

    def _join(self, x: Tensor, k: Tensor) -> Tensor:
        if x.dim() == 2:
            return k
        out = x.clone()
        out.select(-1, self.coord).copy_(k)
        return out

    supports_mask = True

    @staticmethod
    def _previous(mask: Tensor) -> tuple[Tensor, Tensor]:
        """``(prev, has_prev)``: the index of the previous real point of each slot, and whether a real slot has one."""
        ar = torch.arange(mask.shape[1], device=mask.device)
        last = torch.cummax(torch.where(mask, ar, -1), dim=1).values
        prev = torch.cat([torch.full_like(last[:, :1], -1), last[:, :-1]], dim=1)
        return prev.clamp(min=0), mask & (prev >= 0)

    def _check_gaps(self, gaps: Tensor, valid: Optional[Tensor] = None) -> Tensor:
        neg, zero = gaps < 0, gaps == 0
        if valid is not None:
            neg, zero = neg & valid, zero & valid
        if bool(neg.any()):
            raise ValueError(f"OrderedIncrements expects points sorted by coordinate {self.coord} "
                             "(put a SortSurjection with that key before it)")
        if self.min_gap is None:
            if bool(zero.any()):
                raise ValueError(f"OrderedIncrements found tied values in coordinate {self.coord} (a zero gap): the "
                                 "sort-consistent density needs distinct keys; dequantize the data or set min_gap")
            return gaps
        return gaps.clamp(min=self.min_gap)

    def _forward_masked(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        k = self._split(x)
        mask = check_mask(mask, k, min_points=0)
        prev, has_prev = self._previous(mask)
        gaps = k - torch.gather(k, 1, prev)
        gaps = torch.where(has_prev, self._check_gaps(gaps, has_prev), torch.ones_like(gaps))
        log_gaps = torch.where(has_prev, torch.log(gaps), torch.zeros_like(gaps))
        zk = torch.where(has_prev, log_gaps - math.log(self.gap_scale), k)
        return self._join(x, zk), -log_gaps.sum(1)

    def _inverse_masked(self, z: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        zk = self._split(z)
        mask = check_mask(mask, zk, min_points=0)
        _, has_prev = self._previous(mask)
        first = mask & ~has_prev
        log_gaps = torch.where(has_prev, zk + math.log(self.gap_scale), torch.zeros_like(zk))
        steps = torch.where(has_prev, torch.exp(log_gaps), torch.zeros_like(zk))
        start = torch.where(first, zk, torch.zeros_like(zk)).sum(1, keepdim=True)
        k = torch.where(mask, start + torch.cumsum(steps, dim=1), zk)
        return self._join(z, k), log_gaps.sum(1)

    def forward(self, x: Tensor, context: Optional[Tensor] = None, mask: Optional[Tensor] = None
                ) -> tuple[Tensor, Tensor]:
        if mask is not None:
            return self._forward_masked(x, mask)
        k = self._split(x)  # a 1-point set has no gaps: z = x, ldj = 0
        gaps = self._check_gaps(k[:, 1:] - k[:, :-1])
        log_gaps = torch.log(gaps)
        zk = torch.cat([k[:, :1], log_gaps - math.log(self.gap_scale)], dim=1)
        return self._join(x, zk), -log_gaps.sum(1)

    def inverse_with_ldj(self, z: Tensor, context: Optional[Tensor] = None, mask: Optional[Tensor] = None
                         ) -> tuple[Tensor, Tensor]:
        """``(x, log|det dx/dz|)`` with ``x``'s coordinate ``k`` strictly increasing (cumulative positive steps)."""
        if mask is not None:
            return self._inverse_masked(z, mask)
        zk = self._split(z)
        log_gaps = zk[:, 1:] + math.log(self.gap_scale)
        k = torch.cat([zk[:, :1], zk[:, :1] + torch.cumsum(torch.exp(log_gaps), dim=1)], dim=1)
        return self._join(z, k), log_gaps.sum(1)

    def inverse(self, z: Tensor, context: Optional[Tensor] = None, mask: Optional[Tensor] = None) -> Tensor:
        return self.inverse_with_ldj(z, context, mask)[0]

    def extra_repr(self) -> str:
        return f"coord={self.coord}, gap_scale={self.gap_scale}, min_gap={self.min_gap}"


@torch.no_grad()
def sorted_fraction(flow, num_samples: int, batch_size: int = 10_000) -> tuple[float, float]:
    """``(P, standard error)``: the share of base samples whose inverse latent flow is sorted.

    ``flow`` is a :class:`~setflow.flows.Flow` whose first transform is a ``SortSurjection``;
    the latent flow is everything after it. "Sorted" means non-decreasing sort scores along the
    points (ties have probability zero for a continuous flow). For the paper SortFlow this is
    the integral of ``exp(log_prob)``; a sort-consistent flow gives 1 by construction.
    """
    from setflow.transforms.surjections import SortSurjection

    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    transforms = list(flow.transforms)
    if not transforms or not isinstance(transforms[0], SortSurjection):
        raise ValueError("sorted_fraction needs a flow whose first transform is a SortSurjection (a SortFlow)")
    sort, latent = transforms[0], transforms[1:]
    hits, done = 0, 0
    while done < num_samples:
        b = min(batch_size, num_samples - done)
        y = flow.base.sample(b)
        for t in reversed(latent):
            y = t.inverse(y)
        s = sort.scores(y)
        hits += int((s[:, 1:] >= s[:, :-1]).all(dim=1).sum())
        done += b
    p = hits / done
    return p, math.sqrt(max(p * (1.0 - p), 0.0) / done)
