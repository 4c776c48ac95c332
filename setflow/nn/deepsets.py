"""Permutation-equivariant DeepSets layers (Zaheer et al., 2017)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from setflow.nn.base import ConditionerSpec, SetConditioner
from setflow.nn.mlp import get_activation
from setflow.registry import register_set_conditioner

__all__ = ["DeepSets", "DeepSetsLayer", "POOLS", "masked_pool"]

POOLS = ("mean", "max", "sum")


def masked_pool(x: Tensor, pool: str, mask: Optional[Tensor] = None) -> Tensor:
    """Mean, max or sum of ``x`` ``(B, N, F)`` over its real points -> ``(B, F)``.

    ``mask`` ``(B, N)`` bool (True = a real point; ``None`` = all): padded rows are left out
    (a set without real points pools to 0).
    """
    if mask is None:
        if pool == "mean":
            return x.mean(dim=1)
        if pool == "max":
            return x.amax(dim=1)
        return x.sum(dim=1)
    m = mask.unsqueeze(-1)
    if pool == "max":
        out = x.masked_fill(~m, float("-inf")).amax(dim=1)
        return out.masked_fill(~mask.any(dim=1, keepdim=True), 0.0)
    total = x.masked_fill(~m, 0.0).sum(dim=1)
    if pool == "sum":
        return total
    return total / mask.sum(dim=1, keepdim=True).clamp_min(1).to(x.dtype)


class DeepSetsLayer(nn.Module):
    r"""Permutation-equivariant linear layer on sets.

    .. math:: y_i = \Lambda x_i + \Gamma \operatorname{pool}_j(x_j) + b

    with ``pool`` a mean, max or sum over the points (the real points only, with a ``mask``).
    Permuting the points of ``x`` permutes the rows of ``y`` the same way.

    Args:
        in_features: features per input point.
        out_features: features per output point.
        pool: ``"mean"``, ``"max"`` or ``"sum"``.

    Shapes:
        - x: ``(B, N, in_features)``, mask: ``(B, N)`` bool, optional
        - output: ``(B, N, out_features)``
    """

    def __init__(self, in_features: int, out_features: int, pool: str = "mean") -> None:
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"unknown pool {pool!r}; expected one of {POOLS}")
        self.in_features = in_features
        self.out_features = out_features
        self.pool = pool
        self.lam = nn.Linear(in_features, out_features)
        self.gamma = nn.Linear(in_features, out_features, bias=False)

    def reset_parameters(self) -> None:
        """PyTorch's default init for both linear maps."""
        self.lam.reset_parameters()
        self.gamma.reset_parameters()

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        return self.lam(x) + self.gamma(masked_pool(x, self.pool, mask)).unsqueeze(1)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, pool={self.pool!r}"


@register_set_conditioner("deepsets")
class DeepSets(SetConditioner):
    r"""A stack of :class:`DeepSetsLayer` with point-wise activations: an equivariant set network.

    ``num_layers`` equivariant layers map ``in_features -> hidden -> ... -> out_features``
    with an activation between consecutive layers. The last layer is zero-initialised
    by default (a coupling built on it starts as the identity). Follows the
    :class:`~setflow.nn.base.SetConditioner` contract (no learned positions); with a ``mask``
    every layer pools over the real points only.

    Args:
        in_features: features per input point.
        out_features: features per output point.
        hidden: width of the hidden layers.
        num_layers: number of equivariant layers (>= 1).
        pool: ``"mean"``, ``"max"`` or ``"sum"`` pooling in every layer.
        activation: registry name of the point-wise activation.
        zero_init: zero the last layer (so the output starts at exactly 0).
        context_features: width ``C`` of an optional context, projected and added
            to the first layer's output (then every call needs the context).

    Shapes:
        - x: ``(B, N, in_features)``
        - context: ``(B, C)`` or ``(B, N, C)``, with ``context_features``
        - mask: ``(B, N)`` bool, True = a real point, optional
        - output: ``(B, N, out_features)``

    Example:
        >>> net = DeepSets(2, 4, hidden=32, num_layers=3, pool="max")
        >>> net(torch.randn(8, 25, 2)).shape
        torch.Size([8, 25, 4])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: int = 64,
        num_layers: int = 3,
        pool: str = "mean",
        activation: str = "relu",
        zero_init: bool = True,
        context_features: Optional[int] = None,
    ) -> None:
        super().__init__(in_features, out_features, context_features=context_features, zero_init=zero_init)
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1; got {num_layers}")
        self.hidden = hidden
        self.num_layers = num_layers
        self.pool = pool
        self.activation = activation
        widths = [in_features] + [hidden] * (num_layers - 1) + [out_features]
        self.layers = nn.ModuleList(DeepSetsLayer(a, b, pool) for a, b in zip(widths[:-1], widths[1:]))
        self.act = get_activation(activation)
        self.context_proj = self.context_projection(widths[1])
        self.reset_parameters()

    @classmethod
    def from_spec(cls, in_features: int, out_features: int, spec: ConditionerSpec, positional: bool = False,
                  max_len: Optional[int] = None) -> "DeepSets":
        """From ``spec``: ``hidden = d_model``, ``num_layers``, ``context_features`` (no positions)."""
        cls.refuse_positions(positional)
        return cls(in_features, out_features, hidden=spec.d_model, num_layers=spec.num_layers,
                   context_features=spec.context_features)

    def reset_parameters(self) -> None:
        """Default init; zero the last layer when ``zero_init``."""
        for layer in self.layers:
            layer.reset_parameters()
        if self.context_proj is not None:
            self.context_proj.reset_parameters()
        if self.zero_init:
            last = self.layers[-1]
            self.zero_readout_(last.lam)
            self.zero_readout_(last.gamma)

    def forward(self, x: Tensor, context: Optional[Tensor] = None, mask: Optional[Tensor] = None) -> Tensor:
        x, mask = self.check_input(x, context, mask)
        for i, layer in enumerate(self.layers):
            if i > 0:
                x = self.act(x)
            x = layer(x, mask)
            if i == 0:
                x = self.add_context(x, context, self.context_proj)
        return x

    def extra_repr(self) -> str:
        return (f"{self._contract_repr()}, hidden={self.hidden}, num_layers={self.num_layers}, pool={self.pool!r}, "
                f"activation={self.activation!r}, zero_init={self.zero_init}")
