"""Cost of a padded batch of sets of different sizes vs a batch of equal-size sets with the same
number of real points (issue 15: at most 1.3x), in one run, median of several repeats.

Model: the variable-size SortFlow of configs/spatial_mnist/sortflow_varsize_cpu.yaml (sizes up to
70). Batch "ragged": B sets with sizes uniform in 30..70, padded to the largest, with a mask.
Batch "equal": B sets of exactly mean-size points (the same total of real points), mask all True
(so the unmasked path). Both are timed for log_prob (no grad) and for a training step
(log_prob + backward), interleaved, on one thread by default; the ragged batch both as the flow
scores it by default (``Flow.max_buckets`` size buckets for large batches) and as one padded call.

    python scripts/bench_ragged.py                      # the figure in docs/results/spatial_mnist.md
    python scripts/bench_ragged.py --batch 64 --repeats 9 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from setflow.models.build import build_from_config  # noqa: E402
from setflow.sets import lengths_to_mask  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "spatial_mnist" / "sortflow_varsize_cpu.yaml"


def ragged_sizes(batch: int, lo: int, hi: int, seed: int) -> torch.Tensor:
    """``batch`` sizes uniform in ``lo..hi`` whose total is exactly ``batch * mean`` (mean = (lo + hi) / 2)."""
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(lo, hi + 1, (batch,), generator=g)
    target = batch * (lo + hi) // 2
    i = 0
    while int(sizes.sum()) != target:  # nudge one set at a time (a loop over sets, a handful of steps)
        step = 1 if int(sizes.sum()) < target else -1
        if lo <= int(sizes[i % batch]) + step <= hi:
            sizes[i % batch] += step
        i += 1
    return sizes


def timed(fn, repeats: int, clock: str = "cpu") -> list[float]:
    """Seconds per call; ``clock="cpu"``: this process's CPU time (less sensitive to other jobs on a
    shared machine than wall time, ``clock="wall"``)."""
    now = time.process_time if clock == "cpu" else time.perf_counter
    out = []
    for _ in range(repeats):
        t0 = now()
        fn()
        out.append(now() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--min", type=int, default=30)
    ap.add_argument("--max", type=int, default=70)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = yaml.safe_load(CONFIG.read_text())
    cfg["model_args"]["max_points"] = max(args.max, cfg["model_args"]["max_points"])
    torch.manual_seed(args.seed)
    model = build_from_config(cfg)
    model.size_dist.fit(torch.arange(args.min, args.max + 1))
    sizes = ragged_sizes(args.batch, args.min, args.max, args.seed)
    mean = int(sizes.sum()) // args.batch
    g = torch.Generator().manual_seed(args.seed + 1)
    ragged_mask = lengths_to_mask(sizes, int(sizes.max()))
    x_ragged = torch.rand(args.batch, ragged_mask.shape[1], 2, generator=g) * 28
    x_equal = torch.rand(args.batch, mean, 2, generator=g) * 28
    equal_mask = torch.ones(args.batch, mean, dtype=torch.bool)
    model.log_prob(x_ragged, mask=ragged_mask)  # ActNorm initialisation + warm-up
    model.log_prob(x_equal, mask=equal_mask)

    def score(x, m):
        with torch.no_grad():
            model.log_prob(x, mask=m)

    def step(x, m):
        model.zero_grad(set_to_none=True)
        (-model.log_prob(x, mask=m).sum()).backward()

    buckets = model.max_buckets

    def one_batch(fn):  # the whole padded batch in one call (no size buckets)
        def run(x, m):
            model.max_buckets = 1
            try:
                fn(x, m)
            finally:
                model.max_buckets = buckets
        return run

    res = {}
    for name, fn in (("log_prob", score), ("train step", step)):
        r, r1, e = [], [], []
        for _ in range(args.repeats):  # interleaved, so drifts in machine load hit all alike
            r += timed(lambda: fn(x_ragged, ragged_mask), 1, args.clock)
            r1 += timed(lambda: one_batch(fn)(x_ragged, ragged_mask), 1, args.clock)
            e += timed(lambda: fn(x_equal, equal_mask), 1, args.clock)
        res[name] = (statistics.median(r), statistics.median(r1), statistics.median(e))
    groups = model._buckets(ragged_mask)
    print(f"batch {args.batch}: ragged sizes {int(sizes.min())}..{int(sizes.max())} (padded to {ragged_mask.shape[1]}; "
          f"{1 if groups is None else len(groups)} size bucket(s) by default) vs equal size {mean}; "
          f"{int(sizes.sum())} real points each; {args.threads} thread(s), {args.clock} time, median of {args.repeats}")
    for name, (r, r1, e) in res.items():
        print(f"  {name:10s}  ragged {1000 * r:8.1f} ms ({r / e:.2f}x)   one padded call {1000 * r1:8.1f} ms "
              f"({r1 / e:.2f}x)   equal {1000 * e:8.1f} ms")


if __name__ == "__main__":
    main()
