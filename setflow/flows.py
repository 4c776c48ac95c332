"""``Flow``: a base distribution and a list of transforms, with log_prob, sample and IWBO.

Sets of points (masks, PyG input, set sizes) are :class:`setflow.set_flow.SetFlow`'s; this base serves
every flow (images, toys, sets).
"""

from __future__ import annotations

import math
from typing import Iterable, Optional, Sequence

import torch
from torch import Tensor, nn

from setflow.distributions.base import Distribution
from setflow.transforms.base import CompositeTransform, Transform

__all__ = ["Flow", "check_input", "LabelContext", "VectorContext"]


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

    Sets (masks, PyG input, a density over the set size, size buckets) are
    :class:`~setflow.set_flow.SetFlow`'s; every flow takes ``mask=None`` and refuses a mask.

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
    ) -> None:
        super().__init__()
        self.context_encoder = context_encoder
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

    def _no_mask(self, mask: Optional[Tensor]) -> None:
        """A mask marks the points of padded sets: only a :class:`~setflow.set_flow.SetFlow` takes one."""
        if mask is not None:
            raise ValueError(f"{type(self).__name__} takes no mask= (a mask marks the real points of padded sets; "
                             "a set flow, setflow.set_flow.SetFlow, takes one)")

    def _log_prob_latent(self, x: Tensor, context: Optional[Tensor]) -> Tensor:
        if x.shape[0] == 0:  # no data: no layer runs (an empty batch would initialise ActNorm & co. on nothing)
            return x.new_zeros(0)
        z, ldj = self.transform(x, context)
        return self.base.log_prob(z, context) + ldj

    def log_prob(self, x: Tensor, context: Optional[Tensor] = None, mask: Optional[Tensor] = None) -> Tensor:
        """Log-density (nats) of each datum, shape ``(B,)``. A lower bound when ``not is_exact``.

        An empty batch (``B = 0``) gives an empty ``(0,)`` result (its shape is still checked; no layer runs).
        """
        self._no_mask(mask)
        x = self._prepare(x)
        return self._log_prob_latent(x, self._context(context, x.shape[0]))

    def encode(self, x: Tensor, context: Optional[Tensor] = None, mask: Optional[Tensor] = None) -> Tensor:
        """The latent ``z`` of ``x`` (one draw when a layer is stochastic)."""
        self._no_mask(mask)
        x = self._prepare(x)
        return self.transform(x, self._context(context, x.shape[0]))[0]

    def decode(self, z: Tensor, context: Optional[Tensor] = None, mask: Optional[Tensor] = None) -> Tensor:
        self._no_mask(mask)
        return self.transform.inverse(z, self._context(context, z.shape[0]))

    def _empty_data(self, z: Tensor) -> Optional[Tensor]:
        """``(0, *event_shape)`` in ``z``'s dtype for an empty latent batch ``z`` (no layer runs on it), else
        ``None`` (also when the event shape is not fully known: then the layers map the empty batch)."""
        if z.shape[0] or self.event_shape is None or None in self.event_shape:
            return None
        return z.new_zeros(0, *self.event_shape)

    @torch.no_grad()
    def sample(self, num_samples: Optional[int] = None, context: Optional[Tensor] = None) -> Tensor:
        """Draw samples on the module's device and in its dtype (one per context row if conditional).

        No samples (``num_samples=0``) give an empty batch ``(0, *event_shape)`` without running the layers.
        """
        context = self._context(context, num_samples)
        z = self.base.sample(num_samples, context)
        empty = self._empty_data(z)
        return self.transform.inverse(z, context) if empty is None else empty

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
        self._no_mask(mask)
        x = self._prepare(x)
        return self._importance_weighted(self._log_prob_latent, k, chunk, x, self._context(context, x.shape[0]))

    def _importance_weighted(self, score, k: int, chunk: Optional[int], x: Tensor, *extra: Optional[Tensor]) -> Tensor:
        """``log 1/k sum_i exp(score(x_i, *extra_i))`` over ``k`` draws per datum (``score(x, *extra)`` itself
        for an exact flow); ``extra`` are per-datum tensors (or ``None``) repeated along with ``x``."""
        b = x.shape[0]
        if self.is_exact:
            return score(x, *extra)
        chunk = k if chunk is None else max(1, min(int(chunk), k))
        weights = []
        done = 0
        while done < k:
            c = min(chunk, k - done)
            xr = x.repeat_interleave(c, dim=0)
            rest = [None if t is None else t.repeat_interleave(c, dim=0) for t in extra]
            weights.append(score(xr, *rest).view(b, c))
            done += c
        w = torch.cat(weights, dim=1)
        return torch.logsumexp(w, dim=1) - math.log(k)


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
