"""Sample quality of SpatialMNIST checkpoints, optionally at sampling temperatures: the demo's model selection.

For each checkpoint (and each ``--temperature``) it draws ``--samples`` sets, with the labels of the
reference test sets for a conditional model, and prints one line: training step, test PPLL (with
``--ppll``), then MMD / COV / 1-NNA under the Chamfer distance (and the exact EMD with ``--emd``,
much slower) against the same seeded subset of test sets that ``setflow eval --samples`` uses.
A temperature ``T`` draws the base sample as ``T * z`` (``T = 1`` is the model itself).

    python scripts/sample_sweep.py /tmp/run/last.pt --samples 500 --temperature 1 0.95 0.9
"""

from __future__ import annotations

import argparse
import sys
import time

import torch


def _tempered(model, temperature: float):
    """Make ``model.sample`` draw its base latent scaled by ``temperature`` (an instance-level wrapper)."""
    base = model.base
    plain = type(base).sample

    def sample(num_samples=None, context=None):
        return temperature * plain(base, num_samples, context)

    base.sample = sample
    return model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ckpts", nargs="+")
    p.add_argument("--samples", type=int, default=500)
    p.add_argument("--temperature", type=float, nargs="+", default=[1.0])
    p.add_argument("--emd", action="store_true", help="also the exact EMD metrics (slow)")
    p.add_argument("--ppll", action="store_true", help="also the test PPLL (exact or IWBO k=10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", default=None)
    args = p.parse_args(argv)
    if args.samples < 2 or any(t <= 0 for t in args.temperature):
        p.error("--samples must be >= 2 and every --temperature > 0")

    from setflow.evaluate import _subset, draw_samples, evaluate
    from setflow.metrics import format_sample_metrics, sample_metrics
    from setflow.train.checkpoint import load_checkpoint, load_model
    from setflow.train.data import load_data

    data = None
    for path in args.ckpts:
        step = load_checkpoint(path)["step"]
        for t in args.temperature:
            model, cfg = load_model(path)
            if data is None:
                data = load_data(cfg, args.data_root)
            conditional = bool(getattr(model, "conditional", False))
            ref_all = data.sets("test")  # one SetBatch: points, mask, labels
            ir = _subset(ref_all, min(args.samples, len(ref_all)), args.seed)
            ref = ref_all[ir]
            labels = ref.labels if conditional else None
            head = f"{path} step {step} T={t:g}"
            if args.ppll and t == args.temperature[0]:
                res = evaluate(model, ref_all, data.unit, batch_size=500)
                head += f" PPLL {res['metric']:.4f}"
            t0 = time.time()
            torch.manual_seed(args.seed)
            gen = draw_samples(_tempered(model, t), len(ref), labels=labels).to(ref.dtype)
            m = sample_metrics(gen, ref, metrics=("cd", "emd") if args.emd else ("cd",), progress=False)
            print(format_sample_metrics(m, head) + f" [{time.time() - t0:.0f} s]", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
