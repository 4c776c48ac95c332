"""The run-time built C++ attention kernel (setflow.nn.kernels) against the written-out attention."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from setflow.nn import kernels
from setflow.nn.attention import self_attention
from setflow.nn.fused import hash_dropout, hash_keep_mask

needs_kernel = pytest.mark.skipif(not kernels.available(), reason=f"C++ kernel not built: {kernels.last_error()}")


def _reference(qkv: torch.Tensor, heads: int, p: float, seed: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(hd)), hash dropout, @ v, in the caller's dtype (float64 here)."""
    B, N, three_d = qkv.shape
    D = three_d // 3
    q, k, v = qkv.view(B, N, 3, heads, D // heads).permute(2, 0, 3, 1, 4).unbind(0)
    a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D // heads), dim=-1)
    if p > 0:
        a = hash_dropout(a, p, seed)
    return (a @ v).transpose(1, 2).reshape(B, N, D)


@needs_kernel
@pytest.mark.parametrize("n", [1, 7, 16, 25, 50, 70])
@pytest.mark.parametrize("head_dim", kernels.SUPPORTED_HEAD_DIMS)
@pytest.mark.parametrize("p", [0.0, 0.2])
def test_kernel_matches_float64_reference_with_the_same_masks(n: int, head_dim: int, p: float) -> None:
    heads = 8 if head_dim < 16 else 4
    qkv = torch.randn(3, n, 3 * heads * head_dim, dtype=torch.float64) * 1.5
    seed = torch.tensor([123, -456], dtype=torch.int32)
    x32 = qkv.float().requires_grad_()
    out = kernels.hash_attention(x32, heads, p, seed)
    g = torch.randn_like(out)
    (out * g).sum().backward()
    x64 = qkv.clone().requires_grad_()
    ref = _reference(x64, heads, p, seed)
    (ref * g.double()).sum().backward()
    # a single differing mask bit moves an output by ~1e-2: these tolerances also prove the masks equal
    assert torch.allclose(out.double(), ref, atol=1e-5, rtol=1e-5)
    assert torch.allclose(x32.grad.double(), x64.grad, atol=1e-4, rtol=1e-4)


@needs_kernel
@pytest.mark.parametrize("width", [16, 48, 256])
@pytest.mark.parametrize("p", [0.0, 0.2])
def test_bias_gelu_dropout_matches_float64_reference(width: int, p: float) -> None:
    u = torch.randn(3, 7, width, dtype=torch.float64) * 2
    b = torch.randn(width, dtype=torch.float64)
    seed = torch.tensor([-99, 7], dtype=torch.int32)
    u32, b32 = u.float().requires_grad_(), b.float().requires_grad_()
    out = kernels.bias_gelu_dropout(u32, b32, p, seed)
    g = torch.randn_like(out)
    (out * g).sum().backward()
    u64, b64 = u.clone().requires_grad_(), b.clone().requires_grad_()
    ref = torch.nn.functional.gelu(u64 + b64)
    ref = hash_dropout(ref, p, seed) if p > 0 else ref
    (ref * g.double()).sum().backward()
    assert torch.allclose(out.double(), ref, atol=2e-6, rtol=1e-5)
    assert torch.allclose(u32.grad.double(), u64.grad, atol=1e-5, rtol=1e-5)
    assert torch.allclose(b32.grad.double(), b64.grad, atol=1e-4, rtol=1e-5)  # a sum over 21 rows
    if p > 0:  # the dropped entries are exactly the hash mask's (where GELU itself is not ~0 in float32)
        big = ref.abs() > 1e-6
        assert torch.equal((out == 0)[big], ~hash_keep_mask(u.shape, 1 - p, seed)[big])


@needs_kernel
def test_bias_gelu_dropout_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="multiple of 16"):
        kernels.bias_gelu_dropout(torch.randn(4, 20), torch.randn(20))
    with pytest.raises(ValueError, match="bias must have shape"):
        kernels.bias_gelu_dropout(torch.randn(4, 32), torch.randn(16))
    assert not kernels.supports_gelu(torch.randn(4, 20)) and kernels.supports_gelu(torch.randn(4, 32))


@needs_kernel
def test_kernel_dropout_changes_with_the_seed_and_is_off_without_p() -> None:
    qkv = torch.randn(2, 9, 3 * 16)
    a = kernels.hash_attention(qkv, 2, 0.3, torch.tensor([1, 2], dtype=torch.int32))
    b = kernels.hash_attention(qkv, 2, 0.3, torch.tensor([1, 3], dtype=torch.int32))
    assert not torch.allclose(a, b)
    plain = self_attention(qkv, 2, 0.0, "sdpa")
    assert torch.allclose(kernels.hash_attention(qkv, 2), plain, atol=1e-6)


@needs_kernel
def test_kernel_counts_the_attention_flops_of_the_reference_path() -> None:
    qkv = torch.randn(4, 10, 3 * 64, requires_grad=True)

    def flops(fn) -> int:
        with FlopCounterMode(display=False) as c:
            fn().sum().backward()
        return c.get_total_flops()

    assert flops(lambda: kernels.hash_attention(qkv, 8)) == flops(lambda: self_attention(qkv, 8, 0.0, "bmm")) > 0


@needs_kernel
def test_kernel_rejects_bad_input_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match="qkv must be"):
        kernels.hash_attention(torch.randn(2, 5, 50), 8)
    with pytest.raises(ValueError, match="needs a seed"):
        kernels.hash_attention(torch.randn(2, 5, 48), 2, 0.1)
    with pytest.raises(ValueError, match="dropout probability"):
        kernels.hash_attention(torch.randn(2, 5, 48), 2, 1.0, torch.zeros(2, dtype=torch.int32))
    with pytest.raises(ValueError, match="head dim 3 not supported"):
        kernels.hash_attention(torch.randn(2, 5, 18), 2)
    with pytest.raises(ValueError, match="int32 tensor of 2 words"):
        kernels.hash_attention(torch.randn(2, 5, 48), 2, 0.1, torch.zeros(3, dtype=torch.int64))
    assert not kernels.supports(torch.randn(2, 5, 48, dtype=torch.float64), 2)
    assert kernels.supports(torch.randn(2, 5, 48), 2)


def test_fused_blocks_use_the_written_out_attention_without_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    import setflow.nn.fused as fused
    from setflow.nn import SetTransformer

    torch.manual_seed(0)
    net = SetTransformer(2, 3, d_model=16, num_heads=2, num_layers=1, dim_feedforward=16, dropout=0.2,
                         zero_init=False, fused=True).train()
    x = torch.randn(2, 6, 2)
    torch.manual_seed(5)
    y = net(x)
    monkeypatch.setattr(kernels, "_LIB", None)
    monkeypatch.setattr(kernels, "_TRIED", True)
    monkeypatch.setattr(kernels, "_ERROR", "RuntimeError: no compiler")
    monkeypatch.setattr(fused, "_KERNEL_WARNED", False)
    assert not kernels.available() and not kernels.supports(x, 2)
    torch.manual_seed(5)
    with pytest.warns(RuntimeWarning, match="C\\+\\+ attention kernel is not available .*no compiler"):
        y_fallback = net(x)
    assert torch.allclose(y, y_fallback, atol=1e-5)  # same function, same hash masks


def test_kernel_build_failure_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernels, "_LIB", None)
    monkeypatch.setattr(kernels, "_TRIED", False)
    monkeypatch.setattr(kernels, "_ERROR", None)
    monkeypatch.setenv("SETFLOW_NO_KERNELS", "1")
    assert not kernels.available()
    assert "SETFLOW_NO_KERNELS" in kernels.last_error()
