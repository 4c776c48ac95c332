#!/usr/bin/env python
"""Baseline multi-scale flow vs MaxPoolFlow on a small image data set, on CPU.

Trains ``configs/images/{baseline,maxpool}_<recipe>_cpu.yaml`` (or evaluates existing runs with
``--skip-train``), then reports test bits/dim as ELBO and IWBO (``--iwbo-k``) in a Markdown
table, and writes a data | samples grid per model. ``--equal-steps`` gives the first model the
minute budget and the second exactly as many steps (the SurVAE table compares at equal steps).

Usage::

    python scripts/image_study.py --data fashion_mnist --minutes 20          # train both, then evaluate
    python scripts/image_study.py --skip-train --runs runs/baseline_fashion_cpu runs/maxpool_fashion_cpu
    python scripts/image_study.py --recipe photos32 --minutes 12 --equal-steps   # offline photo tiles, RGB 32x32
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

KINDS = ("baseline", "maxpool")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default="mnist", choices=["mnist", "photos32"],
                   help="configs {baseline,maxpool}_<recipe>_cpu.yaml: 1x28x28 digits or 3x32x32 photo tiles")
    p.add_argument("--data", default=None,
                   help="mnist recipe: mnist or fashion_mnist (config override data=...); default the recipe's")
    p.add_argument("--minutes", type=float, default=20.0, help="training budget per model (train.max_minutes)")
    p.add_argument("--steps", type=int, default=None, help="optional train.max_steps per model")
    p.add_argument("--equal-steps", action="store_true",
                   help="train the second model for exactly the steps the first reached in its budget")
    p.add_argument("--skip-train", action="store_true", help="only evaluate the checkpoints in --runs")
    p.add_argument("--runs", nargs="+", default=None, help="run folders (default runs/<kind>_<data>_cpu)")
    p.add_argument("--iwbo-k", type=int, default=10)
    p.add_argument("--iwbo-chunk", type=int, default=10)
    p.add_argument("--max-examples", type=int, default=1000, help="test images evaluated")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "runs" / "image_study"), help="folder for the sample grids and the table")
    p.add_argument("overrides", nargs="*", help="extra config overrides for training")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from setflow.evaluate import evaluate
    from setflow.train.checkpoint import load_checkpoint, load_model
    from setflow.train.config import load_config
    from setflow.train.data import load_data
    from setflow.train.trainer import train
    from setflow.viz.images import plot_checkpoint

    torch.set_num_threads(args.threads)
    data = args.data or args.recipe
    if args.recipe != "mnist" and data != args.recipe:
        raise SystemExit(f"image_study.py: error: --recipe {args.recipe} trains on {args.recipe}, not {data}")
    runs = args.runs or [str(ROOT / "runs" / f"{k}_{data}_cpu") for k in KINDS]
    if not args.skip_train:
        steps = args.steps
        for kind, run in zip(KINDS, runs):
            over = [f"train.max_minutes={args.minutes if steps is None else 10 * args.minutes}",
                    "train.progress=false", f"train.num_threads={args.threads}", *args.overrides]
            if args.recipe == "mnist":
                over.insert(0, f"data={data}")
            if steps is not None:  # equal steps: the minute budget only guards against a stall
                over.append(f"train.max_steps={steps}")
            cfg = load_config(ROOT / "configs" / "images" / f"{kind}_{args.recipe}_cpu.yaml", over)
            summary = train(cfg, run, overwrite=True)  # a study run starts over
            print(f"{kind}: {summary['step']} steps in {summary['seconds']:.0f} s ({summary['stopped']})", flush=True)
            if args.equal_steps and steps is None:
                steps = summary["step"]

    rows = []
    for run in runs:
        ckpt = Path(run) / "last.pt"
        model, cfg = load_model(ckpt)
        steps = load_checkpoint(ckpt)["step"]
        data = load_data(cfg)
        torch.manual_seed(0)
        t0 = time.perf_counter()
        res = evaluate(model, data.test, data.unit, batch_size=args.batch_size, iwbo_k=args.iwbo_k,
                       iwbo_chunk=args.iwbo_chunk, max_examples=args.max_examples)
        secs = time.perf_counter() - t0
        torch.manual_seed(0)
        grid = Path(args.out) / f"image_study_{Path(run).name}.png"
        plot_checkpoint(model, cfg, data, str(grid), n=64)
        rows.append((cfg["model"], cfg["data"], steps, res["elbo_metric"], res["metric"], res["count"], grid))
        print(f"{run}: ELBO {res['elbo_metric']:.4f} bits/dim, IWBO(k={args.iwbo_k}) {res['metric']:.4f} bits/dim "
              f"on {res['count']} test images ({secs:.0f} s); samples {grid}", flush=True)

    lines = [f"| model | data | steps | ELBO bits/dim | IWBO k={args.iwbo_k} bits/dim | test images |",
             "|---|---|---:|---:|---:|---:|"]
    for model, data, steps, elbo, iwbo, count, _ in rows:
        lines.append(f"| {model} | {data} | {steps} | {elbo:.4f} | {iwbo:.4f} | {count} |")
    table = "\n".join(lines) + "\n"
    out = Path(args.out) / f"image_study_{rows[0][1] if rows else data}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table)
    print()
    print(table)
    print(f"table: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
