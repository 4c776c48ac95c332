"""Image grids: data beside model samples, as one PNG.

``plot_checkpoint(model, config, data, out_path, n=64)`` is the ``"images"`` entry of
``setflow.registry.PLOTTERS`` (``setflow plot CKPT -o out.png``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import Tensor

from setflow.registry import register_plotter

__all__ = ["tile_images", "image_grid", "plot_checkpoint", "plot_grids"]


def tile_images(images: Union[Tensor, np.ndarray], nrow: Optional[int] = None, pad: int = 2,
               pad_value: int = 255, num_bits: int = 8) -> np.ndarray:
    """Tile ``(N, C, H, W)`` integer images into one ``(rows*H', cols*W', C)`` uint8 array.

    ``C`` is 1 (grey) or 3 (RGB). Values are clamped to ``[0, 2**num_bits - 1]`` and rescaled to
    8 bits when ``num_bits != 8``. ``nrow`` images go in each row (default: a square-ish grid).

    Shapes:
        images: ``(N, C, H, W)``; returns ``(rows * (H + pad) + pad, nrow * (W + pad) + pad, C)``.

    Example:
        >>> g = tile_images(torch.zeros(6, 1, 4, 4, dtype=torch.uint8), nrow=3, pad=1)
        >>> g.shape
        (11, 16, 1)
    """
    x = images.detach().cpu().numpy() if isinstance(images, Tensor) else np.asarray(images)
    if x.ndim != 4:
        raise ValueError(f"tile_images expects (N, C, H, W) images, got shape {x.shape}")
    n, c, h, w = x.shape
    if n == 0:
        raise ValueError("tile_images needs at least one image")
    hi = 2**num_bits - 1
    x = np.clip(np.rint(x.astype(np.float64)), 0, hi)
    if num_bits != 8:
        x = x * (255.0 / hi)
    x = x.astype(np.uint8)
    nrow = nrow or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / nrow))
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), pad_value, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[top : top + h, left : left + w] = x[i].transpose(1, 2, 0)
    return grid


def image_grid(images: Union[Tensor, np.ndarray], out_path: Union[str, Path], title: Optional[str] = None,
               nrow: Optional[int] = None, num_bits: int = 8) -> None:
    """Save one grid of ``(N, C, H, W)`` integer images (e.g. ``setflow sample`` output) as a PNG."""
    plot_grids([(title or "", images)], out_path, num_bits=num_bits, nrow=nrow)


def plot_grids(panels: list[tuple[str, Union[Tensor, np.ndarray]]], out_path: Union[str, Path],
               num_bits: int = 8, title: Optional[str] = None, nrow: Optional[int] = None) -> None:
    """Put several labelled image grids side by side in one figure (e.g. data | samples)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    grids = [(label, tile_images(imgs, nrow=nrow, num_bits=num_bits)) for label, imgs in panels]
    fig, axes = plt.subplots(1, len(grids), figsize=(4.2 * len(grids), 4.6), squeeze=False)
    for ax, (label, g) in zip(axes[0], grids):
        if g.shape[-1] == 1:
            ax.imshow(g[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        else:
            ax.imshow(g, interpolation="nearest")
        ax.set_title(label)
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(out_path), dpi=120)
    plt.close(fig)


@register_plotter("images")
@torch.no_grad()
def plot_checkpoint(model: Any, config: dict, data: Any, out_path: Union[str, Path], n: int = 64) -> None:
    """Draw ``n`` test images beside ``n`` model samples and save the figure to ``out_path``.

    Args:
        model: an image flow (``sample(n)`` returns integer images ``(n, C, H, W)``).
        config: the run's config (its name and model go into the title).
        data: an ``ExperimentData`` with uint8 image splits.
        out_path: PNG path.
        n: number of images in each grid.
    """
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        samples = model.sample(n)
    finally:
        model.train(was_training)
    real = data.test[:n]
    num_bits = int(config.get("model_args", {}).get("num_bits", 8))
    title = f"{config.get('name') or config.get('model')} ({config.get('model')})"
    label = getattr(data, "label", "") or "data"
    plot_grids([(label, real), ("samples", samples)], out_path, num_bits=num_bits, title=title)
