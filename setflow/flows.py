"""``Flow``: a base distribution and a list of transforms, with log_prob, sample and IWBO."""

from __future__ import annotations

import math
from typing import Iterable, Optional, Sequence

import torch
from torch import Tensor, nn

from setflow.distributions.base import ConditionalDistribution, Distribution
from setflow.sets import SetBatch, check_mask, lengths_to_mask, real_first, set_sizes
from setflow.transforms.permutation_utils import inverse_permutation
from setflow.transforms.base import CompositeTransform, Transform

__all__ = ["Flow", "ConditionalFlow", "check_input", "LabelContext", "VectorContext"]


def check_input(
    x: Tensor,
    event_shape: Optional[Sequence[Optional[int]]] = None,
    *,
    discrete: bool = False,
    name: str = "x",
    layout: str = "",
) -> None:
    """Validate a batch before it enters a flow and raise a ``ValueError`` that names what was expected.

    ``event_shape`` entries may be ``None`` for "any size" (e.g. the number of points of a set).
    ``layout`` is a human label such as ``"(B, N, D)"`` used in the message.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if event_shape is not None:
        want = "(B, " + ", ".join("*" if s is None else str(s) for s in event_shape) + ")"
        label = f" {layout}" if layout else ""
        if x.dim() != len(event_shape) + 1:
            raise ValueError(
                f"{name} must have {len(event_shape) + 1} dimensions{label} = {want}, got shape {tuple(x.shape)}"
            )
        for got, exp in zip(x.shape[1:], event_shape):
            if exp is not None and got != exp:
                raise ValueError(f"{name} must have shape {want}{label}, got {tuple(x.shape)}")
    if discrete:
        if x.dtype == torch.bool or x.is_complex():
            raise ValueError(f"{name} must hold integers (integer or float dtype), got dtype {x.dtype}")
        if x.is_floating_point() and not bool(torch.equal(x, torch.round(x))):
            raise ValueError(f"{name} must hold integer values for a discrete flow")
    elif not x.is_floating_point():
        raise ValueError(f"{name} must have a floating dtype (float32/float64), got {x.dtype}")
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} contains {bad} NaN or Inf value(s); clean the input before log_prob")


class LabelContext(nn.Module):
    """Context of a class-conditional flow: integer labels ``(B,)`` -> a learned embedding ``(B, dim)``.

    Rejects with a ``ValueError`` a context that is not an integer tensor of shape ``(B,)``
    with values in ``0..num_classes-1``.
    """

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        if num_classes < 1 or dim < 1:
            raise ValueError(f"LabelContext needs num_classes >= 1 and dim >= 1, got {num_classes}, {dim}")
        self.num_classes = num_classes
        self.dim = dim
        self.embedding = nn.Embedding(num_classes, dim)

    @property
    def expects(self) -> str:
        return f"integer class labels of shape (B,) in 0..{self.num_classes - 1}"

    def forward(self, labels: Tensor, batch: Optional[int] = None) -> Tensor:
        if not isinstance(labels, Tensor):
            raise TypeError(f"context must be a torch.Tensor of {self.expects}, got {type(labels).__name__}")
        if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
            raise ValueError(f"context must hold {self.expects}; got dtype {labels.dtype}")
        if labels.dim() != 1 or (batch is not None and labels.shape[0] != batch):
            want = "(B,)" if batch is None else f"({batch},)"
            raise ValueError(f"context must have shape {want} ({self.expects}), got {tuple(labels.shape)}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"context labels must lie in 0..{self.num_classes - 1}, got {int(labels.min())}.."
                             f"{int(labels.max())}")
        return self.embedding(labels.to(self.embedding.weight.device))

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, dim={self.dim}"


class VectorContext(nn.Module):
    """Context given as float vectors ``(B, features)``, passed on unchanged after checking."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.features = features

    @property
    def expects(self) -> str:
        return f"a float tensor of shape (B, {self.features})"

    def forward(self, context: Tensor, batch: Optional[int] = None) -> Tensor:
        if not isinstance(context, Tensor) or not context.is_floating_point():
            got = context.dtype if isinstance(context, Tensor) else type(context).__name__
            raise ValueError(f"context must be {self.expects}; got {got}")
        if context.dim() != 2 or context.shape[1] != self.features or (batch is not None and context.shape[0] != batch):
            raise ValueError(f"context must be {self.expects}" + ("" if batch is None else f" with B={batch}")
                             + f", got shape {tuple(context.shape)}")
        return context

    def extra_repr(self) -> str:
        return f"features={self.features}"


class Flow(nn.Module):
    """A normalizing flow (in the SurVAE sense): ``log p(x) = log p_base(z) + sum ldj``.

    Args:
        base: density of the latent ``z``.
        transforms: layers applied data -> latent, in order.
        event_shape: expected shape of one datum (``None`` entries are free); used to
            validate inputs. Defaults to no shape check.
        discrete: inputs are integers (integer discrete flows); they are cast to the
            module's float dtype.
        layout: a label for error messages, e.g. ``"(B, N, D)"``.
        context_encoder: for a conditional flow, the module that checks a ``context`` and maps
            it to what the layers take (:class:`LabelContext`, :class:`VectorContext`). A flow
            built without one rejects any context; a conditional flow rejects ``context=None``.
        size_dist: for sets of different sizes, a density over the number of points
            (:class:`~setflow.distributions.SetSizeDistribution`): ``log_prob`` then returns the
            complete ``log p(N) + log p(X | N)``, every call needs ``mask`` (``(B, N)`` bool, True =
            real point; a padded batch cannot be told from full sets without it) and ``sample``
            draws ``N`` (or takes ``num_points``) and returns ``(x, mask)``.

    Masks: ``log_prob``, ``iwbo``, ``encode``, ``decode`` and the samplers take ``mask=None``; a
    mask of all True gives bit-identical results to ``mask=None``. The padding is zeroed on the
    way in, so its values (even NaN) never change a result. ``log_prob``, ``iwbo`` and ``encode`` also
    take a :class:`~setflow.sets.SetBatch` (its labels are the context of a class-conditional flow when
    no ``context`` is given) or a PyG ``Data`` / ``Batch`` (points in ``pos``, else ``x``) in place of
    ``x`` and ``mask``. A variable-size flow's ``sample`` returns a ``SetBatch``.

    Example:
        >>> from setflow.distributions import StandardNormal
        >>> from setflow.transforms import ScalarAffine
        >>> flow = Flow(StandardNormal((2,)), [ScalarAffine(shift=1.0, scale=2.0)])
        >>> flow.log_prob(torch.zeros(3, 2)).shape
        torch.Size([3])
        >>> flow.sample(4).shape
        torch.Size([4, 2])
    """

    def __init__(
        self,
        base: Distribution,
        transforms: Iterable[Transform],
        event_shape: Optional[Sequence[Optional[int]]] = None,
        discrete: bool = False,
        layout: str = "",
        context_encoder: Optional[nn.Module] = None,
        size_dist: Optional[Distribution] = None,
    ) -> None:
        super().__init__()
        self.context_encoder = context_encoder
        self.size_dist = size_dist
        self.base = base
        self.transform = transforms if isinstance(transforms, CompositeTransform) else CompositeTransform(transforms)
        self.event_shape = None if event_shape is None else tuple(event_shape)
        self.discrete = discrete
        self.layout = layout

    @property
    def transforms(self) -> nn.ModuleList:
        return self.transform.transforms

    @property
    def is_exact(self) -> bool:
        """True when ``log_prob`` is exact (no layer samples in the data -> latent direction)."""
        return not self.transform.stochastic_forward

    def _param_dtype(self) -> torch.dtype:
        for p in self.parameters():
            if p.is_floating_point():
                return p.dtype
        for b in self.buffers():
            if b.is_floating_point():
                return b.dtype
        return torch.get_default_dtype()

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

    def _log_prob_latent(self, x: Tensor, context: Optional[Tensor], mask: Optional[Tensor],
                         sizes: Optional[Tensor], bucket: bool = True) -> Tensor:
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

    def _prepare(self, x: Tensor) -> Tensor:
        check_input(x, self.event_shape, discrete=self.discrete, layout=self.layout)
        if self.discrete and not x.is_floating_point():
            x = x.to(self._param_dtype())
        ref = next((t for t in self.parameters() if t.is_floating_point()), None)
        if ref is not None and x.dtype != ref.dtype:
            raise ValueError(f"x has dtype {x.dtype} but the model's parameters are {ref.dtype}; "
                             f"convert the data with x.to({ref.dtype}) or the model with model.to({x.dtype})")
        if ref is not None and x.device != ref.device:
            raise ValueError(f"x is on device {x.device} but the model is on {ref.device}; move one of them")
        return x

    @property
    def conditional(self) -> bool:
        """True when the flow was built with a context (it then needs one on every call)."""
        return self.context_encoder is not None

    def _batch_labels(self, x, context: Optional[Tensor]) -> Optional[Tensor]:
        """``context``, or the labels of a :class:`~setflow.sets.SetBatch` ``x`` for a class-conditional flow."""
        if context is None and isinstance(x, SetBatch) and isinstance(self.context_encoder, LabelContext):
            return x.labels
        return context

    def _context(self, context: Optional[Tensor], batch: Optional[int]) -> Optional[Tensor]:
        """Check ``context`` against how the flow was built and encode it (labels -> embeddings)."""
        if self.context_encoder is None:
            if context is not None:
                shape = tuple(context.shape) if isinstance(context, Tensor) else type(context).__name__
                raise ValueError(f"this flow was built without a context but got one ({shape}); pass context=None "
                                 "or build a conditional model (model_args.conditional=true)")
            return None
        if context is None:
            raise ValueError(f"this conditional flow needs a context: {self.context_encoder.expects}")
        return self.context_encoder(context, batch)

    def forward(self, x: Tensor, context: Optional[Tensor] = None, mask: Optional[Tensor] = None) -> Tensor:
        return self.log_prob(x, context, mask)

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

    def _empty_data(self, z: Tensor) -> Optional[Tensor]:
        """``(0, *event_shape)`` in ``z``'s dtype for an empty latent batch ``z`` (no layer runs on it), else
        ``None`` (also when the event shape is not fully known: then the layers map the empty batch)."""
        if z.shape[0] or self.event_shape is None or None in self.event_shape:
            return None
        return z.new_zeros(0, *self.event_shape)

    @torch.no_grad()
    def sample(self, num_samples: Optional[int] = None, context: Optional[Tensor] = None,
               num_points=None):
        """Draw samples on the module's device and in its dtype (one per context row if conditional).

        A variable-size flow draws each set's size from ``size_dist`` (or takes ``num_points``, an int or
        ``(B,)`` sizes) and returns a :class:`~setflow.sets.SetBatch`: points ``(B, N_max, D)`` zero-padded,
        ``mask`` ``(B, N_max)``, the class labels of a label-conditional flow. No samples (``num_samples=0``)
        give an empty batch, ``(0, *event_shape)`` (a ``SetBatch`` of ``(0, 0, D)`` for sets of any size),
        without running the layers. (A fixed-size set flow, :class:`~setflow.models.set_flows.SetFlow`,
        returns a ``SetBatch`` too; image and toy flows return the tensor.)
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
        """Samples ``x`` and their log-density ``(B,)``, carried along the sampling path.

        ``log p(x) = log p_base(z) - sum of each layer's inverse log-det`` (``inverse_with_ldj``
        where a layer has one, else its forward ``ldj`` at the produced value). Needs an exact
        flow. It equals ``log_prob(x)`` when every layer's forward maps ``x`` back to the latent
        it came from: true for bijections and for a sort-consistent SortFlow (its latent is
        sorted), not for the paper SortFlow, whose latent is usually unsorted.
        """
        if not self.is_exact:
            raise ValueError("sample_and_log_prob needs an exact flow (no stochastic forward layer); use sample()")
        if self.variable_size:
            raise ValueError("sample_and_log_prob is for fixed-size flows; for sets of different sizes use "
                             "log_prob(sample(n))")
        context = self._context(context, num_samples)
        z = self.base.sample(num_samples, context)
        empty = self._empty_data(z)
        if empty is not None:
            return empty, z.new_zeros(0)
        log_p = self.base.log_prob(z, context)
        x, inv_ldj = _inverse_with_ldj(self.transform, z, context)
        return x, log_p - inv_ldj

    def iwbo(self, x: Tensor, k: int = 10, chunk: Optional[int] = None, context: Optional[Tensor] = None,
             mask: Optional[Tensor] = None) -> Tensor:
        """Importance-weighted bound ``log 1/k sum_i exp(ELBO_i)`` per datum, shape ``(B,)``.

        Equals ``log_prob`` for exact flows. ``chunk`` bounds how many of the ``k``
        copies are evaluated at once (memory stays ``O(B * chunk)``).
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        context = self._batch_labels(x, context)
        x, mask, sizes = self._prepare_masked(x, mask)
        b = x.shape[0]
        context = self._context(context, b)
        if self.is_exact:
            return self._log_prob_latent(x, context, mask, sizes)
        chunk = k if chunk is None else max(1, min(int(chunk), k))
        weights = []
        done = 0
        while done < k:
            c = min(chunk, k - done)
            xr = x.repeat_interleave(c, dim=0)
            cr = None if context is None else context.repeat_interleave(c, dim=0)
            mr = None if mask is None else mask.repeat_interleave(c, dim=0)
            sr = None if sizes is None else sizes.repeat_interleave(c, dim=0)
            weights.append(self._log_prob_latent(xr, cr, mr, sr).view(b, c))
            done += c
        w = torch.cat(weights, dim=1)
        return torch.logsumexp(w, dim=1) - math.log(k)


class ConditionalFlow(ConditionalDistribution):
    r"""A conditional :class:`Flow` as a density ``p(x | c)``: the form a VAE layer takes as its decoder.

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

    def __init__(self, flow: Flow) -> None:
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


def _inverse_with_ldj(t: Transform, z: Tensor, context: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """``(x, -ldj(x))`` for one transform in the sampling direction (composites layer by layer)."""
    if isinstance(t, CompositeTransform):
        total = torch.zeros(z.shape[0], dtype=z.dtype if z.is_floating_point() else torch.get_default_dtype(),
                            device=z.device)
        for sub in reversed(t.transforms):
            z, l = _inverse_with_ldj(sub, z, context)
            total = total + l
        return z, total
    if hasattr(t, "inverse_with_ldj"):
        return t.inverse_with_ldj(z, context)
    x = t.inverse(z, context)
    return x, -t(x, context)[1]
