"""Pictures of 3-D point clouds: matplotlib 3-D scatter in several views, open3d offscreen renders, PLY.

Every picture is framed from the clouds' own extent (centre of the bounding box, half the
longest side plus a margin), so unit-scale and mesh-scale clouds both fill their panels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from setflow.registry import register_plotter
from setflow.sets import SetBatch
from setflow.viz.sets import _np as _array

__all__ = ["plot_clouds_3d", "render_source_open3d", "render_clouds_open3d", "save_clouds_ply", "point_size_for", "plot_checkpoint",
           "cloud_frame"]

#: (elevation, azimuth) in degrees of the matplotlib views
VIEWS = ((20.0, -60.0), (20.0, 30.0), (85.0, -90.0))


def _np(x) -> np.ndarray:
    a = _array(x)  # a SetBatch: NaN in the padding (not drawn)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or a.shape[-1] != 3:
        raise ValueError(f"expected 3-D clouds of shape (n, N, 3) or (N, 3); got {a.shape}")
    return a.astype(np.float64)


def cloud_frame(clouds: np.ndarray, margin: float = 0.05) -> tuple[np.ndarray, float]:
    """``(centre (3,), half-width)`` of a cube holding every point of ``clouds (n, N, 3)``."""
    pts = clouds.reshape(-1, 3)
    pts = pts[np.isfinite(pts).all(1)]
    if len(pts) == 0:
        return np.zeros(3), 1.0
    lo, hi = pts.min(0), pts.max(0)
    half = max(float((hi - lo).max()) / 2, 1e-9) * (1 + margin)
    return (lo + hi) / 2, half


def plot_clouds_3d(data, samples, out_path: Union[str, Path], views: Sequence[tuple] = VIEWS, title: str = "",
                   row_labels: Optional[Sequence[str]] = None, point_size: Optional[float] = None,
                   frame: str = "shared") -> Path:
    """One row per cloud: ``len(views)`` 3-D scatter panels of the data cloud (grey-blue, coloured
    by height) then of the sample cloud (orange). Either ``data`` or ``samples`` may be ``None``.
    Shapes: ``(n, N, 3)``. ``frame``: ``"shared"`` draws every panel in one cube, the extent of
    all data clouds (of all samples without data), so sizes compare across panels and stray
    sample points outside it are clipped; ``"own"`` frames each cloud from its own extent."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = [(_np(b), cmap, name) for b, cmap, name in ((data, "viridis", "data"), (samples, "plasma", "samples"))
              if b is not None]
    if not blocks:
        raise ValueError("plot_clouds_3d needs data or samples")
    if frame not in ("shared", "own"):
        raise ValueError(f"frame must be 'shared' or 'own', got {frame!r}")
    shared = cloud_frame(blocks[0][0]) if frame == "shared" else None
    rows = max(len(b) for b, _, _ in blocks)
    cols = len(views) * len(blocks)
    fig = plt.figure(figsize=(2.2 * cols, 2.2 * rows + 0.4))
    # matplotlib >= 3.10 clips 3-D artists to the axes limits on request; older ones draw them all
    clip = {"axlim_clip": True} if tuple(int(v) for v in matplotlib.__version__.split(".")[:2]) >= (3, 10) else {}
    for r in range(rows):
        for bi, (b, cmap, name) in enumerate(blocks):
            if r >= len(b):
                continue
            pts = b[r]
            centre, half = shared or cloud_frame(pts[None])
            s = point_size or max(0.3, min(6.0, 2000.0 / len(pts)))
            for vi, (elev, azim) in enumerate(views):
                ax = fig.add_subplot(rows, cols, r * cols + bi * len(views) + vi + 1, projection="3d")
                ax.scatter(pts[:, 0], pts[:, 1], pts[:, 2], c=pts[:, 2], cmap=cmap, s=s, linewidths=0,
                           depthshade=True, **clip)
                for setter, c in zip((ax.set_xlim, ax.set_ylim, ax.set_zlim), centre):
                    setter(c - half, c + half)
                ax.set_box_aspect((1, 1, 1))
                ax.view_init(elev=elev, azim=azim)
                ax.set_axis_off()
                if r == 0:
                    ax.set_title(f"{name} ({elev:.0f}, {azim:.0f})", fontsize=8)
        if row_labels is not None and r < len(row_labels):
            fig.text(0.005, 1 - (r + 0.5) / rows * (1 - 0.4 / (2.2 * rows + 0.4)), str(row_labels[r]), fontsize=8)
    from setflow.viz.sets import _save

    return _save(fig, out_path, title)


def point_size_for(points: np.ndarray, width: int, fov_deg: float = 60.0, distance: float = 2.2) -> float:
    """Point size in pixels so that neighbouring points about touch: the median nearest-neighbour
    spacing of ``points (N, 3)``, relative to the cloud's extent, projected to ``width`` pixels
    with the render's perspective camera (``distance`` in half-extents), clipped to [1, 8]."""
    x = torch.as_tensor(points, dtype=torch.float32)
    from setflow.nn.knn import knn_neighbors

    nbr = knn_neighbors(x[None], 1)[0, :, 0]
    spacing = float((x - x[nbr]).norm(dim=1).median())
    _, half = cloud_frame(np.asarray(points)[None], margin=0.0)
    visible = 2 * distance * half * np.tan(np.radians(fov_deg) / 2)  # scene width at the cloud centre
    return float(np.clip(1.5 * spacing / visible * width, 1.0, 8.0))


def _render_one(o3d, pts: np.ndarray, width: int, height: int, front, fov: float = 60.0,
                up: Sequence[float] = (0.0, 0.0, 1.0)) -> np.ndarray:
    pts = pts[np.isfinite(pts).all(1)]  # padding of variable-size samples (NaN) is not drawn
    pcd = o3d.geometry.PointCloud()
    pcd.points = o3d.utility.Vector3dVector(pts)
    z = pts @ np.asarray(up, dtype=np.float64)  # coloured by height along the up axis
    t = (z - z.min()) / max(float(np.ptp(z)), 1e-12)
    pcd.colors = o3d.utility.Vector3dVector(np.stack([0.15 + 0.75 * t, 0.35 + 0.2 * t, 0.85 - 0.6 * t], 1))
    vis = o3d.visualization.Visualizer()
    if not vis.create_window(visible=False, width=width, height=height):
        raise RuntimeError("open3d could not create an offscreen window (needs an OpenGL/EGL or OSMesa driver)")
    try:
        vis.add_geometry(pcd)
        opt = vis.get_render_option()
        opt.point_size = point_size_for(pts, width, fov)
        opt.background_color = np.array([1.0, 1.0, 1.0])
        ctl = vis.get_view_control()
        ctl.change_field_of_view(step=fov - ctl.get_field_of_view())
        centre, _ = cloud_frame(pts[None], margin=0.0)
        ctl.set_lookat(centre)
        ctl.set_front(front)
        ctl.set_up(list(up))
        ctl.set_zoom(0.8)
        vis.poll_events()
        vis.update_renderer()
        img = np.asarray(vis.capture_screen_float_buffer(do_render=True))
    finally:
        vis.destroy_window()
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def render_clouds_open3d(clouds, out_path: Union[str, Path], cols: int = 4, tile: int = 320,
                         front: Sequence[float] = (1.0, -1.2, 0.7), up: Sequence[float] = (0.0, 0.0, 1.0)) -> Path:
    """Render each cloud ``(n, N, 3)`` offscreen with open3d (perspective camera looking at the
    cloud's centre from ``front``, ``up`` pointing up, point size from the data) and tile them into one PNG."""
    import open3d as o3d
    from PIL import Image

    arr = _np(clouds)
    tiles = [_render_one(o3d, pts, tile, tile, list(front), up=up) for pts in arr]
    rows = int(np.ceil(len(tiles) / cols))
    canvas = np.full((rows * tile, min(cols, len(tiles)) * tile, 3), 255, np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        canvas[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile] = t[:tile, :tile]
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas).save(out_path)
    return out_path


def render_source_open3d(source: Union[str, Path], out_path: Union[str, Path], n: int = 8, seed: int = 0) -> Path:
    """``setflow plot --open3d``: render a samples ``.npz`` (its ``samples``) or a checkpoint's
    samples (``n`` of them, seeded; one per class for a conditional model) with open3d."""
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"{source}: not a file (expected a samples .npz or a checkpoint .pt)")
    if path.suffix == ".npz":
        from setflow.viz.samples import load_samples_npz

        x = load_samples_npz(path)[:n]
    else:
        from setflow.train.checkpoint import load_model

        model, _ = load_model(path)
        torch.manual_seed(seed)
        ctx = None
        if getattr(model, "conditional", False):
            ctx = torch.arange(n) % model.context_encoder.num_classes
        x = model.sample(n, context=ctx).cpu().nan_padded().numpy()
    if x.ndim != 3 or x.shape[-1] != 3:
        raise ValueError(f"--open3d renders 3-D clouds (n, N, 3); got shape {x.shape}")
    return render_clouds_open3d(x, out_path)


def save_clouds_ply(clouds, out_dir: Union[str, Path], prefix: str = "sample", mask=None) -> list:
    """Write each cloud of ``(n, N, 3)`` as ``out_dir/<prefix>_0000.ply`` (ASCII-free binary PLY);
    with ``mask (n, N)`` (clouds of different sizes, padded) or a :class:`~setflow.sets.SetBatch` each file
    holds its real points only."""
    import open3d as o3d

    if isinstance(clouds, SetBatch):
        clouds = clouds.cpu()
        clouds, mask = clouds.points, clouds.mask.numpy()
    arr = _np(clouds)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != arr.shape[:2]:
            raise ValueError(f"expected a mask of shape {arr.shape[:2]}, got {mask.shape}")
        arr = [a[m] for a, m in zip(arr, mask)]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, pts in enumerate(arr):
        pcd = o3d.geometry.PointCloud()
        pcd.points = o3d.utility.Vector3dVector(pts)
        p = out_dir / f"{prefix}_{i:04d}.ply"
        if not o3d.io.write_point_cloud(str(p), pcd):
            raise OSError(f"open3d could not write {p}")
        paths.append(p)
    return paths


@register_plotter("pointclouds")
def plot_checkpoint(model, config: dict, data, out_path: str, n: int = 32) -> None:
    """Test clouds beside model samples (one class per row for a conditional model), 3 views each."""
    n = min(n, 8)
    if getattr(model, "conditional", False):
        num_classes = model.context_encoder.num_classes
        labels = torch.arange(min(num_classes, n))
        samples = model.sample(len(labels), context=labels.to(next(model.parameters()).device)).cpu().nan_padded()
        test = data.sets("test")
        idx = [int(torch.nonzero(test.labels == c)[0]) for c in labels if (test.labels == c).any()]
        plot_clouds_3d(test[torch.tensor(idx)].nan_padded() if len(idx) == len(labels) else None, samples, out_path,
                       row_labels=[f"class {int(c)}" for c in labels],
                       title=f"{config['model']} (conditional): data vs samples")
        return
    samples = model.sample(n).cpu().nan_padded()  # padding (clouds of different sizes) is not drawn
    idx = torch.linspace(0, len(data.test) - 1, n).long()  # spread over the (class-ordered) test split
    plot_clouds_3d(data.sets("test")[idx].nan_padded(), samples, out_path, title=f"{config['model']}: data vs samples")
