"""Fused set-transformer blocks: counter-based hash dropout and ``torch.compile``-d blocks.

Why this exists. With the paper's dropout (0.2 at four sites per block) a SortFlow
training step on CPU spends most of its time outside the GEMMs: PyTorch's CPU
dropout draws one serial ``mt19937`` number per element, SDPA falls back to its
unfused math path when attention dropout is on, and LayerNorm / GELU / residual
adds each make their own pass over ``(B, N, 256)`` activations. Compiling each
block with Inductor fuses those elementwise passes into a few C++ loops, but
Inductor's own CPU random numbers (a scalar Philox call per element) would be the
new bottleneck. So the dropout masks here come from a **counter-based hash**:

    mask[i] = 1[top 24 bits of hash32(i, seed) < round(keep * 2**24)] / keep'

written in plain int32 tensor ops (multiply, xor, shift, and), which Inductor
vectorises and fuses into the loop that consumes the mask; the backward
recomputes it from the same seed (never stored). ``keep' = round(keep * 2**24) / 2**24``,
so the output is exactly unbiased, ``E[mask] = 1``. The per-call seeds are drawn
from PyTorch's global generator, so ``torch.manual_seed`` makes runs reproducible
and checkpointed RNG states resume exactly. Eager and compiled evaluations of
:func:`hash_keep_mask` give bit-identical masks (tested).

What is computed is the same architecture as :class:`~setflow.nn.SetTransformer`'s
eager path, the same FLOPs. On CPU in float32 (``d_model`` and the feed-forward width
multiples of 16, head dim 4, 8 or 16, a BLAS found in PyTorch) a fused set transformer
without context is one C++ call per direction, :func:`setflow.nn.fast.kernels.network` (input
layer, blocks and read-out per chunk of sets in a core's cache), and a fused block on its
own is one, :func:`setflow.nn.fast.kernels.block`. Otherwise the block
is ``torch.compile``-d, and its attention is, in order of preference:

- on CPU (float32, head dim 4, 8 or 16), the C++ kernel of :mod:`setflow.nn.fast.kernels`:
  one pass per head over the ``N x N`` weights in the L1 cache, with the same hash masks,
  forward and backward;
- with attention dropout, written out as ``softmax(q k^T / sqrt(hd))``, dropout, ``@ v``
  (the only way to drop attention weights with a custom mask; SDPA's own CPU dropout path
  is this same unfused maths);
- without dropout, :func:`~torch.nn.functional.scaled_dot_product_attention`.

The ``attention="bmm"`` kernel choice of a network applies to its eager path only.

Use ``SetTransformer(..., fused=True)`` (or :func:`setflow.nn.set_fused`); the route each
forward takes is :func:`setflow.nn.fast.route`. The first call per
input shape compiles (tens of seconds on 2 cores; Inductor caches the result on
disk). Needs a C++ compiler, as every Inductor CPU build does.
"""

from __future__ import annotations

import math
import warnings
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor

from setflow.nn.fast import kernels
from setflow.nn.fast.hashing import MASK_BITS, hash_dropout, hash_keep_mask
from setflow.nn.attention import self_attention
from setflow.nn.cpu import dropout as cpu_dropout

__all__ = ["hash_keep_mask", "hash_dropout", "block_core", "compiled_block_core", "fused_block", "MASK_BITS"]

def _linear_unfused_bias(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    # ``x @ W^T + b`` as a GEMM plus an add that Inductor fuses into the next elementwise loop:
    # MKL's addmm (bias broadcast into the output first) ran at ~0.6-0.8x the plain GEMM rate here.
    return torch.matmul(x, weight.t()) + bias


def _attention(qkv: Tensor, num_heads: int, p: float, seed: Optional[Tensor], impl: str,
               key_mask: Optional[Tensor] = None) -> Tensor:
    if impl == "kernel":  # the C++ kernel (setflow.nn.fast.kernels): same maths and masks, one pass per head
        if key_mask is not None:
            raise ValueError("the C++ attention kernel takes no key mask; masked sets run the eager route")
        return kernels.hash_attention(qkv, num_heads, p, seed)
    if p == 0.0 or seed is None:
        return self_attention(qkv, num_heads, p, impl, key_mask=key_mask)
    B, N, three_d = qkv.shape
    D = three_d // 3
    hd = D // num_heads
    q, k, v = qkv.view(B, N, 3, num_heads, hd).permute(2, 0, 3, 1, 4).unbind(0)
    scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(hd))
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    out = torch.matmul(hash_dropout(torch.softmax(scores, dim=-1), p, seed), v)
    return out.transpose(1, 2).reshape(B, N, D)


def block_core(
    h: Tensor,
    w: Sequence[Tensor],
    num_heads: int,
    p: float,
    eps: float,
    seed: Optional[Tensor] = None,
    attention: str = "auto",
    key_mask: Optional[Tensor] = None,
) -> Tensor:
    r"""One pre-norm transformer block as a function of its 12 weight tensors.

    .. math::
        h &\leftarrow h + \operatorname{drop}(W_o \operatorname{MHA}(\operatorname{LN}_1(h))) \\
        h &\leftarrow h + \operatorname{drop}(W_2 \operatorname{drop}(\operatorname{GELU}(W_1 \operatorname{LN}_2(h))))

    ``w`` is ``ln1 (w, b), qkv (w, b), proj (w, b), ln2 (w, b), ff1 (w, b), ff2 (w, b)``.
    ``attention`` is a :mod:`setflow.nn.attention` kernel name, or ``"kernel"`` for the
    C++ kernels of :mod:`setflow.nn.fast.kernels` (the attention, and bias + GELU + dropout of the
    feed-forward layer when its width is a multiple of 16; same hash masks; the fused path
    picks them on CPU).
    Dropout (probability ``p``; pass 0 in eval mode) acts on the attention weights,
    the attention branch, the feed-forward hidden layer and the feed-forward branch.
    With ``seed`` (int32, ``(4, 2)``: one pair per site) the masks are
    :func:`hash_keep_mask` masks and the attention is the C++ kernel or written out;
    without it, the attention dropout is SDPA's and the others use :func:`setflow.nn.cpu.dropout`.
    ``key_mask`` ``(B, N)`` bool (True = a key; not with ``"kernel"``): padded keys are never attended to.
    """
    d = h.shape[-1]
    hashed = seed is not None and p > 0.0
    lin = _linear_unfused_bias if torch.compiler.is_compiling() else F.linear

    def drop(t: Tensor, site: int) -> Tensor:
        if p == 0.0:
            return t
        return hash_dropout(t, p, seed[site]) if hashed else cpu_dropout(t, p)

    a = F.layer_norm(h, (d,), w[0], w[1], eps)
    a = _attention(lin(a, w[2], w[3]), num_heads, p, seed[0] if hashed else None, attention, key_mask)
    h = h + drop(lin(a, w[4], w[5]), 1)
    f = F.layer_norm(h, (d,), w[6], w[7], eps)
    if attention == "kernel" and w[8].shape[0] % kernels.GELU_WIDTH_MULTIPLE == 0:  # one C++ pass
        f = kernels.bias_gelu_dropout(torch.matmul(f, w[8].t()), w[9], p, seed[2] if hashed else None)
    else:
        f = drop(F.gelu(lin(f, w[8], w[9])), 2)
    return h + drop(lin(f, w[10], w[11]), 3)


_COMPILED_BLOCK = None
_COMPILE_FAILED = False


def compiled_block_core():
    """The process-wide ``torch.compile``-d :func:`block_core` (compiled lazily, static shapes).

    One graph per block rather than per network: on CPU, Inductor's fusion across the
    two blocks of a conditioner produced a slower attention kernel (docs/performance.md).
    """
    global _COMPILED_BLOCK
    if _COMPILED_BLOCK is None:
        import torch._dynamo

        # one graph per (shape, mode) of each conditioner kind; the default limit of 8 would fall back to eager
        cfg = torch._dynamo.config
        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(cfg, name):
                setattr(cfg, name, max(getattr(cfg, name), 64))
        _COMPILED_BLOCK = torch.compile(block_core, dynamic=False)
    return _COMPILED_BLOCK


def fused_block(h: Tensor, w: Sequence[Tensor], num_heads: int, p: float, eps: float,
                seed: Optional[Tensor], cpp_block: bool = True) -> Tensor:
    """:func:`block_core` with hash dropout: the C++ block where it applies, else compiled.

    The C++ block (:func:`setflow.nn.fast.kernels.block`) runs when ``cpp_block`` is set,
    :func:`~setflow.nn.fast.kernels.block_supports` holds and the dropout, if any, has hash seeds;
    otherwise :func:`compiled_block_core`, and eager ``block_core`` if compiling fails. That
    fallback (warned once; e.g. no C++ compiler for Inductor) computes exactly the same function
    with the same hash masks, only slower; a genuine error (bad shapes) is raised again by the
    eager call.
    """
    global _COMPILE_FAILED
    if cpp_block and (p == 0.0 or seed is not None) and kernels.block_supports(h, w, num_heads):
        return kernels.block(h, w, num_heads, p, eps, seed)  # the whole block in C++ (chunks of sets in cache)
    attention = "kernel" if _kernel_ok(h, num_heads) else "auto"
    if not _COMPILE_FAILED:
        try:
            return compiled_block_core()(h, w, num_heads, p, eps, seed, attention)
        except Exception as e:  # noqa: BLE001 - any backend failure; the eager call below re-raises real errors
            _COMPILE_FAILED = True
            warnings.warn(f"setflow: torch.compile of the fused set-transformer blocks failed ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}); running them eagerly with the same hash "
                          "dropout", RuntimeWarning, stacklevel=2)
    return block_core(h, w, num_heads, p, eps, seed, attention)


def _kernel_ok(h: Tensor, num_heads: int) -> bool:
    if not kernels.heads_supported(h, h.shape[-1], num_heads):
        return False
    global _KERNEL_WARNED
    if not kernels.available():
        if not _KERNEL_WARNED:
            _KERNEL_WARNED = True
            warnings.warn(f"setflow: the C++ attention kernel is not available ({kernels.last_error()}); the fused "
                          "blocks use the written-out attention (same maths, slower)", RuntimeWarning, stacklevel=3)
        return False
    return True


_KERNEL_WARNED = False
