"""Runs: Ctrl-C / SIGTERM save the current step, SIGKILL never leaves an unloadable checkpoint,
run folders are not overwritten by accident, --resume names changed model keys, one
TensorBoard folder per run, stale temp files removed."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from setflow.cli import main
from setflow.train.checkpoint import load_checkpoint
from setflow.train.config import validate_config
from setflow.train.trainer import Trainer, TrainingError

REPO = Path(__file__).resolve().parents[1]

TINY_YAML = """\
model: toy_flow
model_args: {num_flows: 2, hidden_units: [8]}
data: toy2d
data_args: {n_train: 512, n_valid: 64, n_test: 64}
train: {batch_size: 16, epochs: 1000, max_steps: 100000, ckpt_every: 1, log_every: 1, eval_every: 100000,
        num_threads: 1, progress: true}
eval: {batch_size: 64, iwbo_k: 1, iwbo_chunk: 1}
"""


def tiny_cfg(**model_args) -> dict:
    cfg = {"model": "toy_flow", "model_args": dict(num_flows=2, hidden_units=[8], **model_args), "data": "toy2d",
           "data_args": {"n_train": 256, "n_valid": 32, "n_test": 32},
           "train": {"batch_size": 32, "max_steps": 4, "ckpt_every": 2, "eval_every": 1000, "progress": False,
                     "num_threads": 1},
           "eval": {"batch_size": 32, "iwbo_k": 1, "iwbo_chunk": 1}}
    return validate_config(cfg)


def fit(out: Path, cfg: dict, **kw) -> Trainer:
    t = Trainer(cfg, str(out), log=lambda *_: None, **kw)
    t.fit()
    return t


def _env(out: Path) -> dict:
    return dict(os.environ, PYTHONUNBUFFERED="1", SETFLOW_OFFLINE="1", SETFLOW_DATA=str(out.parent / "data"),
                OMP_NUM_THREADS="1")


def _start(cfg: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "setflow", "train", str(cfg), "--out", str(out), *extra],
                            cwd=REPO, env=_env(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# A process that imports torch and setflow once (most of a run's start-up: torch, and the torch._dynamo
# import the optimiser makes) and then forks one child per line of JSON argv it reads, each running
# ``setflow.cli.main(argv)``: the child's pid is printed before it runs, ``exit CODE`` once it has ended.
_FORK_SERVER = """
import json, os, sys
import torch._dynamo, setflow.cli
for line in sys.stdin:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(w)
        os.read(r, 1)  # after the parent has printed the pid: no interleaved lines
        code = 1
        try:
            code = setflow.cli.main(json.loads(line))
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    os.close(r)
    print(f"pid {pid}", flush=True)
    os.write(w, b"x")
    os.close(w)
    print(f"exit {os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])}", flush=True)
"""


def _fork_server(out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _FORK_SERVER], cwd=REPO, env=_env(out), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _fork_run(server: subprocess.Popen, *argv: str) -> int:
    """Start ``setflow ARGV`` in a child of ``server``; its pid."""
    server.stdin.write(json.dumps(list(argv)) + "\n")
    server.stdin.flush()
    return int(_wait_for_line(server, "pid ").split()[1])


def _wait_for_line(proc: subprocess.Popen, prefix: str, timeout: float = 60.0, seen: list | None = None) -> str:
    """Read stdout until a line starts with ``prefix`` (the lines read are appended to ``seen``)."""
    deadline = time.monotonic() + timeout
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if seen is not None:
            seen.append(line)
        if line.startswith(prefix):
            return line
    proc.kill()
    raise AssertionError(f"no line starting with {prefix!r}; got {lines[-5:]}; stderr {proc.stderr.read()[-2000:]}")


@pytest.fixture
def tiny_yaml(tmp_path) -> Path:
    p = tmp_path / "tiny.yaml"
    p.write_text(TINY_YAML)
    return p


def test_sigkill_at_random_moments_leaves_a_checkpoint_that_loads_and_resumes(tmp_path, tiny_yaml):
    out = tmp_path / "run"
    rng = random.Random(14)
    last_step = 0
    server = _fork_server(out)  # the three runs share one start-up (most of this test's time otherwise)
    try:
        for attempt in range(3):
            pid = _fork_run(server, "train", str(tiny_yaml), "--out", str(out), *(["--resume"] if attempt else []))
            try:
                if attempt:
                    line = _wait_for_line(server, "resumed from")
                    assert line.strip().endswith(f"at step {last_step}"), line
                _wait_for_line(server, "step ")
                time.sleep(rng.uniform(0.0, 0.4))  # somewhere in a step or in a save (ckpt_every=1)
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            assert _wait_for_line(server, "exit ").split()[1] == str(-signal.SIGKILL)  # killed, not ended
            ckpt = load_checkpoint(out / "last.pt")  # always a complete file
            assert ckpt["step"] >= last_step + 1, "the resumed run must have trained on"
            last_step = ckpt["step"]
    finally:
        server.kill()
        server.communicate(timeout=30)
    # the stale temp file a kill may leave is removed, and the run continues to the end
    (out / ".last.pt.killed.tmp").write_bytes(b"partial")
    assert main(["train", str(tiny_yaml), "--out", str(out), "--resume", f"train.max_steps={last_step + 3}",
                 "train.progress=false"]) == 0
    assert load_checkpoint(out / "last.pt")["step"] == last_step + 3
    assert not list(out.glob(".last.pt.*.tmp"))


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_saves_the_current_step_and_prints_one_line(tmp_path, tiny_yaml, sig, code):
    out = tmp_path / "run"
    proc = _start(tiny_yaml, out, "train.ckpt_every=100000")  # only the interrupt writes a checkpoint
    seen: list = []
    try:
        _wait_for_line(proc, "step 5/", seen=seen)
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
        stdout = "".join(seen) + stdout
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr
    steps = [int(line.split()[1].split("/")[0]) for line in stdout.splitlines() if line.startswith("step ")]
    step = load_checkpoint(out / "last.pt")["step"]
    assert step >= 5 and step == steps[-1], "the checkpoint holds the step the run had reached"
    assert stderr.strip().splitlines() == [f"interrupted at step {step}; continue with --resume"]


def test_run_folder_with_a_checkpoint_needs_resume_or_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    fit(out, tiny_cfg())
    before = (out / "last.pt").read_bytes()
    with pytest.raises(TrainingError, match="already holds a checkpoint.*--resume.*--overwrite"):
        Trainer(tiny_cfg(), str(out), log=lambda *_: None)
    assert (out / "last.pt").read_bytes() == before
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("model: toy_flow\nmodel_args: {num_flows: 2, hidden_units: [8]}\ndata: toy2d\n"
                        "data_args: {n_train: 256, n_valid: 32, n_test: 32}\n"
                        "train: {batch_size: 32, max_steps: 2, progress: false}\n")
    assert main(["train", str(cfg_file), "--out", str(out)]) == 2
    assert "already holds a checkpoint" in capsys.readouterr().err
    assert (out / "last.pt").read_bytes() == before
    assert main(["train", str(cfg_file), "--out", str(out), "--overwrite"]) == 0
    assert load_checkpoint(out / "last.pt")["step"] == 2  # started over (the first run reached 4)
    runs = sorted(p.name for p in (out / "tb").iterdir())
    assert len(runs) == 2, f"each run gets its own TensorBoard folder, got {runs}"
    with pytest.raises(TrainingError, match="no checkpoint"):
        Trainer(tiny_cfg(), str(tmp_path / "empty"), resume=True, log=lambda *_: None)


def test_resume_with_changed_model_config_names_the_keys(tmp_path):
    out = tmp_path / "run"
    fit(out, tiny_cfg())
    with pytest.raises(TrainingError) as e:
        Trainer(tiny_cfg(activation="gelu", scale_fn="softplus"), str(out), resume=True, log=lambda *_: None)
    lines = str(e.value).splitlines()
    assert len(lines) <= 5, lines
    # the values the models are built with: left out in the checkpoint = the builder's default
    assert "  model_args.activation: 'relu' in the checkpoint, 'gelu' now" in lines
    assert "  model_args.scale_fn: 'exp' in the checkpoint, 'softplus' now" in lines
