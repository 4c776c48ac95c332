"""Compatibility name: :func:`set_fused` moved to :mod:`setflow.nn.set_transformer` (also ``setflow.nn.set_fused``);
the fused blocks, hash dropout and C++ kernels live in :mod:`setflow.nn.fast`."""

from setflow.nn.set_transformer import set_fused

__all__ = ["set_fused"]
