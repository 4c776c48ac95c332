"""Shape bijections: 2x2 squeeze, reshape, axis permutation (all volume preserving)."""

from __future__ import annotations

from typing import Optional, Sequence

from torch import Tensor

from setflow.transforms.base import Bijection

__all__ = ["Squeeze2d", "Unsqueeze2d", "Reshape", "PermuteAxes"]


def _squeeze(x: Tensor, f: int) -> Tensor:
    if x.dim() != 4:
        raise ValueError(f"Squeeze2d expects images (B, C, H, W), got shape {tuple(x.shape)}")
    b, c, h, w = x.shape
    if h % f or w % f:
        raise ValueError(f"Squeeze2d(factor={f}) needs H and W divisible by {f}, got shape {tuple(x.shape)}")
    x = x.reshape(b, c, h // f, f, w // f, f).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(b, c * f * f, h // f, w // f)


def _unsqueeze(z: Tensor, f: int) -> Tensor:
    if z.dim() != 4 or z.shape[1] % (f * f):
        raise ValueError(f"Unsqueeze2d(factor={f}) expects (B, C*{f * f}, H, W), got shape {tuple(z.shape)}")
    b, c, h, w = z.shape
    z = z.reshape(b, c // (f * f), f, f, h, w).permute(0, 1, 4, 2, 5, 3)
    return z.reshape(b, c // (f * f), h * f, w * f)


class Squeeze2d(Bijection):
    """Space-to-depth: ``(B, C, H, W) -> (B, C*f*f, H/f, W/f)``; each output channel group holds
    one position of every ``f x f`` window (channel ``c*f*f + i*f + j`` is pixel ``(i, j)`` of channel ``c``)."""

    def __init__(self, factor: int = 2) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        return _squeeze(x, self.factor), x.new_zeros(x.shape[0])

    def inverse_with_ldj(self, z: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        return _unsqueeze(z, self.factor), z.new_zeros(z.shape[0])

    def inverse(self, z: Tensor, context: Optional[Tensor] = None) -> Tensor:
        return _unsqueeze(z, self.factor)

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


class Unsqueeze2d(Squeeze2d):
    """Depth-to-space, the inverse of :class:`Squeeze2d`."""

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        return _unsqueeze(x, self.factor), x.new_zeros(x.shape[0])

    def inverse_with_ldj(self, z: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        return _squeeze(z, self.factor), z.new_zeros(z.shape[0])

    def inverse(self, z: Tensor, context: Optional[Tensor] = None) -> Tensor:
        return _squeeze(z, self.factor)


class Reshape(Bijection):
    """Reshape each datum from ``in_shape`` to ``out_shape`` (batch dimension kept)."""

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int]) -> None:
        super().__init__()
        self.in_shape = tuple(in_shape)
        self.out_shape = tuple(out_shape)
        n_in = n_out = 1
        for s in self.in_shape:
            n_in *= s
        for s in self.out_shape:
            n_out *= s
        if n_in != n_out:
            raise ValueError(f"Reshape {self.in_shape} -> {self.out_shape} changes the number of entries")

    @staticmethod
    def _reshape(x: Tensor, src: tuple, dst: tuple) -> Tensor:
        if tuple(x.shape[1:]) != src:
            raise ValueError(f"Reshape expects (B, {', '.join(map(str, src))}), got shape {tuple(x.shape)}")
        return x.reshape(x.shape[0], *dst)

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        return self._reshape(x, self.in_shape, self.out_shape), x.new_zeros(x.shape[0])

    def inverse_with_ldj(self, z: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        return self._reshape(z, self.out_shape, self.in_shape), z.new_zeros(z.shape[0])

    def inverse(self, z: Tensor, context: Optional[Tensor] = None) -> Tensor:
        return self._reshape(z, self.out_shape, self.in_shape)

    def extra_repr(self) -> str:
        return f"{self.in_shape} -> {self.out_shape}"


class PermuteAxes(Bijection):
    """Permute the non-batch axes: ``perm`` is a permutation of ``range(event_dims)``.

    Example: ``PermuteAxes((1, 0))`` maps a set ``(B, N, D)`` to ``(B, D, N)``.
    """

    def __init__(self, perm: Sequence[int]) -> None:
        super().__init__()
        self.perm = tuple(int(p) for p in perm)
        if sorted(self.perm) != list(range(len(self.perm))):
            raise ValueError(f"perm must be a permutation of 0..{len(self.perm) - 1}, got {self.perm}")
        inv = [0] * len(self.perm)
        for i, p in enumerate(self.perm):
            inv[p] = i
        self.inv_perm = tuple(inv)

    def _permute(self, x: Tensor, perm: tuple) -> Tensor:
        if x.dim() != len(perm) + 1:
            raise ValueError(f"PermuteAxes{self.perm} expects {len(perm) + 1}-D input, got shape {tuple(x.shape)}")
        return x.permute(0, *(p + 1 for p in perm))

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        return self._permute(x, self.perm), x.new_zeros(x.shape[0])

    def inverse_with_ldj(self, z: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        return self._permute(z, self.inv_perm), z.new_zeros(z.shape[0])

    def inverse(self, z: Tensor, context: Optional[Tensor] = None) -> Tensor:
        return self._permute(z, self.inv_perm)

    def extra_repr(self) -> str:
        return f"perm={self.perm}"
