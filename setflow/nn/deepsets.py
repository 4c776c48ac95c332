"""Permutation-equivariant DeepSets layers (Zaheer et al., 2017)."""

from __future__ import annotations

from typing import Optional

import torch  # noqa: F401  (used by the docstring examples)
from torch import Tensor, nn

from setflow.nn.mlp import broadcast_context, get_activation

__all__ = ["DeepSets", "DeepSetsLayer", "POOLS"]

POOLS = ("mean", "max", "sum")


def _pool(x: Tensor, pool: str) -> Tensor:
    if pool == "mean":
        return x.mean(dim=1)
    if pool == "max":
        return x.amax(dim=1)
    return x.sum(dim=1)


class DeepSetsLayer(nn.Module):
    r"""Permutation-equivariant linear layer on sets.

    .. math:: y_i = \Lambda x_i + \Gamma \operatorname{pool}_j(x_j) + b

    with ``pool`` a mean, max or sum over the points. Permuting the points of
    ``x`` permutes the rows of ``y`` the same way.

    Args:
        in_features: features per input point.
        out_features: features per output point.
        pool: ``"mean"``, ``"max"`` or ``"sum"``.

    Shapes:
        - x: ``(B, N, in_features)``
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

    def forward(self, x: Tensor) -> Tensor:
        return self.lam(x) + self.gamma(_pool(x, self.pool)).unsqueeze(1)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, pool={self.pool!r}"


class DeepSets(nn.Module):
    r"""A stack of :class:`DeepSetsLayer` with point-wise activations: an equivariant set network.

    ``num_layers`` equivariant layers map ``in_features -> hidden -> ... -> out_features``
    with an activation between consecutive layers. The last layer is zero-initialised
    by default (a coupling built on it starts as the identity).

    Args:
        in_features: features per input point.
        out_features: features per output point.
        hidden: width of the hidden layers.
        num_layers: number of equivariant layers (>= 1).
        pool: ``"mean"``, ``"max"`` or ``"sum"`` pooling in every layer.
        activation: registry name of the point-wise activation.
        zero_init: zero the last layer (so the output starts at exactly 0).
        context_features: width ``C`` of an optional context, projected and added
            to the first layer's output. ``context=None`` always works; a context
            given to a network built without ``context_features`` is ignored.

    Shapes:
        - x: ``(B, N, in_features)``
        - context: ``(B, C)`` or ``(B, N, C)``, optional
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
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1; got {num_layers}")
        self.in_features = in_features
        self.out_features = out_features
        self.hidden = hidden
        self.num_layers = num_layers
        self.pool = pool
        self.activation = activation
        self.zero_init = zero_init
        self.context_features = context_features
        widths = [in_features] + [hidden] * (num_layers - 1) + [out_features]
        self.layers = nn.ModuleList(DeepSetsLayer(a, b, pool) for a, b in zip(widths[:-1], widths[1:]))
        self.act = get_activation(activation)
        self.context_proj = (
            nn.Linear(context_features, widths[1], bias=False) if context_features is not None else None
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Default init; zero the last layer when ``zero_init``."""
        for layer in self.layers:
            layer.reset_parameters()
        if self.context_proj is not None:
            self.context_proj.reset_parameters()
        if self.zero_init:
            last = self.layers[-1]
            nn.init.zeros_(last.lam.weight)
            nn.init.zeros_(last.lam.bias)
            nn.init.zeros_(last.gamma.weight)

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> Tensor:
        if x.dim() != 3 or x.shape[-1] != self.in_features:
            raise ValueError(f"expected x of shape (B, N, {self.in_features}); got {tuple(x.shape)}")
        for i, layer in enumerate(self.layers):
            if i > 0:
                x = self.act(x)
            x = layer(x)
            if i == 0 and context is not None and self.context_proj is not None:
                x = x + broadcast_context(self.context_proj(context), x)
        return x

    def extra_repr(self) -> str:
        s = (
            f"in_features={self.in_features}, out_features={self.out_features}, hidden={self.hidden}, "
            f"num_layers={self.num_layers}, pool={self.pool!r}, activation={self.activation!r}, "
            f"zero_init={self.zero_init}"
        )
        if self.context_features is not None:
            s += f", context_features={self.context_features}"
        return s
