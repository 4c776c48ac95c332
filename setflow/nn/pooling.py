r"""A permutation-**invariant** set network: an equivariant set conditioner, masked pooling, an MLP head.

.. math:: f(X) = \operatorname{head}\big([\operatorname{pool}_1(g(X)), \ldots, \operatorname{pool}_P(g(X))]\big)

with ``g`` any :class:`~setflow.nn.base.SetConditioner` (equivariant: permuting the points of ``X``
permutes the rows of ``g(X)``) and each ``pool`` a mean / max / sum over the real points, so ``f``
is the same for every order of the points. It is the encoder ``q(z | X)`` of the latent set flow
(:mod:`setflow.models.latent`): the head's output is the mean and log-scale of a Gaussian over ``z``.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch  # noqa: F401  (used by the docstring example)
from torch import Tensor, nn

from setflow.nn.deepsets import POOLS, masked_pool
from setflow.nn.mlp import MLP
from setflow.utils import call_net

__all__ = ["PooledSetNet"]


class PooledSetNet(nn.Module):
    r"""Set -> vector: ``body`` per point, the ``pools`` over the real points, concatenated, then ``head``.

    Args:
        body: an equivariant set network ``(B, N, D) -> (B, N, F)`` taking ``mask=`` (a registered
            set conditioner). Its read-out may start at zero (the conditioner contract): the head's
            random weights give it a gradient on the first step.
        body_features: ``F``, the body's output width.
        out_features: width of the output vector.
        pools: names among ``"mean"``, ``"max"``, ``"sum"`` (or one name); their results are concatenated.
        hidden: widths of the head's hidden layers.
        activation: the head's activation.

    Padded points (``mask`` False) are left out of every pool, so a set's output does not depend on
    its padding; a set without real points pools to zero.

    Shapes:
        - x: ``(B, N, D)``; mask: ``(B, N)`` bool, optional
        - output: ``(B, out_features)``

    Example:
        >>> from setflow.nn import DeepSets
        >>> net = PooledSetNet(DeepSets(2, 16, hidden=16, zero_init=False), 16, 4, pools=("mean", "max"))
        >>> x = torch.randn(3, 10, 2)
        >>> torch.allclose(net(x), net(x.flip(1)), atol=1e-6)   # any order of the points
        True
        >>> net(x, mask=torch.arange(10) < torch.tensor([[10], [5], [1]])).shape
        torch.Size([3, 4])
    """

    supports_mask = True

    def __init__(self, body: nn.Module, body_features: int, out_features: int,
                 pools: Union[str, Sequence[str]] = ("mean", "max"), hidden: Sequence[int] = (64,),
                 activation: str = "gelu") -> None:
        super().__init__()
        pools = (pools,) if isinstance(pools, str) else tuple(pools)
        if not pools or any(p not in POOLS for p in pools) or len(set(pools)) != len(pools):
            raise ValueError(f"pools must be distinct names among {POOLS}, got {list(pools)}")
        self.body = body
        self.pools = pools
        self.body_features = int(body_features)
        self.out_features = int(out_features)
        self.head = MLP(len(pools) * self.body_features, self.out_features, hidden=hidden, activation=activation)

    def reset_parameters(self) -> None:
        """Re-draw the head (the body keeps its own initialisation)."""
        self.head.reset_parameters()

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        h = call_net(self.body, x, None, mask)
        if h.dim() != 3 or h.shape[-1] != self.body_features:
            raise ValueError(f"PooledSetNet: the body gave shape {tuple(h.shape)}, expected "
                             f"(B, N, {self.body_features})")
        return self.head(torch.cat([masked_pool(h, p, mask) for p in self.pools], dim=-1))

    def extra_repr(self) -> str:
        return f"body_features={self.body_features}, out_features={self.out_features}, pools={list(self.pools)}"
