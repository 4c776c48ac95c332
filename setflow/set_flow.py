"""``SetFlow``: a :class:`~setflow.flows.Flow` over sets ``(B, N, D)``, with what only sets need.

On top of the base flow (a base density, a list of transforms, context) it adds:

- masks: ``log_prob``, ``iwbo``, ``encode``, ``decode`` take ``mask`` ``(B, N)`` bool (True = a
  real point) for padded sets of different sizes; a mask of all True gives bit-identical results
  to ``mask=None``, and the padding is zeroed on the way in, so its values (even NaN) never change
  a result;
- one batch value: ``log_prob``, ``iwbo`` and ``encode`` take a :class:`~setflow.sets.SetBatch` (its
  labels are the context of a class-conditional flow when no ``context`` is given) or a PyG
  ``Data`` / ``Batch`` (points in ``pos``, else ``x``) in place of ``x`` and ``mask``; a variable-size
  flow's ``sample`` returns a ``SetBatch``;
- a density over the set size (``size_dist``): ``log_prob`` then returns the complete
  ``log p(N) + log p(X | N)``, every call needs ``mask`` and ``sample`` draws ``N`` (or takes
  ``num_points``) and returns ``(x, mask)``;
- size buckets: a large padded batch is scored in groups of similar sizes when a cost model of
  the attention says it pays (the same result per set);
- ``sample(num_points=...)`` for a base that leaves ``N`` free, and the IWBO over masked sets.
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

import torch
from torch import Tensor, nn

from setflow.distributions.base import ConditionalDistribution, Distribution
from setflow.flows import Flow, LabelContext
from setflow.sets import SetBatch, check_mask, lengths_to_mask, real_first, set_sizes
from setflow.transforms.base import Transform
from setflow.transforms.permutation_utils import inverse_permutation

__all__ = ["SetFlow", "ConditionalFlow", "SET_LAYOUT"]

SET_LAYOUT = "(B, N, D) = (batch, points, coordinates)"


class SetFlow(Flow):
    """A :class:`~setflow.flows.Flow` over sets ``(B, N, D)`` (see the module docstring).

    Args:
        base, transforms, event_shape, discrete, layout, context_encoder: as for
            :class:`~setflow.flows.Flow`.
        size_dist: for sets of different sizes, a density over the number of points
            (:class:`~setflow.distributions.SetSizeDistribution`); ``None`` for one size per batch.

    Example:
        >>> from setflow.distributions import StandardNormal
        >>> from setflow.transforms import ScalarAffine
        >>> flow = SetFlow(StandardNormal((None, 2)), [ScalarAffine(shift=1.0, scale=2.0)], event_shape=(None, 2))
        >>> x, mask = torch.zeros(2, 3, 2), torch.tensor([[True, True, True], [True, False, False]])
        >>> flow.log_prob(x, mask=mask).shape
        torch.Size([2])
    """

    def __init__(self, base: Distribution, transforms: Iterable[Transform],
                 event_shape: Optional[Sequence[Optional[int]]] = None, *, layout: str = SET_LAYOUT,
                 size_dist: Optional[Distribution] = None, **kwargs) -> None:
        super().__init__(base, transforms, event_shape, layout=layout, **kwargs)
        self.size_dist = size_dist

    @property
    def variable_size(self) -> bool:
        """True for a flow over sets of different sizes (it has a density over the set size and needs masks)."""
        return self.size_dist is not None

    def _prepare_masked(self, x: Tensor, mask: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
        """``(x, mask, sizes)``: inputs checked, padding zeroed, an all-True mask turned into ``None``;
        ``sizes`` ``(B,)`` for a variable-size flow. A PyG ``Data`` / ``Batch`` is padded here (its own mask)."""
        if isinstance(x, SetBatch):
            if mask is not None:
                raise ValueError("a SetBatch carries its own mask; pass it without mask=")
            x, mask = x.points, x.mask
        if any(c.__module__.startswith("torch_geometric") for c in type(x).__mro__):
            if mask is not None:
                raise ValueError("a PyG Data/Batch carries its own sets (the batch vector); pass it without mask=")
            from setflow.sets import from_pyg

            x, mask = from_pyg(x)
        if mask is None:
            if self.variable_size:
                raise ValueError("this flow scores sets of different sizes and cannot tell padding from points: pass "
                                 "mask=(B, N) bool (True = real point; setflow.sets.pad_sets / from_pyg build it), "
                                 "or mask=torch.ones(B, N, dtype=torch.bool) for a batch of full sets")
            return self._prepare(x), None, None
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        mask = check_mask(mask, x, min_points=1)
        if x.is_floating_point():
            x = torch.where(mask.view(*mask.shape, *([1] * (x.dim() - 2))), x, torch.zeros((), dtype=x.dtype,
                                                                                           device=x.device))
        x = self._prepare(x)
        sizes = set_sizes(x, mask) if self.variable_size else None
        check = getattr(self.size_dist, "check_sizes", None)
        if check is not None:
            check(sizes)
        if bool(mask.all()):
            return x, None, sizes
        if not self.transform.supports_mask:
            self.transform.check_mask_support()
        return x, mask, sizes

    #: a padded batch whose padding adds more than ``bucket_waste`` of its points is scored in up to
    #: ``max_buckets`` groups of similar set sizes, each cut to its own largest set (the same result per
    #: set), when a rough cost model says so: per group a fixed call cost of ``bucket_call_cost`` point
    #: rows, and per padded point ``1 + width / bucket_attention_width`` (attention grows with the width)
    bucket_waste: float = 0.1
    max_buckets: int = 8
    bucket_call_cost: float = 700.0
    bucket_attention_width: float = 128.0

    def _buckets(self, mask: Tensor) -> Optional[list[Tensor]]:
        """Index groups of sets of similar sizes, or ``None`` when one padded batch is as good."""
        b = mask.shape[0]
        if self.max_buckets < 2 or b < 16:
            return None
        if not getattr(self, "_data_init_done", False):  # ActNorm & co. initialise on the first whole batch
            if any(not bool(getattr(m, "initialized", True)) for m in self.transform.modules()):
                return None
            self._data_init_done = True
        sizes = mask.sum(1)
        if b * float(sizes.max()) <= (1.0 + self.bucket_waste) * float(sizes.sum()):
            return None
        order = torch.argsort(sizes)
        ranked = sizes[order].double()

        def cost(k: int) -> float:
            widths = torch.stack([c.max() for c in ranked.chunk(k)])
            counts = torch.tensor([c.numel() for c in ranked.chunk(k)], dtype=torch.float64)
            return float(k * self.bucket_call_cost + (counts * widths * (1 + widths / self.bucket_attention_width)).sum())

        ks = [k for k in (1, 2, 3, 4, 6, 8) if k <= self.max_buckets and b // k >= 8]
        best = min(ks, key=cost)
        return None if best == 1 else list(order.chunk(best))

    def _log_prob_latent(self, x: Tensor, context: Optional[Tensor], mask: Optional[Tensor] = None,
                         sizes: Optional[Tensor] = None, bucket: bool = True) -> Tensor:
        if x.shape[0] == 0:  # no data: no layer runs (an empty batch would initialise ActNorm & co. on nothing)
            return x.new_zeros(0)
        groups = None if mask is None or not bucket else self._buckets(mask)
        if groups is not None:
            parts = []
            for idx in groups:
                m = mask[idx]
                width = int(m.sum(1).max())
                keep = real_first(m)[:, :width]
                xs = torch.gather(x[idx], 1, keep.view(*keep.shape, *([1] * (x.dim() - 2))).expand(
                    -1, -1, *x.shape[2:]))
                ms = torch.gather(m, 1, keep)
                parts.append(self._log_prob_latent(xs, None if context is None else context[idx],
                                                   None if bool(ms.all()) else ms,
                                                   None if sizes is None else sizes[idx], bucket=False))
            return torch.cat(parts)[inverse_permutation(torch.cat(groups)[None])[0]]
        if mask is None:
            z, ldj = self.transform(x, context)
            lp = self.base.log_prob(z, context) + ldj
        else:
            z, ldj = self.transform(x, context, mask=mask)
            lp = self.base.log_prob(z, context, mask=self.transform.forward_mask(mask)) + ldj
        return lp if sizes is None else lp + self.size_dist.log_prob(sizes)

    def _batch_labels(self, x, context: Optional[Tensor]) -> Optional[Tensor]:
        """``context``, or the labels of a :class:`~setflow.sets.SetBatch` ``x`` for a class-conditional flow."""
        if context is None and isinstance(x, SetBatch) and isinstance(self.context_encoder, LabelContext):
            return x.labels
        return context

    def log_prob(self, x: Tensor, context: Optional[Tensor] = None, mask: Optional[Tensor] = None) -> Tensor:
        """Log-density (nats) of each datum, shape ``(B,)``. A lower bound when ``not is_exact``.

        ``mask`` ``(B, N)`` bool marks the real points of padded sets of different sizes. An empty
        batch (``B = 0``) gives an empty ``(0,)`` result (its shape is still checked; no layer runs).
        """
        context = self._batch_labels(x, context)
        x, mask, sizes = self._prepare_masked(x, mask)
        context = self._context(context, x.shape[0])
        return self._log_prob_latent(x, context, mask, sizes)

    def encode(self, x: Tensor, context: Optional[Tensor] = None, mask: Optional[Tensor] = None) -> Tensor:
        """The latent ``z`` of ``x`` (one draw when a layer is stochastic); its mask is
        ``transform.forward_mask(mask)`` (the real points first after a sort)."""
        context = self._batch_labels(x, context)
        x, mask, _ = self._prepare_masked(x, mask)
        context = self._context(context, x.shape[0])
        return self.transform(x, context)[0] if mask is None else self.transform(x, context, mask=mask)[0]

    def decode(self, z: Tensor, context: Optional[Tensor] = None, mask: Optional[Tensor] = None) -> Tensor:
        context = self._context(context, z.shape[0])
        if mask is None or bool(check_mask(mask, z).all()):
            return self.transform.inverse(z, context)
        return self.transform.inverse(z, context, mask=mask)

    def _sample_sizes(self, num_samples: Optional[int], context: Optional[Tensor], num_points) -> Tensor:
        """``(B,)`` set sizes: ``num_points`` (an int or a ``(B,)`` tensor) or draws from ``size_dist``."""
        n = num_samples if num_samples is not None else (None if context is None else int(context.shape[0]))
        if isinstance(num_points, Tensor):
            sizes = num_points.to(device=self.base.device, dtype=torch.long).reshape(-1)
            if n is not None and sizes.shape[0] != n:
                raise ValueError(f"num_points has {sizes.shape[0]} sizes for {n} samples")
        else:
            if n is None:
                raise ValueError("sample() needs num_samples (or a context tensor fixing the batch size)")
            if num_points is None:
                return self.size_dist.sample(n).to(self.base.device)
            sizes = torch.full((n,), int(num_points), dtype=torch.long, device=self.base.device)
        if sizes.numel() and int(sizes.min()) < 1:
            raise ValueError(f"num_points must be >= 1, got {int(sizes.min())}")
        check = getattr(self.size_dist, "check_sizes", None)
        if check is not None:
            check(sizes)
        return sizes

    def _sample_latent(self, num_samples, context, num_points):
        sizes = self._sample_sizes(num_samples, context, num_points)
        mask = lengths_to_mask(sizes, int(sizes.max()) if sizes.numel() else 0)
        z = self.base.sample(sizes.shape[0], context, num_points=mask.shape[1])
        z = torch.where(mask[..., None], z, torch.zeros((), dtype=z.dtype, device=z.device))
        return z, mask, sizes

    @torch.no_grad()
    def sample(self, num_samples: Optional[int] = None, context: Optional[Tensor] = None,
               num_points=None):
        """Draw samples on the module's device and in its dtype (one per context row if conditional).

        A variable-size flow draws each set's size from ``size_dist`` (or takes ``num_points``, an int or
        ``(B,)`` sizes) and returns a :class:`~setflow.sets.SetBatch`: points ``(B, N_max, D)`` zero-padded,
        ``mask`` ``(B, N_max)``, the class labels of a label-conditional flow. No samples (``num_samples=0``)
        give an empty batch, ``(0, *event_shape)`` (a ``SetBatch`` of ``(0, 0, D)`` for sets of any size),
        without running the layers. (A fixed-size SortFlow / PermuteFlow,
        :class:`~setflow.models.set_flows.SortPermuteFlow`, returns a ``SetBatch`` too.)
        """
        labels = context if isinstance(self.context_encoder, LabelContext) else None
        context = self._context(context, num_samples)
        if not self.variable_size:
            if num_points is not None:
                z = self.base.sample(num_samples, context, num_points=int(num_points))
            else:
                z = self.base.sample(num_samples, context)
            empty = self._empty_data(z)
            return self.transform.inverse(z, context) if empty is None else empty
        z, mask, _ = self._sample_latent(num_samples, context, num_points)
        if z.shape[0] == 0:
            return SetBatch(z, mask, labels)
        full = bool(mask.all())
        x = self.transform.inverse(z, context) if full else self.transform.inverse(z, context, mask=mask)
        return SetBatch(torch.where(mask[..., None], x, torch.zeros((), dtype=x.dtype, device=x.device)), mask, labels)

    @torch.no_grad()
    def sample_and_log_prob(
        self, num_samples: Optional[int] = None, context: Optional[Tensor] = None
    ) -> tuple[Tensor, Tensor]:
        if self.variable_size:
            raise ValueError("sample_and_log_prob is for fixed-size flows; for sets of different sizes use "
                             "log_prob(sample(n))")
        return super().sample_and_log_prob(num_samples, context)

    def iwbo(self, x: Tensor, k: int = 10, chunk: Optional[int] = None, context: Optional[Tensor] = None,
             mask: Optional[Tensor] = None) -> Tensor:
        """Importance-weighted bound ``log 1/k sum_i exp(ELBO_i)`` per set, shape ``(B,)``, with ``mask``
        for padded sets (as :meth:`log_prob`). Equals ``log_prob`` for exact flows; ``chunk`` bounds how
        many of the ``k`` copies are evaluated at once (memory stays ``O(B * chunk)``).
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        context = self._batch_labels(x, context)
        x, mask, sizes = self._prepare_masked(x, mask)
        context = self._context(context, x.shape[0])
        return self._importance_weighted(self._log_prob_latent, k, chunk, x, context, mask, sizes)


class ConditionalFlow(ConditionalDistribution):
    r"""A conditional :class:`SetFlow` as a density ``p(x | c)``: the form a VAE layer takes as its decoder.

    ``log_prob(x, context, mask)`` is the flow's; ``sample(context=c)`` draws the flow's base noise
    (or takes ``noise``, e.g. the same noise for every code of an interpolation) and decodes it
    with the context. Sets: ``num_points`` (a flow whose base leaves ``N`` free) or ``mask``
    (``(B, N)`` bool, sets of different sizes; the padding of the result is zero).

    Args:
        flow: a flow built with a context (its ``context_encoder`` checks ``c``, e.g.
            :class:`VectorContext`) and without a density over set sizes (the model that holds
            this decoder scores ``N``).

    Shapes:
        - log_prob: ``x (B, *event)``, context ``(B, C)`` -> ``(B,)``
        - sample: context ``(B, C)`` -> ``(B, *event)``
    """

    def __init__(self, flow: SetFlow) -> None:
        super().__init__()
        if not flow.conditional:
            raise ValueError("ConditionalFlow needs a flow built with a context (context_encoder)")
        if flow.variable_size:
            raise ValueError("ConditionalFlow takes a flow without a set-size density; the model holding it scores N")
        self.flow = flow

    @property
    def supports_mask(self) -> bool:
        return bool(self.flow.transform.supports_mask)

    def log_prob(self, x: Tensor, context: Optional[Tensor] = None, mask: Optional[Tensor] = None) -> Tensor:
        return self.flow.log_prob(x, context, mask)

    def sample(self, num_samples: Optional[int] = None, context: Optional[Tensor] = None,
               mask: Optional[Tensor] = None, num_points: Optional[int] = None,
               noise: Optional[Tensor] = None) -> Tensor:
        b = self._num_from_context(num_samples, context)
        if noise is None:
            if mask is not None:
                num_points = mask.shape[1]
            noise = (self.flow.base.sample(b, None) if num_points is None
                     else self.flow.base.sample(b, None, num_points=int(num_points)))
        if mask is None:
            return self.flow.decode(noise, context)
        mask = check_mask(mask, noise, min_points=0)
        zero = torch.zeros((), dtype=noise.dtype, device=noise.device)
        x = self.flow.decode(torch.where(mask[..., None], noise, zero), context, mask)
        return torch.where(mask[..., None], x, zero)
