#!/usr/bin/env python
"""Training-step time and peak memory of the 3-D SortFlow with ISAB and with kNN conditioners.

For each conditioner and each N, a fresh child process builds the model of
configs/pointcloud/sortflow_shapes_cpu.yaml (with ``num_points = N``), draws a batch of
procedural shapes, runs ``--warmup`` then ``--reps`` Adam steps (forward, backward, update)
and reports the median step time and the process's peak resident memory (ru_maxrss: it
includes the interpreter and torch, so it over-states the model's own share).

    python scripts/bench_pointcloud.py                       # batch 16, N = 256..2048, CPU, 1 thread
    python scripts/bench_pointcloud.py --device cuda --threads 4

Prints a Markdown table: median ms per step (wall clock), microseconds per point, cost per
point relative to the smallest N, the same for the process's CPU time per step (steadier than
the wall clock on a machine shared with other jobs), peak memory. Targets (issue 16): per-point cost at N = 2048 <= 1.5x that at
N = 256; peak memory at 16 x 2048 <= 4 GB.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = {"isab": dict(conditioner="isab", point_conditioner="isab"),
            "knn": dict(conditioner="knn", point_conditioner="knn")}
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "pointcloud" / "sortflow_shapes_cpu.yaml"


def child(variant: str, n: int, batch: int, reps: int, warmup: int, threads: int, device: str) -> dict:
    import resource

    import torch

    from setflow.data.pointclouds import normalize_clouds, procedural_shapes
    from setflow.models.set_flows import build_set_flow
    from setflow.train.config import load_config

    torch.set_num_threads(threads)
    cfg = load_config(str(CONFIG), [])
    args = dict(cfg["model_args"], num_points=n, point_conditioner=VARIANTS[variant]["point_conditioner"])
    args["conditioner"] = dict(args["conditioner"], name=VARIANTS[variant]["conditioner"])
    model = build_set_flow(**args).to(device)
    clouds, _ = procedural_shapes(max(1, batch // 7 + 1), n, seed=0)
    x = torch.as_tensor(normalize_clouds(clouds[:batch], "shape")[0], device=device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times, cpu = [], []
    for i in range(warmup + reps):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        opt.zero_grad(set_to_none=True)
        loss = -model.log_prob(x).mean() / n
        loss.backward()
        opt.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    peak = (torch.cuda.max_memory_allocated() if device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"variant": variant, "n": n, "median_s": statistics.median(times), "cpu_s": statistics.median(cpu),
            "peak_bytes": peak, "loss": float(loss), "times": times, "cpu_times": cpu}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--points", type=int, nargs="+", default=[256, 512, 1024, 2048])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None, help="also write the raw results here")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        variant, n = a.child.split(":")
        print(json.dumps(child(variant, int(n), a.batch, a.reps, a.warmup, a.threads, a.device)))
        return 0
    results = []
    for variant in a.variants:
        for n in a.points:
            cmd = [sys.executable, __file__, "--child", f"{variant}:{n}", "--batch", str(a.batch), "--reps",
                   str(a.reps), "--warmup", str(a.warmup), "--threads", str(a.threads), "--device", a.device]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                print(out.stderr, file=sys.stderr)
                return 1
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
            r = results[-1]
            print(f"# {variant} N={n}: median {r['median_s'] * 1e3:.0f} ms, peak {r['peak_bytes'] / 2**30:.2f} GiB",
                  file=sys.stderr)
    mem = "peak GPU alloc" if a.device.startswith("cuda") else "peak RSS"
    print(f"\nbatch {a.batch}, float32, {a.device}, {a.threads} thread(s), median of {a.reps} steps\n")
    base_n = min(a.points)
    print(f"| conditioner | N | ms / step | us / point | per-point cost vs N={base_n} | "
          f"CPU ms / step | per-point CPU vs N={base_n} | {mem} (GiB) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for variant in a.variants:
        rows = [r for r in results if r["variant"] == variant]
        base, cbase = rows[0]["median_s"] / rows[0]["n"], rows[0]["cpu_s"] / rows[0]["n"]
        for r in rows:
            per, cper = r["median_s"] / r["n"], r["cpu_s"] / r["n"]
            print(f"| {variant} | {r['n']} | {r['median_s'] * 1e3:.0f} | {per / a.batch * 1e6:.1f} | "
                  f"{per / base:.2f}x | {r['cpu_s'] * 1e3:.0f} | {cper / cbase:.2f}x | {r['peak_bytes'] / 2**30:.2f} |")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
