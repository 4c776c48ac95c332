"""Benchmark the SetTransformer conditioner: fwd+bwd time and FLOP utilisation on CPU.

Utilisation = (model FLOPs / time) / (float32 GEMM rate of (6400x64) @ (64x256)),
both measured in the same process and interleaved, so a busy machine affects
both. Model FLOPs are counted once with ``torch.utils.flop_counter.FlopCounterMode``
on the ``bmm`` attention variant (its attention is plain ``bmm``; the CPU flash
kernel behind ``sdpa`` is not counted by FlopCounterMode) and used for every
variant: each computes the same function.

    python scripts/bench_nn.py                         # default variants, (128, 25, 64)
    python scripts/bench_nn.py --points 50 --repeats 9
    python scripts/bench_nn.py --variants bmm sdpa naive --threads 1 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.utils.benchmark as tb
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

try:
    from setflow.nn import SetTransformer
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from setflow.nn import SetTransformer


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


def median_time(fn: Callable[[], None], threads: int, number: int) -> float:
    return tb.Timer("fn()", globals={"fn": fn}, num_threads=threads).timeit(number).median


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
    ap.add_argument("--repeats", type=int, default=7, help="timing rounds; the median is reported")
    ap.add_argument("--number", type=int, default=10, help="fwd+bwd steps per timing round")
    args = ap.parse_args(argv)

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
        utils: dict[str, list[float]] = {v: [] for v in steps}
        gemm_rates: list[float] = []
        for _ in range(args.repeats):  # interleave variants and the GEMM reference
            t_gemm = median_time(lambda: torch.mm(a, b), threads, 20)
            gemm_rates.append(gemm_flops / t_gemm)
            for v, fn in steps.items():
                t = median_time(fn, threads, args.number)
                times[v].append(t)
                utils[v].append(model_flops / t / gemm_rates[-1])
        rate = statistics.median(gemm_rates)
        print(f"threads={threads}: GEMM (6400x64)@(64x256) {rate / 1e9:.1f} GFLOP/s (median of {args.repeats})")
        for v in steps:
            t = statistics.median(times[v])
            print(f"  {v:6s} {t * 1e3:8.2f} ms/fwd+bwd (min {min(times[v]) * 1e3:.2f})  "
                  f"{model_flops / t / 1e9:6.1f} GFLOP/s  utilisation {statistics.median(utils[v]):.3f} "
                  f"(best {max(utils[v]):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
