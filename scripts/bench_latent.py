#!/usr/bin/env python
"""Cost per point of the latent set flow's i.i.d. ``points`` decoder at N = 256 / 2,048 / 10,000.

Builds the model of configs/pointcloud/latent_setflow_airplanes_cpu.yaml (random weights: cost
does not depend on them), and for each N times, on one batch of ``--batch`` clouds of N points:

- ``log_prob``: the one-draw ELBO (encoder over the N points, a code draw, the prior, the point
  flow over every point), no gradient;
- ``sample``: a code from the prior, then N points through the inverse point flow.

Every round times each (N, op) once, in an order shuffled per round, and the table gives the
median over ``--rounds`` rounds of the wall clock and of the process's CPU time (steadier on a
shared machine), in microseconds per point, and the per-point cost relative to N = 256. Flat
cost in N means those ratios stay near 1.

    OMP_NUM_THREADS=1 python scripts/bench_latent.py                  # batch 4, 7 rounds
    python scripts/bench_latent.py --sizes 256 2048 10000 --rounds 9 --threads 1
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import time
from pathlib import Path

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "pointcloud" / "latent_setflow_airplanes_cpu.yaml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 2048, 10000])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--config", default=str(CONFIG))
    args = ap.parse_args()
    if min(args.sizes) < 1 or args.batch < 1 or args.rounds < 1 or args.threads < 1:
        ap.error("--sizes, --batch, --rounds and --threads must be >= 1")

    import torch

    from setflow.models import build_model
    from setflow.train.config import load_config

    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, [])
    model = build_model(cfg["model"], **cfg["model_args"]).eval()
    torch.manual_seed(0)
    clouds = {n: torch.randn(args.batch, n, 3) for n in args.sizes}
    with torch.no_grad():
        model.log_prob(clouds[args.sizes[0]])  # ActNorm's data initialisation, outside the timings
    ops = {"log_prob": lambda n: model.log_prob(clouds[n]), "sample": lambda n: model.sample(args.batch, num_points=n)}
    jobs = [(op, n) for op in ops for n in args.sizes]
    wall = {j: [] for j in jobs}
    cpu = {j: [] for j in jobs}
    rng = random.Random(0)
    with torch.no_grad():
        for op, n in jobs:  # one warm-up call each
            ops[op](n)
        for _ in range(args.rounds):
            rng.shuffle(jobs)
            for op, n in jobs:
                t0, c0 = time.perf_counter(), time.process_time()
                ops[op](n)
                wall[(op, n)].append(time.perf_counter() - t0)
                cpu[(op, n)].append(time.process_time() - c0)
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} thread(s); batch {args.batch}; median of {args.rounds} rounds; config {Path(args.config).name}")
    print("| op | N | ms / call (wall) | us / point (wall) | us / point (CPU) | per point vs N=%d (CPU) |" % args.sizes[0])
    print("|---|---:|---:|---:|---:|---:|")
    for op in ops:
        base = statistics.median(cpu[(op, args.sizes[0])]) / args.sizes[0]
        for n in args.sizes:
            w, c = statistics.median(wall[(op, n)]), statistics.median(cpu[(op, n)])
            pts = n * args.batch
            print(f"| {op} | {n:,} | {1e3 * w:.1f} | {1e6 * w / pts:.2f} | {1e6 * c / pts:.2f} | "
                  f"{c / n / base:.2f} |")


if __name__ == "__main__":
    main()
