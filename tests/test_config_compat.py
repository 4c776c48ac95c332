"""Old keys and resumed runs: ``train.fused`` maps onto ``model_args.conditioner.fused`` both ways (an override
wins over the file, both keys at one level must agree), and ``--resume`` compares the values a model
is built with, so an argument given equal to its stored (or default) value is no change."""

from __future__ import annotations

import warnings

import pytest
import torch

from setflow.cli import main
from setflow.train.checkpoint import load_checkpoint
from setflow.train.config import ConfigError, apply_overrides, load_config, validate_config
from setflow.train.trainer import Trainer, TrainingError

FUSED_YAML = "model: sortflow\nmodel_args: {{num_steps: 2, fused: {fused}}}\ndata: spatial_mnist\n"


def _spec_fused(cfg: dict):
    """The ``fused`` of the (migrated) nested conditioner spec."""
    return cfg["model_args"]["conditioner"]["fused"]


def _fused_of(cfg: dict) -> bool:
    from setflow.models.build import build_from_config
    from setflow.nn import SetTransformer

    flags = {m.fused for m in build_from_config(cfg).modules() if isinstance(m, SetTransformer)}
    assert len(flags) == 1, flags
    return flags.pop()


@pytest.mark.parametrize("in_file, override", [(True, False), (False, True)])
def test_train_fused_override_maps_both_ways_with_one_note(tmp_path, in_file, override):
    path = tmp_path / "c.yaml"
    path.write_text(FUSED_YAML.format(fused=str(in_file).lower()))
    with pytest.warns(FutureWarning) as notes:
        cfg = load_config(path, [f"train.fused={str(override).lower()}"])
    assert _spec_fused(cfg) is override and cfg["train"]["fused"] is None and "fused" not in cfg["model_args"]
    assert _fused_of(cfg) is override
    text = [str(n.message) for n in notes if issubclass(n.category, FutureWarning)]
    assert len(text) == 1 and "\n" not in text[0] and f"model_args.conditioner.fused={str(override).lower()}" in text[0]
    with warnings.catch_warnings():  # the new key alone: no note, the file's value kept unless overridden
        warnings.simplefilter("error")
        assert _spec_fused(load_config(path)) is in_file
        assert _spec_fused(load_config(path, [f"model_args.fused={str(override).lower()}"])) is override
        assert _spec_fused(load_config(path, [f"model_args.conditioner.fused={str(override).lower()}"])) is override


def test_train_fused_and_model_args_fused_disagreeing_at_one_level_is_one_line_error(tmp_path):
    with pytest.raises(ConfigError) as e:
        validate_config({"model": "sortflow", "data": "spatial_mnist", "model_args": {"fused": True},
                         "train": {"fused": False}})
    assert "\n" not in str(e.value) and "train.fused=false" in str(e.value) and "model_args.fused=true" in str(e.value)
    path = tmp_path / "c.yaml"
    path.write_text(FUSED_YAML.format(fused="false"))
    with pytest.raises(ConfigError, match="train.fused=true contradicts model_args.conditioner.fused=false"):
        load_config(path, ["train.fused=true", "model_args.fused=false"])  # both on the command line
    with pytest.warns(FutureWarning):  # agreeing keys are fine
        assert _spec_fused(load_config(path, ["train.fused=true", "model_args.fused=true"])) is True
    path.write_text(FUSED_YAML.format(fused="true"))
    assert _spec_fused(load_config(path, ["train.fused=null"])) is True  # unset: the file's value
    with pytest.raises(ConfigError, match="'train.fused' must be true/false"):
        validate_config({"model": "sortflow", "data": "spatial_mnist", "train": {"fused": "yes"}})


def test_train_fused_on_a_model_without_the_argument_stays_a_train_setting():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cfg = validate_config({"model": "toy_flow", "data": "toy2d", "train": {"fused": True}})
    assert cfg["train"]["fused"] is True and "fused" not in cfg["model_args"]


def test_the_trainer_builds_the_fused_model_without_switching_it_afterwards(monkeypatch):
    """model_args carries the switch: the trainer no longer calls set_fused on a set flow."""
    import setflow.nn

    monkeypatch.setattr(setflow.nn, "set_fused", lambda *a, **k: pytest.fail("set_fused called"))
    from setflow.data.experiments import ExperimentData

    x = torch.rand(24, 6, 2) * 28
    data = ExperimentData(x, x[:8], x[8:16], "data: synthetic", "nats_per_point", "sets")
    with pytest.warns(FutureWarning):
        cfg = validate_config({"model": "sortflow", "data": "spatial_mnist", "train": {"fused": True, "batch_size": 8},
                               "model_args": dict(num_points=6, dim=2, num_steps=1, d_model=8, num_heads=2,
                                                  num_layers=1, dim_feedforward=16)})
    t = Trainer(cfg, "unused-out", data=data, log=lambda *_: None)
    assert {m.fused for m in t.model.modules() if hasattr(m, "fused")} == {True}


# ----------------------------------------------------------------------------- --resume
TOY_YAML = """\
model: toy_flow
model_args: {num_flows: 2, hidden_units: [8]}
data: toy2d
data_args: {n_train: 256, n_valid: 32, n_test: 32}
train: {batch_size: 32, max_steps: 2, ckpt_every: 2, eval_every: 1000, progress: false, num_threads: 1}
eval: {batch_size: 32, iwbo_k: 1, iwbo_chunk: 1}
"""


def test_resume_with_overrides_equal_to_the_stored_values_is_no_change(tmp_path, capsys):
    cfg_file, out = tmp_path / "toy.yaml", tmp_path / "run"
    cfg_file.write_text(TOY_YAML)
    env = ["--out", str(out), "--offline", "--data-root", str(tmp_path / "data")]
    assert main(["train", str(cfg_file), *env]) == 0
    capsys.readouterr()
    # the stored lr, a model argument at its builder default, and a list the builder's default holds as a tuple
    same = ["train.lr=1e-3", "model_args.activation=relu", "model_args.scale_fn=exp", "model_args.abs_dims=[0, 1]",
            "model_args.num_flows=2", "train.max_steps=4"]
    assert main(["train", str(cfg_file), *env, "--resume", *same]) == 0
    captured = capsys.readouterr()
    assert "differs" not in captured.err and "error" not in captured.err, captured.err
    assert "train.lr" not in captured.out and "model_args" not in captured.out, captured.out
    assert "train.max_steps: 2 in the checkpoint, 4 now" in captured.out  # a real change is named
    assert load_checkpoint(out / "last.pt")["step"] == 4
    # a real model change is still refused, naming the resolved values
    assert main(["train", str(cfg_file), *env, "--resume", "model_args.activation=tanh", "train.max_steps=6"]) == 2
    err = capsys.readouterr().err
    assert "model_args.activation: 'relu' in the checkpoint, 'tanh' now" in err
    assert "abs_dims" not in err and "scale_fn" not in err


def test_resume_of_an_old_train_fused_checkpoint_with_model_args_fused_is_no_change(tmp_path):
    """A run stored with the old key (train.fused: true, no model_args.fused) resumed from a config that
    now says model_args.fused: true builds the same model: no change."""
    from setflow.data.experiments import ExperimentData

    x = torch.rand(24, 6, 2) * 28
    data = ExperimentData(x, x[:8], x[8:16], "data: synthetic", "nats_per_point", "sets")
    args = dict(num_points=6, dim=2, num_steps=1, d_model=8, num_heads=2, num_layers=1, dim_feedforward=16)
    new = validate_config({"model": "sortflow", "data": "spatial_mnist", "model_args": {**args, "fused": True},
                           "train": {"batch_size": 8, "max_steps": 1, "progress": False}})
    t = Trainer(new, str(tmp_path), data=data, log=lambda *_: None)
    t.fit()
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    ckpt["config"]["model_args"] = dict(args)  # as an old run stored it: flat conditioner keys, train.fused
    ckpt["config"]["train"]["fused"] = True
    torch.save(ckpt, tmp_path / "last.pt")
    resumed = Trainer(apply_overrides(new, ["train.max_steps=2"]), str(tmp_path), data=data, resume=True,
                      log=lambda *_: None)
    assert resumed.step == 1
    with pytest.raises(TrainingError, match="model_args.conditioner.fused: True in the checkpoint, False now"):
        Trainer(apply_overrides(new, ["model_args.fused=false"]), str(tmp_path), data=data, resume=True,
                log=lambda *_: None)
