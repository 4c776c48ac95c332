"""Small tensor helpers shared by transforms and distributions (imports nothing from setflow)."""

from __future__ import annotations

from torch import Tensor

__all__ = ["sum_except_batch"]


def sum_except_batch(x: Tensor) -> Tensor:
    """Sum every dimension but the first: ``(B, ...) -> (B,)``."""
    return x.reshape(x.shape[0], -1).sum(dim=1)
