"""Run-time built C++ kernels for the CPU: the fused set-transformer blocks.

:func:`block` is a whole pre-norm block (:func:`setflow.nn.fast.fused.block_core` with hash
dropout), forward and backward, in one C++ call each. The batch is cut into chunks of whole
sets (~256 rows); each OpenMP thread takes a chunk and runs every stage of the block on it
(LayerNorms, the four linear maps through PyTorch's own BLAS ``sgemm_`` single-threaded, the
attention, GELU, dropout, residuals) while the chunk's activations sit in its L2 cache; chunks
are handed out dynamically, so a busy core takes fewer. Done layer by layer over the whole
batch, the ``(B, N, 256)`` feed-forward activations made ~11 round trips through memory per
block; here they make one (the pre-activation, saved for the backward). Each chunk's weight
gradients are partial sums added in chunk order, so results do not depend on which thread ran
which chunk (bit-identical run to run). The FLOPs are the eager block's (registered formulas),
the masks the eager hash masks bit for bit.

:func:`network` is a whole :class:`setflow.nn.SetTransformer` (no context input) in one C++
call per direction: each chunk of sets goes through the input layer (a linear map of the points'
1-3 coordinates, plus positional rows), every block and the read-out (final LayerNorm and the
linear map to the coupling parameters) while in cache. Layer by layer, those skinny layers were
separate memory-bound PyTorch passes and every block boundary a trip through memory and autograd.

:func:`hash_attention` computes, per head, ``(M * softmax(q k^T / sqrt(hd))) v`` from one
fused ``qkv`` tensor, where ``M`` is the :func:`setflow.nn.fast.hashing.hash_keep_mask` dropout
mask of the ``(B, H, N, N)`` attention weights (bit-identical masks), and its exact
gradient. Forward and backward are single C++ loops per head: the weights never leave the
L1 cache, the backward recomputes them from the saved log-sum-exp, and the q/k/v head split
is read and written in place, so none of the ``(B, H, N, N)`` passes of the written-out
attention (scores, softmax, mask, their backward) touch memory.

:func:`bias_gelu_dropout` is ``hash_dropout(gelu(u + bias))`` of the feed-forward hidden
layer in one pass, its backward (GELU derivative, mask and the bias gradient's column sums)
in another.

The block needs a BLAS: the Fortran ``sgemm_`` that ``libtorch_cpu`` exports (MKL in the x86
wheels, whose ``MKL_Set_Num_Threads_Local`` then keeps each call on its own core). Without
one, :func:`block_available` is ``False`` and the fused blocks use ``torch.compile`` with the
two kernels above.

The source (``setflow/nn/fast/csrc/cpu_kernels.cpp``) is compiled on first use with the system
C++ compiler (``$CXX``, else ``g++``; ``-O3 -march=native -fopenmp``) into a cache folder
(``$SETFLOW_CACHE/kernels``, default ``~/.cache/setflow/kernels``), keyed by the source,
the flags, the compiler version and the CPU, and loaded with :mod:`ctypes`. When that
fails (no compiler, unsupported platform) or ``SETFLOW_NO_KERNELS=1`` is set,
:func:`available` is ``False`` and callers keep their PyTorch path (:mod:`setflow.nn.fast.fused`
warns once). The ops are registered as ``torch.ops.setflow.*`` with fake implementations
and autograd formulas, so ``torch.compile`` graphs call them directly; the attention also
has FLOP formulas (the architecture's attention GEMMs) for ``FlopCounterMode``.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from setflow.nn.fast.hashing import MASK_BITS, keep_levels

__all__ = ["ABI_VERSION", "check_abi", "available", "hash_attention", "bias_gelu_dropout", "block", "block_available", "block_supports",
           "network", "network_supports",
           "supports", "supports_gelu", "heads_supported", "last_error", "cache_dir", "SUPPORTED_HEAD_DIMS",
           "GELU_WIDTH_MULTIPLE"]

SUPPORTED_HEAD_DIMS = (4, 8, 16)
#: the feed-forward kernel works in whole 16-float vectors: its width must be a multiple of this
GELU_WIDTH_MULTIPLE = 16
_SOURCE = Path(__file__).with_name("csrc") / "cpu_kernels.cpp"
_FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c++17")
_NO_DROPOUT = 1 << MASK_BITS  # ``levels`` that keeps every weight
#: the ABI version the argument lists below are written for; ``setflow_hash_attention_version()`` of the
#: loaded library must return it (raise both, in the C++ file and here, on any change of a signature)
ABI_VERSION = 2
_LOCK = threading.Lock()
_LIB: Optional[ctypes.CDLL] = None
_ERROR: Optional[str] = None
_TRIED = False


_HAS_CUSTOM_OP = hasattr(torch.library, "custom_op")  # PyTorch >= 2.4


class _NoCustomOps:
    """Stand-in for ``torch.library.custom_op`` on PyTorch < 2.4: the kernels are then unavailable."""

    def __init__(self, fn) -> None:
        self.fn = fn

    def register_fake(self, fn):
        return fn

    def register_autograd(self, *args, **kwargs) -> None:
        pass

    def __call__(self, *args, **kwargs):
        raise RuntimeError("setflow's C++ kernels need PyTorch >= 2.4 (torch.library.custom_op)")


def _custom_op(name: str):
    return torch.library.custom_op(name, mutates_args=()) if _HAS_CUSTOM_OP else _NoCustomOps


def cache_dir() -> Path:
    """Where built kernels are kept: ``$SETFLOW_CACHE/kernels`` or ``~/.cache/setflow/kernels``."""
    root = os.environ.get("SETFLOW_CACHE")
    if not root:
        root = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache"), "setflow")
    return Path(root) / "kernels"


def _cpu_id() -> str:
    # -march=native code is only valid on the CPU it was built for: key the cache on model and flags
    try:
        text = Path("/proc/cpuinfo").read_text()
        lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags", "Features", "CPU part"))]
        return "\n".join(sorted(set(lines)))
    except OSError:
        return platform.processor() or platform.machine()


def _build() -> Path:
    cxx = os.environ.get("CXX") or "g++"
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=True).stdout
    key = hashlib.sha256(b"\0".join([_SOURCE.read_bytes(), " ".join(_FLAGS).encode(), version.encode(),
                                     _cpu_id().encode()])).hexdigest()[:20]
    target = cache_dir() / f"cpu_kernels-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        r = subprocess.run([cxx, *_FLAGS, "-o", tmp, str(_SOURCE)], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{cxx} exited with {r.returncode}: {r.stderr.strip()[-1500:]}")
        os.replace(tmp, target)  # atomic: concurrent builders (DDP ranks) never see a partial file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def check_abi(lib, path: Optional[Path] = None) -> None:
    """Refuse a library whose ``setflow_hash_attention_version()`` is not :data:`ABI_VERSION`.

    On a mismatch the cached file (``path``) is deleted, so the next process rebuilds it from the
    current source, and a ``RuntimeError`` naming both versions is raised (the caller then keeps the
    PyTorch path).
    """
    fn = getattr(lib, "setflow_hash_attention_version", None)
    if fn is None:
        found = "none (no setflow_hash_attention_version symbol)"
    else:
        fn.argtypes = []
        fn.restype = ctypes.c_int
        found = fn()
        if found == ABI_VERSION:
            return
    if path is not None:
        try:
            os.unlink(path)
        except OSError:
            pass
    raise RuntimeError(f"C++ kernel library {path or lib} has ABI version {found}, expected {ABI_VERSION}; "
                       "removed it from the cache, it is rebuilt on the next start")


def _load() -> Optional[ctypes.CDLL]:
    global _LIB, _ERROR, _TRIED
    if _TRIED:
        return _LIB
    with _LOCK:
        if _TRIED:
            return _LIB
        try:
            if os.environ.get("SETFLOW_NO_KERNELS", "") not in ("", "0"):
                raise RuntimeError("disabled by SETFLOW_NO_KERNELS")
            if not _HAS_CUSTOM_OP:
                raise RuntimeError("needs PyTorch >= 2.4 (torch.library.custom_op)")
            path = _build()
            lib = ctypes.CDLL(str(path))
            check_abi(lib, path)
            i64, i32, f32p = ctypes.c_int64, ctypes.c_int32, ctypes.c_void_p
            lib.setflow_hash_attention_forward.argtypes = [f32p, f32p, f32p, i64, i64, i64, i64, i32, i32, i64,
                                                           ctypes.c_int]
            lib.setflow_hash_attention_backward.argtypes = [f32p, f32p, f32p, f32p, f32p, i64, i64, i64, i64, i32, i32,
                                                            i64, ctypes.c_int]
            lib.setflow_bias_gelu_dropout_forward.argtypes = [f32p, f32p, f32p, i64, i64, i32, i32, i64, ctypes.c_int]
            lib.setflow_bias_gelu_dropout_backward.argtypes = [f32p, f32p, f32p, f32p, f32p, i64, i64, i32, i32, i64,
                                                               ctypes.c_int]
            f32pp = ctypes.POINTER(ctypes.c_void_p)
            lib.setflow_block_forward.argtypes = [f32p, f32pp] + [f32p] * 7 + [i64] * 5 + [ctypes.c_float, f32p, i64,
                                                                                          ctypes.c_int]
            lib.setflow_block_backward.argtypes = [f32p, f32p, f32pp] + [f32p] * 7 + [f32pp] + [i64] * 5 + [
                ctypes.c_float, f32p, i64, ctypes.c_int]
            lib.setflow_network_saved_size.argtypes = [i64] * 6
            lib.setflow_network_saved_size.restype = i64
            lib.setflow_network_forward.argtypes = [f32p, f32pp, f32p, f32p] + [i64] * 8 + [
                ctypes.c_float, ctypes.c_float, f32p, i64, ctypes.c_int]
            lib.setflow_network_backward.argtypes = [f32p, f32p, f32pp, f32p, f32p, f32pp] + [i64] * 8 + [
                ctypes.c_float, ctypes.c_float, f32p, i64, ctypes.c_int]
            lib.setflow_set_blas.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
            lib.setflow_set_blas.restype = None
            for fn in (lib.setflow_hash_attention_forward, lib.setflow_hash_attention_backward,
                       lib.setflow_bias_gelu_dropout_forward, lib.setflow_bias_gelu_dropout_backward,
                       lib.setflow_block_forward, lib.setflow_block_backward, lib.setflow_network_forward,
                       lib.setflow_network_backward):
                fn.restype = ctypes.c_int
            _register_blas(lib)
            _LIB = lib
        except Exception as e:  # noqa: BLE001 - any build / load failure means: use the PyTorch path
            _ERROR = f"{type(e).__name__}: {e}"
        _TRIED = True
    return _LIB


_BLAS: Optional[str] = None  # where the block kernels' sgemm came from; None: not found


def _register_blas(lib: ctypes.CDLL) -> None:
    """Hand the C++ block kernels the BLAS sgemm that PyTorch itself links (MKL in the x86 wheels).

    The symbol is looked up in the already loaded ``libtorch_cpu`` (then in the process), so the
    kernels call the same GEMM as ``torch.mm``, single-threaded per OpenMP thread. Without one, the
    block kernels stay off (:func:`block_available`) and the fused blocks use ``torch.compile``.
    """
    global _BLAS
    candidates = [Path(torch.__file__).parent / "lib" / name for name in ("libtorch_cpu.so", "libtorch_cpu.dylib")]
    for path in [*candidates, None]:
        try:
            handle = ctypes.CDLL(str(path) if path is not None else None)
            sgemm = getattr(handle, "sgemm_")
        except (OSError, AttributeError):
            continue
        local = getattr(handle, "MKL_Set_Num_Threads_Local", None)  # C interface (by value), MKL only
        lib.setflow_set_blas(ctypes.cast(sgemm, ctypes.c_void_p),
                             ctypes.cast(local, ctypes.c_void_p) if local is not None else None)
        _BLAS = f"{path.name if path is not None else 'process'}:sgemm_" + (" (MKL)" if local is not None else "")
        return


def available() -> bool:
    """Whether the C++ kernels are built and loaded (builds them on the first call)."""
    return _load() is not None


def last_error() -> Optional[str]:
    """Why :func:`available` is ``False`` (``None`` when the kernels loaded or were not tried)."""
    return _ERROR


def heads_supported(x: Tensor, d_model: int, num_heads: int) -> bool:
    """Whether the attention kernel's layout rules hold: CPU float32, ``d_model / num_heads`` in
    :data:`SUPPORTED_HEAD_DIMS` (does not build the kernels; see :func:`supports`)."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and d_model % num_heads == 0
            and d_model // num_heads in SUPPORTED_HEAD_DIMS)


def supports(qkv: Tensor, num_heads: int) -> bool:
    """Whether :func:`hash_attention` takes this input: CPU float32 ``(B, N, 3 D)``, head dim 4, 8 or 16."""
    if qkv.dim() != 3 or qkv.shape[-1] % 3:
        return False
    return heads_supported(qkv, qkv.shape[-1] // 3, num_heads) and available()


def _ptr(t: Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


def _seed_words(seed: Tensor) -> tuple[int, int]:
    if seed.dtype != torch.int32 or seed.numel() != 2:
        raise ValueError(f"seed must be an int32 tensor of 2 words, got {seed.dtype} with {seed.numel()} entries")
    s0, s1 = seed.tolist()
    return int(s0), int(s1)


def _check_head_dim(rc: int, hd: int) -> None:
    if rc:
        raise ValueError(f"head dim {hd} not supported by the C++ attention kernel (supported: {SUPPORTED_HEAD_DIMS})")


def _check_width(rc: int, width: int) -> None:
    if rc:
        raise ValueError(f"bias_gelu_dropout needs a last dimension that is a multiple of {GELU_WIDTH_MULTIPLE}, "
                         f"got {width}")


def _check_cpu_float32(what: str, *tensors: Tensor) -> None:
    # the C entry points read raw float32 memory: anything else must not reach them
    for t in tensors:
        if t.device.type != "cpu" or t.dtype != torch.float32:
            raise ValueError(f"{what} takes CPU float32 tensors; got {t.dtype} on {t.device}")


def _check_qkv(qkv: Tensor, num_heads: int) -> tuple[int, int, int]:
    _check_cpu_float32("hash_attention", qkv)
    if qkv.dim() != 3 or qkv.shape[-1] % (3 * num_heads):
        raise ValueError(f"qkv must be (B, N, 3 * num_heads * head_dim); got {tuple(qkv.shape)} for {num_heads} heads")
    B, N, three_d = qkv.shape
    return B, N, three_d // (3 * num_heads)


@_custom_op("setflow::hash_attention")
def _attention_op(qkv: Tensor, seed: Tensor, num_heads: int, levels: int) -> tuple[Tensor, Tensor]:
    lib = _load()
    if lib is None:
        raise RuntimeError(f"setflow's C++ attention kernel is not available ({_ERROR})")
    B, N, hd = _check_qkv(qkv, num_heads)
    qkv = qkv.contiguous()
    out = qkv.new_empty(B, N, num_heads * hd)
    lse = qkv.new_empty(B, num_heads, N)
    s0, s1 = _seed_words(seed)
    rc = lib.setflow_hash_attention_forward(_ptr(qkv), _ptr(out), _ptr(lse), B, N, num_heads, hd, s0, s1, levels,
                                            torch.get_num_threads())
    _check_head_dim(rc, hd)
    return out, lse


@_attention_op.register_fake
def _(qkv, seed, num_heads, levels):
    B, N, hd = _check_qkv(qkv, num_heads)
    return qkv.new_empty(B, N, num_heads * hd), qkv.new_empty(B, num_heads, N)


@_custom_op("setflow::hash_attention_backward")
def _attention_backward_op(grad: Tensor, qkv: Tensor, out: Tensor, lse: Tensor, seed: Tensor, num_heads: int,
                           levels: int) -> Tensor:
    lib = _load()
    B, N, hd = _check_qkv(qkv, num_heads)
    qkv, out, grad, lse = qkv.contiguous(), out.contiguous(), grad.contiguous(), lse.contiguous()
    dqkv = torch.empty_like(qkv)
    s0, s1 = _seed_words(seed)
    rc = lib.setflow_hash_attention_backward(_ptr(qkv), _ptr(out), _ptr(grad), _ptr(lse), _ptr(dqkv), B, N, num_heads,
                                             hd, s0, s1, levels, torch.get_num_threads())
    _check_head_dim(rc, hd)
    return dqkv


@_attention_backward_op.register_fake
def _(grad, qkv, out, lse, seed, num_heads, levels):
    return torch.empty_like(qkv)


def _setup_context(ctx, inputs, output) -> None:
    qkv, seed, num_heads, levels = inputs
    out, lse = output
    ctx.save_for_backward(qkv, seed, out, lse)
    ctx.num_heads, ctx.levels = num_heads, levels
    ctx.mark_non_differentiable(lse)


def _backward(ctx, grad_out, grad_lse):
    qkv, seed, out, lse = ctx.saved_tensors
    dqkv = _attention_backward_op(grad_out, qkv, out, lse, seed, ctx.num_heads, ctx.levels)
    return dqkv, None, None, None


_attention_op.register_autograd(_backward, setup_context=_setup_context)


def _register_flops() -> None:
    # the architecture's attention GEMMs, as FlopCounterMode counts them for the bmm / SDPA paths:
    # 2 per forward (q k^T, a v) and 4 per backward, each 2 * B * H * N * N * hd
    from torch.utils import flop_counter as fc

    if not _HAS_CUSTOM_OP or not hasattr(fc, "register_flop_formula"):
        return

    def gemm(qkv_shape, num_heads) -> int:
        B, N, three_d = qkv_shape
        return 2 * B * N * N * (three_d // 3)  # summed over heads: H * hd = D

    @fc.register_flop_formula(torch.ops.setflow.hash_attention, get_raw=True)
    def _fwd(qkv, seed, num_heads, levels, *args, out_val=None, **kwargs) -> int:
        return 2 * gemm(qkv.shape, num_heads)

    @fc.register_flop_formula(torch.ops.setflow.hash_attention_backward, get_raw=True)
    def _bwd(grad, qkv, *args, out_val=None, **kwargs) -> int:
        return 4 * gemm(qkv.shape, 1)


_register_flops()


def supports_gelu(u: Tensor) -> bool:
    """Whether :func:`bias_gelu_dropout` takes ``u``: CPU float32, last dimension a multiple of
    :data:`GELU_WIDTH_MULTIPLE`."""
    return u.device.type == "cpu" and u.dtype == torch.float32 and u.dim() >= 1 \
        and u.shape[-1] % GELU_WIDTH_MULTIPLE == 0 and available()


@_custom_op("setflow::bias_gelu_dropout")
def _gelu_op(u: Tensor, bias: Tensor, seed: Tensor, levels: int) -> Tensor:
    lib = _load()
    if lib is None:
        raise RuntimeError(f"setflow's C++ kernels are not available ({_ERROR})")
    _check_cpu_float32("bias_gelu_dropout", u, bias)
    u, bias = u.contiguous(), bias.contiguous()
    out = torch.empty_like(u)
    s0, s1 = _seed_words(seed)
    F = u.shape[-1]
    _check_width(lib.setflow_bias_gelu_dropout_forward(_ptr(u), _ptr(bias), _ptr(out), u.numel() // F, F, s0, s1,
                                                       levels, torch.get_num_threads()), F)
    return out


@_gelu_op.register_fake
def _(u, bias, seed, levels):
    return torch.empty_like(u)


@_custom_op("setflow::bias_gelu_dropout_backward")
def _gelu_backward_op(grad: Tensor, u: Tensor, bias: Tensor, seed: Tensor, levels: int) -> tuple[Tensor, Tensor]:
    lib = _load()
    grad, u, bias = grad.contiguous(), u.contiguous(), bias.contiguous()
    du, dbias = torch.empty_like(u), torch.empty_like(bias)
    s0, s1 = _seed_words(seed)
    F = u.shape[-1]
    _check_width(lib.setflow_bias_gelu_dropout_backward(_ptr(grad), _ptr(u), _ptr(bias), _ptr(du), _ptr(dbias),
                                                        u.numel() // F, F, s0, s1, levels, torch.get_num_threads()), F)
    return du, dbias


@_gelu_backward_op.register_fake
def _(grad, u, bias, seed, levels):
    return torch.empty_like(u), torch.empty_like(bias)


def _gelu_setup_context(ctx, inputs, output) -> None:
    u, bias, seed, levels = inputs
    ctx.save_for_backward(u, bias, seed)
    ctx.levels = levels


def _gelu_backward(ctx, grad):
    u, bias, seed = ctx.saved_tensors
    du, dbias = _gelu_backward_op(grad, u, bias, seed, ctx.levels)
    return du, dbias, None, None


_gelu_op.register_autograd(_gelu_backward, setup_context=_gelu_setup_context)


def _levels_and_seed(p: float, seed: Optional[Tensor], words: tuple[int, ...] = (2,)) -> tuple[int, Tensor]:
    """The kernels' keep ``levels`` for dropout ``p`` and the seed to pass: zeros of shape ``words``
    when there is no dropout and no seed."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    levels = _NO_DROPOUT
    if p > 0.0:
        if seed is None:
            raise ValueError(f"dropout p > 0 needs a seed (int32, shape {words})")
        levels = min(keep_levels(1.0 - p), 1 << MASK_BITS)
    if seed is None:
        seed = torch.zeros(words, dtype=torch.int32)
    return levels, seed


def bias_gelu_dropout(u: Tensor, bias: Tensor, p: float = 0.0, seed: Optional[Tensor] = None) -> Tensor:
    """``hash_dropout(gelu(u + bias), p, seed)`` in one pass (exact-erf GELU), differentiable in ``u`` and ``bias``.

    The mask is :func:`setflow.nn.fast.hashing.hash_keep_mask` of ``u``'s shape, bit for bit; the
    backward recomputes it and the GELU derivative from ``u`` and sums the bias gradient
    in the same pass. CPU float32, last dimension a multiple of :data:`GELU_WIDTH_MULTIPLE`
    (see :func:`supports_gelu`).
    """
    if bias.shape != u.shape[-1:]:
        raise ValueError(f"bias must have shape ({u.shape[-1]},) to match u {tuple(u.shape)}; got {tuple(bias.shape)}")
    levels, seed = _levels_and_seed(p, seed)
    return _gelu_op(u, bias, seed, levels)


def hash_attention(qkv: Tensor, num_heads: int, p: float = 0.0, seed: Optional[Tensor] = None) -> Tensor:
    """Multi-head self-attention ``(B, N, 3 D) -> (B, N, D)`` with hash dropout ``p`` on the weights.

    ``qkv`` is laid out ``(B, N, 3, num_heads, head_dim)`` (as a fused ``Linear(D, 3 D)``
    gives it). With ``p > 0``, ``seed`` (int32, 2 words) selects the
    :func:`setflow.nn.fast.hashing.hash_keep_mask` mask of the ``(B, H, N, N)`` weights and the
    kept weights are scaled by ``1 / keep'``. Differentiable in ``qkv``.
    """
    levels, seed = _levels_and_seed(p, seed)
    return _attention_op(qkv, seed, num_heads, levels)[0]


# ------------------------------------------------------------------------------------------------
# the whole block (setflow.nn.fast.fused.block_core with hash dropout) in one C++ pass per direction

_BLOCK_SAVED = ("qkv", "o", "lse", "h1", "u", "stats")


def block_available() -> bool:
    """Whether :func:`block` can run: the kernels loaded and a BLAS ``sgemm_`` was found in PyTorch."""
    return available() and _BLAS is not None


def block_supports(h: Tensor, weights, num_heads: int) -> bool:
    """Whether :func:`block` takes this input: CPU float32 ``(B, N, D)`` with ``D`` and the feed-forward
    width multiples of :data:`GELU_WIDTH_MULTIPLE`, head dim in :data:`SUPPORTED_HEAD_DIMS`, and CPU
    float32 weights (the 12 of :func:`setflow.nn.fast.fused.block_core`)."""
    if h.dim() != 3 or len(weights) != 12:
        return False
    D, F = h.shape[-1], weights[8].shape[0]
    if D % GELU_WIDTH_MULTIPLE or F % GELU_WIDTH_MULTIPLE or not heads_supported(h, D, num_heads):
        return False
    return all(w.device.type == "cpu" and w.dtype == torch.float32 for w in weights) and block_available()


def _block_shapes(h: Tensor, weights, num_heads: int) -> tuple[int, int, int, int]:
    _check_cpu_float32("block", h, *weights)
    if h.dim() != 3:
        raise ValueError(f"block input must be (B, N, D); got {tuple(h.shape)}")
    B, N, D = h.shape
    if len(weights) != 12:
        raise ValueError(f"block needs the 12 block_core weights; got {len(weights)}")
    F = weights[8].shape[0]
    expected = [(D,), (D,), (3 * D, D), (3 * D,), (D, D), (D,), (D,), (D,), (F, D), (F,), (D, F), (D,)]
    for k, (w, shape) in enumerate(zip(weights, expected)):
        if tuple(w.shape) != shape:
            raise ValueError(f"block weight {k} must have shape {shape} for d_model {D}, feed-forward {F}; "
                             f"got {tuple(w.shape)}")
    if D % num_heads:
        raise ValueError(f"d_model {D} is not divisible by {num_heads} heads")
    return B, N, D, F


def _ptr_array(tensors) -> ctypes.Array:
    return (ctypes.c_void_p * len(tensors))(*[t.data_ptr() for t in tensors])


def _check_block(rc: int, D: int, F: int, num_heads: int) -> None:
    if rc == 2:
        raise RuntimeError("setflow's block kernel has no BLAS sgemm (none found in PyTorch's libraries)")
    if rc:
        raise ValueError(f"block kernel: d_model {D} and feed-forward {F} must be multiples of {GELU_WIDTH_MULTIPLE} "
                         f"and the head dim {D // num_heads} one of {SUPPORTED_HEAD_DIMS}")


def _block_forward(h: Tensor, weights, seed: Tensor, num_heads: int, levels: int, eps: float,
                   save: bool) -> list[Tensor]:
    lib = _load()
    if lib is None:
        raise RuntimeError(f"setflow's C++ kernels are not available ({_ERROR})")
    B, N, D, F = _block_shapes(h, weights, num_heads)
    if seed.dtype != torch.int32 or seed.numel() != 8 or seed.device.type != "cpu":
        raise ValueError(f"block seed must be a CPU int32 tensor of 4 x 2 words; got {seed.dtype} {tuple(seed.shape)}")
    h = h.contiguous()
    weights = [w.contiguous() for w in weights]
    seed = seed.contiguous()
    out = torch.empty_like(h)
    saved = _block_saved_like(h, B, N, D, F, num_heads, save)
    ptrs = [_ptr(t) if save else None for t in saved]
    rc = lib.setflow_block_forward(_ptr(h), _ptr_array(weights), _ptr(out), *ptrs, B, N, D, num_heads, F, eps,
                                   _ptr(seed), levels, torch.get_num_threads())
    _check_block(rc, D, F, num_heads)
    return [out, *saved]


def _grad_buffers(weights, flat: bool) -> list[Tensor]:
    """Outputs shaped like ``weights``; with ``flat``, views of one buffer (one allocation)."""
    if not flat:
        return [torch.empty_like(w) for w in weights]
    buf = weights[0].new_empty(sum(w.numel() for w in weights))
    return [t.view(w.shape) for t, w in zip(buf.split([w.numel() for w in weights]), weights)]


def _block_backward(grad: Tensor, h: Tensor, weights, seed: Tensor, saved, num_heads: int, levels: int, eps: float,
                    flat: bool) -> list[Tensor]:
    """``[dh, *dweights]``; with ``flat`` the weight gradients are views of one buffer (one allocation)."""
    lib = _load()
    B, N, D, F = _block_shapes(h, weights, num_heads)
    grad, h = grad.contiguous(), h.contiguous()
    weights = [w.contiguous() for w in weights]
    saved = [t.contiguous() for t in saved]
    dh = torch.empty_like(h)
    dw = _grad_buffers(weights, flat)
    rc = lib.setflow_block_backward(_ptr(grad), _ptr(h), _ptr_array(weights), *[_ptr(t) for t in saved], _ptr(dh),
                                    _ptr_array(dw), B, N, D, num_heads, F, eps, _ptr(seed.contiguous()), levels,
                                    torch.get_num_threads())
    _check_block(rc, D, F, num_heads)
    return [dh, *dw]


@_custom_op("setflow::block")
def _block_op(h: Tensor, weights: list[Tensor], seed: Tensor, num_heads: int, levels: int, eps: float,
              save: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return tuple(_block_forward(h, weights, seed, num_heads, levels, eps, save))


def _block_saved_like(h: Tensor, B: int, N: int, D: int, F: int, num_heads: int, save: bool) -> list[Tensor]:
    if not save:
        return [h.new_empty(0) for _ in _BLOCK_SAVED]
    return [h.new_empty(B, N, 3 * D), h.new_empty(B, N, D), h.new_empty(B, num_heads, N), h.new_empty(B, N, D),
            h.new_empty(B, N, F), h.new_empty(4, B, N)]


@_block_op.register_fake
def _(h, weights, seed, num_heads, levels, eps, save):
    B, N, D, F = _block_shapes(h, weights, num_heads)
    return (torch.empty_like(h), *_block_saved_like(h, B, N, D, F, num_heads, save))


@_custom_op("setflow::block_backward")
def _block_backward_op(grad: Tensor, h: Tensor, weights: list[Tensor], seed: Tensor, saved: list[Tensor],
                       num_heads: int, levels: int, eps: float) -> list[Tensor]:
    return _block_backward(grad, h, weights, seed, saved, num_heads, levels, eps, flat=False)


@_block_backward_op.register_fake
def _(grad, h, weights, seed, saved, num_heads, levels, eps):
    return [torch.empty_like(h), *[torch.empty_like(w) for w in weights]]


def _through_ops() -> bool:
    """Whether the block must go through its registered ops: under ``torch.compile`` or a dispatch mode
    (``FlopCounterMode``, fake tensors). Plain eager calls skip the custom-op layer, whose Python-side
    checks (output aliasing, schema) cost ~0.1 ms per call."""
    from torch.utils._python_dispatch import _get_current_dispatch_mode

    return torch.compiler.is_compiling() or _get_current_dispatch_mode() is not None


class _BlockFunction(torch.autograd.Function):
    """Autograd for :func:`block`: the C++ forward and backward, directly in eager mode, else through
    the registered ops (which keep the block visible to ``FlopCounterMode`` and ``torch.compile``).

    A plain ``autograd.Function`` rather than the op's own ``register_autograd``, and direct calls in
    eager mode: together ~0.4 ms less per block and direction at the paper shapes. The weight
    gradients of a direct backward are views of one buffer.
    """

    @staticmethod
    def forward(ctx, h, seed, num_heads, levels, eps, *weights):
        if _through_ops():
            out, *saved = _block_op(h, list(weights), seed, num_heads, levels, eps, True)
        else:
            out, *saved = _block_forward(h, weights, seed, num_heads, levels, eps, True)
        ctx.save_for_backward(h, seed, *weights, *saved)
        ctx.num_heads, ctx.levels, ctx.eps = num_heads, levels, eps
        return out

    @staticmethod
    def backward(ctx, grad_out):
        h, seed, *rest = ctx.saved_tensors
        args = (grad_out, h, rest[:12], seed, rest[12:], ctx.num_heads, ctx.levels, ctx.eps)
        dh, *dw = _block_backward_op(*args) if _through_ops() else _block_backward(*args, flat=True)
        return (dh, None, None, None, None, *dw)


def _block_flop_parts(B: int, N: int, D: int, F: int) -> tuple[int, int]:
    """One block's forward FLOPs as FlopCounterMode counts the eager block: its four linear maps, and one
    of its two attention GEMMs (2 B N N D each)."""
    return 2 * B * N * (3 * D * D + D * D + F * D + D * F), 2 * B * N * N * D


def _register_block_flops() -> None:
    # the eager block's GEMMs as FlopCounterMode counts them: the four linear maps (forward 2MKN each,
    # backward twice that) and the attention's two GEMMs (backward four)
    from torch.utils import flop_counter as fc

    if not _HAS_CUSTOM_OP or not hasattr(fc, "register_flop_formula"):
        return

    @fc.register_flop_formula(torch.ops.setflow.block, get_raw=True)
    def _fwd(h, weights, *args, out_val=None, **kwargs) -> int:
        linear, attention = _block_flop_parts(*h.shape, weights[8].shape[0])
        return linear + 2 * attention

    @fc.register_flop_formula(torch.ops.setflow.block_backward, get_raw=True)
    def _bwd(grad, h, weights, *args, out_val=None, **kwargs) -> int:
        linear, attention = _block_flop_parts(*h.shape, weights[8].shape[0])
        return 2 * linear + 4 * attention


_register_block_flops()


def block(h: Tensor, weights, num_heads: int, p: float = 0.0, eps: float = 1e-5,
          seed: Optional[Tensor] = None) -> Tensor:
    """:func:`setflow.nn.fast.fused.block_core` with hash dropout, forward and backward in C++ (CPU float32).

    ``weights`` are the block's 12 tensors in ``block_core`` order; ``seed`` (int32 ``(4, 2)``, one
    pair per dropout site) is needed when ``p > 0``. The result and the gradients equal
    ``block_core(h, weights, num_heads, p, eps, seed)`` up to float32 rounding, with bit-identical
    dropout masks. The batch is worked through in chunks of whole sets, each thread running all
    stages of the block on its chunk while it is in cache; nothing is kept for a backward when no
    input needs a gradient (see :func:`block_supports`).
    """
    levels, seed = _levels_and_seed(p, seed if p > 0.0 else None, words=(4, 2))  # one pair per dropout site
    if seed.dtype != torch.int32 or tuple(seed.shape) != (4, 2):
        raise ValueError(f"seed must be an int32 tensor of shape (4, 2); got {seed.dtype} {tuple(seed.shape)}")
    if torch.is_grad_enabled() and (h.requires_grad or any(w.requires_grad for w in weights)):
        return _BlockFunction.apply(h, seed, num_heads, levels, float(eps), *weights)
    if _through_ops():
        return _block_op(h, list(weights), seed, num_heads, levels, float(eps), False)[0]  # nothing saved
    return _block_forward(h, weights, seed, num_heads, levels, float(eps), False)[0]


# ------------------------------------------------------------------------------------------------
# a whole set transformer (input layer, blocks, final LayerNorm and read-out) in one C++ pass per direction

def _net_parts(weights, num_layers: int, has_pos: bool):
    """``weights`` flat: embed w, embed b, [pos], 12 per block, norm w, norm b, out w, out b."""
    k = 3 if has_pos else 2
    expected = k + 12 * num_layers + 4
    if len(weights) != expected:
        raise ValueError(f"network needs {expected} weight tensors for {num_layers} blocks; got {len(weights)}")
    we, be = weights[0], weights[1]
    pos = weights[2] if has_pos else None
    blocks = [list(weights[k + 12 * i: k + 12 * (i + 1)]) for i in range(num_layers)]
    nw, nb, wo, bo = weights[k + 12 * num_layers:]
    return we, be, pos, blocks, nw, nb, wo, bo


def _net_shapes(x: Tensor, weights, num_layers: int, has_pos: bool, num_heads: int) -> tuple[int, ...]:
    _check_cpu_float32("network", x, *weights)
    if x.dim() != 3:
        raise ValueError(f"network input must be (B, N, K); got {tuple(x.shape)}")
    we, be, pos, blocks, nw, nb, wo, bo = _net_parts(weights, num_layers, has_pos)
    B, N, K = x.shape
    D = we.shape[0]
    O = wo.shape[0]
    F = blocks[0][8].shape[0] if blocks else GELU_WIDTH_MULTIPLE
    shapes = [(we, (D, K)), (be, (D,)), (nw, (D,)), (nb, (D,)), (wo, (O, D)), (bo, (O,))]
    if pos is not None:
        shapes.append((pos, (N, D)))
    for t, shape in shapes:
        if tuple(t.shape) != shape:
            raise ValueError(f"network weight of shape {tuple(t.shape)} where {shape} was expected "
                             f"(input {tuple(x.shape)}, d_model {D}, outputs {O})")
    h = x.new_empty(1).expand(B, N, D)  # shape stand-in for the block checks (no data read)
    for w in blocks:
        _block_shapes(h, w, num_heads)
    return B, N, K, D, F, O


def _net_ptr_array(tensors, has_pos: bool) -> ctypes.Array:
    """The C side's pointer array of a flat network weight (or gradient) list: a null in the positions'
    slot when the network has none."""
    ptrs = [t.data_ptr() for t in tensors]
    if not has_pos:
        ptrs.insert(2, None)
    return (ctypes.c_void_p * len(ptrs))(*ptrs)


def _network_forward(x: Tensor, weights, seeds: Tensor, num_layers: int, has_pos: bool, num_heads: int, levels: int,
                     eps: float, norm_eps: float, save: bool) -> tuple[Tensor, Tensor]:
    lib = _load()
    if lib is None:
        raise RuntimeError(f"setflow's C++ kernels are not available ({_ERROR})")
    B, N, K, D, F, O = _net_shapes(x, weights, num_layers, has_pos, num_heads)
    if seeds.dtype != torch.int32 or tuple(seeds.shape) != (num_layers, 4, 2) or seeds.device.type != "cpu":
        raise ValueError(f"network seeds must be a CPU int32 tensor of shape ({num_layers}, 4, 2); "
                         f"got {seeds.dtype} {tuple(seeds.shape)}")
    x, seeds = x.contiguous(), seeds.contiguous()
    weights = [w.contiguous() for w in weights]
    wp = _net_ptr_array(weights, has_pos)
    y = x.new_empty(B, N, O)
    saved = x.new_empty(lib.setflow_network_saved_size(B, N, D, num_heads, F, num_layers) if save else 0)
    rc = lib.setflow_network_forward(_ptr(x), wp, _ptr(y), _ptr(saved) if save else None, B, N, K, D, num_heads, F,
                                     O, num_layers, eps, norm_eps, _ptr(seeds), levels, torch.get_num_threads())
    _check_block(rc, D, F, num_heads)
    return y, saved


def _network_backward(grad: Tensor, x: Tensor, weights, seeds: Tensor, saved: Tensor, num_layers: int, has_pos: bool,
                      num_heads: int, levels: int, eps: float, norm_eps: float, need_dx: bool,
                      flat: bool) -> list[Optional[Tensor]]:
    """``[dx or None, *dweights]``; with ``flat`` the weight gradients are views of one buffer."""
    lib = _load()
    B, N, K, D, F, O = _net_shapes(x, weights, num_layers, has_pos, num_heads)
    grad, x, saved = grad.contiguous(), x.contiguous(), saved.contiguous()
    weights = [w.contiguous() for w in weights]
    dw = _grad_buffers(weights, flat)
    dx = torch.empty_like(x) if need_dx else None
    wp, gp = _net_ptr_array(weights, has_pos), _net_ptr_array(dw, has_pos)
    rc = lib.setflow_network_backward(_ptr(grad), _ptr(x), wp, _ptr(saved), _ptr(dx) if dx is not None else None, gp,
                                      B, N, K, D, num_heads, F, O, num_layers, eps, norm_eps, _ptr(seeds.contiguous()),
                                      levels, torch.get_num_threads())
    _check_block(rc, D, F, num_heads)
    return [dx, *dw]


@_custom_op("setflow::network")
def _network_op(x: Tensor, weights: list[Tensor], seeds: Tensor, num_layers: int, has_pos: bool, num_heads: int,
                levels: int, eps: float, norm_eps: float, save: bool) -> tuple[Tensor, Tensor]:
    return _network_forward(x, weights, seeds, num_layers, has_pos, num_heads, levels, eps, norm_eps, save)


@_network_op.register_fake
def _(x, weights, seeds, num_layers, has_pos, num_heads, levels, eps, norm_eps, save):
    B, N, K, D, F, O = _net_shapes(x, weights, num_layers, has_pos, num_heads)
    size = _load().setflow_network_saved_size(B, N, D, num_heads, F, num_layers) if save else 0
    return x.new_empty(B, N, O), x.new_empty(size)


@_custom_op("setflow::network_backward")
def _network_backward_op(grad: Tensor, x: Tensor, weights: list[Tensor], seeds: Tensor, saved: Tensor,
                         num_layers: int, has_pos: bool, num_heads: int, levels: int, eps: float, norm_eps: float,
                         need_dx: bool) -> list[Tensor]:
    dx, *dw = _network_backward(grad, x, weights, seeds, saved, num_layers, has_pos, num_heads, levels, eps, norm_eps,
                                need_dx, flat=False)
    return [dx if dx is not None else x.new_empty(0), *dw]


@_network_backward_op.register_fake
def _(grad, x, weights, seeds, saved, num_layers, has_pos, num_heads, levels, eps, norm_eps, need_dx):
    return [torch.empty_like(x) if need_dx else x.new_empty(0), *[torch.empty_like(w) for w in weights]]


class _NetworkFunction(torch.autograd.Function):
    """Autograd for :func:`network`, as :class:`_BlockFunction` for a block: direct C++ calls in eager
    mode, the registered ops under ``torch.compile`` or a dispatch mode."""

    @staticmethod
    def forward(ctx, x, seeds, num_layers, has_pos, num_heads, levels, eps, norm_eps, *weights):
        args = (x, list(weights), seeds, num_layers, has_pos, num_heads, levels, eps, norm_eps, True)
        y, saved = _network_op(*args) if _through_ops() else _network_forward(*args)
        ctx.save_for_backward(x, seeds, saved, *weights)
        ctx.meta = (num_layers, has_pos, num_heads, levels, eps, norm_eps)
        return y

    @staticmethod
    def backward(ctx, grad):
        x, seeds, saved, *weights = ctx.saved_tensors
        need_dx = ctx.needs_input_grad[0]
        args = (grad, x, weights, seeds, saved, *ctx.meta, need_dx)
        if _through_ops():
            dx, *dw = _network_backward_op(*args)
            dx = dx if need_dx else None
        else:
            dx, *dw = _network_backward(*args, flat=True)
        return (dx, None, None, None, None, None, None, None, *dw)


def _register_network_flops() -> None:
    # as FlopCounterMode counts the eager SetTransformer: the input layer's addmm (2 M K D; backward its
    # weight gradient, and its input gradient when the input needs one), each block as _register_block_flops,
    # the read-out's addmm (2 M D O; backward twice that)
    from torch.utils import flop_counter as fc

    if not _HAS_CUSTOM_OP or not hasattr(fc, "register_flop_formula"):
        return

    def parts(x_shape, weights, num_layers, has_pos) -> tuple[int, int, int, int]:
        B, N, K = x_shape
        we, _, _, blocks, _, _, wo, _ = _net_parts(weights, num_layers, has_pos)
        D, O, M = we.shape[0], wo.shape[0], B * N
        linear = attention = 0
        for w in blocks:
            lin, att = _block_flop_parts(B, N, D, w[8].shape[0])
            linear, attention = linear + lin, attention + att
        return 2 * M * K * D, linear, attention, 2 * M * D * O

    @fc.register_flop_formula(torch.ops.setflow.network, get_raw=True)
    def _fwd(x, weights, seeds, num_layers, has_pos, *args, out_val=None, **kwargs) -> int:
        embed, linear, attention, readout = parts(x.shape, weights, num_layers, has_pos)
        return embed + linear + 2 * attention + readout

    @fc.register_flop_formula(torch.ops.setflow.network_backward, get_raw=True)
    def _bwd(grad, x, weights, seeds, saved, num_layers, has_pos, num_heads, levels, eps, norm_eps, need_dx, *args,
             out_val=None, **kwargs) -> int:
        embed, linear, attention, readout = parts(x.shape, weights, num_layers, has_pos)
        return embed * (2 if need_dx else 1) + 2 * linear + 4 * attention + 2 * readout


_register_network_flops()


def network_supports(x: Tensor, weights, num_layers: int, has_pos: bool, num_heads: int) -> bool:
    """Whether :func:`network` takes this input: CPU float32 ``(B, N, K)``, CPU float32 weights, and every
    block as :func:`block_supports` requires (no call into C; builds the kernels if needed)."""
    if x.dim() != 3 or x.device.type != "cpu" or x.dtype != torch.float32:
        return False
    try:
        we, _, _, blocks, _, _, _, _ = _net_parts(weights, num_layers, has_pos)
    except ValueError:
        return False
    h = x.new_empty(1).expand(x.shape[0], x.shape[1], we.shape[0])
    return all(block_supports(h, w, num_heads) for w in blocks) and \
        all(w.device.type == "cpu" and w.dtype == torch.float32 for w in weights)


def network(x: Tensor, weights, num_layers: int, num_heads: int, has_pos: bool = False, p: float = 0.0,
            eps: float = 1e-5, norm_eps: float = 1e-5, seeds: Optional[Tensor] = None) -> Tensor:
    """A whole :class:`setflow.nn.SetTransformer` without context, forward and backward in C++ (CPU float32).

    ``weights`` (flat): the input layer's weight ``(D, K)`` and bias, the positional rows ``(N, D)`` if
    ``has_pos``, each block's 12 tensors (:func:`setflow.nn.fast.fused.block_core` order), the final
    LayerNorm's weight and bias and the read-out's weight ``(O, D)`` and bias. ``seeds`` (int32
    ``(num_layers, 4, 2)``) are needed when ``p > 0``; block ``l`` uses ``seeds[l]`` exactly as
    :func:`block` would, so the result equals the block-by-block fused path with bit-identical masks.
    Each chunk of sets goes through all layers in a core's cache; nothing is kept without a gradient.
    """
    levels, seeds = _levels_and_seed(p, seeds if p > 0.0 else None, words=(num_layers, 4, 2))
    args = (seeds, num_layers, has_pos, num_heads, levels, float(eps), float(norm_eps))
    if torch.is_grad_enabled() and (x.requires_grad or any(w.requires_grad for w in weights)):
        return _NetworkFunction.apply(x, *args, *weights)
    if _through_ops():
        return _network_op(x, list(weights), seeds, num_layers, has_pos, num_heads, levels, float(eps),
                           float(norm_eps), False)[0]
    return _network_forward(x, weights, seeds, num_layers, has_pos, num_heads, levels, float(eps), float(norm_eps),
                            False)[0]
