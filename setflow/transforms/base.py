"""The transform contract (SurVAE semantics).

``forward`` maps data -> latent (the density direction) and returns ``(z, ldj)``
where ``ldj`` has shape ``(B,)`` and is the *likelihood contribution* of the
layer; ``inverse`` maps latent -> data (the sampling direction).

Flags
-----
``bijective``           exact and deterministic both ways.
``stochastic_forward``  randomness in data -> latent (dequantization, VAE,
                        stochastic permutation): ``Flow.log_prob`` is a bound.
``stochastic_inverse``  randomness in latent -> data (sort, abs, max, slice):
                        ``Flow.log_prob`` stays exact.
"""

from __future__ import annotations

from typing import Iterable, Optional

import torch
from torch import Tensor, nn

from setflow.utils import sum_except_batch

__all__ = [
    "Transform",
    "Bijection",
    "Surjection",
    "CompositeTransform",
    "InverseTransform",
    "sum_except_batch",
]


class Transform(nn.Module):
    """Base class of every layer of a flow.

    Subclasses implement ``forward(x, context=None) -> (z, ldj)`` and
    ``inverse(z, context=None) -> x``. Anything that takes a ``context`` must
    also work with ``context=None``.
    """

    bijective: bool = False
    stochastic_forward: bool = False
    stochastic_inverse: bool = False

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def inverse(self, z: Tensor, context: Optional[Tensor] = None) -> Tensor:
        raise NotImplementedError

    def inverted(self) -> "Transform":
        """Return this transform with its directions swapped (bijections only)."""
        return InverseTransform(self)

    @property
    def is_exact(self) -> bool:
        """True when the likelihood contribution is exact (no randomness data->latent)."""
        return not self.stochastic_forward


class Bijection(Transform):
    """A deterministic, exactly invertible transform; ``ldj = log|det dz/dx|``."""

    bijective = True
    stochastic_forward = False
    stochastic_inverse = False

    def inverse_with_ldj(self, z: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """``(x, log|det dx/dz|)``. Override when the inverse log-det is cheaper than a second pass."""
        x = self.inverse(z, context)
        _, ldj = self(x, context)
        return x, -ldj


class Surjection(Transform):
    """A surjective transform.

    *Inference surjections* (``stochastic_inverse=True``: sort, abs, max pool,
    slice) are deterministic data -> latent and give an exact likelihood
    contribution ``log p(x|z)``. *Generative surjections*
    (``stochastic_forward=True``: augment, dequantization) sample in the
    forward direction and give a bound ``-log q(z|x)``.
    """

    bijective = False


class CompositeTransform(Transform):
    """Apply ``transforms`` in order in the forward direction and in reverse in the inverse.

    Example:
        >>> from setflow.transforms import Reverse
        >>> t = CompositeTransform([Reverse(dim=1), Reverse(dim=1)])
        >>> x = torch.randn(2, 5, 3)
        >>> z, ldj = t(x)
        >>> bool(torch.equal(z, x)), ldj.shape
        (True, torch.Size([2]))
    """

    def __init__(self, transforms: Iterable[Transform]):
        super().__init__()
        self.transforms = nn.ModuleList(transforms)
        for t in self.transforms:
            if not isinstance(t, Transform):
                raise TypeError(f"CompositeTransform expects Transform instances, got {type(t).__name__}")

    @property
    def bijective(self) -> bool:  # type: ignore[override]
        return all(t.bijective for t in self.transforms)

    @property
    def stochastic_forward(self) -> bool:  # type: ignore[override]
        return any(t.stochastic_forward for t in self.transforms)

    @property
    def stochastic_inverse(self) -> bool:  # type: ignore[override]
        return any(t.stochastic_inverse for t in self.transforms)

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        ldj = x.new_zeros(x.shape[0], dtype=_ldj_dtype(x))
        for t in self.transforms:
            x, l = t(x, context)
            ldj = ldj + l
        return x, ldj

    def inverse(self, z: Tensor, context: Optional[Tensor] = None) -> Tensor:
        for t in reversed(self.transforms):
            z = t.inverse(z, context)
        return z

    def __len__(self) -> int:
        return len(self.transforms)

    def __getitem__(self, i: int) -> Transform:
        return self.transforms[i]


class InverseTransform(Transform):
    """Swap the directions of a bijection: ``forward`` runs ``inverse`` and vice versa.

    The log-det of the inverse is minus the log-det of the forward at the output,
    computed by running the wrapped forward once more on the result.
    """

    def __init__(self, transform: Transform):
        super().__init__()
        if not transform.bijective:
            raise ValueError(
                f"only bijections can be inverted, {type(transform).__name__} is a surjection or stochastic layer"
            )
        self.transform = transform

    bijective = True

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        if isinstance(self.transform, Bijection):
            return self.transform.inverse_with_ldj(x, context)
        z = self.transform.inverse(x, context)
        _, ldj = self.transform(z, context)
        return z, -ldj

    def inverse(self, z: Tensor, context: Optional[Tensor] = None) -> Tensor:
        return self.transform(z, context)[0]

    def inverted(self) -> Transform:
        return self.transform


def _ldj_dtype(x: Tensor) -> torch.dtype:
    return x.dtype if x.is_floating_point() else torch.get_default_dtype()
