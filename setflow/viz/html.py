"""``setflow plot --html``: an interactive 3-D view of point clouds (data beside samples) in one HTML file.

The page is built with plotly (installed with open3d) and carries plotly.js inline, so it opens
offline in any browser: nothing is fetched from a CDN. Each row holds a data cloud and a sample
cloud in two 3-D scenes (drag to turn, scroll to zoom), all drawn in one cube (the extent of the
data) so sizes compare across panels. Coordinates are written as decimal numbers (4 places) rather
than plotly's base64 arrays, so the file is plain text that other tools can read back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

__all__ = ["write_clouds_html", "html_source"]

_AXES = {"x": (1, 0, 0), "y": (0, 1, 0), "z": (0, 0, 1)}


def _clouds(x, name: str) -> Optional[np.ndarray]:
    if x is None:
        return None
    import torch

    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or a.shape[-1] != 3 or len(a) == 0:
        raise ValueError(f"--html draws 3-D clouds: {name} must have shape (n, N, 3), got {a.shape}")
    return a.astype(np.float64)


def write_clouds_html(data, samples, out_path: Union[str, Path], title: str = "", up: str = "z",
                      names: Sequence[str] = ("data", "samples"), marker_size: float = 1.6) -> Path:
    """Write ``out_path`` (.html): one row per cloud, ``data`` ``(n, N, 3)`` on the left and ``samples``
    on the right (either may be ``None``); NaN points (padding) are left out. ``up``: the axis that
    points up in the initial camera (``"y"`` for ShapeNet's pose, ``"z"`` for the procedural shapes)."""
    try:
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots
    except ImportError:  # pragma: no cover - plotly comes with open3d
        raise RuntimeError("--html needs plotly (pip install plotly; it comes with open3d)") from None
    if up not in _AXES:
        raise ValueError(f"up must be one of {sorted(_AXES)}, got {up!r}")
    blocks = [(b, n) for b, n in ((_clouds(data, names[0]), names[0]), (_clouds(samples, names[1]), names[1]))
              if b is not None]
    if not blocks:
        raise ValueError("write_clouds_html needs data or samples")
    from setflow.viz.pointclouds import cloud_frame

    centre, half = cloud_frame(blocks[0][0])
    rows, cols = max(len(b) for b, _ in blocks), len(blocks)
    titles = [f"{name} {r}" if r < len(b) else "" for r in range(rows) for b, name in blocks]
    fig = make_subplots(rows=rows, cols=cols, specs=[[{"type": "scene"}] * cols for _ in range(rows)],
                        subplot_titles=titles, horizontal_spacing=0.01, vertical_spacing=0.02)
    axis = {"showbackground": False, "showticklabels": False, "title": "", "showgrid": True,
            "gridcolor": "#e4e4e4", "zeroline": False}
    eye = 1.6 * np.array((1.0, 1.0, 1.0)) - 0.9 * np.array(_AXES[up])
    for c, (b, name) in enumerate(blocks):
        scale = "Viridis" if c == 0 else "Plasma"
        for r, pts in enumerate(b):
            pts = pts[np.isfinite(pts).all(1)].round(4)
            fig.add_trace(go.Scatter3d(x=pts[:, 0].tolist(), y=pts[:, 1].tolist(), z=pts[:, 2].tolist(),
                                       mode="markers", name=f"{name} {r}", showlegend=False, hoverinfo="skip",
                                       marker={"size": marker_size, "color": pts[:, "xyz".index(up)].tolist(),
                                               "colorscale": scale}),
                          row=r + 1, col=c + 1)
    lim = [[float(m - half), float(m + half)] for m in centre]
    scene = {f"{a}axis": dict(axis, range=lim[i]) for i, a in enumerate("xyz")}
    scene.update(aspectmode="cube", camera={"up": dict(zip("xyz", _AXES[up])), "eye": dict(zip("xyz", eye.tolist()))})
    fig.update_scenes(**scene)
    fig.update_layout(title=title, height=360 * rows + 60, width=360 * cols + 40, margin=dict(l=10, r=10, t=60, b=10),
                      paper_bgcolor="white")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(str(out_path), include_plotlyjs=True, include_mathjax=False, full_html=True,
                   config={"displaylogo": False})
    return out_path


def html_source(source: str, out_path: Union[str, Path], n: int = 4, data_root: Optional[str] = None,
                seed: int = 0) -> Path:
    """``setflow plot SOURCE --html``: a checkpoint's samples beside test clouds (spread over the split), or
    the clouds of a samples ``.npz``; ``n`` rows (at most 8)."""
    import torch

    n = max(1, min(int(n), 8))
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"{source}: not a file (expected a samples .npz or a checkpoint .pt)")
    if path.suffix == ".npz":
        from setflow.viz.samples import load_samples_npz

        return write_clouds_html(None, load_samples_npz(path)[:n], out_path, title=path.name)
    from setflow.train.checkpoint import load_model
    from setflow.train.data import load_data

    model, cfg = load_model(path)
    data = load_data(cfg, data_root)
    if data.kind != "pointclouds":
        raise ValueError(f"--html draws 3-D clouds; {cfg.get('data')} is {data.kind}")
    torch.manual_seed(seed)
    ctx = None
    if getattr(model, "conditional", False):
        ctx = torch.arange(n) % model.context_encoder.num_classes
    x = model.sample(n, context=ctx)
    if isinstance(x, tuple):  # variable size: the padding becomes NaN, which is not drawn
        from setflow.viz.plot import _with_nan_padding

        x = _with_nan_padding(*x)
    idx = torch.linspace(0, len(data.test) - 1, n).long()
    up = "y" if cfg.get("data_args", {}).get("source") in ("airplanes", "shapenet") else "z"
    return write_clouds_html(data.test[idx], x, out_path, up=up,
                             title=f"{cfg.get('model')}: test clouds (left) and samples (right)")
