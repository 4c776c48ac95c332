r"""SurVAE image flows: the multi-scale baseline and MaxPoolFlow.

Both models share everything but the downsampling layer (SurVAE, Nielsen et al. 2020, sec. 5;
``experiments/image/model/pool_flow.py`` of didriknielsen/survae_flows):

.. code-block:: text

    uint8 image (C, H, W)
      -> VariationalDequantization   (x + u) / 2^b, u ~ q(u | x) a small conditional flow
      -> ScalarAffine(shift=-0.5)    [0, 1) -> [-0.5, 0.5)
      -> Squeeze2d                   (4C, H/2, W/2)
      -> per scale: num_steps x [Conv1x1, AffineCoupling(DenseNet, scale exp(2 tanh(s/2)))]
         between scales, downsampling (C', H', W') -> (C', H'/2, W'/2):
            baseline:  Squeeze2d + Slice(keep C' of 4C')      dropped channels ~ N(0, I)
            maxpool:   MaxPool2dSurjection(2)                 gaps ~ half-normal, argmax -log 4
      -> per-channel Gaussian base (learned loc and scale)

The initial squeeze is what makes the two downsamplings give the same shapes: the max pool
pools every one of the ``C'`` channels spatially, the baseline squeezes to ``4C'`` channels and
keeps ``C'`` of them. The base is ``N(0, I)`` behind an ``ActNorm`` that starts at the identity:
exactly a Gaussian with a learned location and scale per channel (SurVAE's ``ConvNormal2d``).

``log_prob(x)`` is in nats of the *discrete* image (the dequantization ELBO includes the
``-D b log 2`` bin-width term), so bits/dim ``= -log_prob / (C H W ln 2)``; ``iwbo(x, k, chunk)``
tightens it. ``sample(n)`` returns ``uint8`` images (``int64`` for more than 8 bits).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from setflow.distributions import StandardNormal
from setflow.flows import Flow
from setflow.registry import register_model
from setflow.transforms import (
    ActNorm,
    AffineCoupling,
    Bijection,
    CompositeTransform,
    Conv1x1,
    ScalarAffine,
    Squeeze2d,
    Transform,
    Unsqueeze2d,
)
from setflow.transforms.dequantization import UniformDequantization, VariationalDequantization
from setflow.transforms.surjections import MaxPool2dSurjection, Slice
from setflow.utils import bits_per_dim

__all__ = [
    "ImageFlow",
    "build_image_flow",
    "build_baseline_image_flow",
    "build_maxpool_flow",
    "downsample_layers",
    "bits_per_dim",
    "POOLINGS",
]

POOLINGS = ("none", "max")


# ---------------------------------------------------------------------------------------------- nets


def _densenet(in_channels: int, out_channels: int, net: dict, zero_init: bool) -> nn.Module:
    """The shared conditioner ``setflow.nn.DenseNet`` in SurVAE's layout: 1x1 stem to ``mid``
    channels, residual dense blocks, output convolution (zero-initialised in couplings)."""
    from setflow.nn import DenseNet

    return DenseNet(in_channels, out_channels, num_blocks=net["blocks"], depth=net["depth"], growth=net["growth"],
                    mid_channels=net["channels"], dropout=net["dropout"], zero_init=zero_init)


def _dense_block(in_channels: int, out_channels: int, net: dict) -> nn.Module:
    """A plain dense block with a 1x1 transition (``DenseNet``'s IDF layout); SurVAE: depth 4, growth 16."""
    from setflow.nn import DenseNet

    return DenseNet(in_channels, out_channels, num_blocks=1, depth=net["context_depth"], growth=net["context_growth"],
                    mid_channels=None, dropout=net["dropout"], zero_init=False)


class _ConcatContext(nn.Module):
    """Conditioner ``(x_a, context) -> net(cat[x_a, context])`` along channels."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x_a: Tensor, context: Optional[Tensor] = None) -> Tensor:
        if context is None:
            raise ValueError("this coupling conditioner needs a context (the image features)")
        return self.net(torch.cat([x_a, context], dim=1))


class _DequantContextNet(nn.Module):
    """Image features for the dequantization flow: ``(C, H, W)`` in ``[0, 1)`` -> ``(K, H/2, W/2)``.

    SurVAE's design: rescale to ``[-1, 1]``, a DenseNet at full resolution, a strided 2x2
    convolution, a second DenseNet at half resolution.
    """

    def __init__(self, in_channels: int, out_channels: int, net: dict) -> None:
        super().__init__()
        mid = net["channels"]
        self.at_full = _dense_block(in_channels, mid, net)
        self.down = nn.Conv2d(mid, mid, kernel_size=2, stride=2)
        self.at_half = _dense_block(mid, out_channels, net)

    def forward(self, x01: Tensor) -> Tensor:
        return self.at_half(self.down(self.at_full(2.0 * x01 - 1.0)))


class _WithContextNet(Bijection):
    """Run ``transform`` with ``context_net(context)`` as its context (the features are computed once)."""

    def __init__(self, transform: Transform, context_net: nn.Module) -> None:
        super().__init__()
        self.transform = transform
        self.context_net = context_net

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        return self.transform(x, self.context_net(context))

    def inverse(self, z: Tensor, context: Optional[Tensor] = None) -> Tensor:
        return self.transform.inverse(z, self.context_net(context))


def dequantization_noise_flow(data_shape: Sequence[int], num_steps: int, num_context: int, net: dict) -> Bijection:
    """The conditional flow ``eps ~ N(0, I) -> y`` whose sigmoid is the dequantization noise ``u``.

    In the squeezed space ``(4C, H/2, W/2)``: ``num_steps x [Conv1x1, affine coupling whose
    DenseNet sees (x_a, image features)]``, a final ``Conv1x1``, then ``Unsqueeze2d`` back to
    ``(C, H, W)``. ``VariationalDequantization`` adds the sigmoid and ``log q(u | x)``.
    """
    c = data_shape[0] * 4
    layers: list = [Squeeze2d()]
    for i in range(num_steps):
        layers.append(Conv1x1(c, seed=1000 + i))
        cond = _ConcatContext(_densenet(c // 2 + num_context, c, net, zero_init=True))
        layers.append(AffineCoupling(cond, split_dim=1, scale_fn="tanh_exp"))
    layers += [Conv1x1(c, seed=1999), Unsqueeze2d()]
    return _WithContextNet(CompositeTransform(layers), _DequantContextNet(data_shape[0], num_context, net))


# ---------------------------------------------------------------------------------------------- layers


def downsample_layers(pooling: str, channels: int) -> list:
    """``(B, C, H, W) -> (B, C, H/2, W/2)``: squeeze + slice (``"none"``) or 2x2 max pool (``"max"``)."""
    if pooling == "none":
        return [Squeeze2d(), Slice(num_keep=channels, dim=1, num_drop=3 * channels)]
    if pooling == "max":
        return [MaxPool2dSurjection(kernel_size=2)]
    raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")


class ImageFlow(Flow):
    """A flow over integer images ``(B, C, H, W)`` in ``[0, 2^num_bits)``.

    ``log_prob`` / ``iwbo`` are in nats of the discrete image; ``sample(n)`` returns integer
    images (``uint8`` when ``num_bits <= 8``) on the model's device.
    """

    def __init__(self, base, transforms, data_shape: Sequence[int], num_bits: int = 8) -> None:
        super().__init__(base, transforms, event_shape=tuple(data_shape), discrete=True, layout="(B, C, H, W)")
        self.data_shape = tuple(int(s) for s in data_shape)
        self.num_bits = int(num_bits)

    def _prepare(self, x: Tensor) -> Tensor:
        x = super()._prepare(x)
        hi = 2**self.num_bits - 1
        if x.numel() and (float(x.min()) < 0 or float(x.max()) > hi):
            raise ValueError(f"images must hold integers in [0, {hi}] (num_bits={self.num_bits}), "
                             f"got values in [{float(x.min())}, {float(x.max())}]")
        return x

    @torch.no_grad()
    def sample(self, num_samples: Optional[int] = None, context: Optional[Tensor] = None) -> Tensor:
        x = super().sample(num_samples, context)
        x = x.round().clamp(0, 2**self.num_bits - 1)
        return x.to(torch.uint8 if self.num_bits <= 8 else torch.int64)

    def bits_per_dim(self, x: Tensor, k: int = 1, chunk: Optional[int] = None) -> Tensor:
        """Per-image bits/dim: the ELBO for ``k=1``, the IWBO with ``k`` samples otherwise."""
        ll = self.log_prob(x) if k == 1 else self.iwbo(x, k=k, chunk=chunk)
        return bits_per_dim(ll, self.data_shape)


def build_image_flow(
    data_shape: Sequence[int],
    pooling: str = "none",
    num_bits: int = 8,
    num_scales: int = 2,
    num_steps: int = 12,
    actnorm: bool = False,
    dequant: str = "flow",
    dequant_steps: int = 4,
    dequant_context: int = 32,
    dequant_context_depth: int = 4,
    dequant_context_growth: int = 16,
    densenet_blocks: int = 1,
    densenet_channels: int = 64,
    densenet_depth: int = 10,
    densenet_growth: int = 64,
    dropout: float = 0.0,
) -> ImageFlow:
    """Build a SurVAE image flow (see the module docstring for the architecture).

    Args:
        data_shape: ``(C, H, W)``; ``H`` and ``W`` must be divisible by ``2**num_scales``.
        pooling: ``"none"`` (baseline: squeeze + slice) or ``"max"`` (MaxPoolFlow).
        num_bits: bits per pixel of the integer images.
        num_scales, num_steps: scales, and [Conv1x1, coupling] steps per scale.
        actnorm: an ``ActNorm`` before every step (off in the SurVAE runs).
        dequant: ``"flow"`` (variational) or ``"uniform"``.
        dequant_steps, dequant_context: coupling steps and feature channels of the
            dequantization flow.
        dequant_context_depth, dequant_context_growth: the two dense blocks of its image-feature
            net (SurVAE: 4 and 16).
        densenet_*: DenseNet conditioner (blocks, mid channels, depth, growth).
        dropout: DenseNet dropout.

    Shapes:
        ``log_prob``: ``(B, C, H, W)`` integers -> ``(B,)`` nats; ``sample(n) -> (n, C, H, W)`` uint8.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    data_shape = tuple(int(s) for s in data_shape)
    if len(data_shape) != 3:
        raise ValueError(f"data_shape must be (C, H, W), got {data_shape}")
    if num_scales < 1 or num_steps < 1:
        raise ValueError(f"num_scales and num_steps must be >= 1, got {num_scales}, {num_steps}")
    c, h, w = data_shape
    f = 2**num_scales
    if h % f or w % f:
        raise ValueError(f"H and W must be divisible by 2**num_scales = {f} for {num_scales} scales, got {h}x{w}")
    net = dict(blocks=densenet_blocks, channels=densenet_channels, depth=densenet_depth, growth=densenet_growth,
               dropout=dropout, context_depth=dequant_context_depth, context_growth=dequant_context_growth)

    if dequant == "flow":
        transforms: list = [VariationalDequantization(
            dequantization_noise_flow(data_shape, dequant_steps, dequant_context, net), num_bits=num_bits)]
    elif dequant == "uniform":
        transforms = [UniformDequantization(num_bits=num_bits)]
    else:
        raise ValueError(f"dequant must be 'flow' or 'uniform', got {dequant!r}")
    transforms += [ScalarAffine(shift=-0.5), Squeeze2d()]
    shape = (4 * c, h // 2, w // 2)
    for scale in range(num_scales):
        ch = shape[0]
        for step in range(num_steps):
            if actnorm:
                transforms.append(ActNorm(ch))
            transforms.append(Conv1x1(ch, seed=100 * scale + step))
            cond = _densenet(ch // 2, 2 * (ch - ch // 2), net, zero_init=True)
            transforms.append(AffineCoupling(cond, split_dim=1, split_sizes=(ch // 2, ch - ch // 2),
                                             scale_fn="tanh_exp"))
        if scale < num_scales - 1:
            transforms += downsample_layers(pooling, ch)
            shape = (ch, shape[1] // 2, shape[2] // 2)
    # per-channel Gaussian base: N(0, I) behind an ActNorm that starts as the identity
    base_loc_scale = ActNorm(shape[0])
    base_loc_scale.initialized.fill_(True)
    transforms.append(base_loc_scale)
    return ImageFlow(StandardNormal(shape), transforms, data_shape=data_shape, num_bits=num_bits)


@register_model("baseline_image_flow", args_of=build_image_flow)
def build_baseline_image_flow(**model_args) -> ImageFlow:
    """The multi-scale baseline: downsampling by squeeze + slice."""
    if model_args.pop("pooling", "none") != "none":
        raise ValueError("baseline_image_flow always uses pooling='none'; use maxpool_flow for max pooling")
    return build_image_flow(pooling="none", **model_args)


@register_model("maxpool_flow", args_of=build_image_flow)
def build_maxpool_flow(**model_args) -> ImageFlow:
    """MaxPoolFlow: downsampling by the 2x2 max-pool surjection."""
    if model_args.pop("pooling", "max") != "max":
        raise ValueError("maxpool_flow always uses pooling='max'; use baseline_image_flow for squeeze + slice")
    return build_image_flow(pooling="max", **model_args)
