"""Every registered set conditioner against the written contract of ``setflow.nn.base`` (float64).

Driven by ``setflow.registry.SET_CONDITIONERS``: a new conditioner is checked by registering it.
Equivariance (without positions; with learned positions a net is *not* equivariant), an exactly
zero initial output, context required / refused, masks (a padded batch with garbage in the
padding gives, set for set, the outputs of each set alone), one-line input errors, the route of
a masked batch through the fused set transformer, and ``fused`` as a model argument.
"""

from __future__ import annotations

import pytest
import torch

from setflow.nn import fast
from setflow.nn.base import ConditionerSpec, SetConditioner
from setflow.registry import SET_CONDITIONERS, RegistryError

DT = torch.float64
D_IN, D_OUT, C = 3, 4, 5
SPEC = ConditionerSpec(d_model=8, num_heads=2, num_layers=2, dim_feedforward=16, num_inducing=3, k=3)
NAMES = SET_CONDITIONERS.names()
POSITIONAL = [n for n in NAMES if SET_CONDITIONERS.get(n).accepts_positions]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _build(name: str, positional: bool = False, context: bool = False, randomise: bool = True,
           max_len: int = 12) -> SetConditioner:
    spec = ConditionerSpec(**{**SPEC.as_dict(), "context_features": C if context else None})
    net = SET_CONDITIONERS.get(name).from_spec(D_IN, D_OUT, spec, positional=positional,
                                               max_len=max_len if positional else None)
    net = net.to(DT).eval()
    if randomise:  # off the zero read-out, so every output depends on every input
        g = _gen(1)
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=DT))
    return net


def _x(b: int = 2, n: int = 9, seed: int = 2) -> torch.Tensor:
    return torch.randn(b, n, D_IN, generator=_gen(seed), dtype=DT)


def test_registry_holds_the_conditioners() -> None:
    assert {"transformer", "deepsets", "edgeconv", "isab", "knn"} <= set(NAMES)
    for name in NAMES:
        assert issubclass(SET_CONDITIONERS.get(name), SetConditioner), name
    with pytest.raises(RegistryError, match="unknown set conditioner 'pointnet'; registered set conditioners"):
        SET_CONDITIONERS.get("pointnet")


@pytest.mark.parametrize("name", NAMES)
def test_equivariant_without_positions(name: str) -> None:
    net = _build(name)
    x = _x()
    perm = torch.randperm(x.shape[1], generator=_gen(3))
    y = net(x)
    assert y.shape == (2, 9, D_OUT)
    torch.testing.assert_close(net(x[:, perm]), y[:, perm], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", POSITIONAL)
def test_learned_positions_break_equivariance(name: str) -> None:
    net = _build(name, positional=True)
    x = _x()
    perm = torch.randperm(x.shape[1], generator=_gen(3))
    assert not torch.allclose(net(x[:, perm]), net(x)[:, perm], atol=1e-6)
    with pytest.raises(ValueError, match="max_len=12"):
        net(_x(n=13))


@pytest.mark.parametrize("name", [n for n in NAMES if n not in POSITIONAL])
def test_positions_refused_where_there_are_none(name: str) -> None:
    with pytest.raises(ValueError, match="no learned positions"):
        SET_CONDITIONERS.get(name).from_spec(D_IN, D_OUT, SPEC, positional=True, max_len=8)


@pytest.mark.parametrize("name", NAMES)
def test_zero_initial_output(name: str) -> None:
    for context in (False, True):
        net = _build(name, context=context, randomise=False)
        c = torch.randn(2, C, dtype=DT) if context else None
        mask = torch.ones(2, 9, dtype=torch.bool)
        mask[1, 6:] = False
        for m in (None, mask):
            assert torch.equal(net(_x(), c, mask=m), torch.zeros(2, 9, D_OUT, dtype=DT)), (name, context)


@pytest.mark.parametrize("name", NAMES)
def test_context_is_used_required_and_refused(name: str) -> None:
    net = _build(name, context=True)
    x = _x()
    c1, c2 = torch.randn(2, C, generator=_gen(4), dtype=DT), torch.randn(2, C, generator=_gen(5), dtype=DT)
    assert not torch.allclose(net(x, c1), net(x, c2))
    perm = torch.randperm(9, generator=_gen(3))
    torch.testing.assert_close(net(x[:, perm], c1), net(x, c1)[:, perm], rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match=rf"context_features={C} and needs a context of shape \(2, {C}\)"):
        net(x)
    with pytest.raises(ValueError, match=r"expected context of shape \(2, 5\)"):
        net(x, torch.randn(2, C + 1, dtype=DT))
    with pytest.raises(ValueError, match="built without context_features"):
        _build(name)(x, c1)


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_named(name: str) -> None:
    net = _build(name)
    with pytest.raises(ValueError, match=rf"expected x of shape \(B, N, {D_IN}\)"):
        net(torch.randn(2, 9, D_IN + 1, dtype=DT))
    with pytest.raises(ValueError, match=r"expected mask of shape \(2, 9\) and dtype bool"):
        net(_x(), mask=torch.ones(2, 9))
    with pytest.raises(ValueError, match=r"expected mask of shape \(2, 9\)"):
        net(_x(), mask=torch.ones(2, 8, dtype=torch.bool))


def _padded(sizes, n_max, seed=6):
    """Sets of ``sizes`` real points padded to ``n_max`` with garbage (NaN, inf, huge values)."""
    x = torch.randn(len(sizes), n_max, D_IN, generator=_gen(seed), dtype=DT)
    mask = torch.arange(n_max)[None, :] < torch.tensor(sizes)[:, None]
    garbage = torch.tensor([float("nan"), float("inf"), -1e6, 1e6], dtype=DT)
    pad = garbage[torch.arange(n_max * D_IN * len(sizes)) % 4].view(len(sizes), n_max, D_IN)
    return torch.where(mask[..., None], x, pad), mask, x


@pytest.mark.parametrize("positional", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_masked_batch_is_each_set_alone(name: str, positional: bool) -> None:
    if positional and name not in POSITIONAL:
        pytest.skip("no learned positions")
    for context in (False, True):
        net = _build(name, positional=positional, context=context)
        sizes = [7, 5, 11, 4, 3, 2, 1]  # 3, 2, 1: at most k = 3 real points (fewer neighbours than k, or none)
        xg, mask, _ = _padded(sizes, 11)
        c = torch.randn(len(sizes), C, generator=_gen(8), dtype=DT) if context else None
        y = net(xg, c, mask=mask)
        assert torch.isfinite(y).all(), name
        for b, n in enumerate(sizes):  # every set alone, however small (kNN nets take min(k, n - 1) neighbours)
            alone = net(xg[b : b + 1, :n], None if c is None else c[b : b + 1])
            torch.testing.assert_close(y[b : b + 1, :n], alone, rtol=1e-10, atol=1e-10, msg=f"{name}, set {b}")
        # other garbage in the padding changes nothing at the real points
        xg2 = torch.where(mask[..., None], xg, torch.full_like(xg, -3.0))
        torch.testing.assert_close(net(xg2, c, mask=mask)[mask], y[mask], rtol=1e-10, atol=1e-10)
        # the gradient of the real outputs does not reach the padding
        xr = xg2.clone().requires_grad_(True)
        net(xr, c, mask=mask)[mask].sum().backward()
        assert torch.equal(xr.grad[~mask], torch.zeros_like(xr.grad[~mask])), name


@pytest.mark.parametrize("name", [n for n in NAMES if n not in POSITIONAL] + POSITIONAL)
def test_masked_equivariance(name: str) -> None:
    net = _build(name)
    xg, mask, _ = _padded([8, 5], 9)
    perm = torch.randperm(9, generator=_gen(11))
    y = net(xg, mask=mask)
    yp = net(xg[:, perm], mask=mask[:, perm])
    torch.testing.assert_close(yp[mask[:, perm]], y[:, perm][mask[:, perm]], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", NAMES)
def test_equivariant_with_duplicates_and_tied_distances(name: str) -> None:
    """Points on a small integer grid, each drawn several times: most neighbour distances tie. Which
    neighbours win must not depend on the order of the points (kNN nets: ties by coordinates)."""
    net = _build(name)
    g = _gen(12)
    base = torch.randint(0, 3, (2, 7, D_IN), generator=g).to(DT)
    x = torch.cat([base, base[:, :4], base[:, :2]], dim=1)  # 13 points, duplicates of 6 of them
    y = net(x)
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[0, 13:] = mask[1, 11:] = False  # the same sets padded (set 1 cut to 11 points)
    xm = torch.cat([x, torch.zeros(2, 3, D_IN, dtype=DT)], dim=1)
    ym = net(xm, mask=mask)
    for seed in range(5):
        perm = torch.randperm(13, generator=_gen(20 + seed))
        torch.testing.assert_close(net(x[:, perm]), y[:, perm], rtol=1e-6, atol=1e-6)
        pm = torch.cat([perm, torch.arange(13, 16)])
        ymp = net(xm[:, pm], mask=mask[:, pm])
        torch.testing.assert_close(ymp[mask[:, pm]], ym[:, pm][mask[:, pm]], rtol=1e-6, atol=1e-6)


def test_all_true_mask_is_the_unmasked_net() -> None:
    for name in NAMES:
        net = _build(name)
        x = _x()
        torch.testing.assert_close(net(x, mask=torch.ones(2, 9, dtype=torch.bool)), net(x), rtol=1e-12, atol=1e-12)


def test_spec_is_typed() -> None:
    with pytest.raises(ValueError, match="d_model must be an integer >= 1; got 0"):
        ConditionerSpec(d_model=0)
    with pytest.raises(ValueError, match="dropout must be a number in"):
        ConditionerSpec(dropout=1.5)
    with pytest.raises(ValueError, match="k must be an integer"):
        ConditionerSpec(k=2.5)


# ----------------------------------------------------------------------------- the fused route


def test_masked_batch_routes_eager_and_unmasked_batches_keep_their_route(monkeypatch) -> None:
    from setflow.nn import SetTransformer

    torch.manual_seed(0)
    net = SetTransformer(2, 4, d_model=32, num_heads=4, num_layers=1, dim_feedforward=64, zero_init=False,
                         fused=True).eval()
    x = torch.randn(3, 10, 2)
    mask = torch.ones(3, 10, dtype=torch.bool)
    mask[0, 7:] = False
    unmasked = fast.route(net, x)
    assert fast.route(net, x, None, None) == unmasked and unmasked.kind in ("network", "blocks")
    assert not unmasked.masked
    masked = fast.route(net, x, None, mask)
    assert masked.kind == "eager" and masked.masked
    # the masked forward never enters a fused kernel, and equals the eager net's masked forward
    calls = []
    monkeypatch.setattr(fast.kernels, "network", lambda *a, **k: calls.append("network"))
    monkeypatch.setattr("setflow.nn.set_transformer.fused_block", lambda *a, **k: calls.append("block"))
    y = net(x, mask=mask)
    assert not calls
    net.fused = False
    torch.testing.assert_close(y, net(x, mask=mask), rtol=0, atol=0)
    torch.testing.assert_close(y[0, :7], net(x[:1, :7])[0], rtol=1e-5, atol=1e-6)


def test_fused_is_a_model_argument_restored_from_the_config(tmp_path) -> None:
    from setflow.models.build import build_from_config
    from setflow.nn import SetTransformer

    base = {"model": "sortflow", "model_args": {"num_points": 6, "dim": 2, "num_steps": 1, "d_model": 8,
                                                 "num_heads": 2, "num_layers": 1, "dim_feedforward": 16}}

    def fused_flags(cfg):
        return {m.fused for m in build_from_config(cfg).modules() if isinstance(m, SetTransformer)}

    assert fused_flags(base) == {False}
    assert fused_flags({**base, "model_args": {**base["model_args"], "fused": True}}) == {True}
    # an old config's train.fused is mapped onto the model argument (so its checkpoints restore it)
    assert fused_flags({**base, "train": {"fused": True}}) == {True}
    with pytest.raises(ValueError, match="contradicts model_args.fused=false"):
        build_from_config({**base, "model_args": {**base["model_args"], "fused": False}, "train": {"fused": True}})
    with pytest.raises(ValueError, match="point_conditioner: unknown set conditioner 'pointnet'"):
        build_from_config({**base, "model_args": {**base["model_args"], "point_conditioner": "pointnet"}})


def test_pma_and_deepsets_layer_pool_real_points_only() -> None:
    from setflow.nn import PMA, DeepSetsLayer

    torch.manual_seed(0)
    sizes = [6, 3]
    x = torch.randn(2, 6, 8, dtype=DT)
    mask = torch.arange(6)[None, :] < torch.tensor(sizes)[:, None]
    xg = torch.where(mask[..., None], x, torch.full_like(x, float("nan")))
    pma = PMA(8, num_seeds=2, num_heads=2).to(DT).eval()
    layers = [DeepSetsLayer(8, 5, pool).to(DT) for pool in ("mean", "max", "sum")]
    for net in [pma] + layers:
        y = net(xg, mask)
        for b, n in enumerate(sizes):
            alone = net(x[b : b + 1, :n])
            got = y[b : b + 1] if net is pma else y[b : b + 1, :n]
            torch.testing.assert_close(got, alone, rtol=1e-10, atol=1e-10, msg=type(net).__name__)
