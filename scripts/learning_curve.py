"""Valid PPLL against training steps of one or more runs, beside the published SpatialMNIST figures.

Usage::

    python scripts/learning_curve.py runs/pf_full/last.pt runs/sf_full/last.pt -o docs/spatial_mnist_curve.png

Reads the ``history`` each checkpoint keeps (``train.eval_every``: valid metric every so many
steps) and draws one line per run, labelled by its model name (or ``--labels``), with the
published full-SpatialMNIST test PPLL as dashed lines. Prints the points as a table too.
"""

from __future__ import annotations

import argparse

from setflow.data.spatial_mnist import PUBLISHED_PPLL
from setflow.train.checkpoint import load_checkpoint


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ckpts", nargs="+")
    ap.add_argument("--labels", nargs="*", default=None)
    ap.add_argument("-o", "--output", default="curve.png")
    args = ap.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, path in enumerate(args.ckpts):
        ck = load_checkpoint(path)
        hist = ck.get("history", [])
        if not hist:
            raise SystemExit(f"{path}: no valid history (train with train.eval_every=N)")
        label = args.labels[i] if args.labels and i < len(args.labels) else ck["config"]["model"]
        steps, vals = [h["step"] for h in hist], [h["valid"] for h in hist]
        ax.plot(steps, vals, marker="o", ms=3, label=f"{label} (valid)")
        print(f"{label}: " + ", ".join(f"{s}: {v:.4f}" for s, v in zip(steps, vals)))
    for name, v in PUBLISHED_PPLL.items():
        ax.axhline(v, ls="--", lw=0.8, color="gray")
        ax.text(ax.get_xlim()[1], v, f" {name} {v:.2f}", va="center", fontsize=7, color="gray")
    ax.set_xlabel("training steps (batch 64)")
    ax.set_ylabel("PPLL, nats/point (papers' convention)")
    ax.set_title("SpatialMNIST (full 50k/10k/10k), 1 CPU thread", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(args.output, dpi=130)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
