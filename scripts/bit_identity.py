"""Fixed-size results before and after a refactor, bit for bit.

``save OUT.pt`` (run once per checkout, e.g. a ``git worktree`` of the base commit and the branch,
with the same ``SETFLOW_DATA``) builds each config, loads its data and stores the data tensors, the
seeded ``log_prob``, ``iwbo(k=3)`` and ``sample(8)`` of a test batch, and the state dict;
``compare A.pt B.pt`` says which entries differ (``torch.equal``)::

    PYTHONPATH=/tmp/base python scripts/bit_identity.py save /tmp/base.pt
    PYTHONPATH=.         python scripts/bit_identity.py save /tmp/new.pt
    python scripts/bit_identity.py compare /tmp/base.pt /tmp/new.pt
"""

from __future__ import annotations

import argparse
import sys

import torch

CONFIGS = ("sortflow_cpu", "permuteflow_cpu", "permuteflow_cond_cpu", "sortflow_shapes_cpu", "sortflow_varsize_cpu")


def _load_data():
    try:
        from setflow.data.experiments import load_data
    except ImportError:  # a checkout from before data/experiments.py
        from setflow.train.data import load_data
    return load_data


def save(out: str, data_root, configs=CONFIGS) -> None:
    from setflow.models.build import build_from_config
    from setflow.train.config import load_config

    load_data, result = _load_data(), {}
    for name in configs:
        cfg = load_config(name)
        if cfg["data"] == "pointclouds":
            cfg["data_args"]["per_class"] = 4
        torch.manual_seed(0)
        model = build_from_config(cfg).eval()
        data = load_data(cfg, data_root)
        for split in ("train", "test"):
            result[f"{name}/data/{split}"] = data.split(split)[:2000].clone()
        if data.train_epoch is not None:
            result[f"{name}/data/epoch1"] = data.train_epoch(1)[:500].clone()
        x = data.test[:32]
        ctx = data.labels["test"][:32] if cfg["model_args"].get("conditional") else None
        kw = {} if data.masks is None else {"mask": data.masks["test"][:32]}
        with torch.no_grad():
            torch.manual_seed(1)
            result[f"{name}/log_prob"] = model.log_prob(x, context=ctx, **kw)
            torch.manual_seed(2)
            result[f"{name}/iwbo"] = model.iwbo(x, k=3, context=ctx, **kw)
            torch.manual_seed(3)
            s = model.sample(8, context=None if ctx is None else ctx[:8])
            s = s[0] if isinstance(s, tuple) else getattr(s, "points", s)  # (x, mask), a SetBatch or a tensor
            result[f"{name}/sample"] = s
        result[f"{name}/state"] = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save(result, out)
    print(f"saved {len(result)} entries to {out}")


def compare(a_path: str, b_path: str) -> int:
    a, b = torch.load(a_path, weights_only=True), torch.load(b_path, weights_only=True)
    bad = 0
    for k in sorted(set(a) | set(b)):
        if k not in a or k not in b:
            print("missing", k)
            bad += 1
            continue
        x, y = a[k], b[k]
        if isinstance(x, dict):
            ok = set(x) == set(y) and all(torch.equal(x[n], y[n]) for n in x)
        else:
            ok = x.shape == y.shape and x.dtype == y.dtype and torch.equal(x, y)
        if not ok:
            print("differs", k)
            bad += 1
    print("bit-identical" if not bad else f"{bad} of {len(set(a) | set(b))} entries differ")
    return 1 if bad else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("save")
    s.add_argument("out")
    s.add_argument("--data-root", default=None)
    c = sub.add_parser("compare")
    c.add_argument("a")
    c.add_argument("b")
    args = p.parse_args(argv)
    if args.cmd == "save":
        save(args.out, args.data_root)
        return 0
    return compare(args.a, args.b)


if __name__ == "__main__":
    sys.exit(main())
