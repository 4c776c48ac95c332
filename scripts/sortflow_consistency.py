"""How much of a SortFlow's density lies on sorted tuples: P(sorted) with its standard error.

The paper SortFlow scores a set by the density of its sorted tuple under a latent flow that is
not confined to sorted tuples, so ``exp(log_prob)`` integrates to P(sorted): the share of base
samples whose inverse latent flow (every layer after the sort) comes out sorted. This script
estimates it from a checkpoint, and the likelihood the normalised model would give,
``log_prob - log P(sorted)`` (per point: ``- log(P) / N``). A sort-consistent SortFlow
(``model_args.sort_consistent: true``) gives P = 1 by construction.

Usage::

    python scripts/sortflow_consistency.py runs/sortflow/last.pt --samples 100000
"""

from __future__ import annotations

import argparse
import math
import sys

import torch


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="a SortFlow checkpoint written by `setflow train`")
    p.add_argument("--samples", type=int, default=100_000, help="base samples (default 100000)")
    p.add_argument("--batch-size", type=int, default=5_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from setflow.train.checkpoint import load_model
    from setflow.transforms import sorted_fraction

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model, config = load_model(args.checkpoint)
    try:
        p, se = sorted_fraction(model, args.samples, batch_size=args.batch_size)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    consistent = bool(getattr(model, "sort_consistent", False))
    n = int(getattr(model, "num_points", 0)) or None
    print(f"model {config.get('model')} ({'sort-consistent' if consistent else 'paper'} SortFlow), "
          f"{args.samples} base samples")
    print(f"P(sorted) = {p:.6f} +- {se:.6f} (standard error)")
    if 0 < p < 1 and n:
        print(f"normalising adds -log P / N = {-math.log(p) / n:.4f} nats/point to the reported PPLL")
    elif p == 0:
        print("no sample came out sorted: P(sorted) is below 1/samples")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
