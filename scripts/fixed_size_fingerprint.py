"""Fingerprint of the fixed-size set models, for checking that a refactor leaves them bit-identical.

Builds each config (2 flow steps, seeded, parameters moved off the identity), scores 24 seeded random sets with ``log_prob`` and ``iwbo``,
draws 6 samples, runs ``evaluate`` and ``sample_metrics`` (CD, EMD, JSD for 3-D), and saves it all::

    PYTHONPATH=<tree A> python scripts/fixed_size_fingerprint.py save A.pt --root <tree A>
    PYTHONPATH=<tree B> python scripts/fixed_size_fingerprint.py save B.pt --root <tree B>
    python scripts/fixed_size_fingerprint.py compare A.pt B.pt       # every tensor with torch.equal

It runs on trees from before :class:`setflow.sets.SetBatch` too (plain tensors there), so one copy of
this script can fingerprint both sides of a change.
"""

from __future__ import annotations

import argparse
import sys

import torch

CONFIGS = ["configs/spatial_mnist/sortflow_cpu.yaml", "configs/spatial_mnist/permuteflow_cpu.yaml",
           "configs/spatial_mnist/permuteflow_cond_cpu.yaml", "configs/pointcloud/sortflow_shapes_cpu.yaml",
           "configs/pointcloud/permuteflow_shapes_cond_cpu.yaml"]


def fingerprint(root: str) -> dict:
    from setflow.evaluate import evaluate
    from setflow.metrics import sample_metrics
    from setflow.models.build import build_from_config
    from setflow.train.config import load_config

    try:
        from setflow.sets import SetBatch
    except ImportError:  # a tree from before the batch value
        SetBatch = None
    torch.set_num_threads(1)
    res = {}
    for path in CONFIGS:
        cfg = load_config(f"{root}/{path}", ["model_args.num_steps=2"])
        torch.manual_seed(0)
        model = build_from_config(cfg)
        with torch.no_grad():  # off the zero-initialised identity, so every layer and the label embedding matter
            for q in model.parameters():
                q.add_(0.05 * torch.randn(q.shape, generator=torch.Generator().manual_seed(q.numel())))
        n, d = model.num_points, model.dim
        g = torch.Generator().manual_seed(1)
        x = torch.rand(24, n, d, generator=g) * (28 if d == 2 else 1) - (0 if d == 2 else 0.5)
        labels = torch.arange(24) % model.context_encoder.num_classes if model.conditional else None
        torch.manual_seed(2)
        lp = model.log_prob(x, labels)
        torch.manual_seed(3)
        iw = model.iwbo(x, k=3, context=labels)
        torch.manual_seed(4)
        s = model.sample(6, context=None if labels is None else labels[:6])
        s = getattr(s, "points", s)
        torch.manual_seed(5)
        if SetBatch is not None:
            ev = evaluate(model, SetBatch(x, labels=labels), "nats_per_point", batch_size=10, iwbo_k=3)
        else:
            ev = evaluate(model, x, "nats_per_point", batch_size=10, iwbo_k=3, labels=labels)
        sm = sample_metrics(x[:12].double(), x[12:].double() + 0.01, progress=False)
        res[path] = {"log_prob": lp.detach(), "iwbo": iw.detach(), "sample": s, "evaluate": ev, "metrics": sm}
        print(f"{path}: log_prob[:2] {lp[:2].tolist()}, evaluate {ev['metric']:.6f}", flush=True)
    return res


def compare(a, b, where: str = "") -> list[str]:
    """Every place where ``a`` and ``b`` differ (tensors bit for bit, other values with ``==``)."""
    if isinstance(a, dict):
        out = [f"{where}.{k}: missing" for k in a if k not in b]
        for k in a:
            if k in b:
                out += compare(a[k], b[k], f"{where}.{k}")
        return out
    if isinstance(a, torch.Tensor):
        same = isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
        return [] if same else [f"{where}: tensors differ"]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("save")
    s.add_argument("out")
    s.add_argument("--root", default=".", help="the tree whose configs/ to read")
    c = sub.add_parser("compare")
    c.add_argument("a")
    c.add_argument("b")
    args = p.parse_args(argv)
    if args.cmd == "save":
        torch.save(fingerprint(args.root), args.out)
        return 0
    a, b = (torch.load(f, weights_only=True) for f in (args.a, args.b))
    diffs = compare(a, b)
    print("\n".join(diffs) + ("\n" if diffs else "") + f"{len(a)} configs compared; {len(diffs)} differences")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
