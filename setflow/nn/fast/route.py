"""Which way a :class:`setflow.nn.SetTransformer` forward runs: one decision, :func:`route`.

The set transformer asks :func:`route` and runs what it returns; nothing here imports the set
transformer (it is read through its public attributes: ``fused``, ``backend``, ``context_proj``,
``pos_embedding``, ``num_layers``, ``num_heads``, ``blocks``, ``norm`` and ``network_weights(n)``).

Backends (the ``backend`` argument of the network; only read when ``fused`` is on):

- ``"auto"``: on CPU in float32 without a context, the whole network as one C++ call per
  direction (:func:`setflow.nn.fast.kernels.network`); otherwise every block through
  :func:`setflow.nn.fast.fused.fused_block` with the C++ block where it applies.
- ``"blocks"``: every block through :func:`~setflow.nn.fast.fused.fused_block` with the C++
  block where it applies, never the whole-network call (for A/B and tests);
- ``"compiled"``: every block through the ``torch.compile``-d
  :func:`setflow.nn.fast.fused.block_core` (no whole-block C++ kernels; for A/B and tests).

A batch with a mask (padded sets) runs the eager route whatever ``fused`` and ``backend`` say
(:data:`MASKED`): none of the fused routes takes a key mask. Unmasked batches keep their route.

All fused routes compute the same function with the same hash dropout masks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import Tensor

from setflow.nn.fast import kernels

__all__ = ["BACKENDS", "EAGER", "MASKED", "Route", "route"]

BACKENDS = ("auto", "blocks", "compiled")


@dataclass(frozen=True)
class Route:
    """A forward route.

    ``kind``: ``"eager"`` (module by module, PyTorch dropout), ``"network"`` (one C++ call;
    ``weights`` is the flat list of :func:`setflow.nn.fast.kernels.network`) or ``"blocks"``
    (input layer eagerly, then :func:`~setflow.nn.fast.fused.fused_block` per block, the C++
    block allowed when ``cpp_block``). ``masked``: an eager route chosen because the batch has a mask.
    """

    kind: str
    cpp_block: bool = False
    weights: Optional[list] = None
    masked: bool = False


EAGER = Route("eager")
#: the route of every masked batch: eager, module by module, with attention key masks
MASKED = Route("eager", masked=True)


def check_backend(backend: str) -> str:
    """``backend`` if it is one of :data:`BACKENDS`, else a ``ValueError`` naming them."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown fused backend {backend!r}; expected one of {BACKENDS}")
    return backend


def route(net, x: Tensor, context: Optional[Tensor] = None, mask: Optional[Tensor] = None) -> Route:
    """The route of ``net``'s forward on ``x`` (``(B, N, D_in)``) with ``context`` and ``mask`` (or ``None``).

    A masked batch (``mask`` not ``None``) always runs :data:`MASKED`, the eager route with key
    masks: no fused route takes a mask. Unmasked batches are routed as if no mask existed.
    """
    if mask is not None:
        return MASKED
    if not net.fused:
        return EAGER
    backend = check_backend(net.backend)
    if backend == "auto" and (context is None or net.context_proj is None):
        n = x.shape[1]
        pos = net.pos_embedding
        if pos is None or n <= pos.shape[0]:  # too long a set: the blocks route raises the clear error
            ws = net.network_weights(n)
            if ws is not None and kernels.network_supports(x, ws, net.num_layers, pos is not None, net.num_heads):
                return Route("network", cpp_block=True, weights=ws)
    return Route("blocks", cpp_block=backend != "compiled")
