#!/usr/bin/env python
"""Time one model under an execution mode: eager, torch.compile, bf16 autocast or CUDA graphs.

What is timed depends on the config's model: set flows and image flows (``sortflow``, ``permuteflow``,
``baseline``/``maxpool`` image flows) a training step (forward, backward, Adam); the codecs' networks
(``set_codec``, ``idf``) a batched forward pass without gradients (the part of coding a device can
take: the ANS coder and the integer tables stay on the CPU). Inputs are random data of the model's shape.

Modes: ``eager``; ``compile`` (``torch.compile`` of the loss / forward function, default mode);
``bf16`` (eager under ``torch.autocast(dtype=torch.bfloat16)``); ``graphs`` (``torch.compile`` with
``mode="reduce-overhead"``, which replays CUDA graphs; CUDA only, elsewhere the row says so).
Prints one markdown row ``| config | mode | device | batch | ms/step | items/s | status |`` and appends it
to ``--table`` when given (``scripts/cuda_check.sh`` collects them into one table).

    python scripts/step_modes.py configs/spatial_mnist/sortflow.yaml --mode compile --device cuda
    python scripts/step_modes.py configs/images/idf_fashion_mnist_cpu.yaml --mode eager --device cpu --batch 4 --steps 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import setflow  # noqa: E402,F401  (before torch: the OpenMP wait policy)
import torch  # noqa: E402

from setflow.models import build_model  # noqa: E402
from setflow.train.config import load_config  # noqa: E402
from setflow.train.trainer import make_optimizer  # noqa: E402

MODES = ("eager", "compile", "bf16", "graphs")
INFERENCE_MODELS = ("set_codec", "idf")
HEADER = "| config | mode | device | batch | ms/step | items/s | status |\n|---|---|---|---:|---:|---:|---|"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_input(model: torch.nn.Module, cfg: dict, batch: int, device: torch.device) -> torch.Tensor:
    """Random data of the model's input shape: points in [0, 28), sorted pixel indices or 8-bit images."""
    name, a = cfg["model"], cfg.get("model_args", {})
    g = torch.Generator().manual_seed(0)
    if name == "set_codec":
        cells = a.get("grid", 28) ** 2
        return torch.randint(0, cells, (batch, a.get("num_points", 50)), generator=g).sort(1).values.to(device)
    if name in ("sortflow", "permuteflow"):
        return (torch.rand(batch, a.get("num_points", 50), a.get("dim", 2), generator=g) * 28).to(device)
    shape = getattr(model, "input_shape", None) or a.get("input_shape") or a.get("data_shape")
    if shape is None:
        raise SystemExit(f"step_modes: no input shape known for model {name!r}")
    x = torch.randint(0, 256, (batch, *shape), generator=g)  # 8-bit images
    return x.to(device) if name == "idf" or getattr(model, "discrete", False) else x.float().to(device)


def step_fn(model: torch.nn.Module, cfg: dict, x: torch.Tensor, mode: str):
    """The function to time (``None`` when ``mode`` does not apply on this device, with the reason)."""
    device = x.device
    if mode == "graphs" and device.type != "cuda":
        return None, "graphs: CUDA only"
    infer = cfg["model"] in INFERENCE_MODELS
    if infer:
        model.eval()

        def loss(inp):
            return model.log_prob(inp)
    else:
        model.train()

        def loss(inp):
            return -model.log_prob(inp).mean()
    with torch.no_grad():
        model.log_prob(x)  # data-dependent initialisation (ActNorm) outside the timing and the compiled graph
    if mode == "compile":
        loss = torch.compile(loss)
    elif mode == "graphs":
        loss = torch.compile(loss, mode="reduce-overhead")
    autocast = mode == "bf16"

    def run_loss():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            return loss(x)

    if infer:
        def step():
            with torch.no_grad():
                run_loss()
        return step, "ok"
    opt = make_optimizer("adam", model.parameters(), lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        run_loss().backward()
        opt.step()
    return step, "ok"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config")
    p.add_argument("--mode", choices=MODES, default="eager")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=None, help="default: the config's train.batch_size (else 64)")
    p.add_argument("--steps", type=int, default=10, help="timed steps (median of their times)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation, graph capture)")
    p.add_argument("--table", default=None, help="append the row to this file")
    p.add_argument("--header", action="store_true", help="print the table header first")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    cfg = load_config(args.config)
    batch = args.batch or int(cfg.get("train", {}).get("batch_size", 64))
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(cfg["model"], **cfg.get("model_args", {})).to(device)
    x = make_input(model, cfg, batch, device)
    name = Path(args.config).stem
    try:
        step, status = step_fn(model, cfg, x, args.mode)
        times = []
        if step is not None:
            for _ in range(args.warmup):
                step()
            for _ in range(args.steps):
                _sync(device)
                t = time.perf_counter()
                step()
                _sync(device)
                times.append(time.perf_counter() - t)
    except Exception as e:  # noqa: BLE001 - one failed mode is a row, not the end of the check
        step, status = None, f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
        times = []
    if times:
        med = statistics.median(times)
        row = f"| {name} | {args.mode} | {device} | {batch} | {med * 1e3:.2f} | {batch / med:.0f} | {status} |"
    else:
        row = f"| {name} | {args.mode} | {device} | {batch} | - | - | {status} |"
    if args.header:
        print(HEADER)
    print(row, flush=True)
    if args.table:
        with open(args.table, "a") as fh:
            fh.write(row + "\n")
    return 0 if times or status.startswith("graphs: CUDA only") else 1


if __name__ == "__main__":
    sys.exit(main())
