"""CPU helpers: a faster dropout mask, split-batch backward in threads, opt-in process-wide tuning."""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import sys
import threading
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["dropout", "split_batch_backward", "tune_cpu_allocator"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tune_cpu_allocator(threshold_bytes: int = 1 << 30) -> bool:
    """Keep large freed blocks in glibc's heap instead of returning them to the OS.

    PyTorch's CPU allocator is plain ``malloc``: activation tensors of a few MB
    are served by ``mmap`` and unmapped on free (or trimmed off the heap), so
    every fresh tensor pays page faults on first touch. In a SetTransformer
    fwd+bwd at (128, 25, 64) that is ~1300 minor faults and a few ms of kernel
    time per step. Raising glibc's mmap and trim thresholds removes almost all
    of them. Process-wide and irreversible in practice, so this is opt-in: call it
    once from a training entry point, never from library code.

    Returns ``True`` when both settings were applied (Linux with glibc), else ``False``.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    value = int(min(threshold_bytes, 2**31 - 1))
    return bool(mallopt(_M_MMAP_THRESHOLD, value)) and bool(mallopt(_M_TRIM_THRESHOLD, value))


_LANE_BITS = 16
_LANES = 4  # 16-bit lanes of a 64-bit draw over the full int64 range: all four are uniform


def _keep_mask(shape: torch.Size, keep: float, like: Tensor) -> Tensor:
    """Dropout multiplier ``1[u < keep'] / keep'`` with ``like``'s dtype, four decisions per draw.

    ``random_()`` on int64 draws one serial ``mt19937`` word per element: that call is the
    dominant cost of CPU dropout (``bernoulli_`` spends one per element, ~7-20 ns). Here each
    word is drawn over the full int64 range (``random_(-2**63, None)``), so its four 16-bit lanes
    are independent uniform int16 values, each compared with ``round(keep * 2**16) - 2**15``;
    the comparison and the multiplier are single contiguous passes. So ``keep' = round(keep * 2**16)
    / 2**16`` (within ``2**-17`` of ``keep``) and the scale is ``1 / keep'``: the output is exactly
    unbiased, ``E[mask] = 1``.
    """
    n = math.prod(shape)
    levels = int(round(keep * 2**_LANE_BITS))
    if levels <= 0:
        return torch.zeros(shape, dtype=like.dtype)
    if levels >= 2**_LANE_BITS:
        return torch.ones(shape, dtype=like.dtype)
    words = torch.empty(-(-n // _LANES), dtype=torch.int64).random_(-2**63, None)
    keep_bits = words.view(torch.int16)[:n] < (levels - 2 ** (_LANE_BITS - 1))  # contiguous compare
    # bool -> float then one in-place scale: the same values as where(keep, scale, 0), in ~half its time
    return keep_bits.to(like.dtype).mul_(2**_LANE_BITS / levels).view(shape)


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """Inverted dropout, ``F.dropout``'s maths, with a faster mask on CPU.

    On CPU PyTorch draws one ``mt19937`` number per element serially
    (``bernoulli_``: ~7-20 ns per element), which makes dropout the largest cost
    of a dropout-0.2 SortFlow step. Here each 64-bit draw gives four keep/drop
    decisions (see :func:`_keep_mask`): the keep probability is ``1 - p`` rounded
    to a multiple of ``2**-16`` (so ``p < 2**-17`` drops nothing) and the kept
    entries are scaled by its inverse, so the output stays unbiased. Other devices
    use :func:`F.dropout`. Seeded by ``torch.manual_seed`` like ``F.dropout``.
    """
    if not training or p == 0.0:
        return x
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    if x.device.type != "cpu" or p == 1.0 or not x.is_floating_point():
        return F.dropout(x, p, True)
    with torch.no_grad():
        mask = _keep_mask(x.shape, 1.0 - p, x)
    return x * mask


def split_batch_backward(
    loss_fn: Callable[[Tensor], Tensor],
    batch: Tensor,
    workers: int = 2,
) -> Tensor:
    """Backpropagate ``loss_fn(batch)`` as ``workers`` concurrent chunks (inter-op parallelism).

    ``loss_fn(chunk)`` must return the chunk's **summed** per-example loss; the
    result is scaled by ``1 / len(batch)``, so the accumulated ``.grad`` equals
    that of the batch mean (up to float rounding of the GEMM reductions). Each
    chunk runs forward and backward in its own Python thread; PyTorch ops release
    the GIL and autograd accumulates into ``.grad`` under a per-parameter lock.

    With ``workers`` threads each running single-threaded ops, a many-small-op
    network avoids the fork/join barriers of intra-op parallelism, which cost most
    on small ops and on shared, loaded cores. The caller sets the intra-op threads
    (``torch.set_num_threads(1)`` with 2 workers on 2 cores).

    Caveats: random ops (dropout, stochastic permutations) draw from the global
    generator in whichever order the threads reach it, so a seeded run is not
    bit-reproducible; layers with data-dependent initialisation (ActNorm) must be
    initialised on the full batch before the first call; batch-statistics layers
    would see chunks. Returns the (detached) mean loss.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    n = batch.shape[0]
    chunks = batch.chunk(min(workers, n))
    if len(chunks) == 1:
        loss = loss_fn(batch) / n
        loss.backward()
        return loss.detach()
    losses: list[Optional[Tensor]] = [None] * len(chunks)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            loss = loss_fn(chunks[i]) / n
            loss.backward()
            losses[i] = loss.detach()
        except BaseException as e:  # re-raised in the caller
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(1, len(chunks))]
    for t in threads:
        t.start()
    run(0)
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return torch.stack([loss for loss in losses if loss is not None]).sum()
