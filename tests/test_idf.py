"""Integer discrete flows: exact invertibility on integers, an exact normalised discrete likelihood,
straight-through training, sampling and the registry entry."""

import itertools
import math

import pytest
import torch

from setflow.models import build_model
from setflow.models.idf import IDF, bits_per_dim
from setflow.transforms import AdditiveCoupling


pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny(shape=(1, 8, 8), levels=2, flows=2, kind="shallow", dtype=torch.float32, **kw) -> IDF:
    args = dict(num_levels=levels, num_flows=flows, hidden_channels=8, depth=2, coupling=kind, split_prior=kind)
    args.update(kw)
    return IDF(shape, **args).to(dtype)


@torch.no_grad()
def _perturb(model: IDF, std: float = 0.05, seed: int = 1) -> IDF:
    """Random (non-zero) conditioners so the couplings really shift."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.add_(std * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def _images(n, shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.int64).to(torch.uint8)


@pytest.mark.parametrize("kind", ["densenet", "shallow"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [1, 7])
def test_inverse_of_forward_is_bit_exact(kind, dtype, batch):
    model = _perturb(_tiny((3, 8, 8), kind=kind, dtype=dtype)).eval()
    x = _images(batch, (3, 8, 8), seed=batch)
    with torch.no_grad():
        latents = model.split_latents(x)
        back = model.join_latents(latents)
    assert [tuple(z.shape[1:]) for z in latents] == model.latent_shapes()
    assert all(torch.equal(z, torch.round(z)) for z in latents)  # integers stay integers
    assert back.dtype == dtype and torch.equal(back, x.to(dtype))
    # the flow is not trivially the identity: some coupling shifted something
    with torch.no_grad():
        shifts = [m.conditioner(torch.zeros(1, m.split_sizes[0], 4, 4, dtype=dtype)) for m in model.modules()
                  if isinstance(m, AdditiveCoupling)]
    assert any(bool((torch.round(s) != 0).any()) for s in shifts)


def test_log_prob_is_a_normalised_discrete_density():
    """Sum P(x) over a box of integer images ~ 1: a bijection of Z^4 composed with a normalised prior."""
    model = _tiny((1, 2, 2), levels=1, flows=3, num_mixtures=2).double()
    _perturb(model, std=0.008)  # shifts of a few integers: the box below still holds the prior's mass
    with torch.no_grad():
        model.base.log_scales.fill_(math.log(0.4 / 256))  # integer scale 0.4: prior mass sits near 0
        model.base.locs.uniform_(-1.5 / 256, 1.5 / 256)
    k = 9
    vals = torch.arange(128 - k, 128 + k + 1, dtype=torch.float64)
    grid = torch.cartesian_prod(vals, vals, vals, vals).reshape(-1, 1, 2, 2)
    with torch.no_grad():
        lp = model.log_prob(grid)
        z = model.split_latents(grid)[-1].reshape(grid.shape[0], -1)
    assert torch.unique(z, dim=0).shape[0] == grid.shape[0]  # injective on the box
    assert not torch.equal(z, (grid - 128).reshape(z.shape))  # and not the identity
    total = float(torch.logsumexp(lp, 0).exp())
    assert 1.0 - 1e-4 < total <= 1.0 + 1e-9


def test_log_prob_matches_latent_groups_and_bits_per_dim():
    model = _perturb(_tiny((1, 8, 8))).double()
    x = _images(3, (1, 8, 8))
    from setflow.distributions import discretized_logistic_mixture_log_prob

    with torch.no_grad():
        lp = model.log_prob(x)
        total = torch.zeros(3, dtype=torch.float64)
        for z, (logits, locs, scales) in model.split_latents(x, with_params=True):
            total += discretized_logistic_mixture_log_prob(z, logits, locs, scales).reshape(3, -1).sum(1)
    assert torch.allclose(lp, total, rtol=1e-12, atol=1e-9)
    assert torch.allclose(model.bits_per_dim(x), -lp / (64 * math.log(2)))
    assert torch.allclose(bits_per_dim(model, x), model.bits_per_dim(x))


def test_training_steps_lower_bits_per_dim_with_straight_through_gradients():
    torch.manual_seed(0)
    model = _tiny((1, 8, 8), flows=2)
    # smooth images (a gradient plus noise) so there is structure to learn
    ramp = torch.linspace(40, 200, 8).view(1, 1, 1, 8) + torch.linspace(0, 40, 8).view(1, 1, 8, 1)
    x = (ramp + 6 * torch.randn(32, 1, 8, 8)).round().clamp(0, 255).to(torch.uint8)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-2)
    first = float(model.bits_per_dim(x).mean().detach())
    coupling_nets = [m.conditioner for m in model.modules() if isinstance(m, AdditiveCoupling)]
    for step in range(25):
        loss = model.bits_per_dim(x).mean()
        opt.zero_grad()
        loss.backward()
        if step == 0:  # the rounding passes gradients straight through to the conditioners
            grads = [p.grad for net in coupling_nets for p in net.parameters() if p.grad is not None]
            assert grads and any(float(g.abs().sum()) > 0 for g in grads)
        opt.step()
    last = float(model.bits_per_dim(x).mean().detach())
    assert math.isfinite(first) and math.isfinite(last)
    assert last < first - 0.5


def test_sample_shape_range_and_integers():
    model = _perturb(_tiny((3, 8, 8)))
    torch.manual_seed(0)
    s = model.sample(5)
    assert s.shape == (5, 3, 8, 8)
    assert torch.equal(s, s.round()) and s.min() >= 0 and s.max() <= 255


def test_registry_builder_and_argument_checks():
    m = build_model("idf", input_shape=[1, 8, 8], num_levels=2, num_flows=1, hidden_channels=4, depth=1,
                    coupling="shallow", split_prior="shallow")
    assert isinstance(m, IDF) and m.config["num_levels"] == 2 and m.is_exact
    with pytest.raises(ValueError, match="unknown model_args"):
        build_model("idf", input_shape=[1, 8, 8], levels=3)
    with pytest.raises(ValueError, match="divisible"):
        IDF((1, 12, 12), num_levels=3)
    with pytest.raises(ValueError, match="conditioner"):
        IDF((1, 8, 8), num_levels=1, coupling="mlp")
    with pytest.raises(ValueError, match=r"\(B, 1, 8, 8\)"):
        _tiny((1, 8, 8)).log_prob(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="integer"):
        _tiny((1, 8, 8)).log_prob(torch.full((2, 1, 8, 8), 0.5))


def test_paper_architecture_counts():
    """3 levels x 8 flows on CIFAR-sized input: quarter-channel couplings and halving factor-outs."""
    m = IDF((3, 32, 32), num_levels=3, num_flows=8, hidden_channels=8, depth=1, coupling="shallow",
            split_prior="shallow")
    couplings = [t for t in m.transforms if isinstance(t, AdditiveCoupling)]
    assert len(couplings) == 24 and all(t.rounding for t in couplings)
    assert [t.split_sizes for t in couplings[::8]] == [(9, 3), (18, 6), (36, 12)]
    assert m.latent_shapes() == [(6, 16, 16), (12, 8, 8), (48, 4, 4)]
    assert sum(math.prod(s) for s in m.latent_shapes()) == 3 * 32 * 32
    assert m.base.num_components == 5
    assert list(itertools.accumulate(math.prod(s) for s in reversed(m.latent_shapes()))) == [768, 1536, 3072]
