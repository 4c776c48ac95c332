"""Small tensor helpers shared by transforms and distributions (imports nothing from setflow)."""

from __future__ import annotations

import inspect
import math
from typing import Callable, Optional, Sequence

from torch import Tensor

__all__ = ["sum_except_batch", "bits_per_dim", "call_net", "takes_mask"]


def sum_except_batch(x: Tensor) -> Tensor:
    """Sum every dimension but the first: ``(B, ...) -> (B,)``."""
    return x.reshape(x.shape[0], -1).sum(dim=1)


def bits_per_dim(log_prob: Tensor, shape: Sequence[int]) -> Tensor:
    """Per-datum log-likelihoods (nats) to bits per dimension: ``-log_prob / (prod(shape) ln 2)``.

    Example:
        >>> import torch
        >>> bits_per_dim(torch.tensor([-8 * math.log(2.0)]), (2, 2, 2))
        tensor([1.])
    """
    return -log_prob / (math.prod(shape) * math.log(2.0))


_TAKES_MASK: dict = {}


def takes_mask(net: Callable) -> bool:
    """Whether ``net`` (a module or a function) accepts a ``mask=`` keyword argument (cached per class)."""
    fn = getattr(type(net), "forward", None) if not inspect.isfunction(net) else net
    fn = fn if fn is not None else net
    if fn not in _TAKES_MASK:
        try:
            params = inspect.signature(fn).parameters
            _TAKES_MASK[fn] = "mask" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        except (TypeError, ValueError):
            _TAKES_MASK[fn] = False
    return _TAKES_MASK[fn]


def call_net(net: Callable, x: Tensor, context: Optional[Tensor] = None, mask: Optional[Tensor] = None) -> Tensor:
    """Call ``net(x)`` or, when a context is given, ``net(x, context)``; with a ``mask`` (sets of different
    sizes) ``net(x, context, mask=mask)``, refused with a ``ValueError`` if ``net`` takes no mask."""
    if mask is None:
        return net(x) if context is None else net(x, context)
    if not takes_mask(net):
        raise ValueError(f"{type(net).__name__} does not take mask=, so it cannot condition on padded sets of "
                         "different sizes; use a conditioner with masks (forward(x, context=None, mask=None))")
    return net(x, context, mask=mask)
