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

__all__ = ["plot_source", "get_plotter", "plot_latent"]

#: what ``setflow plot CKPT`` draws: model samples, or (latent models) reconstructions / interpolations
MODES = ("samples", "reconstruct", "interpolate")


def get_plotter(kind: str) -> Callable:
    """The checkpoint plotter of data kind ``kind`` (an unknown kind: a RegistryError listing the known ones)."""
    return PLOTTERS.get(kind)


def plot_latent(model, config: dict, data, out_path: str, mode: str, n: int = 32, steps: int = 8) -> None:
    """Reconstructions (``mode="reconstruct"``: test sets beside decode(encode(set))) or interpolations
    (``"interpolate"``: each row decodes codes on a line between two test sets' codes, the same decoder
    noise along the row) of a latent model (``model: latent_setflow``), for 2-D sets and 3-D clouds."""
    import torch

    if not hasattr(model, "reconstruct") or not hasattr(model, "interpolate"):
        raise ValueError(f"--{mode} needs a latent model (model: latent_setflow); this checkpoint is "
                         f"{config.get('model')!r}")
    if data.kind not in ("sets", "pointclouds"):
        raise ValueError(f"--{mode} draws point sets; {config.get('data')} is {data.kind}")
    from setflow.sets import SetBatch

    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    device = next(model.parameters()).device
    test = data.sets("test").to(dtype)  # padding (sets of different sizes) is drawn as NaN: left out
    three_d = data.kind == "pointclouds"
    name = config.get("model")
    if mode == "reconstruct":
        k = min(n, 8) if three_d else n
        x = test[:k]
        rec = SetBatch(model.reconstruct(x.to(device)).cpu(), x.mask)  # as many points as each test set
        if three_d:
            from setflow.viz.pointclouds import plot_clouds_3d

            plot_clouds_3d(x.nan_padded(), rec.nan_padded(), out_path,
                           title=f"{name}: test clouds and their reconstructions")
        else:
            from setflow.viz.sets import plot_sets_grid

            plot_sets_grid(x.nan_padded(), rec.nan_padded(), out_path,
                           title=f"{name}: test sets (left) and their reconstructions (right, posterior mean code)",
                           names=("test sets", "reconstructions"))
        return
    rows = 1 if three_d else max(1, min(n // 2, 8))
    # pairs of test sets spread over the split
    idx = torch.linspace(0, len(test) - 1, 2 * rows).long()
    a, b = idx[0::2], idx.flip(0)[0::2]
    path = model.interpolate(test[a].to(device), test[b].to(device), steps=steps).cpu()
    labels = [f"t={t:.2f}" for t in torch.linspace(0, 1, steps).tolist()]
    if three_d:
        from setflow.viz.pointclouds import plot_clouds_3d

        plot_clouds_3d(None, path[0], out_path, row_labels=labels, frame="own",
                       title=f"{name}: decoded codes from test cloud {int(a[0])} to {int(b[0])}")
        return
    from setflow.viz.sets import plot_set_rows

    ends_a, ends_b = test[a].nan_padded(), test[b].nan_padded()
    width = max(ends_a.shape[1], path.shape[2])

    def nan_pad(x):  # (R, N, D) -> (R, width, D): sets of other widths side by side
        fill = torch.full((x.shape[0], width - x.shape[1], x.shape[2]), float("nan"), dtype=test.dtype)
        return torch.cat([x.to(test.dtype), fill], dim=1)

    grid = torch.stack([nan_pad(ends_a)] + [nan_pad(path[:, j]) for j in range(steps)] + [nan_pad(ends_b)], dim=1)
    plot_set_rows(grid, out_path, colors=["black"] + ["tab:blue"] * steps + ["black"],
                  col_labels=["set A"] + labels + ["set B"],
                  title=f"{name}: codes interpolated between two test sets (black), decoded (blue)")


def plot_source(source: str, out_path: str, n: int = 32, data_root: Optional[str] = None, fashion: bool = False,
                seed: int = 0, mode: str = "samples", steps: int = 8) -> None:
    """``setflow plot``: a samples ``.npz``, a checkpoint, or ``data`` (SpatialMNIST test sets).

    ``mode`` (a checkpoint of a latent model only): ``"reconstruct"`` or ``"interpolate"``
    (``steps`` codes per row), see :func:`plot_latent`.
    """
    import numpy as np
    import torch

    from setflow.viz.sets import plot_sets_grid

    if mode not in MODES:
        raise ValueError(f"unknown plot mode {mode!r}; expected one of {MODES}")
    if mode != "samples" and (source == "data" or Path(source).suffix == ".npz"):
        raise ValueError(f"--{mode} draws from a checkpoint of a latent model, not from {source}")

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
    if mode != "samples":
        plot_latent(model, cfg, data, out_path, mode, n=n, steps=steps)
        return
    get_plotter(data.kind)(model, cfg, data, out_path, n=n)
