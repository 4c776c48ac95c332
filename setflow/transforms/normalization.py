"""ActNorm (Glow): a per-feature affine map with data-dependent initialisation."""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn

from setflow.transforms.base import Bijection

__all__ = ["ActNorm"]


class ActNorm(Bijection):
    r"""Per-feature affine bijection :math:`z = x \cdot e^{s} + b`.

    On the first forward pass (while the buffer ``initialized`` is False) ``s`` and ``b`` are
    set so the batch has zero mean and unit variance per feature. The flag is a buffer, so a
    saved and reloaded model keeps its parameters and never re-initialises. Under
    ``torch.distributed`` the statistics are all-reduced, so every rank starts identical.
    A constant feature (zero variance) gets scale 1 instead of a blow-up.

    Args:
        num_features: size of the feature dimension.
        feature_dim: which dimension holds the features: ``-1`` for sets ``(B, N, D)``,
            ``1`` for images ``(B, C, H, W)``.
        eps: variance floor below which a feature counts as constant.

    Shapes:
        ``x``: ``(B, ..., F, ...)`` with ``F = num_features`` at ``feature_dim``; ``ldj``: ``(B,)``.
    """

    def __init__(self, num_features: int, feature_dim: int = 1, eps: float = 1e-6) -> None:
        super().__init__()
        self.num_features = num_features
        self.feature_dim = feature_dim
        self.eps = eps
        self.shift = nn.Parameter(torch.zeros(num_features))
        self.log_scale = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("initialized", torch.tensor(False))

    def _view(self, p: Tensor, x: Tensor) -> Tensor:
        shape = [1] * x.dim()
        shape[self.feature_dim] = self.num_features
        return p.view(shape)

    def _check(self, x: Tensor) -> None:
        if x.dim() < 2 or x.shape[self.feature_dim] != self.num_features:
            raise ValueError(
                f"ActNorm expects {self.num_features} features along dim {self.feature_dim}, "
                f"got input of shape {tuple(x.shape)}"
            )

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set shift and scale from the statistics of ``x`` (all-reduced across ranks)."""
        fd = self.feature_dim % x.dim()
        dims = [d for d in range(x.dim()) if d != fd]
        xd = x.detach().to(torch.float64)
        stats = torch.stack([xd.sum(dims), (xd * xd).sum(dims), torch.full_like(xd.sum(dims), x.numel() / self.num_features)])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(stats)
        mean = stats[0] / stats[2]
        var = (stats[1] / stats[2] - mean * mean).clamp_min(0.0)
        std = torch.where(var > self.eps, var.sqrt(), torch.ones_like(var))
        self.log_scale.copy_((-std.log()).to(self.log_scale))
        self.shift.copy_((-mean / std).to(self.shift))
        self.initialized.fill_(True)

    def _ldj(self, x: Tensor) -> Tensor:
        per_feature = x[0].numel() // self.num_features
        return (self.log_scale.sum() * per_feature).expand(x.shape[0])

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        self._check(x)
        if not bool(self.initialized):
            self.initialize(x)
        z = x * self._view(self.log_scale.exp(), x) + self._view(self.shift, x)
        return z, self._ldj(x)

    def inverse_with_ldj(self, z: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        self._check(z)
        x = (z - self._view(self.shift, z)) * self._view(torch.exp(-self.log_scale), z)
        return x, -self._ldj(z)

    def inverse(self, z: Tensor, context: Optional[Tensor] = None) -> Tensor:
        return self.inverse_with_ldj(z, context)[0]

    def extra_repr(self) -> str:
        return f"{self.num_features}, feature_dim={self.feature_dim}"
