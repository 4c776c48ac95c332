r"""Integer discrete flows (IDF, Hoogeboom et al., 2019) for lossless compression of 8-bit images.

Architecture (data -> latent)::

    x (B, C, H, W) uint8 in [0, 255]
    -> x - 128                                  (ScalarAffine: integers stay integers, ldj = 0)
    -> for each of L levels:
         Squeeze2d (2x2 space-to-depth)         (B, 4C, H/2, W/2)
         F x [ fixed channel Shuffle,
               integer additive coupling  z_b = x_b + round(t(x_a)), straight-through gradient,
               x_b = the last quarter of the channels, t a DenseNet (zero-initialised output) ]
         Slice (all levels but the last): keep the first half of the channels, the dropped half y
               gets a discretized logistic p(y | kept) whose (loc, log_scale) come from a DenseNet
    -> top prior: a 5-component discretized-logistic mixture, learned per-dimension parameters.

Every layer is a bijection on the integer lattice (or an exact inference surjection), so
``log_prob`` is the exact discrete log-likelihood (nats) of the image:
``log P(x) = log p_top(z_L) + sum_l log p(y_l | kept_l)``, normalised over all of ``Z^D`` (the
mass outside ``[0, 255]^D`` is not renormalised away, as in the paper). Bits per dimension:
``-log_prob / (C H W ln 2)``.

Centring and units. Images are centred by subtracting 128 (the paper's ``x - 2^(n-1)``) and
stay integers. As in the paper, the networks work in "data units" of one bin = 1/256: a
conditioner sees ``x_a / 256`` and its output ``t`` is a shift in data units, so the integer shift
is ``round(256 t)``; split priors and the top prior store ``loc`` in data units and ``log_scale``
relative to one data unit (``loc_int = 256 loc``, ``log_scale_int = log_scale + log 256``). This
keeps the effective learning rates of the paper (Adamax 1e-3) meaningful; nothing changes the
discrete likelihood, which is always evaluated on the integer lattice.

Shapes:
    - ``log_prob``: ``(B, C, H, W)`` integers (uint8 or integer-valued floats) -> ``(B,)`` nats
    - ``sample(n)``: ``(n, C, H, W)`` integer-valued tensors clamped to ``[0, 255]``
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from setflow.distributions import ConditionalDiscretizedLogistic, DiscretizedLogisticMixture
from setflow.flows import Flow
from setflow.registry import IMAGE_CONDITIONERS, MODELS, register_image_conditioner, register_model
from setflow.transforms import AdditiveCoupling, ScalarAffine, Shuffle, Squeeze2d
from setflow.transforms.surjections import Slice
from setflow.utils import bits_per_dim as _bits_per_dim


__all__ = ["IDF", "build_idf", "bits_per_dim"]

#: one integer bin in the networks' "data units" (8-bit images: 2^8 bins)
BIN_SCALE = 256.0


@register_image_conditioner("densenet")
def _densenet(c_in: int, c_out: int, hidden: int, depth: int) -> nn.Module:
    """The shared DenseNet in its IDF layout: one dense block of ``depth`` layers adding about
    ``hidden`` channels in total (growth ``ceil(hidden / depth)``: 512 over 12 layers -> 43 each),
    then a zero-initialised 3x3 output convolution."""
    from setflow.nn import DenseNet

    growth = max(1, math.ceil(hidden / depth))
    return DenseNet(c_in, c_out, depth=depth, growth=growth, mid_channels=None, out_kernel_size=3, zero_init=True)


@register_image_conditioner("shallow")
def _shallow(c_in: int, c_out: int, hidden: int, depth: int) -> nn.Module:
    """IDF's "shallow" conditioner: conv3x3-ReLU, conv1x1-ReLU, conv3x3 (zero-initialised)."""
    last = nn.Conv2d(hidden, c_out, 3, padding=1)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(
        nn.Conv2d(c_in, hidden, 3, padding=1), nn.ReLU(), nn.Conv2d(hidden, hidden, 1), nn.ReLU(), last
    )


class _CouplingNet(nn.Module):
    """``t(x_a) = scale * net(x_a / scale)``: the shift in integer units (rounded by the coupling)."""

    def __init__(self, net: nn.Module, scale: float = BIN_SCALE) -> None:
        super().__init__()
        self.net = net
        self.scale = float(scale)

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> Tensor:
        return self.net((x / self.scale).contiguous()) * self.scale


class _SplitPriorNet(nn.Module):
    """``kept -> (loc, log_scale)`` of the dropped channels, converted from data units to integers."""

    def __init__(self, net: nn.Module, scale: float = BIN_SCALE, init_log_scale: float = 0.0) -> None:
        super().__init__()
        self.net = net
        self.scale = float(scale)
        self.log_scale_shift = math.log(scale) + float(init_log_scale)

    def forward(self, x: Tensor) -> Tensor:
        loc, log_scale = self.net((x / self.scale).contiguous()).chunk(2, dim=1)
        return torch.cat([loc * self.scale, log_scale + self.log_scale_shift], dim=1)


class _TopPrior(DiscretizedLogisticMixture):
    """The shared learned per-dimension mixture, parametrised in data units (see module docstring).

    Initialisation follows the paper: weights uniform, component ``i`` at ``(i - (K-1)/2) s0``
    data units, log-scale ``log s0 = init_log_scale`` (paper: 0, i.e. one data unit = 256 integers).
    """

    def __init__(self, shape: Sequence[int], num_components: int = 5, scale: float = BIN_SCALE,
                 init_log_scale: float = 0.0) -> None:
        loc_range = (num_components - 1) / 2.0 * math.exp(init_log_scale)  # components one scale apart
        super().__init__(shape, num_components=num_components, loc_range=loc_range, init_log_scale=init_log_scale)
        self.scale = float(scale)
        self.log_scale_shift = math.log(scale)

    def params(self, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor]:
        logits, locs, log_scales = super().params(context)
        return logits, locs * self.scale, log_scales + self.log_scale_shift


class IDF(Flow):
    """An integer discrete flow over ``(B, C, H, W)`` 8-bit images (see the module docstring).

    Args:
        input_shape: ``(C, H, W)``; ``H`` and ``W`` divisible by ``2**num_levels``.
        num_levels: squeeze levels (a factor-out between consecutive levels).
        num_flows: couplings per level.
        hidden_channels: width of the conditioners (the DenseNet's total growth, IDF: 512).
        depth: DenseNet depth (IDF: 12).
        num_mixtures: components of the top prior (IDF: 5).
        coupling: conditioner for the couplings, a name in :data:`setflow.registry.IMAGE_CONDITIONERS`
            (``"densenet"`` or ``"shallow"``; each is ``(c_in, c_out, hidden, depth) -> module``).
        split_prior: conditioner for the factor-out priors (same names).
        translate_fraction: fraction of the channels translated by each coupling (IDF: 1/4).
        init_log_scale: initial log-scale (data units) of the top prior and the split priors; the
            paper's 0 is a scale of 256 integers. Negative values (e.g. -2: about 35 integers) start
            closer to a trained model, which matters for short CPU runs: Adamax moves a
            parameter by about ``lr`` per step, so going from 0 to -3 takes ~1,500 steps at 2e-3.
        seed: seed of the fixed channel permutations.

    Attributes:
        config: the builder arguments (saved beside the weights; part of the codec fingerprint).

    Example:
        >>> m = IDF((1, 8, 8), num_levels=2, num_flows=2, hidden_channels=8, depth=1, coupling="shallow",
        ...         split_prior="shallow")
        >>> x = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8)
        >>> latents = m.split_latents(x)            # [y_0 (B, 2, 4, 4), z_top (B, 8, 2, 2)]
        >>> torch.equal(m.join_latents(latents), x.float())
        True
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (3, 32, 32),
        num_levels: int = 3,
        num_flows: int = 8,
        hidden_channels: int = 512,
        depth: int = 12,
        num_mixtures: int = 5,
        coupling: str = "densenet",
        split_prior: str = "densenet",
        translate_fraction: float = 0.25,
        init_log_scale: float = 0.0,
        seed: int = 0,
    ) -> None:
        c, h, w = (int(s) for s in input_shape)
        if num_levels < 1 or num_flows < 0:
            raise ValueError(f"need num_levels >= 1 and num_flows >= 0, got {num_levels}, {num_flows}")
        if h % 2**num_levels or w % 2**num_levels:
            raise ValueError(
                f"IDF with {num_levels} levels needs H and W divisible by {2**num_levels}, "
                f"got input_shape {tuple(input_shape)}"
            )
        # an unknown kind: a RegistryError listing the registered image conditioners
        make_coupling, make_prior = IMAGE_CONDITIONERS.get(coupling), IMAGE_CONDITIONERS.get(split_prior)
        if not 0.0 < translate_fraction < 1.0:
            raise ValueError(f"translate_fraction must be in (0, 1), got {translate_fraction}")
        transforms: list[nn.Module] = [ScalarAffine(shift=-BIN_SCALE / 2, scale=1.0)]
        n_layer = 0
        for level in range(num_levels):
            transforms.append(Squeeze2d(2))
            c, h, w = 4 * c, h // 2, w // 2
            n_b = max(1, int(round(c * translate_fraction)))
            n_a = c - n_b
            for _ in range(num_flows):
                transforms.append(Shuffle(c, dim=1, seed=seed * 100003 + n_layer))
                net = _CouplingNet(make_coupling(n_a, n_b, hidden_channels, depth))
                transforms.append(AdditiveCoupling(net, split_dim=1, split_sizes=(n_a, n_b), rounding=True))
                n_layer += 1
            if level < num_levels - 1:
                drop = c // 2
                keep = c - drop
                net = _SplitPriorNet(make_prior(keep, 2 * drop, hidden_channels, depth), init_log_scale=init_log_scale)
                density = ConditionalDiscretizedLogistic(net)
                transforms.append(Slice(keep, dim=1, density=density))
                c = keep
        base = _TopPrior((c, h, w), num_components=num_mixtures, init_log_scale=init_log_scale)
        in_shape = tuple(int(s) for s in input_shape)
        super().__init__(base, transforms, event_shape=in_shape, discrete=True, layout="(B, C, H, W) uint8 image")
        self.input_shape = in_shape
        self.latent_shape = (c, h, w)
        self.config = {
            "input_shape": list(in_shape),
            "num_levels": int(num_levels),
            "num_flows": int(num_flows),
            "hidden_channels": int(hidden_channels),
            "depth": int(depth),
            "num_mixtures": int(num_mixtures),
            "coupling": coupling,
            "split_prior": split_prior,
            "translate_fraction": float(translate_fraction),
            "init_log_scale": float(init_log_scale),
            "seed": int(seed),
        }

    # ------------------------------------------------------------------ latent access (codec, progressive)
    def factor_outs(self) -> list[Slice]:
        """The factor-out layers, bottom (first applied) to top."""
        return [t for t in self.transforms if isinstance(t, Slice)]

    def latent_shapes(self) -> list[tuple[int, ...]]:
        """Shapes (without batch) of the latent groups in forward order ``[y_0, ..., y_{L-2}, z_top]``."""
        c, h, w = self.input_shape
        shapes = []
        for t in self.transforms:
            if isinstance(t, Squeeze2d):
                c, h, w = 4 * c, h // 2, w // 2
            elif isinstance(t, Slice):
                shapes.append((c - t.num_keep, h, w))
                c = t.num_keep
        return shapes + [(c, h, w)]

    def split_latents(self, x: Tensor, with_params: bool = False) -> list:
        """All latent integers of ``x`` in forward order ``[y_0, ..., y_{L-2}, z_top]``.

        With ``with_params=True`` each entry is ``(latent, (logits, locs, log_scales))``: the
        parameters of the density that scores it (``(B, *shape, K)`` each; ``B = 1`` for the top).
        """
        h = self._prepare(x)
        out = []
        for t in self.transforms:
            if isinstance(t, Slice):
                kept, y = h.split([t.num_keep, h.shape[t.dim] - t.num_keep], dim=t.dim)
                out.append((y, t.density.params(kept)) if with_params else y)
                h = kept
            else:
                h, _ = t(h)
        out.append((h, self.base.params()) if with_params else h)
        return out

    def decode_top_down(self, z_top: Tensor, fill) -> Tensor:
        """Run the flow backwards from ``z_top``; at each factor-out call ``fill(index, layer, kept) -> y``.

        ``index`` counts the factor-outs in forward order (``len(factor_outs()) - 1`` is met first).
        Returns the image as integer-valued floats (not clamped).
        """
        h = z_top
        idx = len(self.factor_outs())
        for t in reversed(self.transforms):
            if isinstance(t, Slice):
                idx -= 1
                y = fill(idx, t, h)
                h = torch.cat([h, y.to(h.dtype)], dim=t.dim)
            else:
                h = t.inverse(h)
        return h

    def join_latents(self, latents: Sequence[Tensor]) -> Tensor:
        """Exact inverse of :meth:`split_latents`: the image (integer-valued floats) from all groups."""
        latents = list(latents)
        if len(latents) != len(self.factor_outs()) + 1:
            raise ValueError(f"expected {len(self.factor_outs()) + 1} latent groups, got {len(latents)}")
        return self.decode_top_down(latents[-1], lambda i, layer, kept: latents[i])

    @property
    def num_dims(self) -> int:
        return math.prod(self.input_shape)

    def bits_per_dim(self, x: Tensor) -> Tensor:
        """``-log2 P(x) / (C H W)`` per image, shape ``(B,)``."""
        return _bits_per_dim(self.log_prob(x), self.input_shape)

    @torch.no_grad()
    def sample(self, num_samples: Optional[int] = None, context: Optional[Tensor] = None) -> Tensor:
        """Samples as integer-valued tensors in the model's dtype, clamped to ``[0, 255]``."""
        return super().sample(num_samples, context).clamp(0, BIN_SCALE - 1)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config.items())


def bits_per_dim(model: nn.Module, x: Tensor) -> Tensor:
    """Bits per dimension ``-log2 p(x) / (C H W)`` of any image model with ``log_prob`` in nats."""
    return _bits_per_dim(model.log_prob(x), x.shape[1:])


@register_model("idf", args_of=IDF)
def build_idf(**model_args) -> IDF:
    """Builder for ``model: idf`` configs; ``model_args`` are :class:`IDF`'s arguments (checked)."""
    MODELS.check_args("idf", model_args)
    return IDF(**model_args)
