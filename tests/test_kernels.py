"""The run-time built C++ kernels (setflow.nn.fast.kernels): attention, GELU and the whole block, against references."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from setflow.nn.fast import kernels
from setflow.nn.attention import self_attention
from setflow.nn.fast import hash_dropout, hash_keep_mask

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


def _small_fused_net_and_output():
    """A fused one-block SetTransformer in train mode, an input, and its output under seed 5."""
    from setflow.nn import SetTransformer

    torch.manual_seed(0)
    net = SetTransformer(2, 3, d_model=16, num_heads=2, num_layers=1, dim_feedforward=16, dropout=0.2,
                         zero_init=False, fused=True).train()
    x = torch.randn(2, 6, 2)
    torch.manual_seed(5)
    return net, x, net(x)


def test_fused_blocks_use_the_written_out_attention_without_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    import setflow.nn.fast.fused as fused

    net, x, y = _small_fused_net_and_output()
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


# ------------------------------------------------------------------------------------------------
# the whole block in C++ (kernels.block)

needs_block = pytest.mark.skipif(not kernels.block_available(), reason="C++ block kernel unavailable (no BLAS sgemm)")


def _block_weights(d: int, heads: int, ff: int, dtype=torch.float32) -> list[torch.Tensor]:
    from setflow.nn.set_transformer import SetTransformerBlock

    blk = SetTransformerBlock(d, heads, ff, 0.1)
    with torch.no_grad():
        for prm in blk.parameters():  # non-trivial LayerNorm parameters and biases
            prm.add_(0.2 * torch.randn_like(prm))
    return [w.detach().to(dtype).requires_grad_() for w in blk.weights()]


@needs_block
@pytest.mark.parametrize("b, n, d, heads, ff", [(3, 50, 64, 8, 256), (1, 1, 16, 4, 16), (2, 7, 32, 8, 64),
                                                 (13, 23, 64, 4, 128), (40, 17, 32, 2, 32), (1100, 17, 16, 4, 16)])
@pytest.mark.parametrize("p", [0.0, 0.2])
def test_block_matches_float64_block_core_with_the_same_masks(b: int, n: int, d: int, heads: int, ff: int,
                                                               p: float) -> None:
    """Forward and every gradient of the C++ block == block_core in float64 (hash masks, same seeds).

    The shapes cover one point, N not a multiple of 16, head dims 4 / 8 / 16, and batches split
    into many chunks of whole sets (40 sets of 17 points), into a ragged last chunk (13 x 23), and
    into more chunks than one merge wave of weight-gradient partials holds (1100 x 17: 74 chunks)."""
    from setflow.nn.fast import block_core

    torch.manual_seed(b * 100 + n)
    w = _block_weights(d, heads, ff)
    h = (torch.randn(b, n, d) * 1.5).requires_grad_()
    seed = torch.randint(-2**31, 2**31 - 1, (4, 2), dtype=torch.int32)
    out = kernels.block(h, w, heads, p, 1e-5, seed)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, [h, *w], g)
    h64, w64 = h.detach().double().requires_grad_(), [x.detach().double().requires_grad_() for x in w]
    ref = block_core(h64, w64, heads, p, 1e-5, seed if p > 0 else None)
    ref_grads = torch.autograd.grad(ref, [h64, *w64], g.double())
    # a single differing mask bit moves outputs and gradients far beyond these tolerances
    assert torch.allclose(out.double(), ref, atol=1e-4, rtol=1e-4)
    for k, (a, r) in enumerate(zip(grads, ref_grads)):
        assert torch.allclose(a.double(), r, atol=1e-4 * (1 + r.abs().max().item()), rtol=1e-4), k


@needs_block
def test_block_inference_keeps_nothing_and_computes_the_same() -> None:
    torch.manual_seed(1)
    w = _block_weights(64, 8, 256)
    h = torch.randn(9, 50, 64)
    seed = torch.randint(-2**31, 2**31 - 1, (4, 2), dtype=torch.int32)
    with torch.no_grad():
        fast = kernels.block(h, w, 8, 0.2, 1e-5, seed)
        saved = torch.ops.setflow.block(h, w, seed, 8, 13421773, 1e-5, False)[1:]
    assert all(t.numel() == 0 for t in saved)  # the no-grad forward allocates no saved activations
    assert torch.equal(fast, kernels.block(h.requires_grad_(), w, 8, 0.2, 1e-5, seed).detach())


@needs_block
def test_block_gives_the_same_result_on_any_number_of_threads() -> None:
    torch.manual_seed(2)
    w = _block_weights(32, 4, 64)
    h = torch.randn(24, 30, 32, requires_grad=True)
    seed = torch.randint(-2**31, 2**31 - 1, (4, 2), dtype=torch.int32)
    threads = torch.get_num_threads()
    results = []
    try:
        for t in (1, 3):
            torch.set_num_threads(t)
            out = kernels.block(h, w, 4, 0.1, 1e-5, seed)
            results.append((out, torch.autograd.grad(out.square().sum(), [h, *w])))
    finally:
        torch.set_num_threads(threads)
    (o1, g1), (o3, g3) = results
    assert torch.equal(o1, o3)  # rows never cross chunks: the forward is bit-identical
    # run to run on the same threads the gradients are bit-identical too: chunks are handed out
    # dynamically, but their weight-gradient partials are summed in chunk order
    out = kernels.block(h, w, 4, 0.1, 1e-5, seed)
    first = torch.autograd.grad(out.square().sum(), [h, *w], retain_graph=True)
    for _ in range(3):
        repeat = torch.autograd.grad(out.square().sum(), [h, *w], retain_graph=True)
        assert all(torch.equal(a, b) for a, b in zip(first, repeat))
    for a, b in zip(g1, g3):  # weight gradients are summed over other chunks, in another order
        assert (a - b).abs().max() <= 1e-5 * b.abs().max(), (a - b).abs().max() / b.abs().max()


@needs_block
def test_block_counts_the_flops_of_the_eager_block() -> None:
    from setflow.nn.fast import block_core

    w = _block_weights(32, 4, 64)
    h = torch.randn(3, 10, 32, requires_grad=True)

    def flops(fn) -> int:
        with FlopCounterMode(display=False) as c:
            fn().sum().backward()
        return c.get_total_flops()

    eager = flops(lambda: block_core(h, w, 4, 0.0, 1e-5, attention="bmm"))
    assert flops(lambda: kernels.block(h, w, 4)) == eager > 0
    # under a dispatch mode the block runs through its registered ops: the same values and gradients
    seed = torch.tensor([[1, 2], [3, 4], [5, 6], [7, 8]], dtype=torch.int32)
    direct = kernels.block(h, w, 4, 0.2, 1e-5, seed)
    grads = torch.autograd.grad(direct.square().sum(), [h, *w])
    with FlopCounterMode(display=False):
        via_ops = kernels.block(h, w, 4, 0.2, 1e-5, seed)
        grads_ops = torch.autograd.grad(via_ops.square().sum(), [h, *w])
    assert torch.equal(direct, via_ops)
    assert all(torch.equal(a, b) for a, b in zip(grads, grads_ops))


@needs_block
def test_block_rejects_bad_input_with_a_clear_message() -> None:
    w = _block_weights(32, 4, 64)
    h = torch.randn(2, 5, 32)
    with pytest.raises(ValueError, match="needs a seed"):
        kernels.block(h, w, 4, 0.1)
    with pytest.raises(ValueError, match="shape \\(4, 2\\)"):
        kernels.block(h, w, 4, 0.1, seed=torch.zeros(2, dtype=torch.int32))
    with pytest.raises(ValueError, match="dropout probability"):
        kernels.block(h, w, 4, 1.5, seed=torch.zeros(4, 2, dtype=torch.int32))
    with pytest.raises(ValueError, match="weight 8 must have shape"):
        kernels.block(h, [*w[:8], torch.randn(64, 31), *w[9:]], 4)
    with pytest.raises(ValueError, match="must be \\(B, N, D\\)"):
        kernels.block(torch.randn(5, 32), w, 4)
    with pytest.raises(ValueError, match="head dim 3 one of"):
        kernels.block(torch.randn(2, 5, 48), _block_weights(48, 16, 64), 16)
    with pytest.raises(ValueError, match="d_model 24 and feed-forward 32 must be multiples of 16"):
        kernels.block(torch.randn(2, 5, 24), _block_weights(24, 6, 32), 6)
    with pytest.raises(ValueError, match="CPU float32"):  # never raw float64 memory read as float32
        kernels.block(h.double(), w, 4)
    with pytest.raises(ValueError, match="CPU float32"):
        kernels.hash_attention(torch.randn(2, 5, 48, dtype=torch.float64), 2)
    with pytest.raises(ValueError, match="CPU float32"):
        kernels.bias_gelu_dropout(torch.randn(4, 32, dtype=torch.float64), torch.randn(32, dtype=torch.float64))
    with pytest.raises(ValueError, match="seed must be a CPU int32 tensor of 4 x 2"):
        torch.ops.setflow.block(h, w, torch.zeros(2, dtype=torch.int32), 4, 1 << 24, 1e-5, False)
    assert kernels.block_supports(h, w, 4)
    assert not kernels.block_supports(h.double(), w, 4)
    assert not kernels.block_supports(h, w, 32)  # head dim 1


def test_fused_blocks_fall_back_to_compile_without_a_blas(monkeypatch: pytest.MonkeyPatch) -> None:
    net, x, y = _small_fused_net_and_output()
    monkeypatch.setattr(kernels, "_BLAS", None)
    assert not kernels.block_available()
    assert not kernels.block_supports(torch.randn(2, 6, 16), net.blocks[0].weights(), 2)
    torch.manual_seed(5)
    assert torch.allclose(net(x), y, atol=1e-5)  # the compiled block: same function, same hash masks


def test_abi_check_refuses_a_mismatched_library_and_drops_it_from_the_cache(tmp_path) -> None:
    import types

    stale = tmp_path / "cpu_kernels-stale.so"
    stale.write_bytes(b"")
    lib = types.SimpleNamespace(setflow_hash_attention_version=lambda: kernels.ABI_VERSION + 1)
    with pytest.raises(RuntimeError, match=f"ABI version {kernels.ABI_VERSION + 1}, expected {kernels.ABI_VERSION}"):
        kernels.check_abi(lib, stale)
    assert not stale.exists()  # the next start rebuilds it
    lib.setflow_hash_attention_version = lambda: kernels.ABI_VERSION
    kernels.check_abi(lib)  # accepted
    with pytest.raises(RuntimeError, match="no setflow_hash_attention_version"):
        kernels.check_abi(types.SimpleNamespace())


@needs_kernel
def test_the_built_library_reports_the_abi_version_the_loader_expects() -> None:
    assert kernels._load().setflow_hash_attention_version() == kernels.ABI_VERSION
