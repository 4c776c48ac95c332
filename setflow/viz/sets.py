"""Pictures of point sets: matplotlib grids in the 28x28 frame, PLY export and open3d renders."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from setflow.registry import register_plotter
from setflow.sets import SetBatch, as_set_batch

__all__ = ["plot_sets_grid", "plot_sets_by_class", "plot_set_rows", "save_ply", "render_sets_open3d",
           "plot_checkpoint", "plot_pixel_sets_checkpoint"]


def _np(x) -> np.ndarray:
    """A tensor or array as an array; a :class:`~setflow.sets.SetBatch` with NaN in its padding (not drawn)."""
    if isinstance(x, SetBatch):
        x = x.nan_padded()
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _draw(ax, pts: np.ndarray, color: str, frame: float) -> None:
    ax.scatter(pts[:, 0], pts[:, 1], s=6, c=color, linewidths=0)
    ax.set_xlim(0, frame)
    ax.set_ylim(0, frame)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])


def _save(fig, out_path: Union[str, Path], title: str) -> Path:
    """Title, lay out, write the PNG (creating its folder) and close ``fig``."""
    import matplotlib.pyplot as plt

    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path


def plot_sets_grid(data: Optional[Union[torch.Tensor, np.ndarray]], samples: Optional[Union[torch.Tensor, np.ndarray]],
                   out_path: Union[str, Path], cols: int = 4, frame: float = 28.0, title: str = "",
                   names: tuple[str, str] = ("data", "samples")) -> Path:
    """Draw sets ``(n, N, 2)`` (arrays, tensors or :class:`~setflow.sets.SetBatch` values) as scatter plots: data
    (black) in the left block, samples (blue) in the right.

    Either block may be ``None``. Points are in pixel units, drawn in the ``frame x frame`` square;
    ``names`` label the two blocks.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = [(b, c, name) for b, c, name in ((data, "black", names[0]), (samples, "tab:blue", names[1])) if b is not None]
    if not blocks:
        raise ValueError("plot_sets_grid needs data or samples")
    arrays = [(_np(b), c, name) for b, c, name in blocks]
    for a, _, name in arrays:
        if a.ndim != 3 or a.shape[-1] < 2:
            raise ValueError(f"{name} must have shape (n, N, 2), got {a.shape}")
    rows = max(int(np.ceil(len(a) / cols)) for a, _, _ in arrays)
    total_cols = cols * len(arrays) + (len(arrays) - 1)
    fig, axes = plt.subplots(rows, total_cols, figsize=(1.3 * total_cols, 1.3 * rows + 0.5), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for b, (a, color, name) in enumerate(arrays):
        c0 = b * (cols + 1)
        for i, pts in enumerate(a[: rows * cols]):
            ax = axes[i // cols, c0 + i % cols]
            ax.axis("on")
            _draw(ax, pts, color, frame)
        axes[0, c0].set_title(name, loc="left", fontsize=9)
    return _save(fig, out_path, title)


def plot_sets_by_class(data, data_labels, samples, sample_labels, out_path: Union[str, Path], per_class: int = 4,
                       frame: float = 28.0, title: str = "") -> Path:
    """One row per class: ``per_class`` data sets (black) of that class, then as many samples (blue).

    ``data`` (n, N, 2) with ``data_labels`` (n,), ``samples`` (m, N, 2) with ``sample_labels`` (m,);
    the classes are the union of both label sets, in increasing order.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data, samples = _np(data), _np(samples)
    dl, sl = _np(data_labels).astype(np.int64), _np(sample_labels).astype(np.int64)
    if len(dl) != len(data) or len(sl) != len(samples):
        raise ValueError(f"labels must match the sets: {len(data)} data sets with {len(dl)} labels, "
                         f"{len(samples)} samples with {len(sl)} labels")
    classes = sorted(set(dl.tolist()) | set(sl.tolist()))
    cols = 2 * per_class + 1
    fig, axes = plt.subplots(len(classes), cols, figsize=(1.1 * cols, 1.1 * len(classes) + 0.5), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for r, c in enumerate(classes):
        for k, pts in enumerate(data[dl == c][:per_class]):
            axes[r, k].axis("on")
            _draw(axes[r, k], pts, "black", frame)
        for k, pts in enumerate(samples[sl == c][:per_class]):
            ax = axes[r, per_class + 1 + k]
            ax.axis("on")
            _draw(ax, pts, "tab:blue", frame)
        axes[r, 0].set_ylabel(str(c), rotation=0, labelpad=10)
    axes[0, 0].set_title("data", loc="left", fontsize=9)
    axes[0, per_class + 1].set_title("samples", loc="left", fontsize=9)
    return _save(fig, out_path, title)


def plot_set_rows(rows, out_path: Union[str, Path], colors: Optional[list] = None, col_labels: Optional[list] = None,
                  frame: float = 28.0, title: str = "") -> Path:
    """Sets ``(R, C, N, 2)`` as an ``R x C`` grid of scatter plots (e.g. one interpolation per row).

    ``colors``: one matplotlib colour per column (default blue); ``col_labels``: titles of the first
    row's panels. NaN points (padding) are not drawn.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a = _np(rows)
    if a.ndim != 4 or a.shape[-1] < 2:
        raise ValueError(f"rows must have shape (R, C, N, 2), got {a.shape}")
    r, c = a.shape[:2]
    colors = colors or ["tab:blue"] * c
    fig, axes = plt.subplots(r, c, figsize=(1.1 * c, 1.1 * r + 0.5), squeeze=False)
    for i in range(r):
        for j in range(c):
            _draw(axes[i, j], a[i, j], colors[j], frame)
            if i == 0 and col_labels is not None:
                axes[i, j].set_title(str(col_labels[j]), fontsize=7)
    return _save(fig, out_path, title)


def _point_cloud(points: np.ndarray):
    import open3d as o3d

    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] not in (2, 3):
        raise ValueError(f"a point cloud must have shape (N, 2) or (N, 3), got {pts.shape}")
    if pts.shape[1] == 2:
        pts = np.concatenate([pts, np.zeros((len(pts), 1))], axis=1)
    pcd = o3d.geometry.PointCloud()
    pcd.points = o3d.utility.Vector3dVector(pts)
    return pcd


def save_ply(points, path: Union[str, Path]) -> Path:
    """Write one set ``(N, 2|3)`` as a PLY point cloud (2-D points get z = 0) with open3d."""
    import open3d as o3d

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not o3d.io.write_point_cloud(str(path), _point_cloud(_np(points))):
        raise OSError(f"open3d could not write {path}")
    return path


def render_sets_open3d(sets, out_path: Union[str, Path], width: int = 640, height: int = 480) -> Path:
    """Render point sets side by side with open3d's legacy offscreen visualiser (no Vulkan needed)."""
    import open3d as o3d

    arr = _np(sets)
    pcd = o3d.geometry.PointCloud()
    for i, pts in enumerate(arr):
        p = _point_cloud(pts)
        p.translate((32.0 * i, 0.0, 0.0))
        pcd += p
    pcd.paint_uniform_color([0.1, 0.3, 0.8])
    vis = o3d.visualization.Visualizer()
    if not vis.create_window(visible=False, width=width, height=height):
        raise RuntimeError("open3d could not create an offscreen window on this machine")
    try:
        vis.add_geometry(pcd)
        vis.get_render_option().point_size = 4.0
        vis.poll_events()
        vis.update_renderer()
        out_path = Path(out_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        vis.capture_screen_image(str(out_path), do_render=True)
    finally:
        vis.destroy_window()
    return Path(out_path)


@register_plotter("sets")
def plot_checkpoint(model, config: dict, data, out_path: str, n: int = 32) -> None:
    """Data (test split) beside model samples; for a conditional model one row per class."""
    if getattr(model, "conditional", False):
        num_classes = model.context_encoder.num_classes
        per_class = max(1, min(8, n // num_classes))
        labels = torch.arange(num_classes).repeat_interleave(per_class)
        device = next(model.parameters()).device
        samples = model.sample(len(labels), context=labels.to(device)).cpu()
        test = data.sets("test")
        plot_sets_by_class(nan_padded(test), test.labels, nan_padded(samples), labels, out_path, per_class=per_class,
                           title=f"{config['model']} (conditional): data vs samples, one row per class")
        return
    plot_sets_grid(nan_padded(data.sets("test")[:n]), nan_padded(model.sample(n)), out_path,
                   title=f"{config['model']}: data vs samples")


def nan_padded(sets) -> np.ndarray:
    """Sets (a :class:`~setflow.sets.SetBatch` or a tensor ``(n, N, D)``) as a float64 array with NaN where a
    padded batch has no point (matplotlib skips NaN)."""
    return _np(as_set_batch(sets).nan_padded()).astype(np.float64)


@register_plotter("pixel_sets")
def plot_pixel_sets_checkpoint(model, config: dict, data, out_path: str, n: int = 32) -> None:
    """The set codec: test pixel multisets beside its samples, each pixel drawn at its centre."""
    from setflow.data.pixel_sets import GRID, pixels_to_points

    data_points = pixels_to_points(_np(data.test[:n]), GRID)
    samples = pixels_to_points(_np(model.sample(n)), model.grid)
    plot_sets_grid(data_points, samples, out_path, frame=float(max(GRID, model.grid)),
                   title=f"{config['model']}: data vs samples (pixel centres)")
