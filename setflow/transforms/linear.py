"""Linear bijections: invertible 1x1 convolution (LU), reversal, fixed shuffles, scalar affine."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from setflow.sets import check_mask, keep_padding
from setflow.transforms.base import Bijection
from setflow.transforms.permutation_utils import fixed_rank_permutations, inverse_permutation, permute_real_points

__all__ = ["Conv1x1", "Reverse", "Shuffle", "SetShuffle", "SetRoll", "ScalarAffine"]


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
    """Reverse the order along ``dim`` (``ldj = 0``).

    With a mask (sets of different sizes) only a dimension other than the points (e.g. the
    coordinates, ``dim=-1``) can be reversed.
    """

    supports_mask = True

    def __init__(self, dim: int = 1) -> None:
        super().__init__()
        self.dim = dim

    def _check_mask(self, x: Tensor, mask: Optional[Tensor]) -> None:
        if mask is not None and self.dim % x.dim() in (0, 1):
            raise ValueError(f"Reverse(dim={self.dim}) would move padding among the points of sets of different "
                             "sizes; reverse the coordinates (dim=-1) or use SetShuffle for the points")

    def forward(self, x: Tensor, context: Optional[Tensor] = None, mask: Optional[Tensor] = None
                ) -> tuple[Tensor, Tensor]:
        self._check_mask(x, mask)
        return x.flip(self.dim), x.new_zeros(x.shape[0])

    def inverse_with_ldj(self, z: Tensor, context: Optional[Tensor] = None, mask: Optional[Tensor] = None
                         ) -> tuple[Tensor, Tensor]:
        self._check_mask(z, mask)
        return z.flip(self.dim), z.new_zeros(z.shape[0])

    def inverse(self, z: Tensor, context: Optional[Tensor] = None, mask: Optional[Tensor] = None) -> Tensor:
        self._check_mask(z, mask)
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


class SetShuffle(Bijection):
    """A fixed pseudo-random permutation of the real points of each set (``ldj = 0``), for sets of any size.

    The permutation of a set depends only on its size ``N_i`` and ``seed`` (an integer hash of the
    ranks, :func:`~setflow.transforms.permutation_utils.fixed_rank_permutations`), so a set gets the
    same one alone as inside a padded batch; the padding stays in place. The variable-size
    replacement of :class:`Shuffle`, whose permutation is of a fixed number of points.

    Shapes:
        - x: ``(B, N, ...)`` points along dim 1; mask: ``(B, N)`` bool or None; ldj: ``(B,)``

    Example:
        >>> t = SetShuffle(seed=3)
        >>> x = torch.arange(4.0).view(1, 4, 1)
        >>> m = torch.tensor([[True, True, True, False]])
        >>> z, _ = t(x, mask=m)
        >>> sorted(z[0, :3, 0].tolist()), float(z[0, 3, 0]), torch.equal(t.inverse(z, mask=m), x)
        ([0.0, 1.0, 2.0], 3.0, True)
    """

    supports_mask = True

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.seed = int(seed)
        self._tables: dict = {}

    def _table(self, n: int, device: torch.device) -> Tensor:
        """``(n + 1, n)``: row ``k`` the permutation of a set of ``k`` points padded to ``n`` (cached)."""
        key = (n, str(device))
        if key not in self._tables:
            self._tables[key] = fixed_rank_permutations(torch.arange(n + 1, device=device), n, self.seed)
        return self._tables[key]

    def _perm(self, x: Tensor, mask: Optional[Tensor]) -> Tensor:
        if x.dim() < 2:
            raise ValueError(f"SetShuffle expects sets (B, N, ...), got shape {tuple(x.shape)}")
        table = self._table(x.shape[1], x.device)
        if mask is None:
            return table[x.shape[1]].expand(x.shape[0], -1)
        return table[check_mask(mask, x, min_points=0).sum(1)]

    def forward(self, x: Tensor, context: Optional[Tensor] = None, mask: Optional[Tensor] = None
                ) -> tuple[Tensor, Tensor]:
        return permute_real_points(x, self._perm(x, mask), mask), x.new_zeros(x.shape[0])

    def inverse_with_ldj(self, z: Tensor, context: Optional[Tensor] = None, mask: Optional[Tensor] = None
                         ) -> tuple[Tensor, Tensor]:
        perm = inverse_permutation(self._perm(z, mask))
        return permute_real_points(z, perm, mask), z.new_zeros(z.shape[0])

    def inverse(self, z: Tensor, context: Optional[Tensor] = None, mask: Optional[Tensor] = None) -> Tensor:
        return self.inverse_with_ldj(z, context, mask)[0]

    def extra_repr(self) -> str:
        return f"seed={self.seed}"


class SetRoll(SetShuffle):
    """Roll the real points of each set by ``shift`` places (rank ``r`` -> ``(r + shift) mod N_i``; ``ldj = 0``).

    After a sort, point ``r`` of the sorted order sits in slot ``r + k * shift`` after ``k`` rolls,
    whatever the set size (until it wraps around): a coupling with learned positions then knows
    where the first sorted point is, and a parity split alternates which points condition which.

    Example:
        >>> z, _ = SetRoll()(torch.arange(4.0).view(1, 4, 1), mask=torch.tensor([[True, True, True, False]]))
        >>> z[0, :, 0].tolist()
        [2.0, 0.0, 1.0, 3.0]
    """

    def __init__(self, shift: int = 1) -> None:
        super().__init__(seed=0)
        self.shift = int(shift)

    def _table(self, n: int, device: torch.device) -> Tensor:
        key = (n, str(device))
        if key not in self._tables:
            ar = torch.arange(n, device=device)
            sizes = torch.arange(n + 1, device=device)[:, None]
            self._tables[key] = torch.where(ar < sizes, (ar - self.shift) % sizes.clamp_min(1), ar)
        return self._tables[key]

    def extra_repr(self) -> str:
        return f"shift={self.shift}"


class ScalarAffine(Bijection):
    """``z = x * scale + shift`` with fixed scalars; ``ldj = D * log|scale|`` (``D`` entries per datum).

    With ``mask`` (``(B, N)`` over dim 1) only the real points count in ``ldj`` and the padding
    passes through unchanged.
    """

    supports_mask = True

    def __init__(self, shift: float = 0.0, scale: float = 1.0) -> None:
        super().__init__()
        if scale == 0:
            raise ValueError("ScalarAffine needs a non-zero scale")
        self.shift = float(shift)
        self.scale = float(scale)

    def _masked_ldj(self, x: Tensor, mask: Tensor) -> Tensor:
        per_point = x[0, 0].numel()
        check_mask(mask, x, min_points=0)
        return ((mask.sum(1) * per_point).double() * math.log(abs(self.scale))).to(x.dtype)

    def forward(self, x: Tensor, context: Optional[Tensor] = None, mask: Optional[Tensor] = None
                ) -> tuple[Tensor, Tensor]:
        if mask is None:
            ldj = x.new_full((x.shape[0],), x[0].numel() * math.log(abs(self.scale)))
            return x * self.scale + self.shift, ldj
        return keep_padding(x * self.scale + self.shift, x, mask), self._masked_ldj(x, mask)

    def inverse_with_ldj(self, z: Tensor, context: Optional[Tensor] = None, mask: Optional[Tensor] = None
                         ) -> tuple[Tensor, Tensor]:
        if mask is None:
            ldj = z.new_full((z.shape[0],), -z[0].numel() * math.log(abs(self.scale)))
            return (z - self.shift) / self.scale, ldj
        return keep_padding((z - self.shift) / self.scale, z, mask), -self._masked_ldj(z, mask)

    def inverse(self, z: Tensor, context: Optional[Tensor] = None, mask: Optional[Tensor] = None) -> Tensor:
        if mask is None:
            return (z - self.shift) / self.scale
        return self.inverse_with_ldj(z, context, mask)[0]

    def extra_repr(self) -> str:
        return f"shift={self.shift}, scale={self.scale}"

