r"""The latent set flow: a shape code ``z`` that a set encoder infers (PointFlow's design in SurVAE terms).

The set flows score each set on its own; nothing in them says *which* shape a set is. This model
adds that global variable as a SurVAE stochastic layer (:class:`~setflow.transforms.VAE`)::

    X (B, N, D) in data units (pixels for SpatialMNIST)
    -> VAE layer      z ~ q(z | X): a registered set conditioner on x * input_scale + input_shift,
                      masked mean / max pooling over the real points, an MLP head -> (mean, log-scale)
                      ldj = log p(X | z) - log q(z | X)
    -> prior flow     K x [affine coupling over z (MLP), Reverse, ActNorm]
    -> N(0, I) over u (latent_dim,)

so ``log_prob`` is the one-draw ELBO ``E_q[log p(X | z) + log p(z) - log q(z | X)]`` (reparametrised:
it is what the trainer maximises) and :meth:`~setflow.flows.Flow.iwbo` the importance-weighted bound
over ``k`` draws; the model is a bound (``is_exact`` is False), so ``setflow eval`` reports the IWBO.

Decoders ``p(X | z)`` (``decoder``, registered in :data:`setflow.registry.LATENT_DECODERS`):

- ``points``: i.i.d. points from a conditional point flow ``p(x_i | z)`` (the fixed input scaling,
  then ``num_steps`` x [affine coupling over the ``D`` coordinates whose MLP sees ``z`` (projected and
  added to its first layer, the same as concatenating ``z`` to its input), Reverse, ActNorm]):
  ``log p(X | z) = sum_i log p(x_i | z)``, any ``N`` at ``O(N)`` cost.
- ``set``: a SortFlow / PermuteFlow (:func:`~setflow.models.set_flows.build_set_flow`, its arguments
  in ``decoder_args``) with ``z`` as its vector context (appended to every point's features in every
  conditioner, the path of the class-conditional flows).

**Multiset convention.** ``log_prob`` is, like SortFlow's and PermuteFlow's, the density of the points
*in the order given* (an exchangeable sequence): the ``points`` decoder gives ``sum_i log p(x_i | z)``
with no ``log N!``, and the ``set`` decoder's SortFlow already counts the sort's ``-log N!``. The
density of the unordered set is ``N!`` times larger; ``setflow eval`` prints it as the ``set`` figure,
``(ll + log N!) / N`` per point, beside the per-point figure of the papers, for this model as for the
set flows.

Sets of different sizes (``num_points: null``, ``max_points``): the encoder pools over the real
points, both decoders take masks, and ``log p(X) = log p(N) + log p(X | N)`` with the
:class:`~setflow.distributions.SetSizeDistribution` the set flows use (fitted by the trainer).

Example:
    >>> from setflow.models import build_model
    >>> model = build_model("latent_setflow", num_points=10, latent_dim=4, prior_steps=1,
    ...                     encoder_args={"d_model": 8, "num_layers": 1}, decoder_args={"num_steps": 2, "hidden": 8})
    >>> x = torch.rand(3, 10, 2) * 28
    >>> model.log_prob(x).shape, model.iwbo(x, k=4).shape, model.is_exact
    (torch.Size([3]), torch.Size([3]), False)
    >>> model.sample(2).shape, model.sample(2, num_points=25).shape     # the points decoder takes any N
    (torch.Size([2, 10, 2]), torch.Size([2, 25, 2]))
    >>> model.reconstruct(x).shape, model.interpolate(x[:1], x[1:2], steps=5).shape
    (torch.Size([3, 10, 2]), torch.Size([1, 5, 10, 2]))
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from setflow.distributions import ConditionalNormal, SetSizeDistribution, StandardNormal
from setflow.flows import ConditionalFlow, Flow, VectorContext
from setflow.models.set_flows import build_set_flow
from setflow.nn import MLP, ConditionerSpec, PooledSetNet
from setflow.registry import (LATENT_DECODERS, SET_CONDITIONERS, RegistryError, register_latent_decoder,
                              register_model, signature_names)
from setflow.sets import SetBatch, check_size_args, lengths_to_mask
from setflow.transforms import VAE, ActNorm, AffineCoupling, CompositeTransform, Reverse, ScalarAffine, Transform

__all__ = ["LatentSetFlow", "build_latent_set_flow", "build_point_decoder", "build_set_decoder", "coupling_steps"]

_LAYOUT = "(B, N, D) = (batch, points, coordinates)"
#: the decoder arguments the latent builder sets itself (not in ``decoder_args``)
_GIVEN = ("dim", "num_points", "latent_dim", "input_scale", "input_shift", "max_points", "min_points")


def coupling_steps(features: int, num_steps: int, make_net: Callable[[int, int], nn.Module],
                   scale_fn: str = "softplus") -> list[Transform]:
    """``num_steps`` x [affine coupling over the last axis, :class:`Reverse` of it, :class:`ActNorm`].

    The split alternates between ``(ceil(F/2), floor(F/2))`` and ``(floor, ceil)``, so with the
    reversal every feature is transformed every other step for any ``F >= 2`` (a fixed split with
    ``Reverse`` never moves the middle feature of an odd ``F``). ``make_net(d_a, 2 * d_b)`` builds each
    conditioner. Works on vectors ``(B, F)`` and on point sets ``(B, N, F)`` (point-wise nets).
    """
    if features < 2:
        raise ValueError(f"a coupling over the last axis needs >= 2 features, got {features}")
    big, small = features - features // 2, features // 2
    layers: list[Transform] = []
    for k in range(num_steps):
        d_a, d_b = (big, small) if k % 2 == 0 else (small, big)
        layers += [AffineCoupling(make_net(d_a, 2 * d_b), split_dim=-1, split_sizes=(d_a, d_b), scale_fn=scale_fn),
                   Reverse(dim=-1), ActNorm(features, feature_dim=-1)]
    return layers


class _ScaledInput(nn.Module):
    """``net(x * scale + shift, mask=mask)``: the encoder sees the decoders' scaled coordinates."""

    supports_mask = True

    def __init__(self, net: nn.Module, scale: float, shift: float) -> None:
        super().__init__()
        self.net, self.scale, self.shift = net, float(scale), float(shift)

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        return self.net(x * self.scale + self.shift, mask=mask)

    def extra_repr(self) -> str:
        return f"scale={self.scale}, shift={self.shift}"


# ----------------------------------------------------------------------------------------- decoders
@register_latent_decoder("points")
def build_point_decoder(dim: int, latent_dim: int, num_points: Optional[int] = None, input_scale: float = 1.0 / 28.0,
                        input_shift: float = -0.5, max_points: Optional[int] = None, min_points: int = 1,
                        num_steps: int = 8, hidden: int = 128, num_layers: int = 2, activation: str = "gelu",
                        scale_fn: str = "softplus") -> Flow:
    """The conditional point flow ``p(x_i | z)``, applied to every point alone: a :class:`Flow` over
    ``(B, N, D)`` for any ``N`` (``num_points``, ``max_points``, ``min_points`` are not needed: sizes are
    the latent model's business), with a :class:`VectorContext` of width ``latent_dim``.

    Args (``decoder_args``):
        num_steps: coupling steps (:func:`coupling_steps`).
        hidden, num_layers: width and number of hidden layers of each coupling's MLP.
        activation: the MLPs' activation.
        scale_fn: the couplings' scale function.
    """
    if num_steps < 1 or hidden < 1 or num_layers < 0:
        raise ValueError(f"the points decoder needs num_steps >= 1, hidden >= 1, num_layers >= 0; got "
                         f"{num_steps}, {hidden}, {num_layers}")

    def net(d_in: int, d_out: int) -> nn.Module:
        return MLP(d_in, d_out, hidden=(hidden,) * num_layers, activation=activation, zero_init=True,
                   context_features=latent_dim)

    layers = [ScalarAffine(shift=input_shift, scale=input_scale)] + coupling_steps(dim, num_steps, net, scale_fn)
    return Flow(StandardNormal((None, dim)), layers, event_shape=(None, dim), layout=_LAYOUT,
                context_encoder=VectorContext(latent_dim))


_SET_FIXED = _GIVEN + ("context_features", "conditional", "num_classes", "context_dim", "size_smoothing",
                       "learn_size")


@register_latent_decoder("set", args_of=build_set_flow, fixed=_SET_FIXED)
def build_set_decoder(*, dim: int, latent_dim: int, num_points: Optional[int], input_scale: float,
                      input_shift: float, max_points: Optional[int] = None, min_points: int = 1, **kwargs) -> Flow:
    """A SortFlow (``permutation: sort``, default) or PermuteFlow (``stochastic``) from
    :func:`~setflow.models.set_flows.build_set_flow` with ``z`` as its vector context
    (``context_features=latent_dim``); ``decoder_args`` are that builder's arguments (``num_steps``,
    ``d_model``, ``conditioner``, ...). The set-size density is left to the latent model."""
    flow = build_set_flow(num_points=num_points, dim=dim, context_features=latent_dim, input_scale=input_scale,
                          input_shift=input_shift, max_points=max_points, min_points=min_points, **kwargs)
    flow.size_dist = None  # log p(N) belongs to the latent model (outside the VAE layer)
    return flow


# ----------------------------------------------------------------------------------------- model
class LatentSetFlow(Flow):
    """A :class:`Flow` ``[VAE(q(z | X), p(X | z)), prior flow]`` over ``N(0, I)``: see the module docstring.

    Args:
        encoder: ``q(z | X)``, a :class:`~setflow.distributions.ConditionalNormal` over ``(B, latent_dim)``
            whose net is permutation-invariant and takes ``mask=``.
        decoder: the conditional flow ``p(X | z)`` (context: a ``(B, latent_dim)`` vector).
        prior: the prior flow's layers over ``z`` (data -> latent direction).
        latent_dim, num_points, dim: sizes; ``num_points`` is the default number of points to draw
            (``None``: sets of any size, drawn from ``size_dist``).
        any_size: the decoder scores any ``N`` (``points``): ``log_prob`` then takes sets of any size.
        max_points, size_dist: sets of different sizes (masks), as in :class:`~setflow.models.set_flows.SetFlow`.

    Shapes:
        - log_prob / iwbo: ``x (B, N, D)``, ``mask (B, N)`` optional -> ``(B,)``
        - sample: ``n ->`` a :class:`~setflow.sets.SetBatch` ``(n, N, D)`` (padded, with its mask, for sets
          of different sizes)
    """

    #: the ``points`` decoder draws at most this many points per set in one pass (every point is decoded
    #: alone, so chunks give the same result; 2,048 keeps the activations in cache: the per-point cost of
    #: 4 x 10,000 points fell from 14.3 to 7.0 us, scripts/bench_latent.py)
    point_chunk = 2048

    def __init__(self, encoder: ConditionalNormal, decoder: Flow, prior: Sequence[Transform], latent_dim: int,
                 num_points: Optional[int], dim: int, any_size: bool = False, max_points: Optional[int] = None,
                 size_dist: Optional[SetSizeDistribution] = None) -> None:
        vae = VAE(encoder, ConditionalFlow(decoder))
        n = None if any_size or num_points is None else num_points
        super().__init__(StandardNormal((latent_dim,)), [vae, CompositeTransform(prior)], event_shape=(n, dim),
                         layout=_LAYOUT, size_dist=size_dist)
        self.latent_dim, self.num_points, self.dim = latent_dim, num_points, dim
        self.max_points = num_points if max_points is None else max_points

    # the parts
    @property
    def vae(self) -> VAE:
        return self.transforms[0]

    @property
    def prior(self) -> CompositeTransform:
        """The prior flow's layers, ``z -> u`` (``u ~ N(0, I)``)."""
        return self.transforms[1]

    @property
    def decoder(self) -> ConditionalFlow:
        return self.vae.decoder

    # codes
    def posterior(self, x: Tensor, mask: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """``(mean, log_std)`` of ``q(z | X)``, each ``(B, latent_dim)``."""
        x, mask, _ = self._prepare_masked(x, mask)
        return self.vae.encoder.mean_and_log_std(x, mask)

    def prior_log_prob(self, z: Tensor) -> Tensor:
        """``log p(z)`` under the flow prior, ``(B,)``."""
        u, ldj = self.prior(z)
        return self.base.log_prob(u) + ldj

    @torch.no_grad()
    def decode_code(self, z: Tensor, num_points: Optional[int] = None, mask: Optional[Tensor] = None,
                    noise: Optional[Tensor] = None) -> Tensor:
        """``X ~ p(X | z)`` for codes ``z`` ``(B, latent_dim)``: ``num_points`` points (default the model's),
        or the sizes of ``mask`` ``(B, N)`` (padding zero), or the decoder's base ``noise`` ``(B, N, D)``."""
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"codes must have shape (B, {self.latent_dim}), got {tuple(z.shape)}")
        if mask is None and noise is None:
            num_points = self.num_points if num_points is None else num_points
            if num_points is None:
                raise ValueError("this model draws sets of any size: give num_points or mask")
        if mask is None and self.event_shape[0] is None:  # i.i.d. points: decode in chunks along N
            if noise is None:
                noise = self.decoder.flow.base.sample(z.shape[0], None, num_points=int(num_points))
            c = self.point_chunk
            return torch.cat([self.decoder.sample(context=z, noise=noise[:, i:i + c])
                              for i in range(0, noise.shape[1], c)], dim=1)
        return self.decoder.sample(context=z, mask=mask, num_points=num_points, noise=noise)

    @torch.no_grad()
    def sample(self, num_samples: Optional[int] = None, context: Optional[Tensor] = None, num_points=None):
        """``z`` from the prior, then ``X ~ p(X | z)``, as a :class:`~setflow.sets.SetBatch`. ``num_points`` (an
        int; a variable-size model also takes ``(B,)`` sizes) overrides the model's."""
        self._context(context, num_samples)  # refuses a context: the model is unconditional
        if num_samples is None:
            raise ValueError("sample() needs num_samples")
        z = self.prior.inverse(self.base.sample(num_samples))
        if not self.variable_size:
            return SetBatch(self.decode_code(z, num_points=None if num_points is None else int(num_points)))
        sizes = self._sample_sizes(num_samples, None, num_points)
        mask = lengths_to_mask(sizes, int(sizes.max()))
        return SetBatch(self.decode_code(z, mask=mask), mask)

    @torch.no_grad()
    def reconstruct(self, x: Tensor, mask: Optional[Tensor] = None, sample_code: bool = False) -> Tensor:
        """Encode, then decode: ``X' ~ p(X | z)`` with ``z`` the posterior mean (or a draw, ``sample_code``),
        with as many points as ``x`` (the sizes of ``mask``; padding zero). ``x`` may be a
        :class:`~setflow.sets.SetBatch` (its mask)."""
        if isinstance(x, SetBatch):
            x, mask = x.points, x.mask
        mean, log_std = self.posterior(x, mask)
        z = mean + torch.exp(log_std) * torch.randn_like(mean) if sample_code else mean
        if mask is not None and not bool(mask.all()):
            return self.decode_code(z, mask=mask.to(z.device))
        return self.decode_code(z, num_points=x.shape[1])

    @torch.no_grad()
    def interpolate(self, x_a: Tensor, x_b: Tensor, steps: int = 8, num_points: Optional[int] = None,
                    mask_a: Optional[Tensor] = None, mask_b: Optional[Tensor] = None) -> Tensor:
        """Decode codes between the posterior means of ``x_a`` and ``x_b`` (``(B, N, D)`` each).

        The path is a straight line in the prior's Gaussian space ``u`` (where the prior is ``N(0, I)``),
        mapped back through the prior flow; every step of a row decodes the *same* base noise, so the
        row shows the shape moving, not the noise. ``num_points`` points per set (default the model's,
        else ``x_a``'s width). Returns ``(B, steps, num_points, D)``.

        Example::

            model, cfg = setflow.train.checkpoint.load_model("runs/latent/last.pt")
            path = model.interpolate(test[:4], test[4:8], steps=8)    # (4, 8, 50, 2)
        """
        if steps < 2:
            raise ValueError(f"steps must be >= 2, got {steps}")
        if x_a.shape[0] != x_b.shape[0]:
            raise ValueError(f"x_a and x_b need as many sets, got {x_a.shape[0]} and {x_b.shape[0]}")
        u_a = self.prior(self.posterior(x_a, mask_a)[0])[0]
        u_b = self.prior(self.posterior(x_b, mask_b)[0])[0]
        t = torch.linspace(0.0, 1.0, steps, dtype=u_a.dtype, device=u_a.device)[None, :, None]
        u = (1 - t) * u_a[:, None] + t * u_b[:, None]
        z = self.prior.inverse(u.reshape(-1, self.latent_dim))
        b = x_a.shape[0]
        n = int(num_points or self.num_points or x_a.shape[1])
        base = self.decoder.flow.base
        noise = base.sample(b, None, num_points=n)
        noise = noise[:, None].expand(b, steps, *noise.shape[1:]).reshape(b * steps, *noise.shape[1:])
        return self.decode_code(z, noise=noise).view(b, steps, n, -1)

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}, num_points={self.num_points}, dim={self.dim}"


def _checked_keys(given: Optional[dict], valid: set, what: str) -> dict:
    given = dict(given or {})
    unknown = sorted(set(given) - valid)
    if unknown:
        raise ValueError(f"unknown {what}: {', '.join(unknown)}; valid: {', '.join(sorted(valid))}")
    return given


@register_model("latent_setflow")
def build_latent_set_flow(
    num_points: Optional[int] = 50,
    dim: int = 2,
    latent_dim: int = 32,
    encoder: str = "deepsets",
    encoder_args: Optional[dict] = None,
    encoder_pool: Union[str, Sequence[str]] = ("mean", "max"),
    encoder_hidden: int = 128,
    prior_steps: int = 4,
    prior_hidden: int = 128,
    prior_layers: int = 2,
    decoder: str = "points",
    decoder_args: Optional[dict] = None,
    scale_fn: str = "softplus",
    input_scale: float = 1.0 / 28.0,
    input_shift: float = -0.5,
    max_points: Optional[int] = None,
    min_points: int = 1,
    size_smoothing: float = 1.0,
    learn_size: bool = False,
    seed: int = 0,
) -> LatentSetFlow:
    """Build a latent set flow (``model: latent_setflow``).

    Args:
        num_points, dim: set size ``N`` (the default size to draw; ``null`` for sets of any size,
            with ``max_points`` / ``min_points``) and point dimension ``D``.
        latent_dim: width of the shape code ``z`` (>= 2).
        encoder: the registered set conditioner of ``q(z | X)`` (``deepsets``, ``isab``, ``transformer``,
            ...); ``encoder_args`` its :class:`~setflow.nn.ConditionerSpec` fields (``d_model`` is also
            its output width); ``encoder_pool`` the masked pools (``mean``, ``max``, ``sum``)
            concatenated; ``encoder_hidden`` the head MLP's hidden width.
        prior_steps, prior_hidden, prior_layers: the flow prior over ``z`` (:func:`coupling_steps` with
            MLPs of ``prior_layers`` hidden layers of ``prior_hidden``; ``prior_steps=0``: ``N(0, I)``);
            ``scale_fn`` its couplings' scale function.
        decoder: ``points`` (i.i.d. points, :func:`build_point_decoder`) or ``set``
            (:func:`build_set_decoder`); ``decoder_args`` that builder's own arguments.
        input_scale, input_shift: the fixed ``x * scale + shift`` the encoder and the decoders apply.
        size_smoothing, learn_size: the set-size density (sets of any size), as for the set flows.
        seed: seed of the initialisation (reproducible builds).
    """
    variable = check_size_args(num_points, max_points, min_points)
    if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or latent_dim < 2:
        raise ValueError(f"latent_dim must be an integer >= 2, got {latent_dim!r}")
    if prior_steps < 0 or prior_hidden < 1 or prior_layers < 0 or encoder_hidden < 1:
        raise ValueError("prior_steps, prior_layers must be >= 0 and prior_hidden, encoder_hidden >= 1")
    try:
        body_cls = SET_CONDITIONERS.get(encoder)
        build_decoder = LATENT_DECODERS.get(decoder)
    except RegistryError as e:
        raise RegistryError(f"model_args.{'encoder' if encoder not in SET_CONDITIONERS else 'decoder'}: {e}") from None
    spec_args = _checked_keys(encoder_args, signature_names(ConditionerSpec)[0] - {"context_features"},
                              f"model_args.encoder_args for encoder {encoder!r}")
    dec_args = _checked_keys(decoder_args, (LATENT_DECODERS.arg_names(decoder) or set()) - set(_GIVEN),
                             f"model_args.decoder_args for decoder {decoder!r}")
    spec = ConditionerSpec(**spec_args)
    g_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        body = body_cls.from_spec(dim, spec.d_model, spec)
        net = PooledSetNet(body, spec.d_model, 2 * latent_dim, pools=encoder_pool, hidden=(encoder_hidden,))
        q = ConditionalNormal(_ScaledInput(net, input_scale, input_shift), split_dim=-1)
        prior = coupling_steps(latent_dim, prior_steps, lambda a, b: MLP(
            a, b, hidden=(prior_hidden,) * prior_layers, zero_init=True), scale_fn)
        p = build_decoder(dim=dim, num_points=num_points, latent_dim=latent_dim, input_scale=input_scale,
                          input_shift=input_shift, max_points=max_points, min_points=min_points, **dec_args)
        size_dist = (SetSizeDistribution(int(max_points), int(min_points), learn=learn_size, smoothing=size_smoothing)
                     if variable else None)
        return LatentSetFlow(q, p, prior, latent_dim, num_points, dim, any_size=decoder == "points",
                             max_points=max_points, size_dist=size_dist)
    finally:
        torch.random.set_rng_state(g_state)
