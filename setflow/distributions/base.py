"""Base classes for densities.

A :class:`Distribution` has ``log_prob(x, context=None) -> (B,)`` and
``sample(num_samples, context=None) -> (num_samples, *event_shape)``.
A conditional distribution needs ``context`` and draws one sample per context
row: ``sample(num_samples, context)`` with ``num_samples == context.shape[0]``
(or ``num_samples=None``).

Samples are drawn on the module's device and in its dtype, which every
distribution tracks through a (possibly empty) buffer called ``_device_ref``.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

__all__ = ["Distribution", "ConditionalDistribution"]


class Distribution(nn.Module):
    """A density over events of a fixed shape."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("_device_ref", torch.zeros(()), persistent=False)

    @property
    def device(self) -> torch.device:
        return self._device_ref.device

    @property
    def dtype(self) -> torch.dtype:
        return self._device_ref.dtype

    def log_prob(self, x: Tensor, context: Optional[Tensor] = None) -> Tensor:
        raise NotImplementedError

    def sample(self, num_samples: Optional[int] = None, context: Optional[Tensor] = None) -> Tensor:
        raise NotImplementedError

    def sample_with_log_prob(
        self, num_samples: Optional[int] = None, context: Optional[Tensor] = None
    ) -> tuple[Tensor, Tensor]:
        x = self.sample(num_samples, context)
        return x, self.log_prob(x, context)

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> Tensor:  # pragma: no cover
        return self.log_prob(x, context)


class ConditionalDistribution(Distribution):
    """A density ``p(x | context)``; ``context`` is required."""

    @staticmethod
    def _num_from_context(num_samples: Optional[int], context: Optional[Tensor]) -> int:
        if context is None:
            raise ValueError("this conditional distribution needs a context tensor")
        if num_samples is not None and num_samples != context.shape[0]:
            raise ValueError(
                f"num_samples={num_samples} does not match the context batch size {context.shape[0]}"
            )
        return context.shape[0]
