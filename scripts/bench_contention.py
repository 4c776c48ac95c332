"""Training under CPU contention: the demo run idle vs beside a competing 2-thread torch matmul process.

Runs ``setflow train CONFIG train.max_steps=STEPS`` as a subprocess, alternately alone and while a
second process multiplies 512 x 512 matrices with ``torch.set_num_threads(2)`` forever, ``--repeats``
times each; prints every run's wall time, the medians and the loaded / idle ratio. A fair share of a
2-core machine under one such competitor is about 2x. Other load on the machine adds noise to both
columns: read the medians, and run it on a quiet machine for the headline figure.

    python scripts/bench_contention.py --steps 400 --repeats 3
    python scripts/bench_contention.py --steps 200 --repeats 3 model_args.fused=false   # the eager path
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMPETITOR = ("import torch\ntorch.set_num_threads(2)\na = torch.randn(512, 512)\n"
              "while True:\n    a = torch.tanh(a @ a)\n")


def train_once(config: str, steps: int, overrides: list[str], out: Path) -> tuple[float, float]:
    """Wall time of one whole training process and the trainer's own reported seconds."""
    cmd = [sys.executable, "-m", "setflow", "train", config, f"train.max_steps={steps}", *overrides,
           "--out", str(out), "--overwrite"]
    t = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"training failed ({r.returncode}):\n{r.stderr[-2000:]}")
    m = re.search(r"trained \d+ steps .*? in ([0-9.]+) s", r.stdout + r.stderr)
    return wall, float(m.group(1)) if m else float("nan")


def contention(config: str, steps: int, repeats: int, overrides: list[str], log=print) -> dict[str, list[tuple[float, float]]]:
    """``{"idle": [...], "loaded": [...]}``: (wall s, trainer-reported s) of each training process, alternating."""
    times: dict[str, list[tuple[float, float]]] = {"idle": [], "loaded": []}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(repeats):
            for mode in ("idle", "loaded"):
                comp = None
                if mode == "loaded":
                    comp = subprocess.Popen([sys.executable, "-c", COMPETITOR])
                    time.sleep(1.0)  # let it reach its loop
                try:
                    wall, train_s = train_once(config, steps, overrides, Path(tmp) / "run")
                finally:
                    if comp is not None:
                        comp.kill()
                        comp.wait()
                times[mode].append((wall, train_s))
                log(f"repeat {rep}  {mode:6s}  wall {wall:7.2f} s  training {train_s:7.2f} s")
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/spatial_mnist/sortflow_cpu.yaml")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("overrides", nargs="*", help="extra KEY=VALUE config overrides for the training run")
    args = ap.parse_args()
    print(f"cpus {os.cpu_count()}, load average before {os.getloadavg()[0]:.2f}", flush=True)
    times = contention(args.config, args.steps, args.repeats, args.overrides,
                       log=lambda line: print(line, flush=True))
    med = {k: (statistics.median(w for w, _ in v), statistics.median(s for _, s in v)) for k, v in times.items()}
    print(f"median idle   wall {med['idle'][0]:.2f} s, training {med['idle'][1]:.2f} s")
    print(f"median loaded wall {med['loaded'][0]:.2f} s, training {med['loaded'][1]:.2f} s")
    print(f"ratio loaded/idle: wall {med['loaded'][0] / med['idle'][0]:.2f}x, "
          f"training {med['loaded'][1] / med['idle'][1]:.2f}x  (load average after {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()
