"""The trainer shared by every model: seeded, resumable to the same result, DDP-ready.

Data order: each epoch is one permutation from ``DistributedSampler(seed=train.seed)``; a global
batch of ``batch_size`` is split evenly over the ranks, so ``torchrun --nproc_per_node=R`` trains
the same model as one process with the same global batch. Checkpoints (rank 0 only) are
written atomically and carry config, weights, optimiser, schedule, step and RNG states.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data.distributed import DistributedSampler

from setflow.evaluate import evaluate, format_metrics, loss_scale, split_sets
from setflow.models.build import build_from_config, check_model_args, model_arg_names, resolved_model_args
from setflow.registry import OPTIMIZERS, register_optimizer
from setflow.sets import SetBatch
from setflow.train.checkpoint import (CheckpointError, clean_stale_temp_files, load_checkpoint, rng_state,
                                      save_checkpoint, set_rng_state)
from setflow.train.config import resolve_device
from setflow.train.data import ExperimentData, load_data

__all__ = ["Trainer", "TrainingError", "Interrupted", "train"]

register_optimizer("adam", torch.optim.Adam)
register_optimizer("adamax", torch.optim.Adamax)
register_optimizer("adamw", torch.optim.AdamW)


def make_optimizer(name: str, params, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """The trainer's optimiser; Adam/AdamW use the fused kernel (one kernel for all parameter
    tensors, ~3x faster optimiser step on CPU) where this torch build has it."""
    optimizer = OPTIMIZERS.get(name)  # an unknown name: a RegistryError listing the registered ones
    params = list(params)
    if name in ("adam", "adamw"):
        try:
            return optimizer(params, lr=lr, weight_decay=weight_decay, fused=True)
        except (RuntimeError, ValueError):  # no fused kernel for this device / dtype
            pass
    return optimizer(params, lr=lr, weight_decay=weight_decay)


class TrainingError(RuntimeError):
    """Training stopped (e.g. a NaN loss); the last good checkpoint is kept."""


class Interrupted(Exception):
    """SIGINT / SIGTERM stopped training; a checkpoint of ``step`` was written first."""

    def __init__(self, step: int, signum: int) -> None:
        super().__init__(f"interrupted at step {step}; continue with --resume")
        self.step = step
        self.signum = signum
        self.exit_code = 128 + signum  # 130 for SIGINT, 143 for SIGTERM


class _StopSignals:
    """While active, SIGINT / SIGTERM only set ``signum`` (the loop stops after the current step);
    a second signal stops at once. Does nothing outside the main thread."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._old: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # second signal: the default behaviour
            self.__exit__()
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> "_StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}


class _Unset:
    def __repr__(self) -> str:
        return "unset"


_UNSET = _Unset()


def _config_changes(old: dict, new: dict, prefix: str = "", limit: int = 8) -> list[str]:
    """``key: old -> new`` lines for the model entries that differ (at most ``limit``)."""
    lines = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key, _UNSET), new.get(key, _UNSET)
        if isinstance(a, dict) and isinstance(b, dict):
            lines += _config_changes(a, b, f"{prefix}{key}.", limit)
        elif a != b:
            lines.append(f"  {prefix}{key}: {a!r} in the checkpoint, {b!r} now")
    return lines[:limit] + ([f"  ... and {len(lines) - limit} more"] if len(lines) > limit else [])


def _resolved(config: dict) -> dict:
    """The model arguments ``config`` builds its model with (its stored ones where the model is unknown)."""
    try:
        return resolved_model_args(config)
    except (KeyError, ValueError):  # a checkpoint of a model no longer registered: compare as stored
        return dict(config.get("model_args") or {})


def _run_settings(config: dict) -> dict:
    """The ``train`` and ``eval`` sections, ``train.fused`` off whether unset or false (it moved to model_args)."""
    train = dict(config.get("train") or {}, fused=bool((config.get("train") or {}).get("fused")))
    return {"train": train, "eval": dict(config.get("eval") or {})}


class _Index(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def setup_distributed(device: str) -> bool:
    """Join the process group when launched by ``torchrun`` (WORLD_SIZE > 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return False
    backend = "nccl" if device.startswith("cuda") else "gloo"
    dist.init_process_group(backend=backend)
    if device.startswith("cuda"):
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return True


class Trainer:
    """Train ``config`` into ``out_dir``; ``resume=True`` continues from ``out_dir/last.pt``.

    A folder that already holds ``last.pt`` is refused unless ``resume`` (continue it) or
    ``overwrite`` (start over) is given. Model arguments are checked before data loads.
    """

    def __init__(self, config: dict, out_dir: str, resume: bool = False, data: Optional[ExperimentData] = None,
                 data_root: Optional[str] = None, log=print, overwrite: bool = False) -> None:
        self.cfg = config
        self.tc = config["train"]
        self.out = Path(out_dir)
        self.log = log
        self.rank, self.world = _dist_info()
        self.is_main = self.rank == 0
        device = resolve_device(self.tc["device"], "train.device")
        if device.startswith("cuda") and self.world > 1:
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        check_model_args(config)
        if self.is_main:
            self._check_run_folder(resume, overwrite)
        self.device = torch.device(device)
        if self.tc["num_threads"]:
            torch.set_num_threads(int(self.tc["num_threads"]))
        if self.device.type == "cpu":
            from setflow.nn import tune_cpu_allocator

            tune_cpu_allocator()  # keep freed activation buffers in the heap: fewer page faults per step
        torch.manual_seed(self.tc["seed"])
        self.data = data if data is not None else load_data(config, data_root)
        if self.is_main:
            self.log(self.data.source)
        self.scale = loss_scale(self.data.unit, self.data.event_shape)
        self.model = build_from_config(config).to(self.device)
        size_dist = getattr(self.model, "size_dist", None)
        if size_dist is not None and not size_dist.learn:  # log p(N): the training sizes (a resume reloads it)
            sizes = self._masks("train")
            size_dist.fit(sizes.sum(1) if sizes is not None else torch.full((self.data.train.shape[0],),
                                                                            self.data.train.shape[1]))
        if self.tc.get("fused") and "fused" not in (model_arg_names(config["model"]) or ()):
            from setflow.nn import set_fused  # the set flows take model_args.fused (train.fused is mapped onto it)

            set_fused(self.model, True)  # a model without the argument: switch the set transformers it holds
        self.dtype = getattr(torch, self.tc["dtype"])
        opt_name = self.tc["optimizer"]
        self.optimizer = make_optimizer(opt_name, self.model.parameters(), self.tc["lr"], self.tc["weight_decay"])
        bs = self.tc["batch_size"]
        if bs % self.world:
            raise TrainingError(f"train.batch_size={bs} must be divisible by the number of processes {self.world}")
        self.local_bs = bs // self.world
        n = self.data.train.shape[0]
        self.sampler = DistributedSampler(_Index(n), num_replicas=self.world, rank=self.rank, shuffle=True,
                                          seed=self.tc["seed"], drop_last=True)
        self.steps_per_epoch = len(self.sampler) // self.local_bs
        if self.steps_per_epoch == 0:
            raise TrainingError(f"train.batch_size={bs} is larger than the training set ({n} examples)")
        self.step = 0
        self.best = None
        self.history: list[dict] = []
        if resume:
            self._resume()
        self.net: nn.Module = self.model
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)

    def _check_run_folder(self, resume: bool, overwrite: bool) -> None:
        if resume and overwrite:
            raise TrainingError("give either --resume or --overwrite, not both")
        if self.out.is_dir():
            for tmp in clean_stale_temp_files(self.out):
                self.log(f"removed {tmp.name}, left by an interrupted save")
        last = self.out / "last.pt"
        if resume and not last.is_file():
            raise TrainingError(f"--resume: no checkpoint {last} to continue")
        if last.is_file() and not resume and not overwrite:
            raise TrainingError(f"{self.out} already holds a checkpoint (last.pt); continue it with --resume "
                                f"or start over with --overwrite")

    # ----------------------------------------------------------------- schedule
    def lr_at(self, step: int) -> float:
        warm = self.tc["warmup_steps"]
        f = min(1.0, (step + 1) / warm) if warm else 1.0
        return self.tc["lr"] * f * self.tc["lr_decay"] ** (step // self.steps_per_epoch)

    def total_steps(self) -> int:
        total = self.tc["epochs"] * self.steps_per_epoch
        return min(total, self.tc["max_steps"]) if self.tc["max_steps"] is not None else total

    # ----------------------------------------------------------------- checkpoints
    def _payload(self) -> dict:
        return {
            "config": self.cfg,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": {"kind": "warmup_epoch_decay", "step": self.step, "lr": self.lr_at(self.step),
                          "steps_per_epoch": self.steps_per_epoch},
            "step": self.step,
            "rng": rng_state(),
            "best": self.best,
            "history": self.history,
            "world_size": self.world,
        }

    def save(self, name: str = "last.pt") -> Optional[Path]:
        if not self.is_main:
            return None
        if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            raise TrainingError(f"parameters became NaN/Inf at step {self.step}; not overwriting {self.out / name}")
        return save_checkpoint(self.out / name, self._payload())

    def _resume(self) -> None:
        path = self.out / "last.pt"
        ckpt = load_checkpoint(path, map_location=self.device)
        old = ckpt["config"]
        # the values each model is built with (stored model_args over the builder's defaults, an old
        # train.fused mapped), so an argument given equal to its stored or default value is no change
        changes = _config_changes({"model": old.get("model"), "model_args": _resolved(old)},
                                  {"model": self.cfg["model"], "model_args": _resolved(self.cfg)})
        if changes:
            raise TrainingError(f"--resume: the model config differs from the checkpoint {path}:\n"
                                + "\n".join(changes) + "\nrestore these values, or start over with --overwrite")
        try:
            self.model.load_state_dict(ckpt["model"])
        except RuntimeError as e:
            raise CheckpointError(f"{path}: weights do not fit this model ({str(e).splitlines()[0]})") from None
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.step = int(ckpt["step"])
        self.best = ckpt.get("best")
        self.history = list(ckpt.get("history", []))
        set_rng_state(ckpt["rng"])
        if self.is_main:
            self.log(f"resumed from {path} at step {self.step}")
            changed = _config_changes(_run_settings(old), _run_settings(self.cfg))
            if changed:
                self.log("settings changed since the checkpoint (the new values are used):\n" + "\n".join(changed))

    # ----------------------------------------------------------------- loop
    def _labels(self, split: str):
        """Class labels of ``split`` for a conditional model, else ``None``."""
        return self.data.split_labels(split) if getattr(self.model, "conditional", False) else None

    def _masks(self, split: str):
        """The ``(M, N_max)`` masks of ``split`` for a variable-size model (all True on sets of one size) or
        for padded data, else ``None`` (the training loss of sets of one size is the plain mean)."""
        masks = self.data.split_mask(split)
        if masks is None and getattr(self.model, "variable_size", False):
            masks = torch.ones(self.data.split(split).shape[:2], dtype=torch.bool)
        return masks

    def validate(self, split: str = "valid") -> dict:
        ec = self.cfg["eval"]
        data = split_sets(self.data, split)
        return evaluate(self.net, data, self.data.unit, batch_size=ec["batch_size"],
                        iwbo_k=ec["iwbo_k"], iwbo_chunk=ec["iwbo_chunk"], device=str(self.device),
                        max_examples=ec["max_examples"], labels=None if isinstance(data, SetBatch) else self._labels(split))

    def fit(self) -> dict:
        tc = self.tc
        total = self.total_steps()
        deadline = None if tc["max_minutes"] is None else time.monotonic() + 60.0 * tc["max_minutes"]
        writer = None
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            try:
                from torch.utils.tensorboard import SummaryWriter

                run_id = base = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
                for k in range(1, 1000):
                    if not (self.out / "tb" / run_id).exists():
                        break
                    run_id = f"{base}-{k}"
                writer = SummaryWriter(str(self.out / "tb" / run_id))  # one folder per run (or resumption)
            except Exception:  # tensorboard missing or broken: training goes on
                writer = None
        bar = None
        log_lines = self.is_main and tc["progress"] and not sys.stderr.isatty()  # plain lines in logs and CI
        if self.is_main and tc["progress"] and not log_lines:
            from tqdm import tqdm

            bar = tqdm(total=total, initial=self.step, desc="train", unit="step", dynamic_ncols=True)
        self.model.train()
        stopped = "done"
        signals = _StopSignals().__enter__()
        try:
            self._loop(total, deadline, writer, bar, log_lines, signals)
        finally:
            signals.__exit__()
            if bar is not None:
                bar.close()
        if signals.signum is not None:
            self.save()
            if writer is not None:
                writer.close()
            raise Interrupted(self.step, signals.signum)
        if self._timed_out:
            stopped = "time budget reached"
        self.save()
        if writer is not None:
            writer.close()
        elapsed = time.perf_counter() - self._t0
        return {"step": self.step, "stopped": stopped, "seconds": elapsed,
                "examples_per_s": self._seen / max(elapsed, 1e-9), "checkpoint": str(self.out / "last.pt")}

    def _loop(self, total: int, deadline: Optional[float], writer, bar, log_lines: bool, signals: _StopSignals) -> None:
        tc = self.tc
        cached_epoch, order = -1, None
        self._t0, self._seen, self._timed_out = time.perf_counter(), 0, False
        t0 = self._t0
        seen = 0
        train_masks = self._masks("train")
        while self.step < total and signals.signum is None:
            if deadline is not None and time.monotonic() > deadline:
                self._timed_out = True
                break
            epoch, i = divmod(self.step, self.steps_per_epoch)
            if epoch != cached_epoch:
                self.sampler.set_epoch(epoch)
                order = torch.as_tensor(list(iter(self.sampler)))
                cached_epoch = epoch
                # data_args.redraw: fresh training points per epoch (seeded by the epoch)
                train_x = self.data.train if self.data.train_epoch is None else self.data.train_epoch(epoch)
            idx = order[i * self.local_bs : (i + 1) * self.local_bs]
            x = train_x[idx].to(self.device)
            labels = self._labels("train")
            ctx = None if labels is None else labels[idx].to(self.device)
            if x.is_floating_point():
                x = x.to(self.dtype)
            for g in self.optimizer.param_groups:
                g["lr"] = self.lr_at(self.step)
            if train_masks is None:
                loss = -(self.net(x) if ctx is None else self.net(x, ctx)).mean() / self.scale
            else:  # sets of different sizes: nats per real point of the batch
                mask = train_masks[idx].to(self.device)
                loss = -self.net(x, ctx, mask).sum() / mask.sum()
            if not torch.isfinite(loss):
                msg = (f"loss became {loss.item()} at step {self.step}; stopping. "
                       f"The last good checkpoint is kept at {self.out / 'last.pt'}")
                raise TrainingError(msg)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if tc["grad_clip"]:
                nn.utils.clip_grad_norm_(self.model.parameters(), tc["grad_clip"])
            self.optimizer.step()
            self.step += 1
            seen += x.shape[0] * self.world
            self._seen = seen
            if self.is_main:
                if writer is not None and self.step % tc["log_every"] == 0:
                    writer.add_scalar("train/loss", loss.item(), self.step)
                    writer.add_scalar("train/lr", self.lr_at(self.step - 1), self.step)
                rate = seen / max(time.perf_counter() - t0, 1e-9)
                if bar is not None:
                    bar.set_postfix(loss=f"{loss.item():.4f}", per_s=f"{rate:.0f}")
                    bar.update(1)
                elif log_lines and (self.step % tc["log_every"] == 0 or self.step == total):
                    self.log(f"step {self.step}/{total}  loss {loss.item():.4f}  {rate:.0f} examples/s")
            if self.step % tc["eval_every"] == 0 and self.step < total:
                res = self.validate()
                self.history.append({"step": self.step, "valid": res["metric"]})
                if writer is not None:
                    writer.add_scalar("valid/metric", res["metric"], self.step)
                if self.is_main:
                    self.log(f"step {self.step}: " + format_metrics(res, "valid"))
            if self.step % tc["ckpt_every"] == 0:
                self.save()


def train(config: dict, out_dir: str, resume: bool = False, data_root: Optional[str] = None, log=print,
          overwrite: bool = False) -> dict:
    """Train (joining a torchrun process group if launched by one) and return a summary."""
    setup_distributed(config["train"]["device"])
    trainer = Trainer(config, out_dir, resume=resume, data_root=data_root, log=log, overwrite=overwrite)
    return trainer.fit()
