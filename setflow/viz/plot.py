"""``setflow plot``: a samples ``.npz``, a checkpoint, or the data, drawn by the plotter of its kind.

A checkpoint is drawn by the plotter registered for its data kind in
:data:`setflow.registry.PLOTTERS` (``sets``, ``images``, ``toy2d``, ``pointclouds``; each is
``plot_checkpoint(model, config, data, out_path, n)``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from setflow.registry import PLOTTERS
from setflow.viz.samples import load_samples_npz

__all__ = ["plot_source", "get_plotter"]


def get_plotter(kind: str) -> Callable:
    """The checkpoint plotter of data kind ``kind`` (an unknown kind: a RegistryError listing the known ones)."""
    return PLOTTERS.get(kind)


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
