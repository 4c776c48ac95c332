"""Exact k-nearest neighbours in ``O(N k)`` and a dense EdgeConv set network.

:func:`knn_neighbors` finds each point's ``k`` nearest points with the exact searches of
:mod:`setflow.nn.neighbors` (chunked: transient blocks of a bounded number of distances, and
what is kept is ``(B, N, k)``, memory ``O(N k)`` per set). It takes dense ``(B, N, D)`` sets
(with an optional mask) or PyG-style ``(num_nodes, D)`` points with a ``batch`` vector.
:func:`knn_edge_index` returns the PyG ``edge_index`` (named so as not to clash with ``torch_geometric.nn.knn_graph``).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from setflow.nn.base import ConditionerSpec, PointEmbedding, SetConditioner
from setflow.nn.mlp import get_activation
from setflow.nn.neighbors import MAX_ELEMENTS, nearest_neighbors
from setflow.registry import register_set_conditioner

__all__ = ["knn_neighbors", "knn_edge_index", "KNNEdgeConv", "KNNEdgeConvNet"]


def knn_neighbors(x: Tensor, k: int, mask: Optional[Tensor] = None, loop: bool = False,
                  chunk: Optional[int] = None, ties: str = "index") -> Tensor:
    r"""Indices of the ``k`` nearest points of every point of every set (Euclidean, exact).

    :func:`setflow.nn.neighbors.nearest_neighbors`: sorted windows for 1-2 coordinates above
    ``WINDOW_MIN_POINTS`` points, a uniform grid for 3 above ``GRID_MIN_POINTS``, all pairs otherwise.

    Args:
        x: ``(B, N, D)`` points.
        k: neighbours per point; ``1 <= k < N`` (``<= N`` with ``loop``).
        mask: ``(B, N)`` bool, True = a point; padded points are never neighbours (rows with
            fewer than ``k`` real neighbours are completed with the point's own index).
        loop: whether a point is its own neighbour.
        chunk: bounds a transient block to ``B x chunk x N`` distances (default about 4M).
        ties: ``"index"`` or ``"coordinates"`` (:data:`setflow.nn.neighbors.TIES`).

    Returns:
        ``(B, N, k)`` long, nearest first, ties by the smaller index (or point).
    """
    if x.dim() != 3:
        raise ValueError(f"expected points of shape (B, N, D); got {tuple(x.shape)}")
    B, N, _ = x.shape
    limit = MAX_ELEMENTS if chunk is None else max(1, chunk) * B * N
    return nearest_neighbors(x, k, mask=mask, loop=loop, max_elements=limit, ties=ties)


def knn_edge_index(x: Tensor, k: int, batch: Optional[Tensor] = None, loop: bool = False,
                   chunk: Optional[int] = None) -> Tensor:
    r"""kNN graph as a PyG ``edge_index`` ``(2, E)``: row 0 the neighbour, row 1 the centre.

    Accepts dense ``x (B, N, D)`` (node ``b * N + i``) or PyG-style ``x (num_nodes, D)`` with
    ``batch (num_nodes,)`` (sorted graph ids; ``None`` = one graph). Every point of a graph
    with more than ``k`` points gets ``k`` incoming edges; edges never cross graphs.
    """
    if x.dim() == 3:
        B, N, _ = x.shape
        nbr = knn_neighbors(x, k, loop=loop, chunk=chunk)
        src = (nbr + torch.arange(B, device=x.device).view(B, 1, 1) * N).reshape(-1)
        tgt = torch.arange(B * N, device=x.device).repeat_interleave(k)
        return torch.stack([src, tgt])
    if x.dim() != 2:
        raise ValueError(f"expected x of shape (B, N, D) or (num_nodes, D); got {tuple(x.shape)}")
    from torch_geometric.utils import to_dense_batch

    dense, mask = to_dense_batch(x, batch)
    counts = mask.sum(1)
    if int(counts.min()) <= k - int(loop):
        raise ValueError(f"k={k} needs every graph to have more than {k - int(loop)} nodes; "
                         f"the smallest has {int(counts.min())}")
    nbr = knn_neighbors(dense, k, mask=mask, loop=loop, chunk=chunk)  # (G, Nmax, k) local indices
    start = torch.cumsum(counts, 0) - counts
    src = (nbr + start.view(-1, 1, 1))[mask].reshape(-1)
    tgt = torch.arange(x.shape[0], device=x.device).repeat_interleave(k)
    return torch.stack([src, tgt])


class KNNEdgeConv(nn.Module):
    r"""EdgeConv on a precomputed neighbour table: ``h_i' = max_j W2 act(W1 [h_i, h_j - h_i])``.

    The first linear is split as ``(W_a - W_b) h_i + W_b h_j`` so only a ``(B, N, k, H)``
    tensor of edge features is formed.

    With ``valid`` ``(B, N, k)`` bool only the neighbours where it is True are maxed over (a row
    without any gives 0, as does every row of an empty table, ``k = 0``).

    Shapes:
        - h: ``(B, N, F)``, nbr: ``(B, N, k)`` long, valid: ``(B, N, k)`` bool optional -> ``(B, N, H)``
    """

    def __init__(self, in_features: int, out_features: int, activation: str = "relu") -> None:
        super().__init__()
        self.lin_centre = nn.Linear(in_features, out_features)
        self.lin_nbr = nn.Linear(in_features, out_features, bias=False)
        self.act = get_activation(activation)
        self.lin2 = nn.Linear(out_features, out_features)

    def forward(self, h: Tensor, nbr: Tensor, valid: Optional[Tensor] = None) -> Tensor:
        B, N, k = nbr.shape
        if k == 0:  # no neighbours (1-point sets)
            return h.new_zeros(B, N, self.lin2.out_features)
        a = self.lin_centre(h) - self.lin_nbr(h)  # (W_a - W_b) h_i + b
        b = self.lin_nbr(h)
        hj = torch.gather(b, 1, nbr.reshape(B, N * k, 1).expand(-1, -1, b.shape[-1])).view(B, N, k, -1)
        msgs = self.lin2(self.act(a.unsqueeze(2) + hj))
        if valid is None:
            return msgs.amax(dim=2)
        out = msgs.masked_fill(~valid.unsqueeze(-1), float("-inf")).amax(dim=2)
        return out.masked_fill(~valid.any(dim=2, keepdim=True), 0.0)


@register_set_conditioner("knn")
class KNNEdgeConvNet(SetConditioner):
    r"""EdgeConv layers on the kNN graph of the input coordinates (built once per call).

    Permutation-equivariant without ``positional``; with it a learned per-index embedding is
    added (point-wise coupling of sorted sets). Zero-initialised read-out by default. A
    :class:`~setflow.nn.base.SetConditioner`: with a ``mask`` the neighbours are real points only
    (a real point of a set with ``n <= k`` real points has its ``n - 1`` others as neighbours, alone
    or in a padded batch; a 1-point set has none and its EdgeConv messages are 0). Of neighbours at
    equal distance the lexicographically smaller point wins (``ties="coordinates"``), so the net is
    equivariant on grids and with duplicate points too.

    Shapes:
        - x: ``(B, N, in_features)``, context ``(B, C)`` optional, mask ``(B, N)`` optional
        - output: ``(B, N, out_features)``

    Example:
        >>> KNNEdgeConvNet(3, 6, hidden=16, k=4)(torch.randn(2, 50, 3)).shape
        torch.Size([2, 50, 6])
    """

    accepts_positions = True

    def __init__(self, in_features: int, out_features: int, hidden: int = 64, k: int = 8, num_layers: int = 2,
                 positional: bool = False, max_len: Optional[int] = None, zero_init: bool = True,
                 context_features: Optional[int] = None, activation: str = "relu",
                 chunk: Optional[int] = None) -> None:
        super().__init__(in_features, out_features, context_features=context_features, positional=positional,
                         max_len=max_len, zero_init=zero_init)
        if num_layers < 1 or k < 1:
            raise ValueError(f"need num_layers >= 1 and k >= 1; got {num_layers}, {k}")
        self.hidden, self.k, self.num_layers, self.chunk = hidden, k, num_layers, chunk
        self.embed = PointEmbedding(in_features, hidden, positional, max_len, context_features)
        self.convs = nn.ModuleList(KNNEdgeConv(hidden, hidden, activation) for _ in range(num_layers))
        self.act = get_activation(activation)
        self.out = self.readout(hidden)

    @classmethod
    def from_spec(cls, in_features: int, out_features: int, spec: ConditionerSpec, positional: bool = False,
                  max_len: Optional[int] = None) -> "KNNEdgeConvNet":
        """From ``spec``: ``hidden = d_model``, ``k``, ``num_layers``, ``context_features``."""
        return cls(in_features, out_features, hidden=spec.d_model, k=spec.k, num_layers=spec.num_layers,
                   positional=positional, max_len=max_len, context_features=spec.context_features)

    def forward(self, x: Tensor, context: Optional[Tensor] = None, mask: Optional[Tensor] = None) -> Tensor:
        x, mask = self.check_input(x, context, mask)
        h = self.embed(x, context)
        k = min(self.k, x.shape[1] - 1)
        nbr = (knn_neighbors(x, k, mask=mask, chunk=self.chunk, ties="coordinates") if k > 0
               else torch.zeros(*x.shape[:2], 0, dtype=torch.long, device=x.device))
        valid = None
        if mask is not None:  # a neighbour is real and not the point itself (sets with <= k real points)
            B, N, k = nbr.shape
            self_idx = torch.arange(N, device=x.device).view(1, N, 1)
            valid = mask.gather(1, nbr.reshape(B, N * k)).view(B, N, k) & (nbr != self_idx)
        for conv in self.convs:
            h = h + self.act(conv(h, nbr, valid))
        return self.out(h)

    def extra_repr(self) -> str:
        return f"{self._contract_repr()}, hidden={self.hidden}, k={self.k}, num_layers={self.num_layers}"
