"""Point-wise multi-layer perceptron; the activations it and ``setflow.nn`` use are registered here
(:data:`setflow.registry.ACTIVATIONS`)."""

from __future__ import annotations

from typing import Optional, Sequence

import torch  # noqa: F401  (used by the docstring examples)
from torch import Tensor, nn

from setflow.registry import ACTIVATIONS, register_activation

__all__ = ["ACTIVATIONS", "MLP", "get_activation", "broadcast_context"]

# Name -> module class in the registry. Classes (not lambdas) so that every network pickles.
for _name, _cls in (("relu", nn.ReLU), ("gelu", nn.GELU), ("silu", nn.SiLU), ("swish", nn.SiLU), ("elu", nn.ELU),
                    ("leaky_relu", nn.LeakyReLU), ("tanh", nn.Tanh), ("softplus", nn.Softplus),
                    ("sigmoid", nn.Sigmoid)):
    register_activation(_name, _cls)
del _name, _cls


def get_activation(name: str) -> nn.Module:
    """A fresh activation module from its name in :data:`~setflow.registry.ACTIVATIONS` (``"relu"``,
    ``"GELU"``, ...; case-insensitive); an unknown name is a one-line error listing the registered ones."""
    if not isinstance(name, str):
        raise TypeError(f"an activation is named by a string, got {name!r}")
    return ACTIVATIONS.get(name.lower())()


def broadcast_context(context: Tensor, x: Tensor) -> Tensor:
    """Expand a ``(B, C)`` context over the middle axes of ``x`` (``(B, ..., D)``) -> ``(B, ..., C)``.

    A context that already has ``x.dim()`` axes is returned unchanged.
    """
    if context.dim() == x.dim():
        return context
    if context.dim() != 2 or context.shape[0] != x.shape[0]:
        raise ValueError(
            f"context must have shape (B, C) with B={x.shape[0]} or match the input's {x.dim()} axes; "
            f"got {tuple(context.shape)}"
        )
    shape = (context.shape[0],) + (1,) * (x.dim() - 2) + (context.shape[1],)
    return context.view(shape).expand(*x.shape[:-1], context.shape[1])


class MLP(nn.Module):
    r"""Multi-layer perceptron applied to the last axis (point-wise on sets).

    .. math:: y = W_L \sigma(\cdots \sigma(W_1 x + b_1 + U c) \cdots) + b_L

    Args:
        in_features: input features ``D_in``.
        out_features: output features ``D_out``.
        hidden: widths of the hidden layers (empty: a single linear map).
        activation: registry name of the non-linearity (see :data:`ACTIVATIONS`).
        zero_init: zero the last layer's weight and bias, so the network starts at 0.
        context_features: width ``C`` of an optional context ``c``; when set, ``U c``
            (a bias-free linear map) is added to the first layer's pre-activation,
            broadcast over the point axis. A ``context`` passed to a network built
            without ``context_features`` is ignored, and ``context=None`` always works.

    Point-wise, so it serves as a coupling conditioner of i.i.d. points (a conditional point flow):
    ``forward`` takes the ``mask=`` of padded sets and ignores it.

    Shapes:
        - x: ``(*, D_in)``
        - context: ``(B, C)`` or ``(*, C)``, optional
        - output: ``(*, D_out)``

    Example:
        >>> net = MLP(3, 2, hidden=(16, 16))
        >>> net(torch.randn(4, 10, 3)).shape
        torch.Size([4, 10, 2])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: Sequence[int] = (64, 64),
        activation: str = "gelu",
        zero_init: bool = False,
        context_features: Optional[int] = None,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.hidden = tuple(int(h) for h in hidden)
        self.activation = activation
        self.zero_init = zero_init
        self.context_features = context_features
        widths = [in_features, *self.hidden, out_features]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.act = get_activation(activation)
        self.context_proj = (
            nn.Linear(context_features, widths[1], bias=False) if context_features is not None else None
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-draw the weights (PyTorch's default init); zero the last layer when ``zero_init``."""
        for layer in self.layers:
            layer.reset_parameters()
        if self.context_proj is not None:
            self.context_proj.reset_parameters()
        if self.zero_init:
            nn.init.zeros_(self.layers[-1].weight)
            nn.init.zeros_(self.layers[-1].bias)

    def forward(self, x: Tensor, context: Optional[Tensor] = None, mask: Optional[Tensor] = None) -> Tensor:
        """``mask`` (``(B, N)`` bool, sets of different sizes) is accepted and unused: the network is
        point-wise, so a padded row never changes another row (a coupling keeps the padding as it was)."""
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
            f"activation={self.activation!r}, zero_init={self.zero_init}"
        )
        if self.context_features is not None:
            s += f", context_features={self.context_features}"
        return s
