"""A whole set transformer in one C++ call per direction (setflow.nn.fast.kernels.network), against references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from setflow.nn.fast import kernels
from setflow.nn.fast import block_core
from setflow.nn.set_transformer import SetTransformer

needs_block = pytest.mark.skipif(not kernels.block_available(), reason="C++ block kernel unavailable (no BLAS sgemm)")


def _net(k: int, o: int, d: int, heads: int, ff: int, layers: int, pos: bool, p: float = 0.1,
         max_len: int = 64) -> SetTransformer:
    net = SetTransformer(k, o, d_model=d, num_heads=heads, num_layers=layers, dim_feedforward=ff, dropout=p,
                         positional=pos, max_len=max_len if pos else None, zero_init=False, fused=True)
    with torch.no_grad():
        for prm in net.parameters():  # non-trivial LayerNorm parameters and biases
            prm.add_(0.2 * torch.randn_like(prm))
    return net


def _reference(x, ws, layers: int, heads: int, pos: bool, p: float, seeds, eps: float = 1e-5) -> torch.Tensor:
    """The network layer by layer in PyTorch ops (block_core with the same hash masks), in x's dtype."""
    k = 3 if pos else 2
    h = F.linear(x, ws[0], ws[1])
    if pos:
        h = h + ws[2]
    for i in range(layers):
        h = block_core(h, ws[k + 12 * i: k + 12 * (i + 1)], heads, p, eps, seeds[i] if p > 0 else None)
    nw, nb, wo, bo = ws[k + 12 * layers:]
    return F.linear(F.layer_norm(h, (h.shape[-1],), nw, nb, eps), wo, bo)


@needs_block
@pytest.mark.parametrize("b, n, k, d, heads, ff, layers, o, pos", [
    (3, 50, 2, 64, 8, 256, 2, 4, False),   # the paper conditioner's shape
    (13, 23, 1, 32, 4, 64, 3, 2, True),    # ragged last chunk, three blocks, positions
    (1, 1, 3, 16, 4, 16, 1, 1, True),      # one point
    (40, 17, 2, 32, 2, 32, 1, 3, False),   # head dim 16, many chunks
    (1100, 17, 2, 16, 4, 16, 2, 2, True),  # 74 chunks: more than one merge wave of gradient partials
])
@pytest.mark.parametrize("p", [0.0, 0.2])
def test_network_matches_float64_layers_with_the_same_masks(b, n, k, d, heads, ff, layers, o, pos, p) -> None:
    """Output and every gradient (input, input layer, positions, blocks, read-out) == the layer-by-layer
    network in float64 with the same hash masks."""
    torch.manual_seed(b + n + layers)
    net = _net(k, o, d, heads, ff, layers, pos)
    ws = [w.detach().clone().requires_grad_() for w in net.network_weights(n)]
    x = torch.randn(b, n, k, requires_grad=True)
    seeds = torch.randint(-2**31, 2**31 - 1, (layers, 4, 2), dtype=torch.int32)
    y = kernels.network(x, ws, layers, heads, pos, p, 1e-5, 1e-5, seeds)
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, [x, *ws], g)
    x64, ws64 = x.detach().double().requires_grad_(), [w.detach().double().requires_grad_() for w in ws]
    ref = _reference(x64, ws64, layers, heads, pos, p, seeds)
    ref_grads = torch.autograd.grad(ref, [x64, *ws64], g.double())
    # a single differing mask bit moves outputs and gradients far beyond these tolerances
    assert torch.allclose(y.double(), ref, atol=1e-4, rtol=1e-4)
    for i, (a, r) in enumerate(zip(grads, ref_grads)):
        assert torch.allclose(a.double(), r, atol=1e-4 * (1 + r.abs().max().item()), rtol=1e-4), i


@needs_block
@pytest.mark.parametrize("pos", [False, True])
def test_fused_set_transformer_runs_the_network_with_the_block_by_block_masks(pos: bool,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A fused SetTransformer now runs as one network call; it draws the same seeds as the block-by-block
    fused path and computes the same values and gradients (float32 rounding apart), in training and eval."""
    torch.manual_seed(3)
    net = _net(2, 4, 64, 8, 128, 2, pos, p=0.2)
    x = torch.randn(6, 30, 2, requires_grad=True)
    calls = []
    real = kernels.network
    monkeypatch.setattr(kernels, "network", lambda *a, **kw: calls.append(1) or real(*a, **kw))

    def run(train: bool):
        net.train(train)
        torch.manual_seed(11)
        y = net(x)
        return [y, *torch.autograd.grad(y.square().sum(), [x, *net.parameters()])]

    for train in (True, False):
        fast = run(train)
        assert calls, "the fused network path was not taken"
        calls.clear()
        net.backend = "blocks"  # the block-by-block fused path (C++ blocks)
        slow = run(train)
        net.backend = "auto"
        assert not calls
        for a, b in zip(fast, slow):
            assert torch.allclose(a, b, atol=1e-5 * (1 + b.abs().max().item()), rtol=1e-5)
    # a context input is the block-by-block path's (the network op has no context projection)
    ctx_net = SetTransformer(2, 4, d_model=32, num_heads=4, num_layers=1, context_features=3, fused=True)
    out = ctx_net(x, torch.randn(6, 3))
    assert out.shape == (6, 30, 4) and not calls


@needs_block
def test_network_inference_keeps_nothing_and_computes_the_same() -> None:
    torch.manual_seed(4)
    net = _net(2, 4, 64, 8, 256, 2, True)
    ws = [w.detach() for w in net.network_weights(50)]
    x = torch.randn(9, 50, 2)
    seeds = torch.randint(-2**31, 2**31 - 1, (2, 4, 2), dtype=torch.int32)
    with torch.no_grad():
        fast = kernels.network(x, ws, 2, 8, True, 0.2, seeds=seeds)
        _, saved = torch.ops.setflow.network(x, ws, seeds, 2, True, 8, 13421773, 1e-5, 1e-5, False)
    assert saved.numel() == 0  # the no-grad forward allocates no saved activations
    assert torch.equal(fast, kernels.network(x.requires_grad_(), ws, 2, 8, True, 0.2, seeds=seeds).detach())


@needs_block
def test_network_is_deterministic_and_thread_count_invariant_forward() -> None:
    torch.manual_seed(5)
    net = _net(2, 2, 32, 4, 64, 2, False)
    ws = [w.detach().requires_grad_() for w in net.network_weights(30)]
    x = torch.randn(24, 30, 2, requires_grad=True)
    seeds = torch.randint(-2**31, 2**31 - 1, (2, 4, 2), dtype=torch.int32)
    threads = torch.get_num_threads()
    outs = []
    try:
        for t in (1, 3):
            torch.set_num_threads(t)
            outs.append(kernels.network(x, ws, 2, 4, False, 0.1, seeds=seeds))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(outs[0], outs[1])  # rows never cross chunks
    y = kernels.network(x, ws, 2, 4, False, 0.1, seeds=seeds)
    first = torch.autograd.grad(y.square().sum(), [x, *ws], retain_graph=True)
    for _ in range(3):  # parameter gradients are summed in chunk order: bit-identical run to run
        again = torch.autograd.grad(y.square().sum(), [x, *ws], retain_graph=True)
        assert all(torch.equal(a, b) for a, b in zip(first, again))


@needs_block
@pytest.mark.parametrize("input_grad", [True, False])
def test_network_counts_the_flops_of_the_eager_set_transformer(input_grad: bool) -> None:
    torch.manual_seed(6)
    net = _net(2, 4, 32, 4, 64, 2, True, p=0.0)
    x = torch.randn(3, 10, 2, requires_grad=input_grad)

    def flops(fused: bool) -> int:
        net.fused = fused
        with FlopCounterMode(display=False) as c:
            net(x).sum().backward()
        return c.get_total_flops()

    assert flops(True) == flops(False) > 0
    # under a dispatch mode the network runs through its registered ops: the same values and gradients
    net.fused, net.dropout = True, 0.2
    ws = list(net.parameters())
    torch.manual_seed(7)
    direct = net(x)
    grads = torch.autograd.grad(direct.square().sum(), ws)
    with FlopCounterMode(display=False):
        torch.manual_seed(7)
        via_ops = net(x)
        grads_ops = torch.autograd.grad(via_ops.square().sum(), ws)
    assert torch.equal(direct, via_ops)
    assert all(torch.equal(a, b) for a, b in zip(grads, grads_ops))


@needs_block
def test_network_rejects_bad_input_with_a_clear_message() -> None:
    net = _net(2, 4, 32, 4, 64, 2, True)
    ws = [w.detach() for w in net.network_weights(5)]
    x = torch.randn(2, 5, 2)
    with pytest.raises(ValueError, match="needs a seed"):
        kernels.network(x, ws, 2, 4, True, 0.1)
    with pytest.raises(ValueError, match="shape \\(2, 4, 2\\)"):
        kernels.network(x, ws, 2, 4, True, 0.1, seeds=torch.zeros(4, 2, dtype=torch.int32))
    with pytest.raises(ValueError, match="needs 31 weight tensors for 2 blocks"):
        kernels.network(x, ws[:-1], 2, 4, True)
    with pytest.raises(ValueError, match="\\(5, 32\\) was expected"):
        kernels.network(x, [*ws[:2], torch.randn(6, 32), *ws[3:]], 2, 4, True)
    with pytest.raises(ValueError, match="must be \\(B, N, K\\)"):
        kernels.network(torch.randn(5, 2), ws, 2, 4, True)
    with pytest.raises(ValueError, match="CPU float32"):  # never raw float64 memory read as float32
        kernels.network(x.double(), ws, 2, 4, True)
    assert kernels.network_supports(x, ws, 2, True, 4)
    assert not kernels.network_supports(x.double(), ws, 2, True, 4)
    assert not kernels.network_supports(x, ws, 2, True, 32)  # head dim 1
    # a set longer than max_len still gets the layer-by-layer path's clear error
    with pytest.raises(ValueError, match="exceeds max_len"):
        net(torch.randn(2, 65, 2))
