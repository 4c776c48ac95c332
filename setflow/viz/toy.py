"""2-D toy densities: data histograms beside model densities on a grid (SurVAE figure 4).

``plot_checkpoint(model, config, data, out_path, n=64)`` is the ``"toy2d"`` entry of
``setflow.registry.PLOTTERS``; :func:`plot_toy_study` draws the whole study (one row per data set,
one column for the data and one per model).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from setflow.registry import register_plotter

__all__ = ["density_grid", "grid_mass", "plot_toy_study", "plot_checkpoint", "BOUNDS", "CLIM"]

BOUNDS = (-4.0, 4.0)
#: colour limits of the density panels per data set (SurVAE's toy README values)
CLIM = {"checkerboard": 0.05, "corners": 0.1, "eight_gaussians": 0.15, "four_circles": 0.2}


@torch.no_grad()
def density_grid(model: Any, bounds: Sequence[float] = BOUNDS, grid_size: int = 200,
                 batch_size: int = 20000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Evaluate ``exp(model.log_prob)`` at the centres of a ``grid_size^2`` grid over ``bounds^2``.

    Cell centres never fall on an axis for an even ``grid_size`` and symmetric bounds (the fold
    of an abs surjection). Returns ``(xs, ys, density)`` with ``density[i, j]`` at ``(xs[j], ys[i])``.
    """
    lo, hi = float(bounds[0]), float(bounds[1])
    step = (hi - lo) / grid_size
    centres = lo + step * (np.arange(grid_size) + 0.5)
    dtype = next((p.dtype for p in model.parameters()), torch.get_default_dtype())
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    c = torch.as_tensor(centres, dtype=dtype, device=device)
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    pts = torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        lp = torch.cat([model.log_prob(pts[i : i + batch_size]) for i in range(0, pts.shape[0], batch_size)])
    finally:
        model.train(was_training)
    dens = lp.exp().reshape(grid_size, grid_size).cpu().double().numpy()
    return centres, centres.copy(), dens


def grid_mass(model: Any, bounds: Sequence[float] = (-6.0, 6.0), grid_size: int = 400) -> float:
    """Midpoint-rule integral of the model density over ``bounds^2`` (close to 1 for a proper density)."""
    xs, _, dens = density_grid(model, bounds, grid_size)
    cell = (xs[1] - xs[0]) ** 2
    return float(np.nansum(dens) * cell)


def _hist(ax, points: Union[Tensor, np.ndarray], bounds: Sequence[float], bins: int = 100) -> None:
    p = points.detach().cpu().numpy() if isinstance(points, Tensor) else np.asarray(points)
    ax.hist2d(p[:, 0], p[:, 1], bins=bins, range=[list(bounds), list(bounds)], cmap="viridis")


def _density(ax, model: Any, bounds: Sequence[float], grid_size: int, clim: Optional[float]) -> None:
    xs, ys, dens = density_grid(model, bounds, grid_size)
    vmax = clim if clim is not None else float(np.nanpercentile(dens, 99.5))
    ax.imshow(dens, origin="lower", extent=(bounds[0], bounds[1], bounds[0], bounds[1]), cmap="viridis",
              vmin=0.0, vmax=vmax, interpolation="nearest")


def _finish(ax, bounds: Sequence[float], title: Optional[str]) -> None:
    ax.set_xlim(bounds)
    ax.set_ylim(bounds)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_aspect("equal")
    if title:
        ax.set_title(title, fontsize=10)


def plot_toy_study(rows: Sequence[tuple[str, Any, Sequence[tuple[str, Any]]]], out_path: Union[str, Path],
                   bounds: Sequence[float] = BOUNDS, grid_size: int = 200, dpi: int = 110) -> None:
    """One row per data set: a histogram of the data, then each model's density.

    Args:
        rows: ``(dataset_name, data_points (N, 2), [(model_label, model), ...])`` per row.
        out_path: PNG path.
        bounds: plotting square ``bounds^2``.
        grid_size: density grid resolution.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    ncols = 1 + max(len(models) for _, _, models in rows)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(2.6 * ncols, 2.6 * len(rows)), squeeze=False)
    for r, (name, points, models) in enumerate(rows):
        _hist(axes[r, 0], points, bounds)
        _finish(axes[r, 0], bounds, f"{name}: data")
        for c, (label, model) in enumerate(models, start=1):
            _density(axes[r, c], model, bounds, grid_size, CLIM.get(name))
            _finish(axes[r, c], bounds, label)
        for c in range(1 + len(models), ncols):
            axes[r, c].axis("off")
    fig.tight_layout()
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(out_path), dpi=dpi)
    plt.close(fig)


@register_plotter("toy2d")
@torch.no_grad()
def plot_checkpoint(model: Any, config: dict, data: Any, out_path: Union[str, Path], n: int = 64) -> None:
    """Data histogram, model density and a histogram of model samples for one toy run.

    ``n`` is ignored beyond a floor: toy panels need many points, so ``max(n, 20000)`` samples
    are drawn.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    name = config.get("data_args", {}).get("name", "toy")
    fig, axes = plt.subplots(1, 3, figsize=(7.8, 2.9), squeeze=False)
    _hist(axes[0, 0], data.test, BOUNDS)
    _finish(axes[0, 0], BOUNDS, f"{name}: data")
    _density(axes[0, 1], model, BOUNDS, 200, CLIM.get(name))
    _finish(axes[0, 1], BOUNDS, f"{config.get('name') or config.get('model')}: density")
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        samples = model.sample(max(int(n), 20000))
    finally:
        model.train(was_training)
    _hist(axes[0, 2], samples, BOUNDS)
    _finish(axes[0, 2], BOUNDS, "samples")
    fig.tight_layout()
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(out_path), dpi=110)
    plt.close(fig)
