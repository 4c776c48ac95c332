#!/usr/bin/env python
"""Training speed of setflow's SortFlow / PermuteFlow against the official SurVAE code, side by side.

Both models are built at the paper's SpatialMNIST architecture (32 flow steps, transformer conditioners
with d_model 64, 8 heads, 2 layers, feed-forward 256, GELU; dropout 0.2 for SortFlow, 0.1 for PermuteFlow:
``configs/spatial_mnist/{sortflow,permuteflow}.yaml`` here, the README commands of their
``experiments/point_cloud`` there) and trained on the same random batch (128 sets of 50 points, float32):
a step is zero_grad, ``-log_prob(x).mean()``, backward and an Adam step. In each round the script times
``--steps`` steps of ours, then of theirs, in one process; the figure is their time / ours per round, as
median and range over ``--rounds`` rounds. Ours runs on both paths: ``fused`` (``setflow.nn.fast``, the
CPU default) and ``eager`` (module by module, the path a GPU runs).

The official code is *imported*, never copied or cloned: point ``SURVAE_OFFICIAL`` at a checkout of
github.com/didriknielsen/survae_flows (its root: ``survae/`` and ``experiments/point_cloud/nets.py``).
Without it the script says so in one line and times ours only. Their package imports ``torchvision``
for image grids only; where torchvision is not installed an empty stand-in module is registered so the
import succeeds (nothing of it is called on this path).

    SURVAE_OFFICIAL=/tmp/survae_official OMP_NUM_THREADS=1 python scripts/bench_official.py
    python scripts/bench_official.py --models sortflow --paths eager --rounds 3 --steps 2
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import time
import types
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import setflow  # noqa: E402,F401  (before torch: sets the OpenMP wait policy)
import torch  # noqa: E402
import yaml  # noqa: E402

from setflow.models import build_model  # noqa: E402
from setflow.nn import set_fused, tune_cpu_allocator  # noqa: E402
from setflow.train.trainer import make_optimizer  # noqa: E402

ENV = "SURVAE_OFFICIAL"
CONFIGS = {"sortflow": ROOT / "configs/spatial_mnist/sortflow.yaml",
           "permuteflow": ROOT / "configs/spatial_mnist/permuteflow.yaml"}
PATHS = ("fused", "eager")
#: "eager-sdpa": the eager path with the attention through SDPA also when training with dropout on the CPU
#: (setflow.nn.attention.CPU_WRITTEN_OUT_DROPOUT = False, the behaviour before it was written out), for A/B
EXTRA_PATHS = ("eager-sdpa",)


def official_root(quiet: bool = False) -> Optional[Path]:
    """The official checkout named by ``$SURVAE_OFFICIAL``, or ``None`` (with one printed line)."""
    path = os.environ.get(ENV)
    if not path:
        if not quiet:
            print(f"official SurVAE code: not compared (set {ENV}=/path/to/survae_flows checkout)")
        return None
    root = Path(path).expanduser()
    if not (root / "survae").is_dir() or not (root / "experiments/point_cloud/nets.py").is_file():
        raise SystemExit(f"{ENV}={path}: not a survae_flows checkout (needs survae/ and experiments/point_cloud/nets.py)")
    return root


def _import_official(root: Path):
    """Their ``survae`` package and ``experiments/point_cloud/nets.py``, imported from ``root``."""
    for p in (str(root / "experiments/point_cloud"), str(root)):
        if p not in sys.path:
            sys.path.insert(0, p)
    try:
        importlib.import_module("torchvision.utils")
    except ImportError:  # only their image-grid helpers use it
        tv = types.ModuleType("torchvision")
        tv.utils = types.ModuleType("torchvision.utils")
        sys.modules.setdefault("torchvision", tv)
        sys.modules.setdefault("torchvision.utils", tv.utils)
    return importlib.import_module("survae"), importlib.import_module("nets")


def build_official(root: Path, model: str, cfg: dict) -> torch.nn.Module:
    """Their SortFlow / PermuteFlow at ``cfg``'s architecture, assembled from their classes the way
    their ``train_sort_flow.py`` / ``train_perm_flow.py`` assemble them (those are scripts, not importable)."""
    _import_official(root)
    from survae.distributions import StandardNormal
    from survae.flows import Flow
    from survae.nn.layers import ElementwiseParams1d, scale_fn
    from survae.transforms import (ActNormBijection1d, AffineCouplingBijection, PermuteAxes, Reverse,
                                   ScalarAffineBijection, Shuffle, SimpleSortSurjection, StochasticPermutation)
    from nets import DenseTransformer, PositionalDenseTransformer

    a = cfg["model_args"]
    n, d = a["num_points"], a["dim"]
    net_args = dict(d_model=a["d_model"], nhead=a["num_heads"], num_layers=a["num_layers"],
                    dim_feedforward=a["dim_feedforward"], dropout=a["dropout"], activation="gelu")
    sort = model == "sortflow"
    first = SimpleSortSurjection(dim=2, lambd=_first_coordinate) if sort else StochasticPermutation(dim=2)
    ts = [PermuteAxes((0, 2, 1)), ScalarAffineBijection(scale=1 / 28, shift=-0.5), first]
    sfn = scale_fn(a.get("scale_fn", "softplus"))
    for _ in range(a["num_steps"]):
        dim_net = torch.nn.Sequential(DenseTransformer(d_input=d // 2, d_output=2 * (d // 2), **net_args),
                                      ElementwiseParams1d(2))
        ts += [AffineCouplingBijection(dim_net, split_dim=1, scale_fn=sfn), Reverse(d, dim=1)]
        if sort:
            len_net = PositionalDenseTransformer(l_input=n // 2, d_input=d, d_output=2 * d, **net_args)
        else:
            len_net = DenseTransformer(d_input=d, d_output=2 * d, **net_args)
        ts += [AffineCouplingBijection(torch.nn.Sequential(len_net, ElementwiseParams1d(2)), split_dim=2,
                                       scale_fn=sfn),
               Shuffle(n, dim=2) if sort else StochasticPermutation(dim=2),
               ActNormBijection1d(d)]
    return Flow(base_dist=StandardNormal((d, n)), transforms=ts)


def _first_coordinate(x: torch.Tensor) -> torch.Tensor:
    return x[:, 0, :]


def build_ours(model: str, fused: bool) -> torch.nn.Module:
    cfg = yaml.safe_load(CONFIGS[model].read_text())
    m = build_model(cfg["model"], **cfg["model_args"])
    set_fused(m, fused)
    return m


def train_step_fn(model: torch.nn.Module, x: torch.Tensor, fused_adam: bool) -> Callable[[], None]:
    """One training step of ``model`` on ``x``: zero_grad, -log_prob mean, backward, Adam (lr 1e-3)."""
    opt = (make_optimizer("adam", model.parameters(), lr=1e-3) if fused_adam
           else torch.optim.Adam(model.parameters(), lr=1e-3))  # theirs: torch.optim.Adam defaults
    model.train()
    with torch.no_grad():
        model.log_prob(x)  # data-dependent ActNorm init, outside the timing

    def step() -> None:
        opt.zero_grad()
        loss = -model.log_prob(x).mean()
        loss.backward()
        opt.step()

    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _with_sdpa_attention(step: Callable[[], None]) -> Callable[[], None]:
    import setflow.nn.attention as attention

    def run() -> None:
        attention.CPU_WRITTEN_OUT_DROPOUT = False
        try:
            step()
        finally:
            attention.CPU_WRITTEN_OUT_DROPOUT = True
    return run


def time_steps(step: Callable[[], None], steps: int, device: torch.device = torch.device("cpu"),
               clock: str = "wall") -> float:
    """Seconds per step, the mean over ``steps`` back-to-back steps, by the wall clock or by this
    process's CPU time (``clock="cpu"``: on a shared machine, time other processes take from the
    cores does not count; with one thread it is the step's work)."""
    now = time.process_time if clock == "cpu" else time.perf_counter
    _sync(device)
    t = now()
    for _ in range(steps):
        step()
    _sync(device)
    return (now() - t) / steps


def side_by_side(models=("sortflow", "permuteflow"), paths=PATHS, rounds: int = 5, steps: int = 3,
                 batch: int = 128, official: Optional[Path] = None, warmup: int = 2, log=print,
                 device: str = "cpu", clock: str = "wall") -> list[dict]:
    """Rows ``{model, path, ours_s, theirs_s, ratios}``: per round, ``steps`` steps of each of ours
    (one per path) and theirs, alternating; ``ratios`` = their time / ours per round (empty without
    ``official``). Times are medians over rounds, seconds per step. On a device other than the CPU
    the ``fused`` path is the compiled blocks (``setflow.nn.fast``)."""
    dev = torch.device(device)
    rows = []
    for model in models:
        cfg = yaml.safe_load(CONFIGS[model].read_text())
        torch.manual_seed(0)
        x = (torch.rand(batch, cfg["model_args"]["num_points"], cfg["model_args"]["dim"]) * 28).to(dev)
        runners = {}
        for path in paths:
            torch.manual_seed(1)
            runners[path] = train_step_fn(build_ours(model, path == "fused").to(dev), x, fused_adam=True)
            if path == "eager-sdpa":
                runners[path] = _with_sdpa_attention(runners[path])
        if official is not None:
            torch.manual_seed(1)
            runners["official"] = train_step_fn(build_official(official, model, cfg).to(dev), x, fused_adam=False)
        for name, step in runners.items():
            t = time.perf_counter()
            for _ in range(warmup):  # first fused calls compile / load the C++ kernels
                step()
            log(f"  {model} {name}: {warmup} warm-up steps in {time.perf_counter() - t:.1f} s")
        times: dict[str, list[float]] = {k: [] for k in runners}
        for r in range(rounds):
            for name, step in runners.items():
                times[name].append(time_steps(step, steps, dev, clock))
            log(f"  {model} round {r}: " + ", ".join(f"{k} {v[-1] * 1e3:.0f} ms" for k, v in times.items()))
        for path in paths:
            ratios = ([t / o for t, o in zip(times["official"], times[path])] if official is not None else [])
            rows.append({"model": model, "path": path, "ours_s": statistics.median(times[path]),
                         "theirs_s": statistics.median(times["official"]) if official is not None else None,
                         "ratios": ratios})
    return rows


def profile_step(model: str, path: str, batch: int = 128, steps: int = 2, top: int = 10, official: Optional[Path] = None
                 ) -> tuple[float, list[tuple[str, float, float]]]:
    """``torch.profiler`` over ``steps`` training steps of ``model`` on ``path`` (``fused``, ``eager`` or
    ``official``): the total self CPU time per step (ms) and the ``top`` ops by self CPU time as
    ``(name, ms per step, share of the total)``."""
    from torch.profiler import ProfilerActivity, profile

    cfg = yaml.safe_load(CONFIGS[model].read_text())
    torch.manual_seed(0)
    x = torch.rand(batch, cfg["model_args"]["num_points"], cfg["model_args"]["dim"]) * 28
    torch.manual_seed(1)
    if path == "official":
        if official is None:
            raise ValueError(f"profiling the official code needs {ENV}")
        step = train_step_fn(build_official(official, model, cfg), x, fused_adam=False)
    else:
        step = train_step_fn(build_ours(model, path == "fused"), x, fused_adam=True)
    for _ in range(2):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    rows = [(e.key, e.self_cpu_time_total / 1e3 / steps, e.self_cpu_time_total / total) for e in events[:top]]
    return total / 1e3 / steps, rows


def machine_line() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"load average {os.getloadavg()[0]:.1f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", choices=sorted(CONFIGS), default=["sortflow", "permuteflow"])
    p.add_argument("--paths", nargs="+", choices=PATHS + EXTRA_PATHS, default=list(PATHS))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=3, help="training steps per timing (per round and model)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps of each model first")
    p.add_argument("--device", default="cpu", help="cpu or cuda (on cuda our fused path is the compiled blocks)")
    p.add_argument("--clock", choices=("wall", "cpu"), default=None,
                   help="time steps by the wall clock or by this process's CPU time; default: cpu with one "
                        "thread on the CPU (other jobs on a shared machine then do not count), else wall")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-tune", action="store_true", help="skip setflow.nn.tune_cpu_allocator (the trainer's heap setting)")
    p.add_argument("--profile", action="store_true",
                   help="instead of timing: torch.profiler's top ten ops (self CPU time) of a step of each model "
                        "and path (and of the official code when available)")
    args = p.parse_args(argv)
    if min(args.rounds, args.steps, args.batch) < 1:
        raise SystemExit("--rounds, --steps and --batch must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cpu" and not args.no_tune:
        tune_cpu_allocator()  # as setflow's trainer does on CPU; process-wide, so both codes get it
    official = official_root()
    if args.clock is None:
        args.clock = "cpu" if args.device == "cpu" and torch.get_num_threads() == 1 else "wall"
    print(machine_line() + f", {args.clock} clock")
    if args.profile:
        for model in args.models:
            for path in [*args.paths, *(["official"] if official is not None else [])]:
                total, top = profile_step(model, path, args.batch, args.steps, official=official)
                print(f"\n{model}, {path}: {total:.0f} ms self CPU time per step; top ops by self CPU time")
                print("| op | ms/step | share |")
                print("|---|---:|---:|")
                for name, ms, share in top:
                    print(f"| `{name}` | {ms:.1f} | {100 * share:.1f}% |")
        return 0
    rows = side_by_side(args.models, args.paths, args.rounds, args.steps, args.batch, official, args.warmup,
                        device=args.device, clock=args.clock)
    print()
    print("| model | our path | ours ms/step | official ms/step | official / ours (median, range) |")
    print("|---|---|---:|---:|---|")
    for r in rows:
        theirs = f"{r['theirs_s'] * 1e3:.0f}" if r["theirs_s"] is not None else "-"
        ratio = (f"{statistics.median(r['ratios']):.2f}x ({min(r['ratios']):.2f}-{max(r['ratios']):.2f})"
                 if r["ratios"] else "not compared")
        print(f"| {r['model']} | {r['path']} | {r['ours_s'] * 1e3:.0f} | {theirs} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
