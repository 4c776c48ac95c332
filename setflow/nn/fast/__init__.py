"""The CPU fast path of :class:`setflow.nn.SetTransformer`, fenced off from the rest of ``setflow.nn``.

- :mod:`~setflow.nn.fast.hashing`: counter-based hash dropout (masks from a seed, recomputed in backward);
- :mod:`~setflow.nn.fast.kernels`: build (``csrc/cpu_kernels.cpp``, ABI-checked at load) and the C++
  ops: attention, bias + GELU + dropout, a whole block, a whole network;
- :mod:`~setflow.nn.fast.fused`: a block as a function of its weights (:func:`block_core`), compiled or
  in C++ (:func:`fused_block`);
- :mod:`~setflow.nn.fast.route`: the one decision which of these a forward runs (:func:`route`).

Imports point one way: ``setflow.nn.set_transformer`` imports this package, never the reverse.
"""

from setflow.nn.fast import kernels
from setflow.nn.fast.fused import block_core, compiled_block_core, fused_block
from setflow.nn.fast.hashing import MASK_BITS, hash_dropout, hash_keep_mask, keep_levels
from setflow.nn.fast.route import BACKENDS, Route, check_backend, route

__all__ = ["BACKENDS", "MASK_BITS", "Route", "block_core", "check_backend", "compiled_block_core", "fused_block",
           "hash_dropout", "hash_keep_mask", "keep_levels", "kernels", "route"]
