"""Multi-head self-attention kernels for the set conditioners.

Two implementations of exactly the same maths,
``softmax(q k^T / sqrt(hd)) v`` per head, computed from one fused ``qkv`` tensor:

``"sdpa"``
    :func:`torch.nn.functional.scaled_dot_product_attention` on ``(B, H, N, hd)``
    views. The right choice on GPUs (flash / memory-efficient kernels) and the
    only one that applies attention dropout.
``"bmm"``
    A hand-written autograd function built from three batched GEMMs per pass.
    On CPU with small head dimensions (``hd = 8`` in the SortFlow reference
    model) PyTorch's CPU flash kernel and its generic ``softmax`` spend most of
    their time in short inner loops (a row max over 25 entries costs more than
    the GEMMs). This kernel keeps every heavy op on contiguous memory: the
    scores are stored *transposed* (keys x queries) so the softmax reductions run
    over a non-innermost axis and vectorise across queries, the row maximum is
    a short tree of elementwise ``maximum`` ops, the softmax backward uses the
    ``rowsum(dO * O)`` identity, and the gradient of ``qkv`` is assembled in a
    single buffer. It also shows up in ``FlopCounterMode`` (its GEMMs are plain
    ``bmm``), which the CPU flash kernel does not.

``"auto"`` picks ``"bmm"`` for CPU tensors without attention dropout and
``"sdpa"`` otherwise. ``tests/test_nn.py`` checks both against a plain
reference implementation to 1e-10 in float64.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["ATTENTION_IMPLS", "self_attention"]

ATTENTION_IMPLS = ("auto", "sdpa", "bmm")


class _BmmSelfAttention(torch.autograd.Function):
    """Multi-head self-attention from a fused ``qkv`` tensor, with a hand-written backward.

    Forward: one copy of ``qkv`` into head-major ``(3, B*H, N, hd)``, then
    ``S = q k^T * scale`` (``baddbmm``), ``P = softmax(S)``, ``O = P v`` (``bmm``).
    Backward: ``dV = P^T dO``, ``dP = dO V^T``, ``dS = softmax_backward(dP, P)``,
    ``dQ = dS K * scale``, ``dK = dS^T Q * scale``, written straight into one
    head-major gradient buffer that is permuted back to the ``qkv`` layout once.

    Shapes:
        - qkv: ``(B, N, 3 * D)`` laid out as ``(B, N, 3, H, hd)`` (q, k, v; heads)
        - output: ``(B, N, D)`` (heads concatenated, ready for the output projection)
    """

    @staticmethod
    def forward(ctx, qkv: Tensor, num_heads: int) -> Tensor:  # type: ignore[override]
        B, N, three_d = qkv.shape
        D = three_d // 3
        hd = D // num_heads
        BH = B * num_heads
        scale = 1.0 / math.sqrt(hd)
        heads = qkv.view(B, N, 3, num_heads, hd).permute(2, 0, 3, 1, 4).contiguous()
        q, k, v = heads.view(3, BH, N, hd).unbind(0)
        scores = torch.baddbmm(qkv.new_empty(()), q, k.transpose(1, 2), beta=0.0, alpha=scale)
        p = torch.softmax(scores, dim=-1)
        out = torch.bmm(p, v)  # (BH, N, hd)
        ctx.save_for_backward(heads, p)
        ctx.num_heads = num_heads
        ctx.scale = scale
        return out.view(B, num_heads, N, hd).transpose(1, 2).reshape(B, N, D)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        heads, p = ctx.saved_tensors
        scale = ctx.scale
        _, B, H, N, hd = heads.shape
        BH = B * H
        q, k, v = heads.view(3, BH, N, hd).unbind(0)
        go = grad.reshape(B, N, H, hd).transpose(1, 2).reshape(BH, N, hd)
        grad_heads = torch.empty_like(heads)
        gq, gk, gv = grad_heads.view(3, BH, N, hd).unbind(0)
        torch.bmm(p.transpose(1, 2), go, out=gv)  # dV = P^T dO
        dp = torch.bmm(go, v.transpose(1, 2))  # dP = dO V^T
        ds = torch._softmax_backward_data(dp, p, -1, p.dtype)  # P * (dP - rowsum(dP * P))
        torch.baddbmm(gq, ds, k, beta=0.0, alpha=scale, out=gq)  # dQ = dS K * scale
        torch.baddbmm(gk, ds.transpose(1, 2), q, beta=0.0, alpha=scale, out=gk)  # dK = dS^T Q * scale
        return grad_heads.permute(1, 3, 0, 2, 4).reshape(B, N, 3 * H * hd), None


def _sdpa_self_attention(qkv: Tensor, num_heads: int, dropout_p: float) -> Tensor:
    B, N, three_d = qkv.shape
    D = three_d // 3
    q, k, v = qkv.view(B, N, 3, num_heads, D // num_heads).permute(2, 0, 3, 1, 4).unbind(0)
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    return out.transpose(1, 2).reshape(B, N, D)


def self_attention(
    qkv: Tensor,
    num_heads: int,
    dropout_p: float = 0.0,
    impl: str = "auto",
) -> Tensor:
    """Multi-head self-attention (no mask) from a fused ``qkv`` projection.

    Computes, for every head ``h``, ``softmax(q_h k_h^T / sqrt(hd)) v_h`` and
    concatenates the heads. The output is permutation-equivariant in the
    points: permuting the ``N`` rows of ``qkv`` permutes the output rows.

    Args:
        qkv: fused projections, last axis laid out as ``(3, num_heads, hd)``.
        num_heads: number of heads ``H``; ``D = 3 * H * hd`` / 3.
        dropout_p: attention dropout probability (pass 0 in eval mode).
        impl: ``"auto"``, ``"sdpa"`` or ``"bmm"`` (see the module docstring).

    Shapes:
        - qkv: ``(B, N, 3 * D)``
        - output: ``(B, N, D)``
    """
    if impl == "auto":
        impl = "bmm" if (qkv.device.type == "cpu" and dropout_p == 0.0) else "sdpa"
    if impl == "bmm":
        if dropout_p != 0.0:
            raise ValueError("the 'bmm' attention kernel has no dropout; use impl='sdpa' or 'auto'")
        return _BmmSelfAttention.apply(qkv.contiguous(), num_heads)
    if impl == "sdpa":
        return _sdpa_self_attention(qkv, num_heads, dropout_p)
    raise ValueError(f"unknown attention impl {impl!r}; expected one of {ATTENTION_IMPLS}")
