"""k-nearest-neighbour message passing on sets: a plain-torch kNN graph and an EdgeConv network.

The graph is built with ``torch.cdist`` and a stable sort (no ``pyg-lib`` /
``torch-cluster`` needed); message passing uses ``torch_geometric.nn.EdgeConv``
(Wang et al., 2019, "Dynamic Graph CNN"), imported lazily.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from setflow.nn.base import ConditionerSpec, SetConditioner
from setflow.nn.mlp import MLP, get_activation
from setflow.nn.neighbors import nearest_neighbors
from setflow.registry import register_set_conditioner

__all__ = ["EdgeConvNet", "knn_graph"]


def _check_k(k: int, num_points: int, loop: bool) -> None:
    k_max = num_points if loop else num_points - 1
    if not 1 <= k <= k_max:
        raise ValueError(
            f"k={k} neighbours is impossible for sets of N={num_points} points "
            f"(need 1 <= k {'<= N' if loop else '< N'} with loop={loop})"
        )


def knn_graph(x: Tensor, k: int, loop: bool = False, mask: Optional[Tensor] = None, ties: str = "index") -> Tensor:
    r"""k-nearest-neighbour graph of every set in a batch, as a PyG ``edge_index``.

    Nodes are the flattened points, node ``b * N + i`` being point ``i`` of set
    ``b``; edges never cross sets. Each point receives ``k`` edges from its
    nearest points, found by :func:`~setflow.nn.neighbors.nearest_neighbors` (exact
    Euclidean distances, not via the matmul expansion). Ties are broken by the lower point
    index, so the result is deterministic, and for tie-free inputs permuting the points of a
    set permutes the edges the same way; with ``ties="coordinates"`` by the lexicographically
    smaller point, so that holds with ties too (up to swapping duplicate points).

    Args:
        x: point coordinates / features.
        k: neighbours per point; ``1 <= k < N`` (``k <= N`` with ``loop=True``).
        loop: whether a point counts as its own neighbour (distance 0).
        mask: ``(B, N)`` bool, True = a real point: edges join real points only (a real point of
            a set with at most ``k`` real points gets fewer than ``k`` edges; padded points none).
        ties: ``"index"`` or ``"coordinates"`` (:data:`setflow.nn.neighbors.TIES`).

    Returns:
        ``edge_index`` of dtype ``long``: row 0 the neighbour (source ``j``),
        row 1 the centre (target ``i``), PyG's ``source_to_target`` flow. Edges are
        ordered by set, then centre, then increasing distance.

    Shapes:
        - x: ``(B, N, D)``
        - output: ``(2, B * N * k)`` (fewer with a ``mask``)

    Example:
        >>> knn_graph(torch.randn(2, 5, 3), k=2).shape
        torch.Size([2, 20])
    """
    if x.dim() != 3:
        raise ValueError(f"expected points of shape (B, N, D); got {tuple(x.shape)}")
    B, N, _ = x.shape
    _check_k(k, N, loop)
    if mask is not None and (mask.shape != (B, N) or mask.dtype != torch.bool):
        raise ValueError(f"expected mask of shape {(B, N)} and dtype bool; got {tuple(mask.shape)} {mask.dtype}")
    nbr = nearest_neighbors(x, k, mask=mask, loop=loop, ties=ties)  # (B, N, k): nearest first
    offsets = torch.arange(B, device=x.device).mul_(N).view(B, 1, 1)
    source = (nbr + offsets).reshape(-1)
    target = torch.arange(B * N, device=x.device).view(B, N, 1).expand(B, N, k).reshape(-1)
    if mask is not None:  # real centres, and of their rows only the admissible neighbours (they come first)
        admissible = (mask.sum(1) - int(not loop)).clamp(0, k).view(B, 1, 1)
        keep = mask[:, :, None] & (torch.arange(k, device=x.device).view(1, 1, k) < admissible)
        source, target = source[keep.reshape(-1)], target[keep.reshape(-1)]
    return torch.stack([source, target])


@register_set_conditioner("edgeconv")
class EdgeConvNet(SetConditioner):
    r"""Permutation-equivariant set network: EdgeConv layers on the kNN graph of the input.

    The graph is built once per forward pass from the input points with
    :func:`knn_graph`. Each layer computes
    ``h_i' = act(max_{j in N(i)} MLP([h_i, h_j - h_i]))``; a point-wise linear
    read-out (zero-initialised by default) gives the output. Follows the
    :class:`~setflow.nn.base.SetConditioner` contract (no learned positions); with a ``mask``
    the graph joins real points only.

    Small sets: a point has ``min(k, n - 1)`` neighbours in a set of ``n`` points (the same alone
    and in a padded batch); a 1-point set has none, and a point without edges aggregates to 0.
    Ties: of neighbours at equal distance the lexicographically smaller point wins
    (``ties="coordinates"`` of :func:`knn_graph`), so the output is permutation-equivariant even on
    grids and with duplicate points (duplicates have equal features, so which of them wins does not
    matter).

    Args:
        in_features: features per point (also the space the graph is built in).
        out_features: output features per point.
        hidden: width of the edge MLPs and node features.
        k: neighbours per point (at most ``n - 1`` are used in a set of ``n`` points).
        num_layers: EdgeConv layers (>= 1).
        aggr: ``"max"``, ``"mean"`` or ``"add"`` neighbour aggregation.
        activation: registry name of the activation.
        zero_init: zero the read-out, so the output starts at exactly 0.
        context_features: width ``C`` of an optional context, projected and added
            to the node features after the first layer (then every call needs it).

    Shapes:
        - x: ``(B, N, in_features)``
        - context: ``(B, C)``, with ``context_features``
        - mask: ``(B, N)`` bool, True = a real point, optional
        - output: ``(B, N, out_features)``

    Example:
        >>> net = EdgeConvNet(2, 4, hidden=16, k=4)
        >>> net(torch.randn(3, 10, 2)).shape
        torch.Size([3, 10, 4])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: int = 64,
        k: int = 8,
        num_layers: int = 2,
        aggr: str = "max",
        activation: str = "relu",
        zero_init: bool = True,
        context_features: Optional[int] = None,
    ) -> None:
        super().__init__(in_features, out_features, context_features=context_features, zero_init=zero_init)
        from torch_geometric.nn import EdgeConv

        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1; got {num_layers}")
        if k < 1:
            raise ValueError(f"k must be >= 1; got {k}")
        self.hidden = hidden
        self.k = k
        self.num_layers = num_layers
        self.aggr = aggr
        self.activation = activation
        self.convs = nn.ModuleList(
            EdgeConv(MLP(2 * (in_features if i == 0 else hidden), hidden, (hidden,), activation), aggr=aggr)
            for i in range(num_layers)
        )
        self.act = get_activation(activation)
        self.context_proj = self.context_projection(hidden)
        self.out = self.readout(hidden)
        self.reset_parameters()

    @classmethod
    def from_spec(cls, in_features: int, out_features: int, spec: ConditionerSpec, positional: bool = False,
                  max_len: Optional[int] = None) -> "EdgeConvNet":
        """From ``spec``: ``hidden = d_model``, ``k``, ``num_layers``, ``context_features`` (no positions)."""
        cls.refuse_positions(positional)
        return cls(in_features, out_features, hidden=spec.d_model, k=spec.k, num_layers=spec.num_layers,
                   context_features=spec.context_features)

    def reset_parameters(self) -> None:
        """Default init; zero read-out when ``zero_init``."""
        for conv in self.convs:
            conv.reset_parameters()
        if self.context_proj is not None:
            self.context_proj.reset_parameters()
        self.out.reset_parameters()
        if self.zero_init:
            self.zero_readout_(self.out)

    def forward(self, x: Tensor, context: Optional[Tensor] = None, mask: Optional[Tensor] = None) -> Tensor:
        x, mask = self.check_input(x, context, mask)
        B, N, D = x.shape
        k = min(self.k, N - 1)
        edge_index = (knn_graph(x, k, mask=mask, ties="coordinates") if k > 0
                      else torch.zeros(2, 0, dtype=torch.long, device=x.device))
        h = x.reshape(B * N, D)
        for i, conv in enumerate(self.convs):
            h = self.act(conv(h, edge_index))
            if i == 0 and context is not None:
                h = self.add_context(h.view(B, N, -1), context, self.context_proj).view(B * N, -1)
        return self.out(h).view(B, N, self.out_features)

    def extra_repr(self) -> str:
        return (f"{self._contract_repr()}, hidden={self.hidden}, k={self.k}, num_layers={self.num_layers}, "
                f"aggr={self.aggr!r}, activation={self.activation!r}, zero_init={self.zero_init}")
