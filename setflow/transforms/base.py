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
``supports_mask``       the layer takes ``mask=`` (``(B, N)`` bool, True = real point) for a
                        padded batch of sets of different sizes (see :mod:`setflow.sets`);
                        its ``ldj`` then counts real points only and the padding never
                        changes a result. ``forward_mask`` gives the mask of the output.
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
    also work with ``context=None``. Layers with ``supports_mask = True`` also take
    ``mask=None`` (a keyword argument) in ``forward``, ``inverse`` and ``inverse_with_ldj``;
    in the inverse direction the mask is the one of the latent, and the output keeps its layout.
    """

    bijective: bool = False
    stochastic_forward: bool = False
    stochastic_inverse: bool = False
    supports_mask: bool = False

    def forward_mask(self, mask: Optional[Tensor]) -> Optional[Tensor]:
        """The mask of ``forward``'s output given the input's (the same for every layer but the sort,
        which moves the padding to the end)."""
        return mask

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

    def inverse_with_ldj(self, z: Tensor, context: Optional[Tensor] = None, mask: Optional[Tensor] = None
                         ) -> tuple[Tensor, Tensor]:
        """``(x, log|det dx/dz|)``. Override when the inverse log-det is cheaper than a second pass."""
        if mask is None:
            x = self.inverse(z, context)
            _, ldj = self(x, context)
        else:
            x = self.inverse(z, context, mask=mask)
            _, ldj = self(x, context, mask=mask)
        return x, -ldj


class Surjection(Transform):
    """A surjective transform.

    *Inference surjections* (``stochastic_inverse=True``: sort, abs, max pool,
    slice) are deterministic data -> latent and give an exact likelihood
    contribution ``log p(x|z)``. *Generative surjections*
    (``stochastic_forward=True``: augment, dequantization) sample in the
    forward direction and give a bound ``-log q(z|x)``.

    Every subclass must say which: a class that sets neither ``stochastic_forward`` nor
    ``stochastic_inverse`` in its own body (or in a Surjection base class between it and this one)
    is a ``TypeError`` at class creation, as is one whose flags are not bools or are both False
    (a deterministic layer both ways is a :class:`Bijection`). An intermediate base class that is
    never instantiated may opt out with ``class _Base(Surjection, abstract=True)``.
    """

    bijective = False

    def __init_subclass__(cls, abstract: bool = False, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if abstract:
            return
        flags = ("stochastic_forward", "stochastic_inverse")
        declared = [f for f in flags if any(f in k.__dict__ for k in cls.__mro__[:cls.__mro__.index(Surjection)])]
        if not declared:
            raise TypeError(f"Surjection subclass {cls.__name__} must declare which direction is stochastic: set "
                            f"stochastic_inverse = True (inference surjection: sort, abs, max, slice) or "
                            f"stochastic_forward = True (generative: augment, dequantization)")
        values = [getattr(cls, f) for f in flags]
        if any(isinstance(v, property) for v in values):
            return  # computed per instance (e.g. from wrapped layers)
        if not all(isinstance(v, bool) for v in values) or not any(values):
            raise TypeError(f"Surjection subclass {cls.__name__}: stochastic_forward={values[0]!r}, "
                            f"stochastic_inverse={values[1]!r}; expected bools, at least one True")


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

    @property
    def supports_mask(self) -> bool:  # type: ignore[override]
        return all(t.supports_mask for t in self.transforms)

    def forward_mask(self, mask: Optional[Tensor]) -> Optional[Tensor]:
        for t in self.transforms:
            mask = t.forward_mask(mask)
        return mask

    def check_mask_support(self) -> None:
        """Raise a ``ValueError`` naming the first layer that cannot take a mask."""
        for i, t in enumerate(self.transforms):
            if isinstance(t, CompositeTransform):
                t.check_mask_support()
            elif not t.supports_mask:
                raise ValueError(f"layer {i} ({type(t).__name__}) does not take a mask, so this flow cannot score "
                                 "padded sets of different sizes; build it for variable sizes "
                                 "(e.g. model_args.num_points: null with max_points) or pass equal-size sets")

    def forward(self, x: Tensor, context: Optional[Tensor] = None, mask: Optional[Tensor] = None
                ) -> tuple[Tensor, Tensor]:
        ldj = x.new_zeros(x.shape[0], dtype=_ldj_dtype(x))
        if mask is None:
            for t in self.transforms:
                x, l = t(x, context)
                ldj = ldj + l
            return x, ldj
        self.check_mask_support()
        for t in self.transforms:
            x, l = t(x, context, mask=mask)
            mask = t.forward_mask(mask)
            ldj = ldj + l
        return x, ldj

    def inverse(self, z: Tensor, context: Optional[Tensor] = None, mask: Optional[Tensor] = None) -> Tensor:
        if mask is None:
            for t in reversed(self.transforms):
                z = t.inverse(z, context)
            return z
        self.check_mask_support()
        for t in reversed(self.transforms):
            z = t.inverse(z, context, mask=mask)
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

    @property
    def supports_mask(self) -> bool:  # type: ignore[override]
        return self.transform.supports_mask

    def forward(self, x: Tensor, context: Optional[Tensor] = None, mask: Optional[Tensor] = None
                ) -> tuple[Tensor, Tensor]:
        kw = {} if mask is None else {"mask": mask}
        if isinstance(self.transform, Bijection):
            return self.transform.inverse_with_ldj(x, context, **kw)
        z = self.transform.inverse(x, context, **kw)
        _, ldj = self.transform(z, context, **kw)
        return z, -ldj

    def inverse(self, z: Tensor, context: Optional[Tensor] = None, mask: Optional[Tensor] = None) -> Tensor:
        return self.transform(z, context, **({} if mask is None else {"mask": mask}))[0]

    def inverted(self) -> Transform:
        return self.transform


def _ldj_dtype(x: Tensor) -> torch.dtype:
    return x.dtype if x.is_floating_point() else torch.get_default_dtype()
