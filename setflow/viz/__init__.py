"""Plots: point-set grids, image grids and toy-density figures, dispatched on the data kind."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable, Optional

__all__ = ["PLOTTERS", "plot_source", "get_plotter", "load_samples_npz"]

#: data kind -> "module:function" with signature plot_checkpoint(model, config, data, out_path, n)
PLOTTERS: dict[str, str] = {
    "sets": "setflow.viz.sets:plot_checkpoint",
    "images": "setflow.viz.images:plot_checkpoint",
    "toy2d": "setflow.viz.toy:plot_checkpoint",
    "pointclouds": "setflow.viz.pointclouds:plot_checkpoint",
}


def get_plotter(kind: str) -> Callable:
    if kind not in PLOTTERS:
        raise ValueError(f"no plotter for data kind {kind!r}; known kinds: {sorted(PLOTTERS)}")
    mod, fn = PLOTTERS[kind].split(":")
    return getattr(importlib.import_module(mod), fn)


def load_samples_npz(path) -> "np.ndarray":
    """The ``samples`` array of a ``setflow sample`` .npz (clear error when it has none)."""
    import numpy as np

    with np.load(path) as f:
        if "samples" not in f:
            raise ValueError(f"{path}: no 'samples' array (write it with `setflow sample`)")
        return f["samples"]


def plot_source(source: str, out_path: str, n: int = 32, data_root: Optional[str] = None, fashion: bool = False,
                seed: int = 0) -> None:
    """``setflow plot``: a samples ``.npz``, a checkpoint, or ``data`` (SpatialMNIST test sets)."""
    import numpy as np
    import torch

    from setflow.viz.sets import plot_sets_grid

    if source == "data":
        from setflow.data import load_spatial_mnist

        d = load_spatial_mnist(data_root=data_root, fashion=fashion, verbose=False)
        print("data: " + d.source)
        plot_sets_grid(d.test[:n], None, out_path, title="SpatialMNIST test sets")
        return
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"{source}: not a file (expected a samples .npz, a checkpoint .pt, or 'data')")
    if path.suffix == ".npz":
        x = load_samples_npz(path)
        if x.ndim == 3 and x.shape[-1] == 3:
            from setflow.viz.pointclouds import plot_clouds_3d

            plot_clouds_3d(None, x[: min(n, 8)], out_path, title=path.name)
        elif x.ndim == 3:
            plot_sets_grid(None, x[:n], out_path, title=path.name)
        else:
            from setflow.viz.images import image_grid

            image_grid(x[:n], out_path, title=path.name)
        return
    from setflow.train.checkpoint import load_model
    from setflow.train.data import load_data

    model, cfg = load_model(path)
    data = load_data(cfg, data_root)
    print(data.source)
    torch.manual_seed(seed)
    get_plotter(data.kind)(model, cfg, data, out_path, n=n)
