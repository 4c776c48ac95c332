"""SurVAE image flows: downsampling blocks, discrete likelihood in bits/dim, IWBO, sampling, training."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from setflow.models import build_model
from setflow.models.image_flows import ImageFlow, bits_per_dim, downsample_layers
from setflow.transforms import CompositeTransform
from setflow.transforms.surjections import MaxPool2dSurjection, Slice

TINY = dict(data_shape=[1, 8, 8], num_scales=2, num_steps=1, dequant_steps=1, dequant_context=2,
            dequant_context_depth=1, dequant_context_growth=4, densenet_channels=4, densenet_depth=1,
            densenet_growth=4)
MODELS = ("baseline_image_flow", "maxpool_flow")


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(name: str, **kw) -> ImageFlow:
    return build_model(name, **{**TINY, **kw})


def _perturb(model: torch.nn.Module, std: float = 0.02) -> None:
    """Move the zero-initialised conditioner outputs off zero so every layer does something."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(std * torch.randn_like(p))


def structured_images(n: int, seed: int = 0) -> torch.Tensor:
    """Smooth 8x8 gradients plus a little noise, uint8: easy to learn, far from uniform."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 1, 8)
    angle = torch.rand(n, 1, 1, generator=g) * 2 * math.pi
    img = 128 + 100 * (torch.cos(angle) * ramp[None, None, :] + torch.sin(angle) * ramp[None, :, None] - 0.5)
    img = img + 6 * torch.randn(n, 8, 8, generator=g)
    return img.round().clamp(0, 255).to(torch.uint8)[:, None]


# ------------------------------------------------------------------------------ downsampling blocks


@pytest.mark.parametrize("pooling", ["none", "max"])
def test_downsampling_block_shapes_and_round_trip(pooling):
    block = CompositeTransform(downsample_layers(pooling, channels=3))
    x = torch.randn(4, 3, 6, 8)
    z, ldj = block(x)
    assert z.shape == (4, 3, 3, 4) and ldj.shape == (4,)
    z = torch.randn(4, 3, 3, 4)
    x = block.inverse(z)
    assert x.shape == (4, 3, 6, 8)
    z2, _ = block(x)
    assert torch.equal(z2, z)  # forward(inverse(z)) == z


def _brute_force_maxpool_ldj(x: torch.Tensor) -> torch.Tensor:
    """log p(x | z) of a 2x2 max pool, window by window: -log 4 + sum_gaps log(2 N(gap; 0, 1))."""
    b, c, h, w = x.shape
    out = torch.zeros(b, dtype=x.dtype)
    for n, ch, i, j in itertools.product(range(b), range(c), range(0, h, 2), range(0, w, 2)):
        win = [float(x[n, ch, i + di, j + dj]) for di in (0, 1) for dj in (0, 1)]
        top = max(win)
        k = win.index(top)
        out[n] += -math.log(4.0)
        for m, v in enumerate(win):
            if m != k:
                gap = top - v
                out[n] += math.log(2.0) - 0.5 * gap * gap - 0.5 * math.log(2 * math.pi)
    return out


def test_maxpool_flow_downsampling_likelihood_matches_brute_force(double):
    model = tiny("maxpool_flow")
    pools = [t for t in model.transforms if isinstance(t, MaxPool2dSurjection)]
    assert len(pools) == TINY["num_scales"] - 1
    x = torch.randn(3, 2, 4, 6)
    z, ldj = CompositeTransform(downsample_layers("max", 2))(x)
    torch.testing.assert_close(z, torch.nn.functional.max_pool2d(x, 2))
    torch.testing.assert_close(ldj, _brute_force_maxpool_ldj(x), atol=1e-10, rtol=0)
    z2, ldj2 = pools[0](x)
    torch.testing.assert_close(ldj2, ldj)


def test_both_models_have_the_same_latent_shapes():
    a, b = tiny("baseline_image_flow"), tiny("maxpool_flow")
    x = structured_images(2)
    assert a.encode(x).shape == b.encode(x).shape == (2, 4, 2, 2)
    assert a.base.shape == b.base.shape
    assert any(isinstance(t, Slice) for t in a.transforms)
    assert not any(isinstance(t, MaxPool2dSurjection) for t in a.transforms)
    # everything but the downsampling layer is identical: same parameter count
    assert sum(p.numel() for p in a.parameters()) == sum(p.numel() for p in b.parameters())


def test_dequantization_noise_flow_logdet_matches_autograd(double):
    from torch.autograd.functional import jacobian

    from setflow.models.image_flows import dequantization_noise_flow

    net = dict(blocks=1, channels=4, depth=1, growth=4, dropout=0.0, context_depth=1, context_growth=4)
    flow = dequantization_noise_flow((1, 2, 4), num_steps=2, num_context=2, net=net)
    _perturb(flow, std=0.2)
    eps = torch.randn(2, 1, 2, 4)
    ctx = torch.randint(0, 256, (2, 1, 2, 4)).double() / 256
    y, ldj = flow(eps, ctx)
    torch.testing.assert_close(flow.inverse(y, ctx), eps, atol=1e-10, rtol=0)
    for i in range(2):
        jac = jacobian(lambda e: flow(e.unsqueeze(0), ctx[i : i + 1])[0].reshape(-1), eps[i]).reshape(8, 8)
        torch.testing.assert_close(ldj[i], torch.linalg.slogdet(jac)[1], atol=1e-8, rtol=0)


# ------------------------------------------------------------------------------ likelihood and bounds


@pytest.mark.parametrize("name", MODELS)
def test_iwbo_is_logmeanexp_of_elbos_and_above_elbo(name):
    model = tiny(name)
    _perturb(model)
    x = structured_images(3)
    k = 8
    torch.manual_seed(123)
    with torch.no_grad():
        iwbo = model.iwbo(x, k=k)
    torch.manual_seed(123)  # replay the same dequantization draws as one ELBO per copy
    with torch.no_grad():
        elbos = model.log_prob(x.repeat_interleave(k, dim=0)).view(3, k)
    torch.testing.assert_close(iwbo, torch.logsumexp(elbos, 1) - math.log(k), atol=1e-4, rtol=0)
    assert bool((iwbo >= elbos.mean(1) - 1e-5).all())
    assert not model.is_exact
    with torch.no_grad():
        chunked = model.iwbo(x, k=5, chunk=2)
    assert chunked.shape == (3,) and bool(torch.isfinite(chunked).all())


def test_log_prob_is_discrete_in_nats_and_checks_inputs():
    model = tiny("maxpool_flow")
    x = structured_images(4)
    torch.manual_seed(0)
    lp_u8 = model.log_prob(x)
    torch.manual_seed(0)
    lp_f = model.log_prob(x.float())
    torch.testing.assert_close(lp_u8, lp_f)
    bpd = bits_per_dim(lp_u8, (1, 8, 8))
    assert bool(torch.isfinite(bpd).all()) and bool((bpd > 0).all())
    torch.testing.assert_close(model.bits_per_dim(x), bpd, atol=0.5, rtol=0)  # a fresh dequantization draw
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        model.log_prob(torch.full((1, 1, 8, 8), 300.0))
    with pytest.raises(ValueError, match="integer"):
        model.log_prob(torch.full((1, 1, 8, 8), 0.5))
    with pytest.raises(ValueError, match="shape"):
        model.log_prob(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))


@pytest.mark.parametrize("name", MODELS)
def test_sample_returns_integer_images(name):
    model = tiny(name)
    _perturb(model)
    s = model.sample(5)
    assert s.shape == (5, 1, 8, 8) and s.dtype == torch.uint8
    assert bool(torch.isfinite(model.log_prob(s)).all())


def test_uniform_dequantization_variant_and_bad_arguments():
    model = tiny("baseline_image_flow", dequant="uniform")
    assert bool(torch.isfinite(model.log_prob(structured_images(2))).all())
    with pytest.raises(ValueError, match="divisible"):
        build_model("maxpool_flow", **{**TINY, "data_shape": [1, 12, 12], "num_scales": 3})
    with pytest.raises(ValueError, match="pooling"):
        build_model("baseline_image_flow", **TINY, pooling="max")
    with pytest.raises(ValueError, match="dequant"):
        tiny("maxpool_flow", dequant="gaussian")


def test_state_dict_round_trip_rebuilds_the_same_model():
    a = tiny("baseline_image_flow")
    _perturb(a)
    b = tiny("baseline_image_flow")
    b.load_state_dict(a.state_dict())
    x = structured_images(3)
    torch.manual_seed(5)
    la = a.log_prob(x)
    torch.manual_seed(5)
    torch.testing.assert_close(b.log_prob(x), la)


# ------------------------------------------------------------------------------ training


@pytest.mark.parametrize("name", MODELS)
def test_short_training_lowers_bits_per_dim(name):
    torch.manual_seed(0)
    model = tiny(name)
    data = structured_images(256)
    test = structured_images(64, seed=1)

    def bpd() -> float:
        torch.manual_seed(7)
        with torch.no_grad():
            return float(model.bits_per_dim(test).mean())

    before = bpd()
    opt = torch.optim.Adamax(model.parameters(), lr=1e-2)
    for step in range(20):
        x = data[(step % 16) * 16 : (step % 16) * 16 + 16]
        loss = model.bits_per_dim(x).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = bpd()
    assert math.isfinite(before) and math.isfinite(after)
    assert after < before - 0.5, (before, after)


def test_plot_checkpoint_writes_a_png(tmp_path):
    from setflow.data.experiments import ExperimentData
    from setflow.viz.images import plot_checkpoint

    imgs = structured_images(16)
    data = ExperimentData(imgs, imgs, imgs, "test", "bits_per_dim", "images")
    out = tmp_path / "grid.png"
    plot_checkpoint(tiny("maxpool_flow"), {"name": "tiny", "model": "maxpool_flow", "model_args": TINY}, data,
                    str(out), n=9)
    assert out.stat().st_size > 1000
