"""setflow.registry: every table lists its entries, fails the same way on an unknown name, and
checks builder arguments against signatures; model files register themselves."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import setflow.models
from setflow.models import build_model, import_model_modules
from setflow.models.build import check_model_args, model_arg_names
from setflow import registry
from setflow.registry import DATASETS, IMAGE_CONDITIONERS, MODELS, OPTIMIZERS, PLOTTERS, Registry, RegistryError


# -- models ---------------------------------------------------------------------------------------
EXPECTED_MODELS = {"sortflow", "permuteflow", "idf", "baseline_image_flow", "maxpool_flow", "toy_flow", "set_codec",
                   "latent_setflow"}


def test_models_lists_every_family():
    assert EXPECTED_MODELS <= set(MODELS.names())
    assert MODELS.names() == sorted(MODELS.names())


@pytest.mark.parametrize("name", [n for n in MODELS.names() if not n.startswith("_")])  # "_": test throwaways
def test_every_model_refuses_a_typo_and_accepts_its_own_arguments(name):
    valid = model_arg_names(name)
    assert valid, f"{name}: its arguments must be readable from the builder (use args_of=)"
    first = sorted(valid)[0]
    typo = first + "z"
    with pytest.raises(ValueError) as e:
        check_model_args({"model": name, "model_args": {first: None, typo: 1}})
    msg = str(e.value)
    assert msg == f"unknown model_args for {name!r}: {typo}; valid: {', '.join(sorted(valid))}"
    assert "\n" not in msg
    check_model_args({"model": name, "model_args": dict.fromkeys(valid)})  # every real name passes
    with pytest.raises(ValueError, match=re.escape(f"unknown model_args for {name!r}: {typo};")):
        build_model(name, **{typo: 1})  # build_model checks before building


def test_forwarding_builders_drop_the_arguments_they_fix():
    for name in ("sortflow", "permuteflow"):
        assert "permutation" not in model_arg_names(name)
        assert {"num_steps", "conditioner", "point_conditioner"} <= model_arg_names(name)
        assert "d_model" not in model_arg_names(name)  # a field of the nested conditioner spec now
    assert "pooling" in model_arg_names("maxpool_flow")  # build_image_flow's, checked by the wrapper


def test_unknown_model_is_a_registry_error_naming_the_registered_ones():
    with pytest.raises(RegistryError) as e:
        build_model("nosuchflow")
    assert isinstance(e.value, KeyError) and isinstance(e.value, ValueError)
    assert str(e.value) == f"unknown model 'nosuchflow'; registered models: {', '.join(MODELS.names())}"


def test_a_throwaway_registered_model_is_built_by_name():
    @setflow.models.register_model("_throwaway")
    def build(width: int = 3) -> torch.nn.Module:
        return torch.nn.Linear(width, 1)

    try:
        assert "_throwaway" in MODELS
        assert build_model("_throwaway", width=5).in_features == 5
        assert model_arg_names("_throwaway") == {"width"}
        with pytest.raises(ValueError, match="unknown model_args for '_throwaway': widht; valid: width"):
            build_model("_throwaway", widht=5)
        with pytest.raises(ValueError, match="registered twice"):
            setflow.models.register_model("_throwaway")(lambda: None)
    finally:
        MODELS.unregister("_throwaway")
    assert "_throwaway" not in MODELS


def _drop_module(folder, module: str, register: str, name: str, definition: str) -> None:
    """Write ``folder/module.py``: ``definition`` (a def or class) decorated with ``@register(name)``."""
    (folder / f"{module}.py").write_text(f"import torch\nfrom setflow.registry import {register}\n\n"
                                         f"@{register}({name!r})\n{definition}\n")


def test_a_new_model_file_is_picked_up_without_editing_a_list(tmp_path, monkeypatch):
    """A module dropped into the models package registers itself: no list to edit."""
    _drop_module(tmp_path, "h3_dropped_in", "register_model", "_dropped_in",
                 "def build(features: int = 2):\n    return torch.nn.Linear(features, features)")
    monkeypatch.setattr(setflow.models, "__path__", [*setflow.models.__path__, str(tmp_path)])
    try:
        assert import_model_modules() == ["setflow.models.h3_dropped_in"]
        assert build_model("_dropped_in", features=4).out_features == 4
        assert import_model_modules() == []  # imported once
    finally:
        sys.modules.pop("setflow.models.h3_dropped_in", None)
        if "_dropped_in" in MODELS:
            MODELS.unregister("_dropped_in")


def test_every_module_of_the_models_package_is_imported():
    import pkgutil

    names = {f"setflow.models.{m.name}" for m in pkgutil.iter_modules(setflow.models.__path__)}
    assert names and names <= set(sys.modules)


# -- the Registry class ---------------------------------------------------------------------------
def test_registry_populates_lazily_and_refuses_bad_names():
    r: Registry = Registry("widget", populate=("setflow.models",))
    assert r.names() == []  # the populate import registered nothing into this table
    with pytest.raises(TypeError, match="non-empty string"):
        r.register("")
    r.register("a", 1)
    with pytest.raises(RegistryError, match=r"^unknown widget 'b'; registered widgets: a$"):
        r.get("b")
    with pytest.raises(RegistryError):
        r.get(["not", "hashable"])


# -- every table ----------------------------------------------------------------------------------
EXPECTED = {
    "MODELS": EXPECTED_MODELS,
    "DATASETS": {"spatial_mnist", "spatial_mnist_pixels", "mnist", "fashion_mnist", "cifar10", "imagenet32",
                 "imagenet64", "photos32", "photos64", "toy2d", "pointclouds"},
    "IMAGE_CONDITIONERS": {"densenet", "shallow"},
    "OPTIMIZERS": {"adam", "adamax", "adamw"},
    "PLOTTERS": {"sets", "images", "toy2d", "pointclouds", "pixel_sets"},
    "LATENT_DECODERS": {"set", "points"},
    "SCALE_FNS": {"exp", "softplus", "sigmoid", "tanh_exp"},
    "SET_CONDITIONERS": {"transformer", "deepsets", "edgeconv", "isab", "knn"},
    "ACTIVATIONS": {"relu", "gelu", "silu", "swish", "elu", "leaky_relu", "tanh", "softplus", "sigmoid"},
    "IMAGE_DATASETS": {"mnist", "fashion_mnist", "cifar10", "imagenet32", "imagenet64", "photos32", "photos64"},
    "TOY_DATASETS": {"checkerboard", "corners", "eight_gaussians", "four_circles"},
    "POINTCLOUD_SOURCES": {"shapes", "cgal", "meshes", "modelnet10", "modelnet40", "shapenet", "airplanes"},
    "METRICS": {"cd", "emd"},
    "DATA_COMMANDS": {"spatial-mnist", "spatial-mnist-pixels", "photos"},
}
TABLES = sorted(n for n, v in vars(registry).items() if isinstance(v, Registry))


def test_every_table_is_listed_here():
    assert set(EXPECTED) == set(TABLES)


@pytest.mark.parametrize("table", sorted(EXPECTED))
def test_every_registry_lists_its_entries(table):
    reg = getattr(registry, table)
    assert EXPECTED[table] <= set(reg.names()), reg.names()
    assert reg.names() == sorted(reg) == [n for n, _ in reg.items()]
    assert all(n in reg for n in EXPECTED[table]) and len(reg) >= len(EXPECTED[table])


@pytest.mark.parametrize("table", TABLES)
def test_unknown_names_fail_the_same_way_in_every_table(table):
    reg = getattr(registry, table)
    with pytest.raises(RegistryError) as e:
        reg.get("no_such_entry")
    assert str(e.value) == (f"unknown {reg.kind} 'no_such_entry'; registered {reg.kind}s: "
                            f"{', '.join(reg.names())}")
    assert "no_such_entry" not in reg


def _unknown(fn, kind):
    with pytest.raises(RegistryError, match=rf"^unknown {kind} 'nope'; registered {kind}s: "):
        fn()


def test_the_user_facing_lookups_raise_the_registry_error():
    from setflow.models.idf import IDF
    from setflow.data.experiments import load_data
    from setflow.train.trainer import make_optimizer
    from setflow.transforms import AffineCoupling
    from setflow.viz import get_plotter

    _unknown(lambda: build_model("nope"), "model")
    _unknown(lambda: load_data({"data": "nope"}), "data set")
    _unknown(lambda: make_optimizer("nope", [torch.zeros(1, requires_grad=True)], lr=1e-3), "optimizer")
    _unknown(lambda: IDF(input_shape=[1, 4, 4], num_levels=1, coupling="nope"), "image conditioner")
    _unknown(lambda: IDF(input_shape=[1, 4, 4], num_levels=1, split_prior="nope"), "image conditioner")
    _unknown(lambda: get_plotter("nope"), "plotter")
    _unknown(lambda: AffineCoupling(torch.nn.Linear(1, 2), split_dim=-1, scale_fn="nope"), "scale_fn")


def test_data_args_are_checked_by_name_before_loading():
    from setflow.data.experiments import load_data

    with pytest.raises(ValueError, match=r"^unknown data_args for 'toy2d': nmae; valid: n_test, n_train, n_valid, name, seed$"):
        load_data({"data": "toy2d", "data_args": {"nmae": "corners"}})
    assert load_data({"data": "toy2d", "data_args": {"n_train": 8, "n_valid": 4, "n_test": 4}}).train.shape == (8, 2)


def test_registered_entries_are_the_objects_the_code_uses():
    from setflow.viz import images, pointclouds, sets, toy

    from setflow.transforms import SCALE_FNS

    assert SCALE_FNS is registry.SCALE_FNS
    scale, log_scale = registry.SCALE_FNS.get("exp")(torch.zeros(3))
    assert torch.equal(scale, torch.ones(3)) and torch.equal(log_scale, torch.zeros(3))
    assert OPTIMIZERS.get("adamax") is torch.optim.Adamax
    assert PLOTTERS.get("sets") is sets.plot_checkpoint and PLOTTERS.get("toy2d") is toy.plot_checkpoint
    assert PLOTTERS.get("images") is images.plot_checkpoint
    assert PLOTTERS.get("pointclouds") is pointclouds.plot_checkpoint
    net = IMAGE_CONDITIONERS.get("shallow")(2, 3, 8, 1)
    assert net(torch.randn(1, 2, 4, 4)).shape == (1, 3, 4, 4)
    assert DATASETS.arg_names("spatial_mnist") >= {"data_root", "fashion", "redraw"}


def test_the_readme_registration_example_runs(capsys):
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("### Your model in a config and on the command line", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    try:
        exec(compile(block, "README.md", "exec"), {})
        assert capsys.readouterr().out.strip() == (
            "unknown model_args for 'my_sortflow': d_modle; valid: d_model, num_points")
        assert model_arg_names("my_sortflow") == {"num_points", "d_model"}
    finally:
        if "my_sortflow" in MODELS:
            MODELS.unregister("my_sortflow")


def test_a_registered_optimizer_is_a_valid_config_value():
    from setflow.train.config import ConfigError, validate_config
    from setflow.train.trainer import make_optimizer

    cfg = {"model": "sortflow", "data": "spatial_mnist", "train": {"optimizer": "_sgd"}}
    with pytest.raises(ConfigError, match=r"'train.optimizer' must be one of adam, adamax, adamw"):
        validate_config(cfg)
    OPTIMIZERS.register("_sgd", torch.optim.SGD)
    try:
        assert validate_config(cfg)["train"]["optimizer"] == "_sgd"
        assert isinstance(make_optimizer("_sgd", [torch.zeros(1, requires_grad=True)], lr=0.1), torch.optim.SGD)
    finally:
        OPTIMIZERS.unregister("_sgd")


# -- the tables that were dicts and if/elif chains -------------------------------------------------
def test_the_old_table_names_are_the_registry_tables():
    from setflow.data import IMAGE_DATASETS, TOY_DATASETS
    from setflow.metrics import METRICS
    from setflow.nn import ACTIVATIONS

    assert ACTIVATIONS is registry.ACTIVATIONS and METRICS is registry.METRICS
    assert IMAGE_DATASETS is registry.IMAGE_DATASETS and TOY_DATASETS is registry.TOY_DATASETS


def test_activations_are_fresh_modules_by_case_insensitive_name():
    from setflow.nn import get_activation

    a, b = get_activation("GELU"), get_activation("gelu")
    assert type(a) is torch.nn.GELU and a is not b
    assert registry.ACTIVATIONS.get("swish") is torch.nn.SiLU
    _unknown(lambda: get_activation("nope"), "activation")
    with pytest.raises(TypeError, match="named by a string"):
        get_activation(None)


def test_image_and_toy_lookups_raise_the_registry_message():
    from setflow.data import DataError, image_dataset_splits, sample_toy
    from setflow.data.experiments import load_data

    with pytest.raises(DataError, match=r"^unknown image data set 'svhn'; registered image data sets: cifar10, "):
        image_dataset_splits("svhn", download=False)
    _unknown(lambda: sample_toy("nope", 4), "toy data set")
    _unknown(lambda: load_data({"data": "toy2d", "data_args": {"name": "nope"}}), "toy data set")
    x = sample_toy("corners", 7, seed=3)
    assert x.shape == (7, 2) and torch.equal(x, registry.TOY_DATASETS.get("corners")(7, seed=3))


def test_a_registered_toy_density_trains_by_name():
    from setflow.data.experiments import load_data

    @registry.register_toy_dataset("_dots")
    def dots(n, seed=None):
        return torch.arange(2 * n, dtype=torch.float32).view(n, 2)

    try:
        d = load_data({"data": "toy2d", "data_args": {"name": "_dots", "n_train": 3, "n_valid": 2, "n_test": 2}})
        assert torch.equal(d.train, dots(3)) and "'_dots'" in d.source
    finally:
        registry.TOY_DATASETS.unregister("_dots")


def test_pointcloud_sources_get_the_options_they_name():
    from setflow.data.pointclouds import PointClouds, load_pointclouds

    seen = {}

    @registry.register_pointcloud_source("_grid")
    def grid(num_points, seed, normalize):
        seen.update(num_points=num_points, seed=seed, normalize=normalize)
        pts = np.zeros((1, num_points, 3), np.float32)
        lab = np.zeros(1, np.int64)
        return PointClouds(pts, pts, pts, lab, lab, lab, ["dot"], "a test grid")

    try:
        d = load_pointclouds("_grid", num_points=5, seed=2, per_class=9, path="ignored", verbose=False)
        assert seen == {"num_points": 5, "seed": 2, "normalize": "shape"} and d.train.shape == (1, 5, 3)
        with pytest.raises(ValueError, match=r"^rotate='z' poses the procedural shapes \(sources shapes\), not '_grid'$"):
            load_pointclouds("_grid", num_points=5, rotate="z", verbose=False)
    finally:
        registry.POINTCLOUD_SOURCES.unregister("_grid")
    _unknown(lambda: load_pointclouds("nope", verbose=False), "point-cloud source")


def test_a_registered_metric_runs_in_sample_metrics_and_its_line():
    from setflow.metrics import SetPairs, format_sample_metrics, sample_metrics

    @registry.register_metric("_l1")
    def l1(pairs: SetPairs) -> dict:
        d = torch.cdist(pairs.gen.points.flatten(1), pairs.ref.points.flatten(1), p=1)
        return {"mmd": d.min(0).values.mean().item(), "cov": d.argmin(1).unique().numel() / pairs.num_ref,
                "1nna": 0.5}

    gen, ref = torch.zeros(3, 4, 2), torch.ones(2, 4, 2)
    try:
        res = sample_metrics(gen, ref, metrics=("cd", "_l1"), progress=False)
        assert res["_l1"] == {"mmd": 8.0, "cov": 0.5, "1nna": 0.5}
        assert res["cd"]["mmd"] == pytest.approx(4.0)  # squared distance 2 per point, both directions
        assert "_L1 MMD 8 COV 50.0%" in format_sample_metrics(res, "x")
    finally:
        registry.METRICS.unregister("_l1")
    _unknown(lambda: sample_metrics(gen, ref, metrics=("nope",)), "metric")


def test_setflow_data_takes_its_choices_from_the_registry(capsys):
    from setflow.cli import main

    @registry.register_pointcloud_source("_nothing")
    def nothing(num_points):
        raise ValueError("the _nothing source was reached")

    try:
        assert main(["data", "_nothing", "--offline"]) != 0  # a new source is a `setflow data` choice, no CLI edit
        assert "the _nothing source was reached" in capsys.readouterr().err
        with pytest.raises(SystemExit):
            main(["data", "--help"])
        helptext = capsys.readouterr().out
        assert all(n in helptext for n in [*registry.DATA_COMMANDS, *registry.POINTCLOUD_SOURCES])
    finally:
        registry.POINTCLOUD_SOURCES.unregister("_nothing")
    with pytest.raises(SystemExit):
        main(["data", "_nothing"])
    assert "invalid choice: '_nothing'" in capsys.readouterr().err


def test_a_new_conditioner_file_is_found_without_an_import_list(tmp_path, monkeypatch):
    """A module dropped into setflow.nn registers itself; nn/__init__.py does not name it."""
    import setflow.nn

    _drop_module(tmp_path, "h24_dropped_net", "register_set_conditioner", "_dropped_net",
                 "class DroppedNet(torch.nn.Module):\n    pass")
    monkeypatch.setattr(setflow.nn, "__path__", [*setflow.nn.__path__, str(tmp_path)])
    try:
        assert registry.SET_CONDITIONERS.get("_dropped_net").__name__ == "DroppedNet"  # found on the missed lookup
        assert "setflow.nn.h24_dropped_net" in sys.modules
        assert "h24_dropped_net" not in Path(setflow.nn.__file__).read_text()
    finally:
        sys.modules.pop("setflow.nn.h24_dropped_net", None)
        if "_dropped_net" in registry.SET_CONDITIONERS:
            registry.SET_CONDITIONERS.unregister("_dropped_net")


def test_conditioners_and_models_are_found_by_scanning_their_packages():
    import pkgutil

    import setflow.nn

    assert registry.SET_CONDITIONERS._populate == ("setflow.nn.*",)
    assert registry.MODELS._populate == ("setflow.models.*",)
    registry.SET_CONDITIONERS.names()
    names = {f"setflow.nn.{m.name}" for m in pkgutil.iter_modules(setflow.nn.__path__)}
    assert names and names <= set(sys.modules)
    assert registry.import_submodules("setflow.nn") == []  # imported once


def test_eval_metrics_option_reads_the_registry(capsys):
    from setflow.cli import build_parser

    args = build_parser().parse_args(["eval", "run.pt", "--samples", "4", "--metrics", "cd, emd"])
    assert args.metrics == ("cd", "emd")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["eval", "run.pt", "--metrics", "cd,nope"])
    assert f"unknown metric 'nope'; registered metrics: {', '.join(registry.METRICS)}" in capsys.readouterr().err
