"""Progressive decoding (IDF paper, figure 8): show an image from a prefix of its latent stream.

The decoder meets the latent groups top level first (``z_top``, then ``y_{L-2}``, ... ``y_0``).
Keeping only the first fraction ``f`` of those dimensions in that order (inside a group, in
channel-major order) and *sampling* the rest from their (conditional) priors gives a preview
of the image; at ``f = 1`` it is the image itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from setflow.distributions import sample_discretized_logistic_mixture

__all__ = ["DEFAULT_FRACTIONS", "progressive_decode", "plot_progressive"]

DEFAULT_FRACTIONS = (0.15, 0.30, 0.60, 1.00)


def _fill(true: Tensor, params: tuple[Tensor, Tensor, Tensor], keep: int, gen: Optional[torch.Generator]) -> Tensor:
    """``true`` with its dimensions from index ``keep`` on (flattened per image) replaced by samples."""
    n = true[0].numel()
    if keep >= n:
        return true
    logits, locs, log_scales = (t.expand(true.shape[0], *t.shape[1:]) for t in params)
    sample = sample_discretized_logistic_mixture(logits, locs, log_scales, generator=gen).to(true.dtype)
    flat_t, flat_s = true.reshape(true.shape[0], -1), sample.reshape(true.shape[0], -1)
    mask = torch.arange(n, device=true.device) < keep
    return torch.where(mask, flat_t, flat_s).reshape(true.shape)


@torch.no_grad()
def progressive_decode(
    model: nn.Module, x: Tensor, fractions: Sequence[float] = DEFAULT_FRACTIONS, seed: int = 0
) -> Tensor:
    """Decode ``x`` (``(B, C, H, W)`` uint8) from prefixes of its latents.

    Returns ``(len(fractions), B, C, H, W)`` uint8; row ``i`` keeps ``round(fractions[i] * D)``
    latent dimensions (decoding order, top level first) and samples the others.
    """
    for f in fractions:
        if not 0.0 <= f <= 1.0:
            raise ValueError(f"fractions must lie in [0, 1], got {f}")
    model = model.eval()
    groups = model.split_latents(x)  # forward order: [y_0, ..., z_top]
    total = sum(g[0].numel() for g in groups)
    gen = torch.Generator(device=groups[0].device).manual_seed(seed)
    rows = []
    for f in fractions:
        budget = [int(round(f * total))]

        def take(true: Tensor, params) -> Tensor:
            keep = min(budget[0], true[0].numel())
            budget[0] -= keep
            return _fill(true, params, keep, gen)

        z_top = take(groups[-1], model.base.params())
        out = model.decode_top_down(z_top, lambda i, layer, kept: take(groups[i], layer.density.params(kept)))
        rows.append(out.clamp(0, 255).round().to(torch.uint8))
    return torch.stack(rows)


def plot_progressive(
    rows: Tensor, fractions: Sequence[float], out_path: str, title: Optional[str] = None
) -> None:
    """Draw ``rows`` (``(F, B, C, H, W)`` uint8) as in the paper: one row per fraction, one column per image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nf, nb = rows.shape[0], rows.shape[1]
    fig, axes = plt.subplots(nf, nb, figsize=(1.3 * nb + 0.9, 1.3 * nf + (0.4 if title else 0.0)), squeeze=False)
    for i in range(nf):
        for j in range(nb):
            img = rows[i, j].cpu().numpy()
            ax = axes[i, j]
            if img.shape[0] == 1:
                ax.imshow(img[0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            else:
                ax.imshow(np.moveaxis(img, 0, -1), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(f"{100 * fractions[i]:.0f}%", rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
