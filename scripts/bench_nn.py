"""Benchmark the SetTransformer conditioner: fwd+bwd time and FLOP utilisation on CPU.

Utilisation = (model FLOPs / time) / (float32 GEMM rate of (6400x64) @ (64x256)),
both timed call by call in the same process and interleaved; reported from the
medians and from the minima (the best estimate on a machine shared with other
jobs). Model FLOPs are counted once with ``torch.utils.flop_counter.FlopCounterMode``
on the ``bmm`` attention variant and used for every variant: each computes the
same function (``setflow.nn.attention`` registers a formula for the CPU flash
kernel behind ``sdpa``, which FlopCounterMode otherwise counts as zero, so both
count the same).

    python scripts/bench_nn.py                         # default variants, (128, 25, 64)
    python scripts/bench_nn.py --points 50 --repeats 9
    python scripts/bench_nn.py --variants bmm sdpa naive --threads 1 2
    python scripts/bench_nn.py --tune-malloc      # keep freed memory in the heap (see below)
    python scripts/bench_nn.py --no-mkldnn        # torch.backends.mkldnn.enabled = False

``--tune-malloc`` calls :func:`setflow.nn.tune_cpu_allocator` (glibc ``mallopt``)
so that large freed blocks stay in the process heap instead of being returned to
the OS: every fresh activation tensor otherwise costs page faults on first touch
(~1300 minor faults per fwd+bwd here). Process-wide, so it belongs in an entry
point (trainer / CLI), not in library code.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

try:
    from setflow.nn import SetTransformer, tune_cpu_allocator
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from setflow.nn import SetTransformer, tune_cpu_allocator


class NaiveSetTransformer(nn.Module):
    """The textbook version (nn.TransformerEncoder, pre-norm, GELU) as a baseline."""

    def __init__(self, in_features: int, out_features: int, d_model: int, num_heads: int, num_layers: int, ff: int):
        super().__init__()
        self.embed = nn.Linear(in_features, d_model)
        layer = nn.TransformerEncoderLayer(
            d_model, num_heads, ff, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.out = nn.Linear(d_model, out_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.norm(self.encoder(self.embed(x))))


def build(variant: str, args: argparse.Namespace) -> nn.Module:
    if variant == "naive":
        return NaiveSetTransformer(args.in_features, args.out_features, args.d_model, args.heads, args.layers, args.ff)
    return SetTransformer(
        args.in_features, args.out_features, d_model=args.d_model, num_heads=args.heads,
        num_layers=args.layers, dim_feedforward=args.ff, zero_init=False, attention=variant,
    )


def step_fn(net: nn.Module, x: Tensor, g: Tensor) -> Callable[[], None]:
    def step() -> None:
        net(x).backward(g)

    return step


def sample_times(fn: Callable[[], object], number: int) -> list[float]:
    """Wall time of each of ``number`` calls (single calls: short windows dodge background load)."""
    out = []
    for _ in range(number):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--points", type=int, default=25)
    ap.add_argument("--in-features", type=int, default=2)
    ap.add_argument("--out-features", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--ff", type=int, default=256)
    ap.add_argument("--variants", nargs="+", default=["bmm", "sdpa", "naive"],
                    help="SetTransformer attention kernels ('bmm', 'sdpa', 'auto') and/or 'naive'")
    ap.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    ap.add_argument("--repeats", type=int, default=7, help="timing rounds (variants interleaved)")
    ap.add_argument("--number", type=int, default=10, help="fwd+bwd steps timed per variant and round")
    ap.add_argument("--tune-malloc", action="store_true", help="mallopt: keep freed memory (fewer page faults)")
    ap.add_argument("--no-mkldnn", action="store_true", help="disable oneDNN (torch.backends.mkldnn)")
    args = ap.parse_args(argv)
    if args.tune_malloc:
        print(f"tune_cpu_allocator applied: {tune_cpu_allocator()}")
    if args.no_mkldnn:
        torch.backends.mkldnn.enabled = False

    torch.manual_seed(0)
    x = torch.randn(args.batch, args.points, args.in_features)
    g = torch.randn(args.batch, args.points, args.out_features)
    a, b = torch.randn(6400, 64), torch.randn(64, 256)
    gemm_flops = 2 * 6400 * 64 * 256

    counter_net = build("bmm", args)
    with FlopCounterMode(display=False) as fc:
        counter_net(x).backward(g)
    model_flops = fc.get_total_flops()
    print(f"shape (B={args.batch}, N={args.points}, d={args.d_model}), {args.layers} layers, "
          f"{args.heads} heads, ff {args.ff}: {model_flops / 1e9:.3f} GFLOP per fwd+bwd")

    for threads in args.threads:
        torch.set_num_threads(threads)
        nets = {v: build(v, args) for v in args.variants}
        steps = {v: step_fn(n, x, g) for v, n in nets.items()}
        for fn in steps.values():  # warm-up
            for _ in range(3):
                fn()
        times: dict[str, list[float]] = {v: [] for v in steps}
        gemm_times: list[float] = []
        for _ in range(args.repeats):  # interleave the GEMM reference and the variants
            for v, fn in steps.items():
                gemm_times += sample_times(lambda: torch.mm(a, b), 20)
                times[v] += sample_times(fn, args.number)
        faults = {}
        for v, fn in steps.items():  # page faults per step (fresh tensors touching new pages)
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for _ in range(args.number):
                fn()
            faults[v] = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / args.number
        g_med, g_min = statistics.median(gemm_times), min(gemm_times)
        print(f"threads={threads}: GEMM (6400x64)@(64x256) {gemm_flops / g_med / 1e9:.1f} GFLOP/s median, "
              f"{gemm_flops / g_min / 1e9:.1f} best")
        print("  variant  ms/step median (min)   GFLOP/s   utilisation median (min/min)   page faults/step")
        for v in steps:
            t_med, t_min = statistics.median(times[v]), min(times[v])
            print(f"  {v:7s} {t_med * 1e3:8.2f} ({t_min * 1e3:6.2f})     {model_flops / t_med / 1e9:6.1f}     "
                  f"{model_flops / t_med / (gemm_flops / g_med):.3f} ({model_flops / t_min / (gemm_flops / g_min):.3f})"
                  f"                 {faults[v]:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
