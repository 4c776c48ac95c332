"""Induced set attention (ISAB) and pooling by attention (PMA), Lee et al. 2019 ("Set Transformer").

ISAB replaces self-attention over ``N`` points by two attentions through ``m`` learned
inducing points, ``H = MAB(I, X)`` then ``MAB(X, H)``, so time and memory are ``O(N m)``
instead of ``O(N^2)``. It is permutation-equivariant; PMA (``k`` learned seeds attending to
the set) is permutation-invariant. Both take a boolean ``mask`` ``(B, N)`` (True = a point):
masked points are never attended to (so PMA pools the real points only), and their outputs are
meaningless but finite. :class:`ISABNet` is a :class:`~setflow.nn.base.SetConditioner`.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from setflow.nn.base import ConditionerSpec, PointEmbedding, SetConditioner, attention_key_mask
from setflow.nn.mlp import get_activation
from setflow.registry import register_set_conditioner

__all__ = ["MAB", "ISAB", "PMA", "ISABNet", "PointEmbedding"]


class MAB(nn.Module):
    r"""Pre-norm multihead attention block: ``H = q + Attn(LN(q), LN(kv))``, ``H + FF(LN(H))``.

    Shapes:
        - q: ``(B, M, d)``, kv: ``(B, N, d)``, mask: ``(B, N)`` bool (True = attend), optional
        - output: ``(B, M, d)``
    """

    def __init__(self, d_model: int, num_heads: int = 4, dim_feedforward: int = 256, dropout: float = 0.0,
                 activation: str = "gelu") -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} must be divisible by num_heads={num_heads}")
        self.norm_q, self.norm_kv, self.norm_ff = nn.LayerNorm(d_model), nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(d_model, dim_feedforward), get_activation(activation),
                                nn.Linear(dim_feedforward, d_model))

    def forward(self, q: Tensor, kv: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        pad = None if mask is None else ~mask
        if pad is not None:  # padded rows zeroed: weight 0 times a NaN there would still be NaN
            kv = kv.masked_fill(pad.unsqueeze(-1), 0.0)
        kv_n = self.norm_kv(kv)
        h = q + self.attn(self.norm_q(q), kv_n, kv_n, key_padding_mask=pad, need_weights=False)[0]
        return h + self.ff(self.norm_ff(h))


class ISAB(nn.Module):
    r"""Induced set attention block with ``num_inducing`` learned inducing points (equivariant).

    Shapes:
        - x: ``(B, N, d)``, mask: ``(B, N)`` bool, optional
        - output: ``(B, N, d)``
    """

    def __init__(self, d_model: int, num_inducing: int = 32, num_heads: int = 4, dim_feedforward: int = 256,
                 dropout: float = 0.0, activation: str = "gelu") -> None:
        super().__init__()
        if num_inducing < 1:
            raise ValueError(f"num_inducing must be >= 1; got {num_inducing}")
        self.num_inducing = num_inducing
        self.inducing = nn.Parameter(torch.empty(num_inducing, d_model))
        nn.init.xavier_uniform_(self.inducing)
        self.mab_in = MAB(d_model, num_heads, dim_feedforward, dropout, activation)
        self.mab_out = MAB(d_model, num_heads, dim_feedforward, dropout, activation)

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        h = self.mab_in(self.inducing.expand(x.shape[0], -1, -1), x, mask)
        return self.mab_out(x, h)


class PMA(nn.Module):
    r"""Pooling by multihead attention: ``num_seeds`` learned seeds attend to the set (invariant).

    Shapes:
        - x: ``(B, N, d)``, mask: ``(B, N)`` bool, optional
        - output: ``(B, num_seeds, d)``
    """

    def __init__(self, d_model: int, num_seeds: int = 1, num_heads: int = 4, dim_feedforward: int = 256,
                 dropout: float = 0.0, activation: str = "gelu") -> None:
        super().__init__()
        self.seeds = nn.Parameter(torch.empty(num_seeds, d_model))
        nn.init.xavier_uniform_(self.seeds)
        self.mab = MAB(d_model, num_heads, dim_feedforward, dropout, activation)

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        return self.mab(self.seeds.expand(x.shape[0], -1, -1), x, attention_key_mask(mask))


@register_set_conditioner("isab")
class ISABNet(SetConditioner):
    r"""Set network of ISAB blocks: linear embedding, ``num_layers`` ISABs, LayerNorm, linear read-out.

    Without ``positional`` it is permutation-equivariant (for the coordinate-wise coupling);
    with it a learned embedding of each point's index (``max_len`` positions) is added, for
    the point-wise coupling of sorted sets. The read-out starts at exactly 0 (``zero_init``).
    A context ``(B, C)`` is projected and added to the embedding when ``context_features``
    is set (then every call needs it). With a ``mask`` the inducing points attend to the real
    points only (the :class:`~setflow.nn.base.SetConditioner` contract).

    Shapes:
        - x: ``(B, N, in_features)``, context: ``(B, C)`` with ``context_features``,
          mask: ``(B, N)`` bool, optional
        - output: ``(B, N, out_features)``

    Example:
        >>> ISABNet(3, 4, d_model=16, num_heads=2, num_inducing=8)(torch.randn(2, 100, 3)).shape
        torch.Size([2, 100, 4])
    """

    accepts_positions = True

    def __init__(self, in_features: int, out_features: int, d_model: int = 64, num_heads: int = 4,
                 num_layers: int = 2, num_inducing: int = 32, dim_feedforward: int = 256, dropout: float = 0.0,
                 positional: bool = False, max_len: Optional[int] = None, zero_init: bool = True,
                 context_features: Optional[int] = None, activation: str = "gelu") -> None:
        super().__init__(in_features, out_features, context_features=context_features, positional=positional,
                         max_len=max_len, zero_init=zero_init)
        self.d_model, self.num_layers, self.num_inducing = d_model, num_layers, num_inducing
        self.embed = PointEmbedding(in_features, d_model, positional, max_len, context_features)
        self.blocks = nn.ModuleList(ISAB(d_model, num_inducing, num_heads, dim_feedforward, dropout, activation)
                                    for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)
        self.out = self.readout(d_model)

    @classmethod
    def from_spec(cls, in_features: int, out_features: int, spec: ConditionerSpec, positional: bool = False,
                  max_len: Optional[int] = None) -> "ISABNet":
        """From ``spec``: ``d_model``, ``num_heads``, ``num_layers``, ``num_inducing``, ``dim_feedforward``,
        ``dropout``, ``context_features``."""
        return cls(in_features, out_features, d_model=spec.d_model, num_heads=spec.num_heads,
                   num_layers=spec.num_layers, num_inducing=spec.num_inducing, dim_feedforward=spec.dim_feedforward,
                   dropout=spec.dropout, positional=positional, max_len=max_len,
                   context_features=spec.context_features)

    def forward(self, x: Tensor, context: Optional[Tensor] = None, mask: Optional[Tensor] = None) -> Tensor:
        x, mask = self.check_input(x, context, mask)
        h = self.embed(x, context)
        key_mask = attention_key_mask(mask)
        for blk in self.blocks:
            h = blk(h, key_mask)
        return self.out(self.norm(h))

    def extra_repr(self) -> str:
        return (f"{self._contract_repr()}, d_model={self.d_model}, num_layers={self.num_layers}, "
                f"num_inducing={self.num_inducing}")
