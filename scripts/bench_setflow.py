#!/usr/bin/env python
"""Throughput and hardware utilisation of the paper-config SortFlow and PermuteFlow.

For each model: training-step throughput (sets/s at batch 128, float32: forward, backward and an
Adam step) and sampling throughput, the FLOPs of one step counted by
``torch.utils.flop_counter.FlopCounterMode``, and the machine's float32 GEMM rate at the
(6400x64)@(64x256) shape (a feed-forward layer of the conditioner at batch 128). It prints
utilisation = achieved FLOP/s / GEMM FLOP/s: every timed step is paired with a GEMM-rate
measurement just before and just after it, and the utilisation is the median of the per-step
ratios (on a shared machine whose speed drifts, the two halves of each ratio see the same
conditions).

On CPU the set transformers run their fused path by default (``setflow.nn.fast``: each block one
C++ call per direction, ``setflow.nn.fast.kernels.block``, with hash dropout; where that kernel does not
apply, per-block ``torch.compile``, whose first steps compile and are not timed); the FLOPs are
always counted on the eager path, so both modes report the same architecture's count.

    python scripts/bench_setflow.py                 # paper configs, 5 timed runs each, fused on CPU
    python scripts/bench_setflow.py --no-fused      # eager PyTorch ops, for the before/after ratio
    python scripts/bench_setflow.py --repeats 3 --device cuda
    python scripts/bench_setflow.py --headline [--quick] [--json new.json] [--baseline old.json]   # make bench

``--headline`` prints every ratio of the speed issue in one table, each the median and range over
rounds: the set codec (``scripts/bench_set_codecs.py --speed``) and the IDF codec
(``scripts/bench_codecs.py --speed``) against JPEG XL, training against the official SurVAE code on
the fused and eager paths (``scripts/bench_official.py``; needs ``SURVAE_OFFICIAL``, else those rows
show our step time only) and the contention figure (``scripts/bench_contention.py``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Optional

import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from setflow.models import build_model  # noqa: E402
from setflow.train.trainer import make_optimizer  # noqa: E402
from setflow.nn import split_batch_backward, tune_cpu_allocator  # noqa: E402
from setflow.nn import set_fused  # noqa: E402


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, device: str) -> float:
    _sync(device)
    t = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t


class GemmReference:
    """The float32 GEMM rate at the (6400x64)@(64x256) shape, in a steady state.

    ``rate()`` runs ``warmup`` untimed products first (operands and output back in cache,
    threads awake), then times ``inner`` back-to-back products: the hot rate, as a lone GEMM
    benchmark reports it, but measured at the moment it is paired with.
    """

    def __init__(self, device: str, inner: int = 40, warmup: int = 10) -> None:
        self.a = torch.randn(6400, 64, device=device)
        self.b = torch.randn(64, 256, device=device)
        self.device, self.inner, self.warmup = device, inner, warmup
        self.rate()

    def _run(self, n: int) -> None:
        for _ in range(n):
            torch.mm(self.a, self.b)

    def rate(self) -> float:
        self._run(self.warmup)
        return 2 * 6400 * 64 * 256 * self.inner / _timed(lambda: self._run(self.inner), self.device)


def paired_times(fn, ref: GemmReference, repeats: int, warmup: int, device: str) -> tuple[float, float, float]:
    """Median time of ``fn``, median GEMM rate, and the median of the per-repeat ratios.

    Each timed call of ``fn`` is bracketed by two GEMM-rate measurements, and the utilisation
    of a repeat is its achieved rate over the mean of its own two references: on a shared
    machine whose speed drifts, both halves of a ratio then see the same conditions.
    """
    for _ in range(warmup):
        fn()
    times, rates = [], []
    before = ref.rate()
    for _ in range(repeats):
        times.append(_timed(fn, device))
        after = ref.rate()
        rates.append(0.5 * (before + after))
        before = after
    ratios = [1.0 / (t * r) for t, r in zip(times, rates)]  # (FLOPs / t) / rate, up to the FLOP count
    return statistics.median(times), statistics.median(rates), statistics.median(ratios)


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def bench_model(config_path: Path, batch: int, repeats: int, device: str, ref: GemmReference, workers: int = 1,
                fused: bool = False) -> dict:
    cfg = yaml.safe_load(config_path.read_text())
    model = build_model(cfg["model"], **cfg["model_args"]).to(device)
    n, d = cfg["model_args"]["num_points"], cfg["model_args"]["dim"]
    x = torch.rand(batch, n, d, device=device) * 28
    # fused: one kernel over all ~2000 parameter tensors (PyTorch >= 2.4 on CPU) instead of a per-tensor loop
    opt = make_optimizer("adam", model.parameters(), lr=1e-4)  # as the trainer
    model.train()
    model.log_prob(x)  # ActNorm init outside the timed region
    threads = torch.get_num_threads()

    def train_step():
        opt.zero_grad(set_to_none=True)
        if workers > 1:  # chunks of the batch in concurrent threads (setflow.nn.split_batch_backward)
            torch.set_num_threads(max(1, threads // workers))  # the workers share the cores
            try:
                split_batch_backward(lambda xc: -model.log_prob(xc).sum(), x, workers)
            finally:
                torch.set_num_threads(threads)
        else:
            loss = -model.log_prob(x).mean()
            loss.backward()
        opt.step()

    def sample_step():
        with torch.no_grad():
            model.sample(batch)

    # FLOPs of the architecture, counted on the eager path (the fused path computes the same maths)
    flops_train = count_flops(lambda: (-model.log_prob(x).mean()).backward())
    opt.zero_grad(set_to_none=True)
    set_fused(model, fused)
    t_train, gemm_train, inv_train = paired_times(train_step, ref, repeats, 2 if fused else 1, device)
    model.eval()
    set_fused(model, False)
    flops_sample = count_flops(sample_step)
    set_fused(model, fused)
    t_sample, gemm_sample, inv_sample = paired_times(sample_step, ref, repeats, 2 if fused else 1, device)
    return {
        "model": cfg["model"],
        "params": sum(p.numel() for p in model.parameters()),
        "flops_train_per_set": flops_train / batch,
        "flops_sample_per_set": flops_sample / batch,
        "train_sets_s": batch / t_train,
        "sample_sets_s": batch / t_sample,
        "train_util": flops_train * inv_train,
        "sample_util": flops_sample * inv_sample,
        "gemm_rates": (gemm_train, gemm_sample),
    }


# ---------------------------------------------------------------------------------------------
# --headline: every ratio of issue 26 in one table (make bench)

#: (set codec sets, rounds), (IDF images, rounds), (training rounds, steps, batch), (contention steps, repeats);
#: the trainer reports whole seconds, so the contention runs need tens of steps
HEADLINE_SIZES = {"default": {"sets": (512, 3), "idf": (128, 3), "train": (3, 1, 128), "contention": (60, 2)},
                  "quick": {"sets": (128, 2), "idf": (32, 2), "train": (2, 1, 32), "contention": (40, 1)}}


def _row(name: str, values: list[float], detail: str = "", goal: str = "") -> dict:
    return {"name": name, "median": statistics.median(values) if values else None,
            "min": min(values) if values else None, "max": max(values) if values else None,
            "rounds": values, "detail": detail, "goal": goal}


def _headline_set_codec(sets_n: int, rounds: int, data_root: Optional[str], log) -> list[dict]:
    import bench_set_codecs
    from setflow.data.pixel_sets import pixel_set_splits
    from setflow.models.set_codec import SortedSetAR

    sets, _ = pixel_set_splits(data_root, download=False)
    torch.manual_seed(0)
    model = SortedSetAR(grid=28, num_points=50, d_model=64, num_heads=4, num_layers=2, dim_feedforward=128).eval()
    threads = torch.get_num_threads()
    try:
        res = bench_set_codecs.speed(model, sets["test"][:sets_n], rounds)
    finally:
        torch.set_num_threads(threads)
    r = res["rounds"]
    log(f"  set codec: {res['sfs_encode'][0]:.0f} / {res['sfs_decode'][0]:.0f} sets/s, JPEG XL e9 "
        f"{res['jxl9_encode'][0]:.0f} / {res['jxl9_decode'][0]:.0f}")
    n = min(sets_n, len(sets["test"]))
    return [_row("set codec encode / JPEG XL e9 encode", [a / b for a, b in zip(r["sfs_encode"], r["jxl9_encode"])],
                 f"{res['sfs_encode'][0]:.0f} vs {res['jxl9_encode'][0]:.0f} sets/s, {n} test sets, CPU time", ">= 1.5"),
            _row("set codec decode / JPEG XL e9 decode", [a / b for a, b in zip(r["sfs_decode"], r["jxl9_decode"])],
                 f"{res['sfs_decode'][0]:.0f} vs {res['jxl9_decode'][0]:.0f} sets/s", ">= 0.1")]


def _headline_idf(n: int, rounds: int, data_root: Optional[str], root: Path, log) -> list[dict]:
    import bench_codecs

    model, cfg = bench_codecs._speed_model(None, str(root / "configs/images/idf_fashion_mnist_cpu.yaml"))
    res = bench_codecs.speed_runs(model, cfg, n, rounds, 32, "test", data_root, one_per_pass=False)
    ours, jxl = res["times"][res["batched"]], res["times"][res["jxl"]]
    m = res["images"]
    med = lambda ts: m / statistics.median(ts)  # noqa: E731
    log(f"  IDF codec: {med(ours[0]):.0f} / {med(ours[1]):.0f} img/s, JPEG XL e7 {med(jxl[0]):.0f} / {med(jxl[1]):.0f}"
        + ("" if res["lossless"] else "  **NOT LOSSLESS**"))
    return [_row("IDF codec encode / JPEG XL e7 encode", [j / o for o, j in zip(ours[0], jxl[0])],
                 f"{med(ours[0]):.0f} vs {med(jxl[0]):.0f} img/s, {m} Fashion-MNIST 28x28, 32 per pass", ">= 0.3"),
            _row("IDF codec decode / JPEG XL e7 decode", [j / o for o, j in zip(ours[1], jxl[1])],
                 f"{med(ours[1]):.0f} vs {med(jxl[1]):.0f} img/s", ">= 0.06")]


def _headline_training(rounds: int, steps: int, batch: int, log) -> list[dict]:
    import bench_official

    official = bench_official.official_root(quiet=True)
    clock = "cpu" if torch.get_num_threads() == 1 else "wall"  # one thread: CPU time, other jobs do not count
    rows = bench_official.side_by_side(rounds=rounds, steps=steps, batch=batch, official=official, log=log, warmup=1,
                                       clock=clock)
    out = []
    for r in rows:
        goal = ">= 5" if r["path"] == "fused" else ">= 1.5"
        if official is None:
            out.append(_row(f"training {r['model']} {r['path']}: ours / official", [],
                            f"ours {r['ours_s'] * 1e3:.0f} ms/step at batch {batch}; official not compared "
                            f"(set {bench_official.ENV})", goal))
        else:
            out.append(_row(f"training {r['model']} {r['path']}: ours / official", r["ratios"],
                            f"{r['ours_s'] * 1e3:.0f} vs {r['theirs_s'] * 1e3:.0f} ms/step, batch {batch}"
                            + (" (--quick; the paper's is 128)" if batch != 128 else ""), goal))
    return out


def _headline_contention(steps: int, repeats: int, log) -> list[dict]:
    import bench_contention

    t = bench_contention.contention("configs/spatial_mnist/sortflow_cpu.yaml", steps, repeats, [], log=log)
    ratios = [lo[1] / idle[1] for idle, lo in zip(t["idle"], t["loaded"])]
    idle = statistics.median(s for _, s in t["idle"])
    loaded = statistics.median(s for _, s in t["loaded"])
    return [_row("contention: loaded / idle training time", ratios,
                 f"{idle:.1f} vs {loaded:.1f} s, {steps} steps of sortflow_cpu beside a 2-thread process", "<= 2.2")]


def _fmt(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.3g}"


def format_headline(rows: list[dict], title: str, old: Optional[dict] = None) -> list[str]:
    """The markdown table of :func:`headline`; with ``old`` (rows of a previous JSON by name) a
    ``new / old`` column of the medians."""
    lines = [title, "| ratio | median | range | goal | detail |" + (" new / old |" if old is not None else ""),
             "|---|---:|---|---|---|" + ("---:|" if old is not None else "")]
    for r in rows:
        rng = "-" if r["median"] is None else f"{_fmt(r['min'])}-{_fmt(r['max'])}"
        med = "-" if r["median"] is None else f"{_fmt(r['median'])}x"
        line = f"| {r['name']} | {med} | {rng} | {r['goal']} | {r['detail']} |"
        if old is not None:
            prev = old.get(r["name"], {}).get("median")
            line += f" {r['median'] / prev:.2f} |" if prev and r["median"] is not None else " - |"
        lines.append(line)
    return lines


def headline(args, root: Path) -> int:
    import json

    sys.path.insert(0, str(root / "scripts"))
    import bench_official

    if args.data_root:  # also for the contention runs' training subprocesses
        import os

        os.environ["SETFLOW_DATA"] = str(Path(args.data_root).resolve())
    if not args.no_tune:
        tune_cpu_allocator()  # as the trainer does on CPU
    # in-process timings on one thread (--threads to change; the codec rows always use one), timed by
    # CPU time there; the contention rows' training processes keep the default threads
    torch.set_num_threads(args.threads or 1)
    size = HEADLINE_SIZES["quick" if args.quick else "default"]
    parts = args.parts or ["set_codec", "idf", "training", "contention"]
    log = (lambda line: print(line, flush=True))
    machine = bench_official.machine_line()
    print(f"machine: {machine}", flush=True)
    old = {}
    if args.baseline:
        try:
            old = {r["name"]: r for r in json.loads(Path(args.baseline).read_text())["rows"]}
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SystemExit(f"--baseline {args.baseline}: not a bench JSON ({type(e).__name__}: {e})") from None
    if "training" in parts:
        bench_official.official_root()  # the one line when the official code is not pointed at
    t0 = time.perf_counter()
    rows: list[dict] = []
    if "set_codec" in parts:
        rows += _headline_set_codec(*size["sets"], args.data_root, log)
    if "idf" in parts:
        rows += _headline_idf(*size["idf"], args.data_root, root, log)
    if "training" in parts:
        rows += _headline_training(*size["train"], log)
    if "contention" in parts:
        rows += _headline_contention(*size["contention"], log)
    wall = time.perf_counter() - t0
    print()
    print("\n".join(format_headline(rows, f"machine: {machine}; {wall:.0f} s" + (" (--quick)" if args.quick else ""),
                                   old if args.baseline else None)))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "wall_s": wall, "quick": bool(args.quick),
                                               "rows": rows}, indent=1))
        print(f"wrote {args.json}")
    return 0


def main(argv=None) -> int:
    root = Path(__file__).resolve().parents[1]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="*", default=[str(root / "configs/spatial_mnist/sortflow.yaml"),
                                                    str(root / "configs/spatial_mnist/permuteflow.yaml")])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--workers", type=int, default=1,
                   help="train step as this many concurrent batch chunks (threads), intra-op threads "
                        "set to cores // workers; default 1 (plain step)")
    p.add_argument("--fused", action=argparse.BooleanOptionalAction, default=None,
                   help="time the set transformers' fused path (torch.compile, hash dropout; setflow.nn.fast); "
                        "default: on for cpu. The first steps compile (excluded from the timing)")
    p.add_argument("--headline", action="store_true",
                   help="every headline ratio of the speed issue in one table (make bench): set codec and IDF codec "
                        "vs JPEG XL, training vs the official SurVAE code ($SURVAE_OFFICIAL) on both paths, contention")
    p.add_argument("--quick", action="store_true", help="--headline with fewer rounds and items (~1 minute)")
    p.add_argument("--parts", nargs="+", choices=["set_codec", "idf", "training", "contention"], default=None,
                   help="--headline: only these rows")
    p.add_argument("--json", default=None, metavar="FILE", help="--headline: also write the rows here")
    p.add_argument("--baseline", default=None, metavar="FILE",
                   help="--headline: a previous --json; adds the column new / old per row")
    p.add_argument("--data-root", default=None, help="--headline: data folder (default $SETFLOW_DATA or ./datasets)")
    p.add_argument("--no-tune", action="store_true",
                   help="skip the process-wide glibc heap setting (setflow.nn.tune_cpu_allocator)")
    args = p.parse_args(argv)
    if args.headline:
        return headline(args, root)
    if args.fused is None:
        args.fused = args.device == "cpu"
    if not args.no_tune and args.device == "cpu":
        # An entry-point setting, as a trainer would apply it: keep freed activations in the heap,
        # so fresh tensors do not page-fault on first touch.
        tune_cpu_allocator()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, batch {args.batch}, "
          f"cpu tuning {'off' if args.no_tune else 'on'}, train-step workers {args.workers}, fused {args.fused}")
    ref = GemmReference(args.device)
    rows = []
    for c in args.configs:
        rows.append(bench_model(Path(c), args.batch, args.repeats, args.device, ref, args.workers, args.fused))
    gemm = ", ".join(f"{r['model']} {r['gemm_rates'][0] / 1e9:.1f} / {r['gemm_rates'][1] / 1e9:.1f}" for r in rows)
    print(f"float32 GEMM (6400x64)@(64x256), median GFLOP/s beside the train / sample runs: {gemm}")
    print(f"utilisation: median over {args.repeats} repeats of (step FLOPs / step time) / (mean GEMM rate "
          "measured just before and just after that step)")
    print()
    print("| model | params | GFLOP/set (train step) | train sets/s | train util | GFLOP/set (sample) | sample sets/s | sample util |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['params']:,} | {r['flops_train_per_set'] / 1e9:.3f} | {r['train_sets_s']:.1f} | "
              f"{r['train_util']:.2f} | {r['flops_sample_per_set'] / 1e9:.3f} | {r['sample_sets_s']:.1f} | "
              f"{r['sample_util']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
