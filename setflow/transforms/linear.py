"""Linear bijections: invertible 1x1 convolution (LU), reversal, fixed shuffles, scalar affine."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from setflow.transforms.base import Bijection

__all__ = ["Conv1x1", "Reverse", "Shuffle", "ScalarAffine"]


class Conv1x1(Bijection):
    r"""Invertible linear map along the feature dimension, LU-parametrised (Glow).

    :math:`W = P L (U + \mathrm{diag}(\mathrm{sign}(s)\, e^{\log|s|}))` with ``P`` a fixed
    permutation, ``L`` unit lower triangular and ``U`` strictly upper triangular, so
    ``log|det W| = sum(log|s|)`` costs O(C). Initialised to a random rotation (seeded).
    For images it runs as a 1x1 convolution; for sets ``(B, N, D)`` use ``feature_dim=-1``.

    Shapes:
        ``x``: ``(B, ..., C, ...)`` with ``C`` at ``feature_dim``; ``ldj``: ``(B,)`` equal to
        (number of positions) * ``sum(log|s|)``.
    """

    def __init__(self, num_channels: int, feature_dim: int = 1, seed: int = 0) -> None:
        super().__init__()
        self.num_channels = c = num_channels
        self.feature_dim = feature_dim
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(c, c, generator=g, dtype=torch.float64))
        p, lower, upper = torch.linalg.lu(q)
        s = torch.diagonal(upper)
        self.register_buffer("perm", p.to(torch.get_default_dtype()))
        self.register_buffer("sign_s", torch.sign(s).to(torch.get_default_dtype()))
        self.register_buffer("lower_mask", torch.tril(torch.ones(c, c), -1))
        self.lower = nn.Parameter(lower.to(torch.get_default_dtype()))
        self.upper = nn.Parameter(torch.triu(upper, 1).to(torch.get_default_dtype()))
        self.log_s = nn.Parameter(s.abs().log().to(torch.get_default_dtype()))

    def weight(self) -> Tensor:
        eye = torch.eye(self.num_channels, dtype=self.lower.dtype, device=self.lower.device)
        lower = self.lower * self.lower_mask + eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * self.log_s.exp())
        return self.perm @ lower @ upper

    def _matmul(self, x: Tensor, w: Tensor) -> Tensor:
        fd = self.feature_dim % x.dim()
        if x.dim() == 4 and fd == 1:
            return F.conv2d(x, w.view(*w.shape, 1, 1))
        return torch.movedim(torch.movedim(x, fd, -1) @ w.T, -1, fd)

    def _check(self, x: Tensor) -> None:
        if x.dim() < 2 or x.shape[self.feature_dim] != self.num_channels:
            raise ValueError(
                f"Conv1x1 expects {self.num_channels} channels along dim {self.feature_dim}, got shape {tuple(x.shape)}"
            )

    def _ldj(self, x: Tensor) -> Tensor:
        positions = x[0].numel() // self.num_channels
        return (self.log_s.sum() * positions).expand(x.shape[0])

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        self._check(x)
        return self._matmul(x, self.weight()), self._ldj(x)

    def inverse_with_ldj(self, z: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        self._check(z)
        w_inv = torch.linalg.inv(self.weight())
        return self._matmul(z, w_inv), -self._ldj(z)

    def inverse(self, z: Tensor, context: Optional[Tensor] = None) -> Tensor:
        return self.inverse_with_ldj(z, context)[0]

    def extra_repr(self) -> str:
        return f"{self.num_channels}, feature_dim={self.feature_dim}"


class Reverse(Bijection):
    """Reverse the order along ``dim`` (``ldj = 0``)."""

    def __init__(self, dim: int = 1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        return x.flip(self.dim), x.new_zeros(x.shape[0])

    def inverse_with_ldj(self, z: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        return z.flip(self.dim), z.new_zeros(z.shape[0])

    def inverse(self, z: Tensor, context: Optional[Tensor] = None) -> Tensor:
        return z.flip(self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class Shuffle(Bijection):
    """A fixed random permutation of the ``size`` entries along ``dim`` (seeded, saved as a buffer)."""

    def __init__(self, size: int, dim: int = 1, seed: int = 0) -> None:
        super().__init__()
        self.size = size
        self.dim = dim
        perm = torch.randperm(size, generator=torch.Generator().manual_seed(seed))
        self.register_buffer("perm", perm)
        self.register_buffer("inv_perm", torch.argsort(perm))

    def _check(self, x: Tensor) -> None:
        if x.dim() < 2 or x.shape[self.dim] != self.size:
            raise ValueError(f"Shuffle expects size {self.size} along dim {self.dim}, got shape {tuple(x.shape)}")

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        self._check(x)
        return x.index_select(self.dim, self.perm), x.new_zeros(x.shape[0])

    def inverse_with_ldj(self, z: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        self._check(z)
        return z.index_select(self.dim, self.inv_perm), z.new_zeros(z.shape[0])

    def inverse(self, z: Tensor, context: Optional[Tensor] = None) -> Tensor:
        return self.inverse_with_ldj(z, context)[0]

    def extra_repr(self) -> str:
        return f"{self.size}, dim={self.dim}"


class ScalarAffine(Bijection):
    """``z = x * scale + shift`` with fixed scalars; ``ldj = D * log|scale|`` (``D`` entries per datum)."""

    def __init__(self, shift: float = 0.0, scale: float = 1.0) -> None:
        super().__init__()
        if scale == 0:
            raise ValueError("ScalarAffine needs a non-zero scale")
        self.shift = float(shift)
        self.scale = float(scale)

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        ldj = x.new_full((x.shape[0],), x[0].numel() * math.log(abs(self.scale)))
        return x * self.scale + self.shift, ldj

    def inverse_with_ldj(self, z: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        ldj = z.new_full((z.shape[0],), -z[0].numel() * math.log(abs(self.scale)))
        return (z - self.shift) / self.scale, ldj

    def inverse(self, z: Tensor, context: Optional[Tensor] = None) -> Tensor:
        return (z - self.shift) / self.scale

    def extra_repr(self) -> str:
        return f"shift={self.shift}, scale={self.scale}"
