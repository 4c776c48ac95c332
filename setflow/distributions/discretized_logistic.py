r"""Discretized logistic densities on the integers (latents of integer discrete flows).

A discretized logistic with location :math:`\mu` and scale :math:`s` puts on every
integer :math:`x` the mass of the bin :math:`[x - 1/2, x + 1/2)` under a logistic:

.. math::
    P(x) = \sigma(a) - \sigma(b), \qquad a = \frac{x + 1/2 - \mu}{s},\quad b = \frac{x - 1/2 - \mu}{s}.

The range is all of :math:`\mathbb{Z}` (no edge bins). Subtracting two nearly
equal sigmoids loses every digit in the tails, so we use the identity
(:math:`a - b = 1/s`, :math:`\sigma(b) e^{-b} = \sigma(-b)`)

.. math::
    \sigma(a) - \sigma(b) = \sigma(a)\,\sigma(b)\,(e^{-b} - e^{-a})
                          = \sigma(a)\,\sigma(-b)\,(1 - e^{-1/s}),

    \log P(x) = \operatorname{logsigmoid}(a) + \operatorname{logsigmoid}(-b) + \log(-\operatorname{expm1}(-1/s)),

which is a sum of three well-conditioned terms and is finite for any finite
:math:`x`: far in the tails one of the log-sigmoids is :math:`\approx -|a|`.

Mixtures keep the component dimension **last** in their parameters
(``logit_weights, locs, log_scales`` of shape ``(..., K)``) while ``x`` has none.

Sampling is exact: if :math:`Y = \mu + s\,\mathrm{logit}(U)` with
:math:`U \sim \mathcal{U}(0, 1)` then :math:`\mathrm{round}(Y)` has exactly the
law :math:`P` above (ties at half-integers have probability zero).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from setflow.distributions.base import ConditionalDistribution, Distribution
from setflow.distributions.normal import ShapeLike, _as_shape, resolve_num_samples, sum_except_batch

__all__ = [
    "MIN_LOG_SCALE",
    "logistic_cdf",
    "discretized_logistic_log_prob",
    "discretized_logistic_mixture_log_prob",
    "discretized_logistic_mixture_pmf",
    "discretized_logistic_mixture_cdf",
    "sample_discretized_logistic_mixture",
    "DiscretizedLogistic",
    "DiscretizedLogisticMixture",
    "ConditionalDiscretizedLogistic",
    "ConditionalDiscretizedLogisticMixture",
]

#: ``log_scale`` is clamped from below at this value so that ``1/s`` stays finite
#: (``exp(20)`` ~ 5e8; a scale that small already puts ~all mass on one integer).
MIN_LOG_SCALE = -20.0


def _inv_scale(log_scale: Tensor) -> Tensor:
    return torch.exp(-log_scale.clamp(min=MIN_LOG_SCALE))


def logistic_cdf(x: Tensor, loc: Tensor, log_scale: Tensor) -> Tensor:
    r"""CDF of the continuous logistic, :math:`\sigma((x - \mu)/s)`, elementwise with broadcasting."""
    return torch.sigmoid((x - loc) * _inv_scale(log_scale))


def discretized_logistic_log_prob(x: Tensor, loc: Tensor, log_scale: Tensor) -> Tensor:
    """Elementwise ``log P(x)`` of a discretized logistic on the integers (see module docstring).

    ``x`` holds integers (any float dtype); ``loc`` and ``log_scale`` broadcast against it.

    Example:
        >>> lp = discretized_logistic_log_prob(torch.tensor([0.0, 1e4]), torch.tensor(0.0), torch.tensor(0.0))
        >>> bool(torch.isfinite(lp).all())
        True
    """
    inv_s = _inv_scale(log_scale)
    a = (x + 0.5 - loc) * inv_s
    b = (x - 0.5 - loc) * inv_s
    return F.logsigmoid(a) + F.logsigmoid(-b) + torch.log(-torch.expm1(-inv_s))


def discretized_logistic_mixture_log_prob(
    x: Tensor, logit_weights: Tensor, locs: Tensor, log_scales: Tensor
) -> Tensor:
    """Elementwise log-mass of a K-component mixture; parameters are ``(..., K)``, ``x`` is ``(...)``.

    ``log P(x) = logsumexp_k [log_softmax(logit_weights)_k + log P_k(x)]``.
    """
    log_w = torch.log_softmax(logit_weights, dim=-1)
    lp = discretized_logistic_log_prob(x.unsqueeze(-1), locs, log_scales)
    return torch.logsumexp(log_w + lp, dim=-1)


def _mixture_weights_f64(logit_weights: Tensor) -> list[Tensor]:
    """Softmax over the last dim in float64 with elementwise ops only (thread-count independent)."""
    logits = logit_weights.to(torch.float64)
    k = logits.shape[-1]
    m = logits.max(dim=-1).values  # max is exact, order independent
    exps = [torch.exp(logits[..., i] - m) for i in range(k)]
    total = exps[0]
    for e in exps[1:]:
        total = total + e
    return [e / total for e in exps]


def discretized_logistic_mixture_pmf(
    bins: Tensor, logit_weights: Tensor, locs: Tensor, log_scales: Tensor
) -> Tensor:
    """Probability mass of each integer in ``bins``, in float64, deterministic.

    Shapes:
        - bins: ``(..., M)`` integers (any dtype); a 1-D ``(M,)`` window broadcasts to every dimension
        - logit_weights, locs, log_scales: ``(..., K)``
        - output: ``(..., M)`` float64 probabilities (not renormalised: the mass outside the
          window is ``1 - output.sum(-1)``)

    Only elementwise operations and a Python loop over the K components are used,
    so the result does not depend on the number of threads (encoder and decoder
    of a codec rebuild bit-identical tables).
    """
    x = bins.to(torch.float64)  # (..., M)
    w = _mixture_weights_f64(logit_weights)
    locs = locs.to(torch.float64).unsqueeze(-2)  # (..., 1, K)
    log_scales = log_scales.to(torch.float64).unsqueeze(-2)
    out = None
    for i, wi in enumerate(w):
        p = torch.exp(discretized_logistic_log_prob(x, locs[..., i], log_scales[..., i]))
        term = wi.unsqueeze(-1) * p
        out = term if out is None else out + term
    return out


def discretized_logistic_mixture_cdf(x: Tensor, logit_weights: Tensor, locs: Tensor, log_scales: Tensor) -> Tensor:
    r"""``P(X <= x)`` for integer ``x`` (``(...)``) under a mixture with ``(..., K)`` parameters, float64.

    Equals :math:`\sum_k w_k\,\sigma((x + 1/2 - \mu_k)/s_k)`; deterministic like
    :func:`discretized_logistic_mixture_pmf`. Use ``1 - cdf(hi)`` and ``cdf(lo - 1)`` for tail masses.
    """
    x = x.to(torch.float64)
    w = _mixture_weights_f64(logit_weights)
    locs = locs.to(torch.float64)
    log_scales = log_scales.to(torch.float64)
    out = None
    for i, wi in enumerate(w):
        term = wi * logistic_cdf(x + 0.5, locs[..., i], log_scales[..., i])
        out = term if out is None else out + term
    return out


def sample_discretized_logistic_mixture(
    logit_weights: Tensor, locs: Tensor, log_scales: Tensor, generator: Optional[torch.Generator] = None
) -> Tensor:
    """Exact samples (integer-valued floats) of shape ``(...)`` from ``(..., K)`` mixture parameters.

    A component is drawn by the Gumbel-max trick, then ``round(mu + s * logit(u))``.
    """
    dev, dt = locs.device, locs.dtype
    tiny = torch.finfo(dt).tiny
    if logit_weights.shape[-1] > 1:
        g = torch.rand(logit_weights.shape, device=dev, dtype=dt, generator=generator).clamp(tiny, 1.0)
        k = torch.argmax(logit_weights - torch.log(-torch.log(g)), dim=-1, keepdim=True)
        loc = torch.gather(locs, -1, k).squeeze(-1)
        log_scale = torch.gather(log_scales, -1, k).squeeze(-1)
    else:
        loc, log_scale = locs[..., 0], log_scales[..., 0]
    u = torch.rand(loc.shape, device=dev, dtype=dt, generator=generator)
    u = u.clamp(tiny, 1.0 - torch.finfo(dt).eps)
    y = loc + torch.exp(log_scale.clamp(min=MIN_LOG_SCALE)) * (torch.log(u) - torch.log1p(-u))
    return torch.round(y)


class _DiscretizedLogisticMixin:
    """Shared ``log_prob``/``sample`` given ``params(context) -> (logits, locs, log_scales)``."""

    def params(self, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor]:
        raise NotImplementedError

    def _log_prob(self, x: Tensor, context: Optional[Tensor]) -> Tensor:
        logits, locs, log_scales = self.params(context)
        if locs.shape[1:-1] != x.shape[1:]:
            raise ValueError(
                f"{type(self).__name__}: x has shape {tuple(x.shape)}, parameters give events of shape "
                f"{tuple(locs.shape[1:-1])}"
            )
        if locs.shape[-1] == 1:
            lp = discretized_logistic_log_prob(x, locs[..., 0], log_scales[..., 0])
        else:
            lp = discretized_logistic_mixture_log_prob(x, logits, locs, log_scales)
        return sum_except_batch(lp)

    @torch.no_grad()
    def _sample(self, n: int, context: Optional[Tensor]) -> Tensor:
        logits, locs, log_scales = self.params(context)
        if locs.shape[0] == 1 and n != 1:
            logits, locs, log_scales = (t.expand(n, *t.shape[1:]) for t in (logits, locs, log_scales))
        return sample_discretized_logistic_mixture(logits, locs, log_scales)


class DiscretizedLogisticMixture(_DiscretizedLogisticMixin, Distribution):
    """Mixture of K discretized logistics with learned per-dimension parameters.

    Locations start spread evenly over ``[-loc_range, loc_range]`` (so components
    differ), log-scales at ``init_log_scale`` and weights uniform.

    Shapes:
        - log_prob: ``(B, *shape)`` integers ``-> (B,)``
        - sample: ``num_samples -> (num_samples, *shape)`` integer-valued floats
        - params(): three tensors ``(1, *shape, K)``: (logit_weights, locs, log_scales)
    """

    def __init__(self, shape: ShapeLike, num_components: int = 5, loc_range: float = 2.0, init_log_scale: float = 0.0):
        super().__init__()
        if num_components < 1:
            raise ValueError(f"num_components must be >= 1, got {num_components}")
        self.shape = _as_shape(shape)
        self.num_components = int(num_components)
        self.loc_range = float(loc_range)
        self.init_log_scale = float(init_log_scale)
        k = self.num_components
        self.logit_weights = nn.Parameter(torch.zeros(*self.shape, k))
        self.locs = nn.Parameter(torch.zeros(*self.shape, k))
        self.log_scales = nn.Parameter(torch.zeros(*self.shape, k))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        k = self.num_components
        spread = torch.linspace(-self.loc_range, self.loc_range, k) if k > 1 else torch.zeros(1)
        self.logit_weights.zero_()
        self.locs.copy_(spread.to(self.locs).expand_as(self.locs))
        self.log_scales.fill_(self.init_log_scale)

    def params(self, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor]:
        return self.logit_weights.unsqueeze(0), self.locs.unsqueeze(0), self.log_scales.unsqueeze(0)

    def log_prob(self, x: Tensor, context: Optional[Tensor] = None) -> Tensor:
        return self._log_prob(x, context)

    def sample(self, num_samples: Optional[int] = None, context: Optional[Tensor] = None) -> Tensor:
        return self._sample(resolve_num_samples(num_samples, context), context)

    def extra_repr(self) -> str:
        return f"shape={self.shape}, num_components={self.num_components}"


class DiscretizedLogistic(_DiscretizedLogisticMixin, Distribution):
    """Discretized logistic with learned per-dimension ``loc`` and ``log_scale``.

    Shapes:
        - log_prob: ``(B, *shape)`` integers ``-> (B,)``
        - sample: ``num_samples -> (num_samples, *shape)`` integer-valued floats
        - params(): ``(1, *shape, 1)`` each (zero logits), the mixture layout with K = 1
    """

    def __init__(self, shape: ShapeLike, init_log_scale: float = 0.0):
        super().__init__()
        self.shape = _as_shape(shape)
        self.init_log_scale = float(init_log_scale)
        self.loc = nn.Parameter(torch.zeros(self.shape))
        self.log_scale = nn.Parameter(torch.full(self.shape, self.init_log_scale))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        self.loc.zero_()
        self.log_scale.fill_(self.init_log_scale)

    def params(self, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor]:
        loc = self.loc.unsqueeze(0).unsqueeze(-1)
        return torch.zeros_like(loc), loc, self.log_scale.unsqueeze(0).unsqueeze(-1)

    def log_prob(self, x: Tensor, context: Optional[Tensor] = None) -> Tensor:
        return self._log_prob(x, context)

    def sample(self, num_samples: Optional[int] = None, context: Optional[Tensor] = None) -> Tensor:
        return self._sample(resolve_num_samples(num_samples, context), context)

    def extra_repr(self) -> str:
        return f"shape={self.shape}"


def _split_params(params: Tensor, split_dim: int, num_chunks: int, name: str) -> list[Tensor]:
    d = split_dim % params.dim()
    if d == 0:
        raise ValueError(f"{name}: split_dim must not be the batch dimension")
    if params.shape[d] % num_chunks != 0:
        raise ValueError(
            f"{name}: net output size {params.shape[d]} along split_dim={split_dim} is not a multiple of {num_chunks}"
        )
    return list(params.chunk(num_chunks, dim=d))


class ConditionalDiscretizedLogistic(_DiscretizedLogisticMixin, ConditionalDistribution):
    """Discretized logistic ``p(x | c)``: ``net(context)`` is split in two along ``split_dim`` = (loc, log_scale).

    Shapes:
        - net(context): ``(B, 2*C, ...)`` for events ``(C, ...)`` when ``split_dim=1``
        - log_prob: ``(B, C, ...) -> (B,)``; sample: ``context -> (B, C, ...)``
        - params(context): ``(B, C, ..., 1)`` each (zero logits)
    """

    def __init__(self, net: nn.Module, split_dim: int = 1):
        super().__init__()
        self.net = net
        self.split_dim = split_dim

    def params(self, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor]:
        if context is None:
            raise ValueError(f"{type(self).__name__} needs a context tensor")
        loc, log_scale = _split_params(self.net(context), self.split_dim, 2, type(self).__name__)
        loc, log_scale = loc.unsqueeze(-1), log_scale.unsqueeze(-1)
        return torch.zeros_like(loc), loc, log_scale

    def log_prob(self, x: Tensor, context: Optional[Tensor] = None) -> Tensor:
        return self._log_prob(x, context)

    def sample(self, num_samples: Optional[int] = None, context: Optional[Tensor] = None) -> Tensor:
        return self._sample(self._num_from_context(num_samples, context), context)

    def extra_repr(self) -> str:
        return f"split_dim={self.split_dim}"


class ConditionalDiscretizedLogisticMixture(_DiscretizedLogisticMixin, ConditionalDistribution):
    """K-component discretized-logistic mixture ``p(x | c)`` whose parameters come from ``net(context)``.

    Layout of ``net(context)`` along ``split_dim``: ``3*K`` consecutive chunks, each
    of the event's size along that dim: ``[logit_1..logit_K, loc_1..loc_K,
    log_scale_1..log_scale_K]``. For images (``split_dim=1``, events ``(C, H, W)``)
    the net outputs ``(B, 3*K*C, H, W)``; channels ``[j*C:(j+1)*C]`` are chunk ``j``.

    Shapes:
        - log_prob: ``(B, C, ...) -> (B,)``; sample: ``context -> (B, C, ...)``
        - params(context): three tensors ``(B, C, ..., K)``
    """

    def __init__(self, net: nn.Module, num_components: int, split_dim: int = 1):
        super().__init__()
        if num_components < 1:
            raise ValueError(f"num_components must be >= 1, got {num_components}")
        self.net = net
        self.num_components = int(num_components)
        self.split_dim = split_dim

    def params(self, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor]:
        if context is None:
            raise ValueError(f"{type(self).__name__} needs a context tensor")
        k = self.num_components
        chunks = _split_params(self.net(context), self.split_dim, 3 * k, type(self).__name__)
        logits = torch.stack(chunks[:k], dim=-1)
        locs = torch.stack(chunks[k : 2 * k], dim=-1)
        log_scales = torch.stack(chunks[2 * k :], dim=-1)
        return logits, locs, log_scales

    def log_prob(self, x: Tensor, context: Optional[Tensor] = None) -> Tensor:
        return self._log_prob(x, context)

    def sample(self, num_samples: Optional[int] = None, context: Optional[Tensor] = None) -> Tensor:
        return self._sample(self._num_from_context(num_samples, context), context)

    def extra_repr(self) -> str:
        return f"num_components={self.num_components}, split_dim={self.split_dim}"

