#!/usr/bin/env python
"""The 2-D abs-surjection study (SurVAE figure 4): 4 toy data sets x 3 models, on CPU.

For every data set (checkerboard, corners, eight Gaussians, four circles) it trains, from
``configs/toy/<dataset>_<variant>.yaml`` with the shared trainer,

* ``flow``         a plain affine-coupling flow,
* ``abs_learned``  the same flow behind an abs surjection with learned sign probabilities,
* ``abs_uniform``  the same flow behind an abs surjection with fair-coin signs,

then writes a figure (data histogram beside each model's density) and a Markdown table of the
test negative log-likelihood in nats, which it also prints.

Usage::

    python scripts/toy_study.py                    # 3000 steps per model (~10-15 min on 2 cores)
    python scripts/toy_study.py --steps 500 --datasets corners --variants flow abs_uniform
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DATASETS = ("checkerboard", "corners", "eight_gaussians", "four_circles")
VARIANTS = ("flow", "abs_learned", "abs_uniform")
LABELS = {"flow": "Flow", "abs_learned": "Abs (learned signs)", "abs_uniform": "Abs (uniform signs)"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=3000, help="optimiser steps per model (train.max_steps)")
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--configs", default=str(ROOT / "configs" / "toy"), help="folder of <dataset>_<variant>.yaml")
    p.add_argument("--out-dir", default=str(ROOT / "runs" / "toy_study"), help="checkpoints go here")
    p.add_argument("--figure", default=str(ROOT / "docs" / "toy_study.png"))
    p.add_argument("--table", default=str(ROOT / "docs" / "toy_study.md"))
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (the machine is shared)")
    p.add_argument("--grid-size", type=int, default=200, help="density grid resolution of the figure")
    p.add_argument("overrides", nargs="*", help="extra config overrides for every run, e.g. train.lr=5e-4")
    return p.parse_args(argv)


def markdown_table(nll: dict, datasets, variants, steps: int) -> str:
    head = "| data set | " + " | ".join(LABELS[v] for v in variants) + " |"
    rule = "|---|" + "---:|" * len(variants)
    lines = [f"Test NLL (nats, lower is better) after {steps} steps per model.", "", head, rule]
    for ds in datasets:
        cells = []
        best = min(nll[(ds, v)] for v in variants)
        for v in variants:
            s = f"{nll[(ds, v)]:.3f}"
            cells.append(f"**{s}**" if nll[(ds, v)] == best else s)
        lines.append(f"| {ds} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from setflow.evaluate import evaluate
    from setflow.train.config import load_config
    from setflow.data.experiments import load_data
    from setflow.train.trainer import Trainer
    from setflow.viz.toy import plot_toy_study

    torch.set_num_threads(args.threads)
    nll, rows = {}, []
    t_all = time.perf_counter()
    for ds in args.datasets:
        models, data = [], None
        for v in args.variants:
            path = Path(args.configs) / f"{ds}_{v}.yaml"
            cfg = load_config(path, [f"train.max_steps={args.steps}", "train.progress=false",
                                     f"train.num_threads={args.threads}", *args.overrides])
            if data is None:
                data = load_data(cfg)
            t0 = time.perf_counter()
            trainer = Trainer(cfg, str(Path(args.out_dir) / f"{ds}_{v}"), data=data, log=lambda *_: None, overwrite=True)
            trainer.fit()
            res = evaluate(trainer.model, data.test, data.unit, batch_size=cfg["eval"]["batch_size"])
            nll[(ds, v)] = -res["ll"]
            models.append((f"{LABELS[v]}: {nll[(ds, v)]:.2f}", trainer.model.eval()))
            print(f"{ds:16s} {v:12s} test NLL {nll[(ds, v)]:.4f} nats  ({time.perf_counter() - t0:.0f} s, "
                  f"{args.steps} steps)", flush=True)
        rows.append((ds, data.test, models))
    plot_toy_study(rows, args.figure, grid_size=args.grid_size)
    table = markdown_table(nll, args.datasets, args.variants, args.steps)
    Path(args.table).parent.mkdir(parents=True, exist_ok=True)
    Path(args.table).write_text(table)
    print()
    print(table)
    print(f"figure: {args.figure}\ntable: {args.table}\ntotal {time.perf_counter() - t_all:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
