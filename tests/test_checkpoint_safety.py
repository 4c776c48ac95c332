"""Checkpoints are read with weights_only=True: a pickled payload is refused and never runs."""

from __future__ import annotations

import builtins
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from setflow.cli import main
from setflow.train.checkpoint import FORMAT, CheckpointError, load_checkpoint, rng_state, set_rng_state

REPO = Path(__file__).resolve().parents[1]


class _CreatesFile:
    """Unpickling this object would call ``open(target, "w")``: it creates the file."""

    def __init__(self, target: Path) -> None:
        self.target = str(target)

    def __reduce__(self):
        return (builtins.open, (self.target, "w"))


def _crafted(tmp_path: Path) -> tuple[Path, Path]:
    target = tmp_path / "PWNED"
    path = tmp_path / "last.pt"
    torch.save({"format": FORMAT, "config": {"model": "toy_flow"}, "model": {"w": _CreatesFile(target)}}, path)
    return path, target


def test_pickled_payload_is_refused_and_runs_nothing(tmp_path):
    path, target = _crafted(tmp_path)
    with pytest.raises(CheckpointError, match="refused to load.*pickled Python objects.*never unpickled"):
        load_checkpoint(path)
    assert not target.exists(), "the payload must not have run"


@pytest.mark.parametrize("cmd", ["eval", "sample", "plot"])
def test_every_command_refuses_a_crafted_checkpoint(tmp_path, cmd, capsys):
    path, target = _crafted(tmp_path)
    args = [cmd, str(path)] + (["-o", str(tmp_path / "x.png")] if cmd == "plot" else [])
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"setflow {cmd}: error:" in err and "refused to load" in err and len(err.strip().splitlines()) == 1
    assert not target.exists()


def test_old_format_checkpoint_gets_a_clear_message(tmp_path):
    # v1 checkpoints pickled NumPy's RNG state (an ndarray): refused, naming the older format
    old = tmp_path / "old.pt"
    torch.save({"format": "setflow-checkpoint-v1", "config": {}, "model": {}, "rng": {"numpy": np.random.get_state()}},
               old)
    with pytest.raises(CheckpointError, match="older setflow"):
        load_checkpoint(old)
    plain = tmp_path / "plain_v1.pt"
    torch.save({"format": "setflow-checkpoint-v1", "config": {}, "model": {}}, plain)
    with pytest.raises(CheckpointError, match="format 'setflow-checkpoint-v1' is not supported"):
        load_checkpoint(plain)


def test_rng_state_round_trips_through_a_safe_load(tmp_path):
    torch.save(rng_state(), tmp_path / "rng.pt")
    state = torch.load(tmp_path / "rng.pt", weights_only=True)
    draws = (random.random(), float(np.random.rand()), float(torch.rand(())), float(np.random.randn()))
    set_rng_state(state)
    assert draws == (random.random(), float(np.random.rand()), float(torch.rand(())), float(np.random.randn()))


def test_no_unsafe_load_anywhere_in_the_package():
    out = subprocess.run(["grep", "-rn", "weights_only=False", str(REPO / "setflow")], capture_output=True, text=True)
    assert out.stdout == "", out.stdout
