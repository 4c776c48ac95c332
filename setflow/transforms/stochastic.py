r"""Stochastic layers: random permutations of sets and a VAE layer (SurVAE)."""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from setflow.distributions.base import ConditionalDistribution
from setflow.transforms.base import Transform
from setflow.sets import check_mask
from setflow.transforms.permutation_utils import (permute_along, permute_real_points, random_permutations,
                                                  random_rank_permutations)

__all__ = ["StochasticPermutation", "VAE"]


class StochasticPermutation(Transform):
    r"""Apply a fresh uniform random permutation to each set, in both directions; ``ldj = 0``.

    Used as the first layer of a PermuteFlow: the model density of a set is
    :math:`p(x) = \mathbb{E}_\pi[p(\pi x)]`, and ``log_prob`` returns the single-draw
    ELBO :math:`\log p(\pi x)`; use ``Flow.iwbo`` for a tighter bound.

    With ``mask`` (``(B, N)`` bool, points along dim 1) only the real points of each set are
    permuted, among their own slots; the padding stays in place.

    Shapes:
        - x: ``(B, N, ...)`` with points along ``dim``; z: same; ldj: ``(B,)`` zeros
    """

    bijective = False
    stochastic_forward = True
    stochastic_inverse = True
    supports_mask = True

    def __init__(self, dim: int = 1):
        super().__init__()
        if dim == 0:
            raise ValueError("StochasticPermutation cannot permute the batch dimension")
        self.dim = dim

    def _permute(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        if mask is None:
            return permute_along(x, random_permutations(x.shape[0], x.shape[self.dim], device=x.device), self.dim)
        if self.dim % x.dim() != 1:
            raise ValueError(f"StochasticPermutation takes a (B, N) mask of the points along dim 1, not dim={self.dim}")
        mask = check_mask(mask, x, min_points=0)
        return permute_real_points(x, random_rank_permutations(mask.sum(1), x.shape[1]), mask, 1)

    def forward(self, x: Tensor, context: Optional[Tensor] = None, mask: Optional[Tensor] = None
                ) -> tuple[Tensor, Tensor]:
        dt = x.dtype if x.is_floating_point() else None
        return self._permute(x, mask), x.new_zeros(x.shape[0], dtype=dt)

    def inverse(self, z: Tensor, context: Optional[Tensor] = None, mask: Optional[Tensor] = None) -> Tensor:
        return self._permute(z, mask)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class VAE(Transform):
    r"""A variational autoencoder as a flow layer (SurVAE).

    ``forward`` draws ``z ~ q(z | x)`` from ``encoder`` (``context=x``) and returns
    ``ldj = log p(x | z) - log q(z | x)`` with ``decoder`` (``context=z``);
    ``inverse`` samples ``x ~ p(x | z)``. The encoder's samples must be
    reparametrised for gradient training (e.g. :class:`~setflow.distributions.ConditionalNormal`).

    Sets of different sizes: with ``mask`` (``(B, N)`` bool) the encoder and the decoder get
    ``mask=mask``; the layer takes masks (:attr:`supports_mask`) when both declare ``supports_mask``.
    The encoder is meant to pool the set into one latent vector per set (the latent set flow,
    :mod:`setflow.models.latent`), so the latent has no mask: :meth:`forward_mask` is ``None``.

    Shapes:
        - x: ``(B, *x_event)``; z: ``(B, *z_event)``; ldj: ``(B,)``
    """

    bijective = False
    stochastic_forward = True
    stochastic_inverse = True

    def __init__(self, encoder: ConditionalDistribution, decoder: ConditionalDistribution):
        super().__init__()
        for name, d in (("encoder", encoder), ("decoder", decoder)):
            if not isinstance(d, ConditionalDistribution):
                raise TypeError(f"VAE {name} must be a ConditionalDistribution, got {type(d).__name__}")
        self.encoder = encoder
        self.decoder = decoder

    @property
    def supports_mask(self) -> bool:  # type: ignore[override]
        return bool(getattr(self.encoder, "supports_mask", False) and getattr(self.decoder, "supports_mask", False))

    def forward_mask(self, mask: Optional[Tensor]) -> Optional[Tensor]:
        return None  # one latent vector per datum

    def forward(self, x: Tensor, context: Optional[Tensor] = None, mask: Optional[Tensor] = None
                ) -> tuple[Tensor, Tensor]:
        if mask is None:
            z, log_q = self.encoder.sample_with_log_prob(context=x)
            return z, self.decoder.log_prob(x, context=z) - log_q
        z, log_q = self.encoder.sample_with_log_prob(context=x, mask=mask)
        return z, self.decoder.log_prob(x, context=z, mask=mask) - log_q

    def inverse(self, z: Tensor, context: Optional[Tensor] = None, mask: Optional[Tensor] = None) -> Tensor:
        """``x ~ p(x | z)``; ``mask`` here is the one of the *data* to draw (sets of different sizes)."""
        return self.decoder.sample(context=z) if mask is None else self.decoder.sample(context=z, mask=mask)
