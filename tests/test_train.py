"""Trainer: exact resume, NaN handling, atomic checkpoints, and DDP == single process."""

from __future__ import annotations

import copy
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from setflow.models import register_model
from setflow.train.checkpoint import CheckpointError, load_checkpoint, load_model
from setflow.train.config import validate_config
from setflow.data.experiments import ExperimentData
from setflow.train.trainer import Trainer, TrainingError

N, D = 6, 2


def tiny_config(**train) -> dict:
    cfg = {
        "model": "sortflow",
        "model_args": dict(num_points=N, dim=D, num_steps=2, d_model=8, num_heads=2, num_layers=1,
                           dim_feedforward=16, dropout=0.1),
        "data": "spatial_mnist",
        "train": dict(batch_size=8, epochs=3, lr=1e-2, warmup_steps=2, lr_decay=0.9, eval_every=10_000,
                      ckpt_every=2, progress=False, dtype="float64", **train),
        "eval": {"batch_size": 16},
    }
    return validate_config(cfg)


def tiny_data(n: int = 40) -> ExperimentData:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, N, D, generator=g, dtype=torch.float64) * 28
    return ExperimentData(x, x[:16], x[16:32], "data: synthetic test sets", "nats_per_point", "sets")


def run(tmp, cfg, resume=False) -> Trainer:
    t = Trainer(cfg, str(tmp), resume=resume, data=tiny_data(), log=lambda *_: None)
    t.fit()
    return t


@pytest.mark.parametrize("fused", [False, True])  # fused: compiled blocks, hash dropout seeded from the RNG state
def test_resume_continues_to_the_same_result(tmp_path, fused):
    full = run(tmp_path / "a", tiny_config(fused=fused))
    assert full.step == 3 * (40 // 8)
    assert all(m.fused == fused for m in full.model.modules() if hasattr(m, "fused"))
    run(tmp_path / "b", tiny_config(max_steps=7, fused=fused))
    resumed = run(tmp_path / "b", tiny_config(fused=fused), resume=True)
    assert resumed.step == full.step
    for (k, v), (_, w) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(v, w), k


def test_checkpoint_rebuilds_model_without_config(tmp_path):
    t = run(tmp_path, tiny_config(max_steps=2))
    model, cfg = load_model(tmp_path / "last.pt")
    assert cfg["model"] == "sortflow"
    x = tiny_data().test[:4]
    t.model.eval()
    torch.testing.assert_close(model.log_prob(x), t.model.log_prob(x))
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert {"optimizer", "scheduler", "rng", "step"} <= set(ckpt)
    assert not list(tmp_path.glob(".*.tmp")), "temporary files must not be left behind"


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    run(tmp_path, tiny_config(max_steps=2))
    data = (tmp_path / "last.pt").read_bytes()
    (tmp_path / "bad.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="bad.pt"):
        load_model(tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "missing.pt")


class _Exploding(nn.Module):
    is_exact = True

    def __init__(self, after: int = 3) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self.after = after

    def forward(self, x):
        return self.log_prob(x)

    def log_prob(self, x):
        self.calls += 1
        out = -(x - self.w).pow(2).sum((1, 2))
        return out * float("nan") if int(self.calls) > self.after else out


register_model("_test_exploding")(_Exploding)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    cfg = tiny_config()
    cfg["model"], cfg["model_args"] = "_test_exploding", {"after": 3}
    t = Trainer(cfg, str(tmp_path), data=tiny_data(), log=lambda *_: None)
    with pytest.raises(TrainingError, match="loss became nan at step 3"):
        t.fit()
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["step"] == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        cfg = tiny_config(max_steps=4)
        cfg["model_args"]["conditioner"]["dropout"] = 0.0  # (validate_config nested the flat keys)
        t = Trainer(cfg, out, data=tiny_data(), log=lambda *_: None)
        t.fit()
        if rank == 0:
            torch.save(t.model.state_dict(), os.path.join(out, "ddp_params.pt"))
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_match_single_process(tmp_path):
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path / "ddp")), nprocs=2, join=True)
    ddp = torch.load(tmp_path / "ddp" / "ddp_params.pt")
    cfg = tiny_config(max_steps=4)
    cfg["model_args"]["conditioner"]["dropout"] = 0.0  # (validate_config nested the flat keys)
    single = run(tmp_path / "single", cfg).model.state_dict()
    assert set(ddp) == set(single)
    init = run(tmp_path / "init", dict(cfg, train=dict(cfg["train"], max_steps=0))).model.state_dict()
    moved = 0.0
    for k in single:
        # float64 rounding differs between one all-reduce and one local sum; Adam's normalisation
        # of near-zero early gradients amplifies it to ~1e-10, far below the parameter updates.
        torch.testing.assert_close(ddp[k], single[k], atol=1e-8, rtol=1e-8, msg=k)
        if single[k].is_floating_point():
            moved = max(moved, (single[k] - init[k]).abs().max().item())
    assert moved > 1e-3, "the runs must actually train for the comparison to mean anything"
