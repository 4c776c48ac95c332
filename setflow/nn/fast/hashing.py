"""Counter-based hash dropout: masks from a 32-bit hash of the element index and a seed.

``mask[i] = 1[top 24 bits of hash32(i, seed) < round(keep * 2**24)] / keep'`` in plain int32
tensor ops (multiply, xor, shift, and), so Inductor vectorises and fuses it and the backward
recomputes it from the seed; ``keep' = round(keep * 2**24) / 2**24`` makes the output exactly
unbiased, ``E[mask] = 1``. The C++ kernels (:mod:`setflow.nn.fast.kernels`) draw the same masks
bit for bit.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.utils.checkpoint
from torch import Tensor

__all__ = ["MASK_BITS", "hash_dropout", "hash_keep_mask", "keep_levels"]

#: resolution of the keep probability: ``keep`` is rounded to a multiple of ``2**-MASK_BITS``
MASK_BITS = 24
# int32 constants of the hash (two's complement views of the 32-bit multipliers)
_GOLDEN = -1640531535  # 0x9E3779B1
_MIX1 = 0x7FEB352D  # C. Wellons' "lowbias32" multipliers
_MIX2 = -2073254261  # 0x846CA68B
_LOW16 = 0xFFFF
_LOW17 = 0x1FFFF
_LOW_MASK_BITS = (1 << MASK_BITS) - 1


def keep_levels(keep: float) -> int:
    """``round(keep * 2**MASK_BITS)``: the integer keep threshold of a :func:`hash_keep_mask`."""
    return int(round(keep * 2**MASK_BITS))


def hash_keep_mask(shape: Sequence[int], keep: float, seed: Tensor) -> Tensor:
    """Boolean keep mask of ``shape`` from a counter-based hash of the element index and ``seed``.

    ``seed`` is an int32 tensor of two words. Element ``i`` (row-major) is kept when
    the top ``MASK_BITS`` bits of a 32-bit hash fall below ``round(keep * 2**MASK_BITS)``:
    ``x = (i * 0x9E3779B1 + seed[0]) ^ seed[1]``, then two xorshift-multiply rounds and a
    final xorshift (so a change of either seed word, in any bit, reaches every output bit).
    Arithmetic wraps modulo ``2**32`` and the shifts are made logical with masks, so
    the result is the same in eager mode and in Inductor-generated code.
    """
    if seed.dtype != torch.int32 or seed.numel() != 2:
        raise ValueError(f"seed must be an int32 tensor of 2 words, got {seed.dtype} with {seed.numel()} entries")
    n = math.prod(shape)
    x = torch.arange(n, dtype=torch.int32, device=seed.device).view(tuple(shape))
    x = (x * _GOLDEN + seed[0]) ^ seed[1]
    x = (x ^ ((x >> 16) & _LOW16)) * _MIX1
    x = (x ^ ((x >> 15) & _LOW17)) * _MIX2
    x = x ^ ((x >> 16) & _LOW16)
    return ((x >> (32 - MASK_BITS)) & _LOW_MASK_BITS) < keep_levels(keep)  # the top bits: the best mixed


def hash_dropout(x: Tensor, p: float, seed: Tensor) -> Tensor:
    """Inverted dropout with a :func:`hash_keep_mask`: kept entries scaled by ``1 / keep'``, unbiased."""
    if p == 0.0:
        return x
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    levels = keep_levels(1.0 - p)
    if levels >= 2**MASK_BITS:
        return x
    if torch.compiler.is_compiling():
        # The multiplier as a recompute-tagged (checkpointed) region: the backward recomputes it
        # from the seed inside its own fused loops. Untagged, the partitioner kept some masks as
        # bool tensors for the backward, and Inductor's scalar bool conversion made each such
        # forward loop several times slower.
        return x * torch.utils.checkpoint.checkpoint(_hash_multiplier, x.shape, levels, seed, use_reentrant=False)
    return x * _hash_multiplier(x.shape, levels, seed)


def _hash_multiplier(shape: Sequence[int], levels: int, seed: Tensor) -> Tensor:
    """``2**MASK_BITS / levels`` where :func:`hash_keep_mask` keeps, else 0 (float32)."""
    return torch.where(hash_keep_mask(shape, levels / 2**MASK_BITS, seed), 2**MASK_BITS / levels, 0.0)
