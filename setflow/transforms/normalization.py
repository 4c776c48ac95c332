"""ActNorm (Glow): a per-feature affine map with data-dependent initialisation."""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn

from setflow.sets import check_mask, keep_padding
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

    With ``mask`` (sets ``(B, N, F)``, ``feature_dim=-1``, mask ``(B, N)``) the initial statistics
    and ``ldj`` count the real points only, and the padding passes through unchanged.

    Shapes:
        ``x``: ``(B, ..., F, ...)`` with ``F = num_features`` at ``feature_dim``; ``ldj``: ``(B,)``.
    """

    supports_mask = True

    def __init__(self, num_features: int, feature_dim: int = 1, eps: float = 1e-6) -> None:
        super().__init__()
        self.num_features = num_features
        self.feature_dim = feature_dim
        self.eps = eps
        self.shift = nn.Parameter(torch.zeros(num_features))
        self.log_scale = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("initialized", torch.tensor(False))
        self._init_seen = False  # ``initialized`` was True when last read (see forward)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self._init_seen = False
        super()._load_from_state_dict(*args, **kwargs)

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

    def _check_mask(self, x: Tensor, mask: Optional[Tensor]) -> Optional[Tensor]:
        if mask is None:
            return None
        if x.dim() != 3 or self.feature_dim % x.dim() != 2:
            raise ValueError(f"ActNorm takes a mask only for sets (B, N, F) with feature_dim=-1, got input "
                             f"{tuple(x.shape)} and feature_dim={self.feature_dim}")
        return check_mask(mask, x, min_points=0)

    @torch.no_grad()
    def initialize(self, x: Tensor, mask: Optional[Tensor] = None) -> None:
        """Set shift and scale from the statistics of ``x`` (of its real points with ``mask``; all-reduced across ranks)."""
        fd = self.feature_dim % x.dim()
        dims = [d for d in range(x.dim()) if d != fd]
        xd = x.detach().to(torch.float64)
        if mask is None:
            count = x.numel() / self.num_features
        else:
            xd = torch.where(mask[..., None], xd, torch.zeros((), dtype=xd.dtype, device=xd.device))
            count = float(mask.sum())
        stats = torch.stack([xd.sum(dims), (xd * xd).sum(dims), torch.full_like(xd.sum(dims), count)])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(stats)
        mean = stats[0] / stats[2]
        var = (stats[1] / stats[2] - mean * mean).clamp_min(0.0)
        std = torch.where(var > self.eps, var.sqrt(), torch.ones_like(var))
        self.log_scale.copy_((-std.log()).to(self.log_scale))
        self.shift.copy_((-mean / std).to(self.shift))
        self.initialized.fill_(True)

    def _ldj(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        if mask is not None:
            return self.log_scale.sum() * mask.sum(1).to(self.log_scale.dtype)
        per_feature = x[0].numel() // self.num_features
        return (self.log_scale.sum() * per_feature).expand(x.shape[0])

    def forward(self, x: Tensor, context: Optional[Tensor] = None, mask: Optional[Tensor] = None
                ) -> tuple[Tensor, Tensor]:
        self._check(x)
        mask = self._check_mask(x, mask)
        if not self._init_seen:
            # read the buffer (a device sync) only until it is seen True: a fixed-size training step
            # then pays no sync per layer; loading a state dict reads it again
            if not bool(self.initialized):
                self.initialize(x, mask)
            self._init_seen = True
        z = x * self._view(self.log_scale.exp(), x) + self._view(self.shift, x)
        return keep_padding(z, x, mask), self._ldj(x, mask)

    def inverse_with_ldj(self, z: Tensor, context: Optional[Tensor] = None, mask: Optional[Tensor] = None
                         ) -> tuple[Tensor, Tensor]:
        self._check(z)
        mask = self._check_mask(z, mask)
        x = (z - self._view(self.shift, z)) * self._view(torch.exp(-self.log_scale), z)
        return keep_padding(x, z, mask), -self._ldj(z, mask)

    def inverse(self, z: Tensor, context: Optional[Tensor] = None, mask: Optional[Tensor] = None) -> Tensor:
        return self.inverse_with_ldj(z, context, mask)[0]

    def extra_repr(self) -> str:
        return f"{self.num_features}, feature_dim={self.feature_dim}"
