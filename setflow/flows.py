"""``Flow``: a base distribution and a list of transforms, with log_prob, sample and IWBO."""

from __future__ import annotations

import math
from typing import Iterable, Optional, Sequence

import torch
from torch import Tensor, nn

from setflow.distributions.base import Distribution
from setflow.transforms.base import CompositeTransform, Transform

__all__ = ["Flow", "check_input"]


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
    ) -> None:
        super().__init__()
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
        return x

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> Tensor:
        return self.log_prob(x, context)

    def log_prob(self, x: Tensor, context: Optional[Tensor] = None) -> Tensor:
        """Log-density (nats) of each datum, shape ``(B,)``. A lower bound when ``not is_exact``."""
        x = self._prepare(x)
        z, ldj = self.transform(x, context)
        return self.base.log_prob(z, context) + ldj

    def encode(self, x: Tensor, context: Optional[Tensor] = None) -> Tensor:
        """The latent ``z`` of ``x`` (one draw when a layer is stochastic)."""
        return self.transform(self._prepare(x), context)[0]

    def decode(self, z: Tensor, context: Optional[Tensor] = None) -> Tensor:
        return self.transform.inverse(z, context)

    @torch.no_grad()
    def sample(self, num_samples: Optional[int] = None, context: Optional[Tensor] = None) -> Tensor:
        """Draw samples on the module's device and in its dtype."""
        z = self.base.sample(num_samples, context)
        return self.transform.inverse(z, context)

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
        z = self.base.sample(num_samples, context)
        log_p = self.base.log_prob(z, context)
        x, inv_ldj = _inverse_with_ldj(self.transform, z, context)
        return x, log_p - inv_ldj

    def iwbo(self, x: Tensor, k: int = 10, chunk: Optional[int] = None, context: Optional[Tensor] = None) -> Tensor:
        """Importance-weighted bound ``log 1/k sum_i exp(ELBO_i)`` per datum, shape ``(B,)``.

        Equals ``log_prob`` for exact flows. ``chunk`` bounds how many of the ``k``
        copies are evaluated at once (memory stays ``O(B * chunk)``).
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        x = self._prepare(x)
        if self.is_exact:
            return self.log_prob(x, context)
        chunk = k if chunk is None else max(1, min(int(chunk), k))
        b = x.shape[0]
        weights = []
        done = 0
        while done < k:
            c = min(chunk, k - done)
            xr = x.repeat_interleave(c, dim=0)
            cr = None if context is None else context.repeat_interleave(c, dim=0)
            z, ldj = self.transform(xr, cr)
            weights.append((self.base.log_prob(z, cr) + ldj).view(b, c))
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
