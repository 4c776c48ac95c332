"""One migrate(config) for old keys and old checkpoints; the set size said once (check_set_size)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from setflow.migrate import fold_conditioner_args, migrate
from setflow.models.build import build_from_config, resolved_model_args
from setflow.train.checkpoint import load_checkpoint, load_model
from setflow.train.config import apply_overrides, check_set_size, validate_config

OLD_CKPT = Path(__file__).parent / "data" / "old_sortflow_8353ec2.pt"
FLAT = {"num_points": 6, "dim": 2, "num_steps": 1, "d_model": 8, "num_heads": 2, "num_layers": 1,
        "dim_feedforward": 16, "conditioner": "isab", "num_inducing": 3, "knn_k": 4}


def test_flat_conditioner_keys_fold_into_the_nested_spec_and_migrate_is_idempotent():
    old = {"model": "sortflow", "data": "spatial_mnist", "model_args": dict(FLAT), "train": {}}
    before = copy.deepcopy(old)
    new = migrate(old)
    assert old == before  # the input is never changed
    assert new["model_args"]["conditioner"] == {"name": "isab", "d_model": 8, "num_heads": 2, "num_layers": 1,
                                                "dim_feedforward": 16, "num_inducing": 3, "k": 4}
    assert not {"d_model", "knn_k", "num_inducing"} & set(new["model_args"])
    assert migrate(new) == new
    # the old and the new spelling build the same model and resolve to the same arguments
    nested = {"model": "sortflow", "model_args": new["model_args"]}
    assert resolved_model_args(old) == resolved_model_args(nested)
    a, b = build_from_config(old), build_from_config(nested)
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())


def test_a_flat_key_contradicting_the_nested_one_is_one_line_naming_both():
    with pytest.raises(ValueError) as e:
        fold_conditioner_args({"d_model": 8, "conditioner": {"name": "isab", "d_model": 16}})
    assert str(e.value) == ("model_args.d_model=8 contradicts model_args.conditioner.d_model=16; give "
                            "model_args.conditioner.d_model only")
    with pytest.raises(ValueError, match="must be a name or a mapping"):
        fold_conditioner_args({"d_model": 8, "conditioner": 3})


def test_latent_set_decoder_args_are_migrated_and_other_models_left_alone():
    cfg = {"model": "latent_setflow", "model_args": {"decoder": "set", "decoder_args": {"d_model": 8, "fused": True}}}
    assert migrate(cfg)["model_args"]["decoder_args"] == {"conditioner": {"name": "transformer", "d_model": 8,
                                                                          "fused": True}}
    toy = {"model": "toy_flow", "data": "toy2d", "model_args": {"num_flows": 2}, "train": {"fused": True}}
    assert migrate(toy) == toy  # no conditioner spec: train.fused stays a train setting


def test_overrides_reach_the_nested_spec_by_old_or_new_key():
    cfg = validate_config({"model": "sortflow", "data": "spatial_mnist", "model_args": dict(FLAT)})
    assert apply_overrides(cfg, ["model_args.d_model=16"])["model_args"]["conditioner"]["d_model"] == 16
    assert apply_overrides(cfg, ["model_args.conditioner.k=2"])["model_args"]["conditioner"]["k"] == 2
    named = validate_config({"model": "sortflow", "data": "spatial_mnist", "model_args": {"conditioner": "isab"}})
    out = apply_overrides(named, ["model_args.conditioner.num_inducing=5"])
    assert out["model_args"]["conditioner"] == {"name": "isab", "num_inducing": 5}
    latent = validate_config({"model": "latent_setflow", "data": "spatial_mnist", "model_args": {
        "decoder": "set", "decoder_args": {"d_model": 8, "fused": True}}})
    out = apply_overrides(latent, ["model_args.decoder_args.fused=false"])
    assert out["model_args"]["decoder_args"]["conditioner"] == {"name": "transformer", "d_model": 8, "fused": False}
    with pytest.raises(ValueError, match="unknown model_args.conditioner fields for 'isab': inducing"):
        build_from_config(apply_overrides(named, ["model_args.conditioner.inducing=5"]))


def test_a_checkpoint_saved_by_main_8353ec2_loads_and_scores_bit_identically():
    """tests/data/old_sortflow_8353ec2.pt was written by setflow at commit 8353ec2 (flat conditioner keys and
    the old train.fused key in its config) together with log_prob and sample of that code."""
    ckpt = load_checkpoint(OLD_CKPT)
    assert ckpt["config"]["train"]["fused"] is True and "d_model" in ckpt["config"]["model_args"]
    with pytest.warns(FutureWarning, match="train.fused is deprecated"):
        model, config = load_model(OLD_CKPT)
    spec = migrate(config)["model_args"]["conditioner"]
    assert spec["name"] == "isab" and spec["fused"] is True and spec["k"] == 4
    assert {m.fused for m in model.modules() if hasattr(m, "fused") and isinstance(m.fused, bool)} == {True}
    with torch.no_grad():
        assert torch.equal(model.log_prob(ckpt["x"]), ckpt["log_prob"])
        torch.manual_seed(1)
        sample = model.sample(3)
        assert torch.equal(getattr(sample, "points", sample), ckpt["sample"])  # a SetBatch's points, or the tensor


BASE = {"model": "sortflow", "data": "spatial_mnist"}


def test_the_model_takes_its_set_size_from_the_data():
    fixed = check_set_size(validate_config(dict(BASE, data_args={"num_points": 30})))
    assert fixed["model_args"]["num_points"] == 30
    ragged = check_set_size(validate_config(dict(BASE, data_args={"num_points": [20, 40]})))
    assert {k: ragged["model_args"][k] for k in ("num_points", "max_points", "min_points")} == {
        "num_points": None, "max_points": 40, "min_points": 20}
    default = check_set_size(validate_config(dict(BASE)))  # SpatialMNIST's 50 points, the builder's too
    assert default["model_args"]["num_points"] == 50
    wider = dict(BASE, data_args={"num_points": [20, 40]}, model_args={"num_points": None, "max_points": 60,
                                                                        "min_points": 2})
    assert check_set_size(validate_config(wider))["model_args"]["max_points"] == 60  # room to spare is fine


@pytest.mark.parametrize("data_args, model_args, words", [
    ({"num_points": 30}, {"num_points": 50}, "data_args.num_points=30 but model_args.num_points=50"),
    ({"num_points": [20, 40]}, {"num_points": 40}, "data_args.num_points=[20, 40] but model_args.num_points=40"),
    ({"num_points": [20, 40]}, {"num_points": None, "max_points": 30},
     "data_args.num_points=[20, 40] pads sets to 40 points but model_args.max_points=30"),
    ({"num_points": [20, 40]}, {"num_points": None, "max_points": 40, "min_points": 25},
     "data_args.num_points=[20, 40] has sets of 20 points but model_args.min_points=25"),
    ({}, {"num_points": 64}, "data_args.num_points=50 but model_args.num_points=64"),
])
def test_a_set_size_mismatch_is_refused_before_data_loads_naming_both_keys(tmp_path, data_args, model_args, words):
    from setflow.train.trainer import Trainer

    cfg = validate_config(dict(BASE, data_args=data_args, model_args=model_args))
    with pytest.raises(ValueError) as e:
        check_set_size(cfg)
    assert words in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ValueError, match="model_args"):  # no data root exists: the check comes first
        Trainer(cfg, str(tmp_path / "run"), data_root=str(tmp_path / "nothing"), log=lambda *_: None)
    assert not (tmp_path / "nothing").exists()


def test_model_args_are_checked_once_per_training_start(monkeypatch):
    from setflow.data.experiments import ExperimentData
    from setflow.registry import MODELS
    from setflow.train.trainer import Trainer

    calls = []
    check = MODELS.check_args
    monkeypatch.setattr(MODELS, "check_args", lambda name, args: calls.append(name) or check(name, args))
    x = torch.rand(16, 6, 2) * 28
    cfg = validate_config(dict(BASE, model_args=dict(FLAT), train={"batch_size": 8}))
    Trainer(cfg, "unused-out", data=ExperimentData(x, x[:8], x[8:], "data: synthetic", "nats_per_point", "sets"),
            log=lambda *_: None)
    assert calls == ["sortflow"]


def test_the_nested_spec_is_handed_to_from_spec_and_bad_specs_are_one_line():
    from setflow.models.set_flows import build_set_flow
    from setflow.nn import ISAB, SetTransformer

    flow = build_set_flow(num_points=6, num_steps=1, conditioner={"name": "isab", "d_model": 8, "num_heads": 2,
                                                                  "num_inducing": 3},
                          point_conditioner={"name": "transformer", "num_layers": 1})
    isab = [m for m in flow.modules() if isinstance(m, ISAB)]
    tf = [m for m in flow.modules() if isinstance(m, SetTransformer)]
    assert isab and all(m.num_inducing == 3 for m in isab)
    assert tf and all(m.d_model == 8 and len(m.blocks) == 1 for m in tf)  # fields left out come from `conditioner`
    for bad, words in (({"d_model": 8}, "model_args.conditioner needs a conditioner name"),
                       (7, "model_args.conditioner must be a conditioner name or a mapping"),
                       ({"name": "isab", "d_model": 0}, "model_args.conditioner: conditioner spec: d_model must be")):
        with pytest.raises(ValueError, match=words) as e:
            build_set_flow(num_points=6, num_steps=1, conditioner=bad)
        assert "\n" not in str(e.value)
