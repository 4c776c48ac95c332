"""Seconds per training step of SpatialMNIST configs, relative to the first one, timed round-robin.

On a shared machine the absolute speed drifts with the load, so each round times a few steps of
every config in turn (same conditions for all) and the report is the median seconds per step and
its ratio to the first config. Multiply a ratio by the first config's quiet-machine seconds per
step to estimate another config's.

    python scripts/step_time.py configs/spatial_mnist/sortflow_cpu.yaml \\
        configs/spatial_mnist/permuteflow_cond_cpu.yaml --set 2:model_args.d_model=64
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("configs", nargs="+", help="YAML configs; the first is the reference")
    p.add_argument("--set", action="append", default=[], metavar="I:KEY=VALUE",
                   help="override for config number I (1-based), e.g. 2:model_args.d_model=64")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=10, help="timed steps per config per round")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from setflow.models.build import build_from_config
    from setflow.train.config import load_config

    overrides: dict[int, list[str]] = {}
    for s in args.set:
        i, _, kv = s.partition(":")
        if not i.isdigit() or not 1 <= int(i) <= len(args.configs) or "=" not in kv:
            p.error(f"--set {s!r}: expected I:KEY=VALUE with I in 1..{len(args.configs)}")
        overrides.setdefault(int(i) - 1, []).append(kv)
    g = torch.Generator().manual_seed(0)
    jobs = []
    for i, path in enumerate(args.configs):
        cfg = load_config(path, overrides.get(i, []))
        torch.manual_seed(0)
        model = build_from_config(cfg).train()
        ma, bs = cfg["model_args"], cfg["train"]["batch_size"]
        x = torch.rand(bs, ma["num_points"], ma["dim"], generator=g) * 28.0
        ctx = torch.randint(0, ma.get("num_classes", 10), (bs,), generator=g) if ma.get("conditional") else None
        opt = torch.optim.Adam(model.parameters(), lr=cfg["train"]["lr"])
        name = path + ("" if i not in overrides else " " + " ".join(overrides[i]))
        jobs.append((name, model, opt, x, ctx, []))

    def step(model, opt, x, ctx):
        opt.zero_grad(set_to_none=True)
        loss = -model.log_prob(x, ctx).mean()
        loss.backward()
        opt.step()

    for r in range(args.rounds + 1):  # round 0 warms up (compiles, allocator), not timed
        for name, model, opt, x, ctx, times in jobs:
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step(model, opt, x, ctx)
            if r:
                times.append((time.perf_counter() - t0) / args.steps)
    ref = statistics.median(jobs[0][5])
    for name, *_, times in jobs:
        med = statistics.median(times)
        print(f"{med:.4f} s/step  x{med / ref:.2f}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
