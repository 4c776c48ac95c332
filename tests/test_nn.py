"""Tests of the conditioner networks in ``setflow.nn`` (float64, tiny sizes)."""

from __future__ import annotations

import math
import pickle

import pytest
import torch
import torch.nn.functional as F

from setflow.nn import (
    MLP,
    DeepSets,
    DeepSetsLayer,
    DenseNet,
    EdgeConvNet,
    SetTransformer,
    get_activation,
    knn_graph,
    self_attention,
)

DTYPE = torch.float64


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _randomize(net: torch.nn.Module) -> torch.nn.Module:
    """Give every parameter (zero-initialised read-outs and LayerNorms included) random values."""
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.3)
    return net


def _permuted(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(x.shape[1])
    return x[:, perm], perm


# ----------------------------------------------------------------------------- equivariance


def _set_nets() -> dict[str, torch.nn.Module]:
    return {
        "transformer": SetTransformer(3, 4, d_model=16, num_heads=4, num_layers=2, dim_feedforward=24),
        "transformer_sdpa": SetTransformer(3, 4, d_model=16, num_heads=4, num_layers=1, attention="sdpa"),
        "deepsets_mean": DeepSets(3, 4, hidden=16, num_layers=3, pool="mean"),
        "deepsets_max": DeepSets(3, 4, hidden=16, num_layers=3, pool="max"),
        "edgeconv": EdgeConvNet(3, 4, hidden=16, k=3, num_layers=2),
    }


@pytest.mark.parametrize("name", list(_set_nets()))
def test_permutation_equivariance(name: str) -> None:
    net = _randomize(_set_nets()[name]).to(DTYPE).eval()
    x = torch.randn(2, 7, 3, dtype=DTYPE)  # continuous random points: no distance ties
    xp, perm = _permuted(x)
    y, yp = net(x), net(xp)
    assert y.shape == (2, 7, 4)
    assert torch.allclose(yp, y[:, perm], atol=1e-6, rtol=0)
    assert y.abs().max() > 1e-3  # not trivially zero


def test_positional_transformer_is_not_equivariant() -> None:
    net = _randomize(SetTransformer(3, 4, d_model=16, num_heads=4, positional=True, max_len=10)).to(DTYPE).eval()
    x = torch.randn(2, 7, 3, dtype=DTYPE)
    xp, perm = _permuted(x)
    assert not torch.allclose(net(xp), net(x)[:, perm], atol=1e-6)
    with pytest.raises(ValueError, match="max_len"):
        net(torch.randn(2, 11, 3, dtype=DTYPE))
    with pytest.raises(ValueError, match="max_len"):
        SetTransformer(3, 4, positional=True)


# ----------------------------------------------------------------------------- zero init


def test_zero_init_gives_exact_zero() -> None:
    x = torch.randn(2, 6, 3, dtype=DTYPE)
    nets = [
        SetTransformer(3, 4, d_model=16, num_heads=4),
        SetTransformer(3, 4, d_model=16, num_heads=4, positional=True, max_len=6),
        DeepSets(3, 4, hidden=8),
        EdgeConvNet(3, 4, hidden=8, k=2),
        MLP(3, 4, hidden=(8,), zero_init=True),
    ]
    for net in nets:
        y = net.to(DTYPE)(x)
        assert y.shape == (2, 6, 4) and torch.equal(y, torch.zeros_like(y)), type(net).__name__
    img = DenseNet(3, 5, depth=2, growth=4).to(DTYPE)(torch.randn(2, 3, 6, 6, dtype=DTYPE))
    assert img.shape == (2, 5, 6, 6) and torch.equal(img, torch.zeros_like(img))
    assert MLP(3, 4).to(DTYPE)(x).abs().max() > 0  # MLP is not zero-initialised by default


# ----------------------------------------------------------------------------- transformer numerics


def _reference_transformer(net: SetTransformer, x: torch.Tensor) -> torch.Tensor:
    """Straightforward pre-norm transformer with explicit per-head softmax attention."""
    h = x @ net.embed.weight.T + net.embed.bias
    if net.pos_embedding is not None:
        h = h + net.pos_embedding[: x.shape[1]]
    B, N, d = h.shape
    H = net.num_heads
    hd = d // H
    for blk in net.blocks:
        a = F.layer_norm(h, (d,), blk.norm1.weight, blk.norm1.bias, blk.norm1.eps)
        wq, wk, wv = blk.qkv.weight.chunk(3, dim=0)
        bq, bk, bv = blk.qkv.bias.chunk(3, dim=0)
        heads = []
        for i in range(H):
            sl = slice(i * hd, (i + 1) * hd)
            q = a @ wq[sl].T + bq[sl]
            k = a @ wk[sl].T + bk[sl]
            v = a @ wv[sl].T + bv[sl]
            scores = q @ k.transpose(1, 2) / math.sqrt(hd)
            weights = torch.exp(scores - scores.max(dim=-1, keepdim=True).values)
            weights = weights / weights.sum(dim=-1, keepdim=True)
            heads.append(weights @ v)
        h = h + torch.cat(heads, dim=-1) @ blk.proj.weight.T + blk.proj.bias
        f = F.layer_norm(h, (d,), blk.norm2.weight, blk.norm2.bias, blk.norm2.eps)
        f = f @ blk.ff1.weight.T + blk.ff1.bias
        f = 0.5 * f * (1.0 + torch.erf(f / math.sqrt(2.0)))
        h = h + f @ blk.ff2.weight.T + blk.ff2.bias
    h = F.layer_norm(h, (d,), net.norm.weight, net.norm.bias, net.norm.eps)
    return h @ net.out.weight.T + net.out.bias


@pytest.mark.parametrize("attention", ["bmm", "sdpa"])  # "auto" is "sdpa"
@pytest.mark.parametrize("positional", [False, True])
def test_transformer_matches_reference(attention: str, positional: bool) -> None:
    net = SetTransformer(
        3, 5, d_model=12, num_heads=3, num_layers=2, dim_feedforward=20,
        positional=positional, max_len=9, attention=attention,
    )
    net = _randomize(net).to(DTYPE)
    x = torch.randn(4, 9, 3, dtype=DTYPE, requires_grad=True)
    y = net(x)
    y_ref = _reference_transformer(net, x)
    assert torch.allclose(y, y_ref, atol=1e-10, rtol=0)
    # gradients w.r.t. the input and every parameter agree as well
    g = torch.randn_like(y)
    params = [x, *net.parameters()]
    grads = torch.autograd.grad(y, params, g)
    grads_ref = torch.autograd.grad(y_ref, params, g)
    for a, b in zip(grads, grads_ref):
        assert torch.allclose(a, b, atol=1e-10, rtol=0)


def test_attention_kernels_agree_and_gradcheck() -> None:
    qkv = torch.randn(2, 4, 3 * 6, dtype=DTYPE, requires_grad=True)
    out_bmm = self_attention(qkv, 2, impl="bmm")
    out_sdpa = self_attention(qkv, 2, impl="sdpa")
    assert torch.allclose(out_bmm, out_sdpa, atol=1e-12, rtol=0)
    assert torch.autograd.gradcheck(lambda t: self_attention(t, 2, impl="bmm"), (qkv[:1].detach().requires_grad_(),))
    # a large score range must not overflow (max subtraction)
    big = (qkv.detach() * 200).requires_grad_()
    out = self_attention(big, 2, impl="bmm")
    assert torch.isfinite(out).all()
    assert torch.allclose(out, self_attention(big, 2, impl="sdpa"), atol=1e-9, rtol=0)
    with pytest.raises(ValueError):
        self_attention(qkv, 2, dropout_p=0.1, impl="bmm")
    with pytest.raises(ValueError):
        self_attention(qkv, 2, impl="nope")


def test_attention_supports_vectorized_jacobians() -> None:
    net = _randomize(SetTransformer(2, 3, d_model=8, num_heads=2, num_layers=1)).to(DTYPE)
    x = torch.randn(1, 4, 2, dtype=DTYPE)
    jac = torch.autograd.functional.jacobian(net, x)
    assert torch.allclose(torch.autograd.functional.jacobian(net, x, vectorize=True), jac, atol=1e-12)
    assert torch.allclose(torch.func.jacrev(net)(x), jac, atol=1e-12)
    assert torch.allclose(torch.func.vmap(net)(x[None])[0], net(x), atol=1e-12)


def test_transformer_float32_and_dropout_paths() -> None:
    net = SetTransformer(2, 4, d_model=16, num_heads=4, dropout=0.1, zero_init=False)
    x = torch.randn(3, 6, 2)
    net.train()
    y1, y2 = net(x), net(x)
    assert not torch.allclose(y1, y2)  # dropout active in training
    y1.sum().backward()
    net.eval()
    assert torch.equal(net(x), net(x))  # deterministic in eval
    with pytest.raises(ValueError, match="divisible"):
        SetTransformer(2, 4, d_model=10, num_heads=4)
    with pytest.raises(ValueError, match="dropout"):
        SetTransformer(2, 4, d_model=16, num_heads=4, dropout=0.1, attention="bmm")
    with pytest.raises(ValueError, match=r"\(B, N, 2\)"):
        net(torch.randn(3, 6, 3))


# ----------------------------------------------------------------------------- context


def test_context_used_and_required() -> None:
    x = torch.randn(2, 5, 3, dtype=DTYPE)
    c, c2 = torch.randn(2, 4, dtype=DTYPE), torch.randn(2, 4, dtype=DTYPE)
    nets = [
        SetTransformer(3, 2, d_model=8, num_heads=2, context_features=4),
        DeepSets(3, 2, hidden=8, context_features=4),
        EdgeConvNet(3, 2, hidden=8, k=2, context_features=4),
        MLP(3, 2, hidden=(8,), context_features=4),
    ]
    for net in nets:
        net = _randomize(net).to(DTYPE)
        y1, y2 = net(x, c), net(x, c2)
        assert y1.shape == y2.shape == (2, 5, 2)
        assert not torch.allclose(y1, y2), type(net).__name__  # the context is used
        # a per-set context keeps equivariance
        xp, perm = _permuted(x)
        assert torch.allclose(net(xp, c), y1[:, perm], atol=1e-6), type(net).__name__
    # the set conditioners' contract (setflow.nn.base): a context is required when built with one and
    # refused when built without (the point-wise MLP keeps context=None working)
    with pytest.raises(ValueError, match="needs a context"):
        nets[0](x)
    plain = _randomize(SetTransformer(3, 2, d_model=8, num_heads=2)).to(DTYPE)
    with pytest.raises(ValueError, match="without context_features"):
        plain(x, c)
    img = _randomize(DenseNet(3, 2, depth=1, growth=2, context_features=4)).to(DTYPE)
    xi = torch.randn(2, 3, 4, 4, dtype=DTYPE)
    assert not torch.allclose(img(xi), img(xi, c))


# ----------------------------------------------------------------------------- kNN graph


def _brute_force_knn(x: torch.Tensor, k: int, loop: bool) -> set[tuple[int, int]]:
    B, N, _ = x.shape
    edges = set()
    for b in range(B):
        for i in range(N):
            d = [(float(((x[b, i] - x[b, j]) ** 2).sum()), j) for j in range(N) if loop or j != i]
            for _, j in sorted(d)[:k]:  # ties -> lower index first
                edges.add((b * N + j, b * N + i))
    return edges


@pytest.mark.parametrize("loop", [False, True])
def test_knn_graph_matches_brute_force(loop: bool) -> None:
    x = torch.randn(3, 9, 2, dtype=DTYPE)
    edge_index = knn_graph(x, 4, loop=loop)
    assert edge_index.shape == (2, 3 * 9 * 4) and edge_index.dtype == torch.long
    assert set(map(tuple, edge_index.T.tolist())) == _brute_force_knn(x, 4, loop)
    assert torch.equal(edge_index[1], torch.arange(27).repeat_interleave(4))
    # integer grid with many ties: deterministic lower-index tie breaking
    grid = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]], dtype=DTYPE)
    ei = knn_graph(grid, 2)
    assert ei[0, :2].tolist() == [1, 2]  # centre 0: four neighbours at distance 1, lowest indices
    assert set(map(tuple, ei.T.tolist())) == _brute_force_knn(grid, 2, False)


def test_knn_graph_permutation() -> None:
    x = torch.randn(2, 8, 3, dtype=DTYPE)
    xp, perm = _permuted(x)
    N = x.shape[1]
    # node (b, i) of the permuted set is node (b, perm[i]) of the original
    to_orig = (torch.arange(2).view(2, 1) * N + perm.view(1, N)).reshape(-1)
    e = set(map(tuple, knn_graph(x, 3).T.tolist()))
    ep = set(map(tuple, to_orig[knn_graph(xp, 3)].T.tolist()))
    assert e == ep


def test_bad_k_raises() -> None:
    x = torch.randn(2, 5, 2)
    with pytest.raises(ValueError, match="k=5"):
        knn_graph(x, 5)
    with pytest.raises(ValueError, match="k=0"):
        knn_graph(x, 0)
    knn_graph(x, 5, loop=True)  # fine with self-loops
    with pytest.raises(ValueError):
        knn_graph(torch.randn(5, 2), 2)


def test_edgeconv_takes_at_most_n_minus_1_neighbours() -> None:
    x = torch.randn(2, 5, 2, dtype=DTYPE)
    big = EdgeConvNet(2, 3, hidden=8, k=8, zero_init=False).to(DTYPE)
    capped = EdgeConvNet(2, 3, hidden=8, k=4, zero_init=False).to(DTYPE)
    capped.load_state_dict(big.state_dict())
    assert torch.equal(big(x), capped(x))  # k=8 on 5 points: the 4 others
    one = torch.randn(3, 1, 2, dtype=DTYPE)  # no neighbours: every EdgeConv aggregates to 0
    expect = big.out(big.act(torch.zeros(3, 8, dtype=DTYPE))).view(3, 1, 3)
    assert torch.equal(big(one), expect)


# ----------------------------------------------------------------------------- DeepSets / MLP


def test_deepsets_layer_formula() -> None:
    layer = DeepSetsLayer(3, 2, pool="max").to(DTYPE)
    x = torch.randn(2, 4, 3, dtype=DTYPE)
    expected = layer.lam(x) + layer.gamma(x.max(dim=1).values)[:, None]
    assert torch.allclose(layer(x), expected)
    with pytest.raises(ValueError, match="pool"):
        DeepSetsLayer(3, 2, pool="median")


def test_mlp_and_activations() -> None:
    net = MLP(3, 2, hidden=(5, 6), activation="relu")
    assert [m.out_features for m in net.layers] == [5, 6, 2]
    assert net(torch.randn(7, 3)).shape == (7, 2)
    assert MLP(3, 2, hidden=())(torch.randn(4, 3)).shape == (4, 2)
    assert isinstance(get_activation("GELU"), torch.nn.GELU)
    with pytest.raises(ValueError, match="activation"):
        get_activation("nope")


# ----------------------------------------------------------------------------- DenseNet


def test_densenet_layouts() -> None:
    x = torch.randn(2, 4, 5, 5, dtype=DTYPE)
    idf = DenseNet(4, 6, depth=3, growth=5, out_kernel_size=3).to(DTYPE)
    assert idf.head.in_channels == 4 + 3 * 5 and idf.head.kernel_size == (3, 3)
    assert idf(x).shape == (2, 6, 5, 5)
    survae = DenseNet(4, 6, num_blocks=2, depth=2, growth=3, mid_channels=8, zero_init=False).to(DTYPE)
    y = survae(x)
    assert y.shape == (2, 6, 5, 5) and y.abs().max() > 0
    y.sum().backward()
    # channels_last (default) computes the same function as the NCHW layout
    plain = DenseNet(4, 6, num_blocks=2, depth=2, growth=3, mid_channels=8, zero_init=False, channels_last=False)
    plain.load_state_dict(survae.state_dict())
    assert torch.allclose(plain.to(DTYPE)(x), survae(x), atol=1e-10, rtol=0)
    assert survae(x).is_contiguous() and "channels_last=False" in repr(plain)
    with pytest.raises(ValueError, match="one block"):
        DenseNet(4, 6, num_blocks=2)
    with pytest.raises(ValueError, match=r"\(B, 4, H, W\)"):
        idf(torch.randn(2, 3, 5, 5, dtype=DTYPE))


# ----------------------------------------------------------------------------- module hygiene


def test_pickle_repr_reset() -> None:
    nets = [
        MLP(2, 3, hidden=(4,)),
        SetTransformer(2, 3, d_model=8, num_heads=2, positional=True, max_len=5),
        DeepSets(2, 3, hidden=4),
        EdgeConvNet(2, 3, hidden=4, k=2),
        DenseNet(2, 3, depth=1, growth=2),
    ]
    x = torch.randn(1, 5, 2)
    for net in nets:
        clone = pickle.loads(pickle.dumps(net))
        xin = torch.randn(1, 2, 4, 4) if isinstance(net, DenseNet) else x
        assert torch.equal(clone(xin), net(xin))
        assert type(net).__name__ in repr(net)
        net.reset_parameters()
    assert "num_heads=2" in repr(nets[1]) and "max_len=5" in repr(nets[1])
    assert "pool='mean'" in repr(nets[2]) and "k=2" in repr(nets[3]) and "growth=2" in repr(nets[4])


# ----------------------------------------------------------------------------- CPU dropout, FLOP counting


def test_cpu_dropout_mask_statistics_and_gradient() -> None:
    from setflow.nn.cpu import dropout

    x = torch.ones(200, 301, requires_grad=True)  # 60200 entries: not a multiple of 3 decisions per draw
    torch.manual_seed(1)
    y = dropout(x, 0.2)
    torch.manual_seed(1)
    assert torch.equal(dropout(x, 0.2), y)  # seeded like F.dropout
    kept = y != 0
    scale = 2**16 / round(0.8 * 2**16)
    assert torch.allclose(y[kept], torch.full_like(y[kept], scale))
    assert abs(kept.double().mean().item() - 0.8) < 0.01
    # four decisions per 64-bit draw: every lane position (index mod 4) keeps at the same rate
    lanes = kept.flatten()[: kept.numel() // 4 * 4].view(-1, 4).double().mean(0)
    assert torch.all((lanes - 0.8).abs() < 0.01), lanes
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # d/dx (x * mask) = mask
    assert dropout(x, 0.2, training=False) is x and dropout(x, 0.0) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    with pytest.raises(ValueError):
        dropout(x, 1.5)


def test_flop_count_same_for_both_attention_kernels() -> None:
    from torch.utils.flop_counter import FlopCounterMode

    qkv = torch.randn(2, 5, 3 * 8, requires_grad=True)
    counts = []
    for impl in ("bmm", "sdpa"):
        with FlopCounterMode(display=False) as fc:
            self_attention(qkv, 2, impl=impl).sum().backward()
        counts.append(fc.get_total_flops())
    assert counts[0] == counts[1] == 6 * 2 * 2 * 2 * 5 * 5 * 4  # 6 matmuls of 2*B*H*N*N*hd


def test_split_batch_backward_matches_full_batch() -> None:
    from setflow.nn import split_batch_backward

    net = _randomize(SetTransformer(2, 3, d_model=8, num_heads=2, num_layers=1)).to(DTYPE)
    x = torch.randn(5, 4, 2, dtype=DTYPE)
    loss = net(x).pow(2).sum(dim=(1, 2)).mean()
    ref = torch.autograd.grad(loss, list(net.parameters()))
    for workers in (1, 2, 3):
        net.zero_grad(set_to_none=True)
        out = split_batch_backward(lambda c: net(c).pow(2).sum(), x, workers=workers)
        assert torch.allclose(out, loss.detach(), atol=1e-12)
        for p, g in zip(net.parameters(), ref):
            assert torch.allclose(p.grad, g, atol=1e-12)
    with pytest.raises(ValueError):
        split_batch_backward(lambda c: c.sum(), x, workers=0)
    with pytest.raises(RuntimeError, match="boom"):
        split_batch_backward(lambda c: (_ for _ in ()).throw(RuntimeError("boom")), x, workers=2)


def test_cpu_training_attention_with_dropout_is_written_out_with_the_cpu_mask() -> None:
    import setflow.nn.attention as att
    from setflow.nn.cpu import _keep_mask

    B, N, H, hd, p = 3, 6, 2, 4, 0.3
    qkv = torch.randn(B, N, 3 * H * hd, dtype=DTYPE)
    torch.manual_seed(5)
    out = self_attention(qkv, H, p)
    q, k, v = qkv.view(B, N, 3, H, hd).permute(2, 0, 3, 1, 4).unbind(0)
    w = torch.softmax(q @ k.transpose(-1, -2) / hd**0.5, dim=-1)
    torch.manual_seed(5)
    ref = (w * _keep_mask(w.shape, 1 - p, w)) @ v
    torch.testing.assert_close(out, ref.transpose(1, 2).reshape(B, N, H * hd))
    # padded keys get no weight on this path too: their values do not change a real point's output
    key_mask = torch.ones(B, N, dtype=torch.bool)
    key_mask[:, -2:] = False
    other = qkv.clone()
    other[:, -2:] = 100.0
    torch.manual_seed(6)
    a = self_attention(qkv, H, p, key_mask=key_mask)
    torch.manual_seed(6)
    assert torch.equal(a[:, :-2], self_attention(other, H, p, key_mask=key_mask)[:, :-2])
    # without dropout (eval) and with the switch off, SDPA runs as before
    torch.testing.assert_close(self_attention(qkv, H, 0.0), (w @ v).transpose(1, 2).reshape(B, N, H * hd))
    att.CPU_WRITTEN_OUT_DROPOUT = False
    try:
        torch.manual_seed(5)
        assert not torch.equal(self_attention(qkv, H, p), out)  # SDPA's own bernoulli masks
    finally:
        att.CPU_WRITTEN_OUT_DROPOUT = True
