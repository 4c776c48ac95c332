"""Elementwise squashing bijections with stable log-dets: Logit and Sigmoid."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from setflow.transforms.base import Bijection, sum_except_batch

__all__ = ["Logit", "Sigmoid"]


def _sigmoid_ldj(z: Tensor) -> Tensor:
    """``log sigma'(z) = log sigma(z) + log sigma(-z)``, elementwise and finite for any ``z``."""
    return F.logsigmoid(z) + F.logsigmoid(-z)


class Sigmoid(Bijection):
    r"""``z = sigmoid(x)`` mapping the reals to (0, 1); ``ldj = sum log sigma(x) + log sigma(-x)``."""

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        return torch.sigmoid(x), sum_except_batch(_sigmoid_ldj(x))

    def inverse_with_ldj(self, z: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        x = torch.logit(z)
        return x, -sum_except_batch(_sigmoid_ldj(x))

    def inverse(self, z: Tensor, context: Optional[Tensor] = None) -> Tensor:
        return torch.logit(z)


class Logit(Bijection):
    r"""``z = logit(eps + (1 - 2 eps) x)`` mapping (0, 1) to the reals (RealNVP's pre-processing).

    ``ldj = D log(1 - 2 eps) - sum [log sigma(z) + log sigma(-z)]``, computed from ``z`` so it
    stays finite near 0 and 1. Inputs outside ``[0, 1]`` raise a ``ValueError``.
    """

    def __init__(self, eps: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= eps < 0.5:
            raise ValueError(f"eps must be in [0, 0.5), got {eps}")
        self.eps = eps

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        if bool(((x < 0) | (x > 1)).any()):
            raise ValueError("Logit expects inputs in [0, 1]")
        y = self.eps + (1 - 2 * self.eps) * x
        z = torch.log(y) - torch.log1p(-y)
        ldj = -sum_except_batch(_sigmoid_ldj(z)) + x[0].numel() * math.log1p(-2 * self.eps)
        return z, ldj

    def inverse_with_ldj(self, z: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        x = (torch.sigmoid(z) - self.eps) / (1 - 2 * self.eps)
        ldj = sum_except_batch(_sigmoid_ldj(z)) - z[0].numel() * math.log1p(-2 * self.eps)
        return x, ldj

    def inverse(self, z: Tensor, context: Optional[Tensor] = None) -> Tensor:
        return (torch.sigmoid(z) - self.eps) / (1 - 2 * self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"
