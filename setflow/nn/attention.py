"""Multi-head self-attention kernels for the set conditioners.

Two implementations of exactly the same maths,
``softmax(q k^T / sqrt(hd)) v`` per head, computed from one fused ``qkv`` tensor:

``"sdpa"``
    :func:`torch.nn.functional.scaled_dot_product_attention` on ``(B, H, N, hd)``
    views. The right choice on GPUs (flash / memory-efficient kernels) and the
    only one that applies attention dropout.
``"bmm"``
    A small autograd function: one copy of ``qkv`` into head-major layout, a
    ``baddbmm`` for the scores, ``softmax``, a ``bmm`` for the output, and a
    hand-written backward (four batched GEMMs and one fused softmax backward)
    that writes the q/k/v gradients into a single buffer. No attention dropout.
    Its GEMMs are plain ``bmm`` ops, so ``FlopCounterMode`` counts them.

``"auto"`` is ``"sdpa"`` on every device (the conditioners' attention goes through
``scaled_dot_product_attention``), except when training with attention dropout on the CPU: there
SDPA falls back to its unfused math path, and the attention is written out with
:func:`setflow.nn.cpu.dropout` instead (:data:`CPU_WRITTEN_OUT_DROPOUT`); ``"bmm"`` stays available by name. Importing this
module registers ``FlopCounterMode`` formulas for the fused CPU kernel (see
:func:`_register_cpu_sdpa_flops`), so both kernels count the same FLOPs. ``tests/test_nn.py`` checks both against a plain
reference implementation to 1e-10 in float64.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from setflow.nn.cpu import dropout as cpu_dropout

__all__ = ["ATTENTION_IMPLS", "self_attention"]

ATTENTION_IMPLS = ("auto", "sdpa", "bmm")


def _register_cpu_sdpa_flops() -> None:
    """Teach ``FlopCounterMode`` the FLOPs of PyTorch's fused CPU attention kernel.

    ``torch.utils.flop_counter`` has formulas for the CUDA flash / efficient / cuDNN
    kernels but not for ``_scaled_dot_product_flash_attention_for_cpu`` (and its
    backward), so CPU attention counted as zero. The formulas are PyTorch's own
    ``2 * B * H * N * M * hd`` per attention matmul: two forward (``q k^T``, ``p v``) and
    the four of the backward (``dV``, ``dP``, ``dQ``, ``dK``), exactly what the ``bmm`` path
    counts. The kernel's recomputation of ``q k^T`` in the backward is an implementation
    detail and is not counted (PyTorch's ``sdpa_backward_flop_count`` would add it), so the
    count is the architecture's whichever kernel runs.
    """
    from torch.utils import flop_counter as fc

    ops = torch.ops.aten
    fwd = getattr(ops, "_scaled_dot_product_flash_attention_for_cpu", None)
    bwd = getattr(ops, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if fwd is None or bwd is None or not hasattr(fc, "register_flop_formula"):
        return
    if fwd not in fc.flop_registry and fwd.default not in fc.flop_registry:

        @fc.register_flop_formula(fwd, get_raw=True)
        def _cpu_flash_fwd(query, key, value, *args, out_val=None, **kwargs) -> int:
            return fc.sdpa_flop_count(query.shape, key.shape, value.shape)

    if bwd not in fc.flop_registry and bwd.default not in fc.flop_registry:

        @fc.register_flop_formula(bwd, get_raw=True)
        def _cpu_flash_bwd(grad_out, query, key, value, *args, out_val=None, **kwargs) -> int:
            return 2 * fc.sdpa_flop_count(query.shape, key.shape, value.shape)


_register_cpu_sdpa_flops()


class _BmmSelfAttention(torch.autograd.Function):
    """Multi-head self-attention from a fused ``qkv`` tensor, with a hand-written backward.

    Forward: one copy of ``qkv`` into head-major ``(3, B*H, N, hd)``, then
    ``S = q k^T * scale`` (``baddbmm``), ``P = softmax(S)``, ``O = P v`` (``bmm``).
    Backward: ``dV = P^T dO``, ``dP = dO V^T``, ``dS = softmax_backward(dP, P)``,
    ``dQ = dS K * scale``, ``dK = dS^T Q * scale``, stacked and permuted back to
    the ``qkv`` layout. Only functional ops (no ``out=``), so ``torch.func``
    transforms (``vmap``, ``jacrev``) and vectorised Jacobians work.

    Shapes:
        - qkv: ``(B, N, 3 * D)`` laid out as ``(B, N, 3, H, hd)`` (q, k, v; heads)
        - output: ``(B, N, D)`` (heads concatenated, ready for the output projection)
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(qkv: Tensor, num_heads: int, key_mask: Optional[Tensor] = None  # type: ignore[override]
                ) -> tuple[Tensor, Tensor, Tensor]:
        B, N, three_d = qkv.shape
        D = three_d // 3
        hd = D // num_heads
        BH = B * num_heads
        # one copy into head-major layout (clone: never an alias of qkv, even when B = N = 1)
        heads = qkv.view(B, N, 3, num_heads, hd).permute(2, 0, 3, 1, 4).clone(memory_format=torch.contiguous_format)
        heads = heads.view(3, BH, N, hd)
        q, k, v = heads.unbind(0)
        scores = torch.baddbmm(qkv.new_empty(()), q, k.transpose(1, 2), beta=0.0, alpha=1.0 / math.sqrt(hd))
        if key_mask is not None:  # padded keys get weight exactly 0 (the backward below is unchanged)
            scores = scores.view(B, num_heads, N, N).masked_fill(~key_mask[:, None, None, :], float("-inf"))
            scores = scores.view(BH, N, N)
        p = torch.softmax(scores, dim=-1)
        out = torch.bmm(p, v).view(B, num_heads, N, hd).transpose(1, 2).reshape(B, N, D)
        return out, heads, p

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
        num_heads = inputs[1]
        _, heads, p = output
        ctx.save_for_backward(heads, p)
        ctx.num_heads = num_heads
        ctx.mark_non_differentiable(heads, p)
        ctx.set_materialize_grads(False)  # no zero tensors for the two auxiliary outputs

    @staticmethod
    @once_differentiable
    def backward(  # type: ignore[override]
        ctx, grad: Optional[Tensor], *_aux: Optional[Tensor]
    ) -> tuple[Optional[Tensor], None, None]:
        heads, p = ctx.saved_tensors
        H = ctx.num_heads
        if grad is None:
            return None, None, None
        _, BH, N, hd = heads.shape
        B = BH // H
        scale = 1.0 / math.sqrt(hd)
        q, k, v = heads.unbind(0)
        go = grad.reshape(B, N, H, hd).transpose(1, 2).reshape(BH, N, hd)
        gv = torch.bmm(p.transpose(1, 2), go)  # dV = P^T dO
        dp = torch.bmm(go, v.transpose(1, 2))  # dP = dO V^T
        ds = torch._softmax_backward_data(dp, p, -1, p.dtype)  # P * (dP - rowsum(dP * P))
        gq = torch.bmm(ds, k).mul_(scale)  # dQ = dS K * scale
        gk = torch.bmm(ds.transpose(1, 2), q).mul_(scale)  # dK = dS^T Q * scale
        grad_heads = torch.stack([gq, gk, gv]).view(3, B, H, N, hd)
        return grad_heads.permute(1, 3, 0, 2, 4).reshape(B, N, 3 * H * hd), None, None


def _sdpa_self_attention(qkv: Tensor, num_heads: int, dropout_p: float, key_mask: Optional[Tensor] = None) -> Tensor:
    B, N, three_d = qkv.shape
    D = three_d // 3
    q, k, v = qkv.view(B, N, 3, num_heads, D // num_heads).permute(2, 0, 3, 1, 4).unbind(0)
    if key_mask is None:
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :], dropout_p=dropout_p)
    return out.transpose(1, 2).reshape(B, N, D)


#: training on CPU with attention dropout and ``impl="auto"``: write the attention out (scores,
#: softmax, :func:`setflow.nn.cpu.dropout`, ``@ v``) instead of calling SDPA. With dropout, PyTorch's
#: CPU SDPA runs its unfused math path anyway, plus a "safe" softmax (an ``isneginf``/``all``/``where``
#: pass over the ``(B, H, N, N)`` weights) and a ``bernoulli_`` draw per weight; the written-out
#: attention is the same maths with the cheaper CPU dropout mask. ``False`` restores SDPA (for A/B).
CPU_WRITTEN_OUT_DROPOUT = True


def _written_out_self_attention(qkv: Tensor, num_heads: int, dropout_p: float,
                                key_mask: Optional[Tensor] = None) -> Tensor:
    B, N, three_d = qkv.shape
    D = three_d // 3
    hd = D // num_heads
    q, k, v = qkv.view(B, N, 3, num_heads, hd).permute(2, 0, 3, 1, 4).unbind(0)
    scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(hd))
    if key_mask is not None:  # every row has a True key (attention_key_mask), so no row is all -inf
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    out = torch.matmul(cpu_dropout(torch.softmax(scores, dim=-1), dropout_p), v)
    return out.transpose(1, 2).reshape(B, N, D)


def self_attention(
    qkv: Tensor,
    num_heads: int,
    dropout_p: float = 0.0,
    impl: str = "auto",
    key_mask: Optional[Tensor] = None,
) -> Tensor:
    """Multi-head self-attention from a fused ``qkv`` projection, with an optional key mask.

    Computes, for every head ``h``, ``softmax(q_h k_h^T / sqrt(hd)) v_h`` and
    concatenates the heads. The output is permutation-equivariant in the
    points: permuting the ``N`` rows of ``qkv`` (and of ``key_mask``) permutes the output rows.
    With ``key_mask`` the keys where it is False get weight exactly 0 in every row, so no
    output depends on them (every row needs at least one True key:
    :func:`setflow.nn.base.attention_key_mask` makes sure of it).

    Args:
        qkv: fused projections, last axis ``3 * D`` laid out as ``(3, num_heads, hd)``
            with ``D = num_heads * hd``.
        num_heads: number of heads ``H``.
        dropout_p: attention dropout probability (pass 0 in eval mode).
        impl: ``"auto"``, ``"sdpa"`` or ``"bmm"`` (see the module docstring).
            ``"bmm"`` supports first-order gradients only (no ``create_graph``
            double backward, no ``torch.func`` transforms); use ``"sdpa"`` for those.
        key_mask: ``(B, N)`` bool, True = a key that may be attended to; ``None`` = all.

    Shapes:
        - qkv: ``(B, N, 3 * D)``
        - key_mask: ``(B, N)``, optional
        - output: ``(B, N, D)``
    """
    if qkv.dim() != 3 or qkv.shape[-1] % (3 * num_heads) != 0:
        raise ValueError(f"qkv must have shape (B, N, 3 * num_heads * hd) with num_heads={num_heads}; "
                         f"got {tuple(qkv.shape)}")
    if key_mask is not None and (key_mask.dtype != torch.bool or key_mask.shape != qkv.shape[:2]):
        raise ValueError(f"key_mask must be a bool tensor of shape {tuple(qkv.shape[:2])} (True = attend); "
                         f"got {tuple(key_mask.shape)} {key_mask.dtype}")
    if impl == "auto":
        if dropout_p > 0.0 and CPU_WRITTEN_OUT_DROPOUT and qkv.device.type == "cpu" and qkv.is_floating_point():
            return _written_out_self_attention(qkv, num_heads, dropout_p, key_mask)
        impl = "sdpa"
    if impl == "bmm":
        if dropout_p != 0.0:
            raise ValueError("the 'bmm' attention kernel has no dropout; use impl='sdpa' or 'auto'")
        return _BmmSelfAttention.apply(qkv.contiguous(), num_heads, key_mask)[0]
    if impl == "sdpa":
        return _sdpa_self_attention(qkv, num_heads, dropout_p, key_mask)
    raise ValueError(f"unknown attention impl {impl!r}; expected one of {ATTENTION_IMPLS}")
