"""Pre-norm transformer encoder over the points of a set (the SortFlow / PermuteFlow conditioner)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from setflow.nn import fast
from setflow.nn.attention import ATTENTION_IMPLS
from setflow.nn.base import ConditionerSpec, SetConditioner, attention_key_mask
from setflow.nn.fast import block_core, fused_block
from setflow.registry import register_set_conditioner

__all__ = ["SetTransformer", "SetTransformerBlock", "set_fused"]


class SetTransformerBlock(nn.Module):
    r"""One pre-norm transformer block (with an optional key mask).

    .. math::
        x &\leftarrow x + W_o \operatorname{MHA}(\operatorname{LN}_1(x)) \\
        x &\leftarrow x + W_2 \operatorname{GELU}(W_1 \operatorname{LN}_2(x))

    The query, key and value projections are one fused ``Linear(d_model, 3 d_model)``
    whose output is laid out as ``(3, num_heads, head_dim)``.

    Args:
        d_model: width ``d`` of the token features.
        num_heads: attention heads (must divide ``d_model``).
        dim_feedforward: hidden width of the feed-forward layer.
        dropout: dropout on the attention weights, after the feed-forward
            activation and on both residual branches (training only; on CPU the
            three non-attention dropouts use :func:`setflow.nn.cpu.dropout`).
        attention: attention kernel, ``"auto"``, ``"sdpa"`` or ``"bmm"``
            (see :mod:`setflow.nn.attention`; the maths is the same).

    Shapes:
        - x: ``(B, N, d)``, key_mask: ``(B, N)`` bool (True = may be attended to), optional
        - output: ``(B, N, d)``
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        dim_feedforward: int,
        dropout: float = 0.0,
        attention: str = "auto",
    ) -> None:
        super().__init__()
        if d_model % num_heads != 0:
            raise ValueError(f"d_model={d_model} must be divisible by num_heads={num_heads}")
        if attention not in ATTENTION_IMPLS:
            raise ValueError(f"unknown attention {attention!r}; expected one of {ATTENTION_IMPLS}")
        if attention == "bmm" and dropout > 0.0:
            raise ValueError("attention='bmm' has no attention dropout; use 'auto' or 'sdpa' with dropout > 0")
        self.d_model = d_model
        self.num_heads = num_heads
        self.dim_feedforward = dim_feedforward
        self.dropout = float(dropout)
        self.attention = attention
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.ff1 = nn.Linear(d_model, dim_feedforward)
        self.ff2 = nn.Linear(dim_feedforward, d_model)

    def reset_parameters(self) -> None:
        """PyTorch's default init for the linear maps; LayerNorms to the identity."""
        for m in (self.norm1, self.qkv, self.proj, self.norm2, self.ff1, self.ff2):
            m.reset_parameters()

    def weights(self) -> list[Tensor]:
        """The 12 weight tensors in :func:`setflow.nn.fast.block_core` order."""
        return [self.norm1.weight, self.norm1.bias, self.qkv.weight, self.qkv.bias, self.proj.weight, self.proj.bias,
                self.norm2.weight, self.norm2.bias, self.ff1.weight, self.ff1.bias, self.ff2.weight, self.ff2.bias]

    def forward(self, x: Tensor, key_mask: Optional[Tensor] = None) -> Tensor:
        # F.* calls with the modules' parameters (block_core) skip the module-call machinery on the hot path
        p = self.dropout if self.training else 0.0
        return block_core(x, self.weights(), self.num_heads, p, self.norm1.eps, attention=self.attention,
                          key_mask=key_mask)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, num_heads={self.num_heads}, dim_feedforward={self.dim_feedforward}, "
            f"dropout={self.dropout}, attention={self.attention!r}"
        )


@register_set_conditioner("transformer")
class SetTransformer(SetConditioner):
    r"""Transformer encoder on the points of a set: ``(B, N, D_in) -> (B, N, D_out)``.

    Linear embedding, ``num_layers`` pre-norm blocks (:class:`SetTransformerBlock`:
    multi-head self-attention and a GELU feed-forward layer, each in a residual
    branch), a final LayerNorm and a linear read-out.

    Without a positional embedding the network is permutation-**equivariant**:
    permuting the ``N`` input points permutes the output rows the same way, so a
    coordinate-wise coupling built on it treats the set as a set. With
    ``positional=True`` a learned embedding of the point index is added after the
    input embedding, for point-wise couplings on *sorted* sequences.

    The read-out is zero-initialised by default, so an affine / additive
    coupling that uses this network starts as the identity. It follows the
    :class:`~setflow.nn.base.SetConditioner` contract: ``forward(x, context=None, mask=None)``;
    padded keys (``mask`` False) are never attended to, and a masked batch always runs the
    eager route (:func:`setflow.nn.fast.route`).

    Args:
        in_features: features per input point ``D_in``.
        out_features: features per output point ``D_out``.
        d_model: token width.
        num_heads: attention heads (must divide ``d_model``).
        num_layers: transformer blocks.
        dim_feedforward: feed-forward hidden width.
        dropout: dropout probability (attention weights, feed-forward, residual branches).
        positional: add a learned positional embedding (breaks equivariance).
        max_len: largest ``N`` accepted with ``positional=True`` (required then).
        zero_init: zero the read-out's weight and bias.
        context_features: width ``C`` of an optional context; when set, a
            ``Linear(C, d_model)`` of the context is added to every token after
            the input embedding, and every call needs the context.
        attention: attention kernel (``"auto"``, ``"sdpa"``, ``"bmm"``); all
            compute the same function; ``"auto"`` is
            :func:`torch.nn.functional.scaled_dot_product_attention`.
        fused: counter-based hash dropout and fused kernels: on CPU (float32, no context) the
            whole network is one C++ call per direction (:func:`setflow.nn.fast.kernels.network`);
            otherwise every block goes through :func:`setflow.nn.fast.fused_block` (one C++
            call per block, :func:`setflow.nn.fast.kernels.block`, else the ``torch.compile``-d
            :func:`setflow.nn.fast.block_core`). Same maths, parameters and dropout masks on
            every fused route, fewer memory passes; the route is :func:`setflow.nn.fast.route`.
            Switch later with ``net.fused = True`` or :func:`set_fused`.
        backend: which fused route may run: ``"auto"`` (the C++ network / blocks where they
            apply), ``"blocks"`` (C++ blocks, no whole-network call) or ``"compiled"``
            (``torch.compile``-d blocks only); see :mod:`setflow.nn.fast.route`.

    Shapes:
        - x: ``(B, N, D_in)``
        - context: ``(B, C)`` or ``(B, N, C)``, with ``context_features``
        - mask: ``(B, N)`` bool, True = a real point, optional
        - output: ``(B, N, D_out)``

    Example:
        >>> net = SetTransformer(2, 4, d_model=16, num_heads=4, num_layers=1)
        >>> net(torch.randn(8, 25, 2)).shape
        torch.Size([8, 25, 4])
    """

    accepts_positions = True

    def __init__(
        self,
        in_features: int,
        out_features: int,
        d_model: int = 64,
        num_heads: int = 8,
        num_layers: int = 2,
        dim_feedforward: int = 256,
        dropout: float = 0.0,
        positional: bool = False,
        max_len: Optional[int] = None,
        zero_init: bool = True,
        context_features: Optional[int] = None,
        attention: str = "auto",
        fused: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__(in_features, out_features, context_features=context_features, positional=positional,
                         max_len=max_len, zero_init=zero_init)
        self.d_model = d_model
        self.num_heads = num_heads
        self.num_layers = num_layers
        self.dim_feedforward = dim_feedforward
        self.dropout = float(dropout)
        self.attention = attention
        self.fused = bool(fused)
        self.backend = fast.check_backend(backend)
        self.embed = nn.Linear(in_features, d_model)
        self.pos_embedding = nn.Parameter(torch.empty(max_len, d_model)) if positional else None
        self.context_proj = self.context_projection(d_model, bias=True)
        self.blocks = nn.ModuleList(
            SetTransformerBlock(d_model, num_heads, dim_feedforward, dropout, attention) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.out = self.readout(d_model)
        self.reset_parameters()

    @classmethod
    def from_spec(cls, in_features: int, out_features: int, spec: ConditionerSpec, positional: bool = False,
                  max_len: Optional[int] = None) -> "SetTransformer":
        """From ``spec``: ``d_model``, ``num_heads``, ``num_layers``, ``dim_feedforward``, ``dropout``,
        ``context_features``, ``fused``."""
        return cls(in_features, out_features, d_model=spec.d_model, num_heads=spec.num_heads,
                   num_layers=spec.num_layers, dim_feedforward=spec.dim_feedforward, dropout=spec.dropout,
                   positional=positional, max_len=max_len, context_features=spec.context_features, fused=spec.fused)

    def reset_parameters(self) -> None:
        """Default init for every layer, N(0, 0.02^2) positional embedding, zero read-out if ``zero_init``."""
        self.embed.reset_parameters()
        if self.pos_embedding is not None:
            nn.init.normal_(self.pos_embedding, std=0.02)
        if self.context_proj is not None:
            self.context_proj.reset_parameters()
        for block in self.blocks:
            block.reset_parameters()
        self.norm.reset_parameters()
        self.out.reset_parameters()
        if self.zero_init:
            self.zero_readout_(self.out)

    def forward(self, x: Tensor, context: Optional[Tensor] = None, mask: Optional[Tensor] = None) -> Tensor:
        x, mask = self.check_input(x, context, mask)
        route = fast.route(self, x, context, mask)
        if route.kind == "network":
            return self._network(x, route.weights)
        h = F.linear(x, self.embed.weight, self.embed.bias)
        h = self.add_positions(h, self.pos_embedding)
        h = self.add_context(h, context, self.context_proj)
        if route.kind == "blocks":
            h = self._fused_blocks(h, route.cpp_block)
        else:
            key_mask = attention_key_mask(mask)
            for block in self.blocks:
                h = block(h, key_mask)
        h = F.layer_norm(h, (self.d_model,), self.norm.weight, self.norm.bias, self.norm.eps)
        return F.linear(h, self.out.weight, self.out.bias)

    def network_weights(self, n: int) -> Optional[list[Tensor]]:
        """The flat weight list of :func:`setflow.nn.fast.kernels.network` for sets of ``n`` points,
        or ``None`` when the blocks' LayerNorm eps differ (the network kernel takes one)."""
        eps = {b.norm1.eps for b in self.blocks} | {b.norm2.eps for b in self.blocks}
        if len(eps) > 1:
            return None
        ws = [self.embed.weight, self.embed.bias]
        if self.pos_embedding is not None:
            ws.append(self.pos_embedding[:n])
        for block in self.blocks:
            ws.extend(block.weights())
        return ws + [self.norm.weight, self.norm.bias, self.out.weight, self.out.bias]

    def _network(self, x: Tensor, ws: list[Tensor]) -> Tensor:
        # the whole network as one C++ call per direction; same maths, seeds and masks as the blocks route
        p = self.dropout if self.training else 0.0
        eps = self.blocks[0].norm1.eps if self.num_layers else self.norm.eps
        return fast.kernels.network(x, ws, self.num_layers, self.num_heads, self.pos_embedding is not None, p, eps,
                                    self.norm.eps, self._seeds(p, x.device))

    def _seeds(self, p: float, device: torch.device) -> Optional[Tensor]:
        if p == 0.0:
            return None
        # one pair of int32 words per dropout site, from the global generator (seeded, resumable)
        return torch.randint(-2**31, 2**31 - 1, (self.num_layers, 4, 2), dtype=torch.int32, device=device)

    def _fused_blocks(self, h: Tensor, cpp_block: bool) -> Tensor:
        p = self.dropout if self.training else 0.0
        seeds = self._seeds(p, h.device)
        for i, block in enumerate(self.blocks):
            h = fused_block(h, block.weights(), self.num_heads, p, block.norm1.eps, None if seeds is None else seeds[i],
                            cpp_block)
        return h

    def extra_repr(self) -> str:
        s = (
            f"in_features={self.in_features}, out_features={self.out_features}, d_model={self.d_model}, "
            f"num_heads={self.num_heads}, num_layers={self.num_layers}, dim_feedforward={self.dim_feedforward}, "
            f"dropout={self.dropout}, positional={self.positional}"
        )
        if self.positional:
            s += f", max_len={self.max_len}"
        if self.context_features is not None:
            s += f", context_features={self.context_features}"
        if self.attention != "auto":
            s += f", attention={self.attention!r}"
        if self.fused:
            s += ", fused=True"
        if self.backend != "auto":
            s += f", backend={self.backend!r}"
        return s + f", zero_init={self.zero_init}"


def set_fused(module: nn.Module, enabled: bool = True, backend: Optional[str] = None) -> int:
    """Switch every :class:`SetTransformer` inside ``module`` to the fused path (or back).

    ``backend`` (one of :data:`setflow.nn.fast.BACKENDS`), when given, is set too. Returns how many networks
    were switched. The maths and the parameters are unchanged; only dropout's random stream differs
    (hash masks instead of ``mt19937`` draws).
    """
    if backend is not None:
        fast.check_backend(backend)
    count = 0
    for m in module.modules():
        if isinstance(m, SetTransformer):
            m.fused = bool(enabled)
            if backend is not None:
                m.backend = backend
            count += 1
    return count
