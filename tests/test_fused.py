"""The fused set-transformer path: counter-based hash dropout and the torch.compile-d blocks."""

from __future__ import annotations

import math

import pytest
import torch

from setflow.nn import SetTransformer
from setflow.nn import set_fused
from setflow.nn.fast import MASK_BITS, block_core, hash_dropout, hash_keep_mask


def _seed(a: int, b: int) -> torch.Tensor:
    return torch.tensor([a, b], dtype=torch.int32)


def test_hash_mask_rate_independence_and_determinism() -> None:
    shape = (64, 8, 50, 50)  # 1.28M decisions, the attention-weight shape of a block
    m = hash_keep_mask(shape, 0.8, _seed(12345, -7))
    n = m.numel()
    rate = m.double().mean().item()
    assert abs(rate - 0.8) < 5 * math.sqrt(0.8 * 0.2 / n)  # binomial, 5 sigma
    assert torch.equal(m, hash_keep_mask(shape, 0.8, _seed(12345, -7)))  # same seed, same mask
    # one flipped bit, low or high, in either seed word gives an unrelated mask
    for a, b in [(12345 ^ 1, -7), (12345 ^ 2**30, -7), (12345, -7 ^ 1), (12345, -7 ^ 2**30), (12345, -7 ^ 2**12)]:
        o = hash_keep_mask(shape, 0.8, _seed(a, b))
        agree = (m == o).double().mean().item()
        assert abs(agree - (0.8**2 + 0.2**2)) < 0.005
    flat = m.flatten().double()
    for lag in (1, 2, 50, 2500):  # neighbours along every axis of the layout are uncorrelated
        c = torch.corrcoef(torch.stack([flat[:-lag], flat[lag:]]))[0, 1].item()
        assert abs(c) < 0.01, (lag, c)
    with pytest.raises(ValueError, match="int32"):
        hash_keep_mask(shape, 0.8, torch.tensor([1, 2]))


def test_hash_dropout_is_unbiased_and_scaled() -> None:
    x = torch.full((1000, 1000), 2.0)
    y = hash_dropout(x, 0.2, _seed(1, 2))
    levels = round(0.8 * 2**MASK_BITS)
    kept = y != 0
    assert torch.all(y[kept] == 2.0 * 2**MASK_BITS / levels)
    # E[y] = x exactly: kept fraction * scale = 1 in expectation
    assert abs(y.double().mean().item() - 2.0) < 5 * 2.0 * math.sqrt(0.2 / 0.8 / x.numel())
    assert hash_dropout(x, 0.0, _seed(1, 2)) is x
    with pytest.raises(ValueError):
        hash_dropout(x, 1.0, _seed(1, 2))


def test_compiled_hash_mask_is_bit_identical_to_eager() -> None:
    fn = torch.compile(lambda s: hash_keep_mask((3, 5, 7, 11), 0.9, s), dynamic=False)
    for a, b in [(0, 0), (2**31 - 1, -(2**31)), (987654321, 13)]:
        assert torch.equal(fn(_seed(a, b)), hash_keep_mask((3, 5, 7, 11), 0.9, _seed(a, b)))


def _net(dropout: float) -> SetTransformer:
    torch.manual_seed(0)
    net = SetTransformer(2, 3, d_model=16, num_heads=4, num_layers=2, dim_feedforward=32, dropout=dropout,
                         zero_init=False)
    with torch.no_grad():  # non-trivial LayerNorm parameters
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return net


def _grads(net: SetTransformer, x: torch.Tensor, seed: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    net.zero_grad(set_to_none=True)
    xr = x.clone().requires_grad_()
    torch.manual_seed(seed)
    y = net(xr)
    (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    return y.detach(), [xr.grad] + [p.grad for p in net.parameters()]


@pytest.fixture(params=["cpp_block", "compiled"])
def fused_path(request, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both fused backends: "auto" (the C++ network / blocks) and "compiled" (the torch.compile-d block_core)."""
    from setflow.nn.fast import kernels

    if request.param == "cpp_block" and not kernels.block_available():
        pytest.skip("C++ block kernel unavailable")
    return "auto" if request.param == "cpp_block" else "compiled"


def test_fused_train_step_matches_eager_maths_with_the_same_masks(fused_path: str) -> None:
    """Fused blocks with hash dropout == the same block_core run eagerly with the same seeds."""
    net = _net(0.2).train()
    x = torch.randn(4, 9, 2)
    set_fused(net, True, backend=fused_path)
    assert "fused=True" in repr(net)
    y_fused, g_fused = _grads(net, x, seed=3)

    class EagerHash(torch.nn.Module):  # the uncompiled reference: block_core with the seeds drawn the same way
        def forward(self, h):
            seeds = torch.randint(-2**31, 2**31 - 1, (net.num_layers, 4, 2), dtype=torch.int32)
            for i, blk in enumerate(net.blocks):
                h = block_core(h, blk.weights(), net.num_heads, net.dropout, blk.norm1.eps, seeds[i])
            h = torch.nn.functional.layer_norm(h, (net.d_model,), net.norm.weight, net.norm.bias, net.norm.eps)
            return net.out(h)

    ref = EagerHash()
    net.zero_grad(set_to_none=True)
    xr = x.clone().requires_grad_()
    torch.manual_seed(3)
    y_ref = ref(net.embed(xr))
    (y_ref * torch.linspace(-1, 1, y_ref.numel()).view_as(y_ref)).sum().backward()
    g_ref = [xr.grad] + [p.grad for p in net.parameters()]
    assert torch.allclose(y_fused, y_ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(g_fused, g_ref):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    # dropout is active: another seed gives another output; eval mode has none
    y_other, _ = _grads(net, x, seed=4)
    assert not torch.allclose(y_fused, y_other)


def test_fused_eval_matches_eager_and_stays_equivariant(fused_path: str) -> None:
    net = _net(0.1).eval()
    x = torch.randn(3, 7, 2)
    y_eager, g_eager = _grads(net, x, seed=0)
    set_fused(net, True, backend=fused_path)
    y_fused, g_fused = _grads(net, x, seed=0)
    assert torch.allclose(y_fused, y_eager, atol=1e-5, rtol=1e-5)
    for a, b in zip(g_fused, g_eager):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    perm = torch.randperm(7)
    with torch.no_grad():
        assert torch.allclose(net(x[:, perm]), net(x)[:, perm], atol=1e-5)
    assert set_fused(torch.nn.Sequential(net, torch.nn.Linear(2, 2)), False) == 1 and not net.fused


def test_fused_falls_back_to_eager_when_compiling_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    import setflow.nn.fast.fused as fused

    def broken():
        raise RuntimeError("no C++ compiler here")

    monkeypatch.setattr(fused, "compiled_block_core", broken)
    monkeypatch.setattr(fused, "_COMPILE_FAILED", False)
    net = _net(0.2).train()
    set_fused(net, True, backend="compiled")  # the compiled path, not the C++ block
    x = torch.randn(2, 5, 2)
    torch.manual_seed(7)
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler"):
        y = net(x)
    assert fused._COMPILE_FAILED
    torch.manual_seed(7)  # the eager fallback is the same function: same seeds, same masks, same output
    assert torch.equal(net(x), y)
    with pytest.raises(ValueError, match="expected x of shape"):  # real errors still surface
        net(torch.randn(2, 5, 3))
