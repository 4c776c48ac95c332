#!/usr/bin/env python
"""open3d renders of a 3-D latent set flow: samples beside data, reconstructions, an interpolation strip.

    python scripts/latent_pictures.py runs/lat_air/last.pt --data-root datasets --out docs --prefix airplanes

writes ``<out>/<prefix>_samples.png`` (top row: test clouds spread over the split; bottom row:
model samples), ``<prefix>_reconstructions.png`` (top: test clouds; bottom: decode(encode(cloud))
with the posterior-mean code) and ``<prefix>_interpolation.png`` (codes on a line between two test
clouds' codes, one decoder noise along the row, the two test clouds at the ends), every tile an
open3d offscreen render from the same camera. It prints numbers to judge them by, all Chamfer
distances (mean squared nearest-neighbour distance, both ways, in the data's units):

- samples: median over samples of the CD to the nearest training cloud, beside the same for the
  test clouds (real clouds that the model never saw: what "near the data" means here);
- reconstructions: median CD(test cloud, its reconstruction), beside median CD(test cloud, the
  nearest training cloud);
- interpolation: CD of each end of the strip to its test cloud, and the shape's extent along the
  path (the three bounding-box sides), which should move from one end's to the other's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch


def _label(img: np.ndarray, rows: list[str], tile: int) -> np.ndarray:
    """A white margin on the left with one label per row of tiles."""
    from PIL import Image, ImageDraw

    margin = 110
    canvas = Image.new("RGB", (img.shape[1] + margin, img.shape[0]), "white")
    canvas.paste(Image.fromarray(img), (margin, 0))
    draw = ImageDraw.Draw(canvas)
    for r, text in enumerate(rows):
        draw.text((6, r * tile + tile // 2 - 6), text, fill=(0, 0, 0))
    return np.asarray(canvas)


def _render(clouds: torch.Tensor, path: Path, cols: int, rows: list[str], tile: int, up, front) -> Path:
    from PIL import Image

    from setflow.viz.pointclouds import render_clouds_open3d

    render_clouds_open3d(clouds.numpy(), path, cols=cols, tile=tile, front=front, up=up)
    Image.fromarray(_label(np.asarray(Image.open(path).convert("RGB")), rows, tile)).save(path)
    return path


def _cd_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    from setflow.metrics.distances import pairwise_chamfer

    return pairwise_chamfer(a.double(), b.double())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ckpt")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--out", default="docs")
    ap.add_argument("--prefix", default="airplanes")
    ap.add_argument("-n", type=int, default=6, help="clouds per row")
    ap.add_argument("--steps", type=int, default=8, help="decoded codes in the interpolation strip")
    ap.add_argument("--num-points", type=int, default=2048)
    ap.add_argument("--tile", type=int, default=240)
    ap.add_argument("--up", default="y", choices=["y", "z"], help="the data's up axis (y: ShapeNet's pose)")
    ap.add_argument("--pair", type=int, nargs=2, default=None, help="test clouds at the ends of the strip")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from setflow.cli import _with_num_points
    from setflow.train.checkpoint import load_model
    from setflow.train.data import load_data

    model, cfg = load_model(args.ckpt)
    model.eval()
    cfg = _with_num_points(model, cfg, args.num_points)
    data = load_data(cfg, args.data_root)
    test, train = data.test, data.train
    up = (0.0, 1.0, 0.0) if args.up == "y" else (0.0, 0.0, 1.0)
    front = (0.9, 0.75, -1.0) if args.up == "y" else (1.0, -1.2, 0.7)  # ahead, left and above
    out = Path(args.out)
    torch.manual_seed(args.seed)
    n = min(args.n, len(test))
    idx = torch.linspace(0, len(test) - 1, n).long()

    # samples beside data
    with torch.no_grad():
        gen = model.sample(n, num_points=args.num_points).float()
    p = _render(torch.cat([test[idx], gen]), out / f"{args.prefix}_samples.png", n, ["test clouds", "samples"],
                args.tile, up, front)
    d_gen = _cd_matrix(gen, train).min(1).values
    d_test = _cd_matrix(test, train).min(1).values
    print(f"{p}: CD to the nearest training cloud, median: samples {d_gen.median():.5f} "
          f"(range {d_gen.min():.5f}..{d_gen.max():.5f}); test clouds {d_test.median():.5f} "
          f"(range {d_test.min():.5f}..{d_test.max():.5f})")

    # reconstructions
    with torch.no_grad():
        rec = model.reconstruct(test[idx]).float()
    p = _render(torch.cat([test[idx], rec]), out / f"{args.prefix}_reconstructions.png", n,
                ["test clouds", "reconstructed"], args.tile, up, front)
    d_rec = torch.diagonal(_cd_matrix(test[idx], rec))
    d_nn = _cd_matrix(test[idx], train).min(1).values
    print(f"{p}: CD(test, reconstruction) median {d_rec.median():.5f} (range {d_rec.min():.5f}..{d_rec.max():.5f}); "
          f"CD(test, nearest training cloud) median {d_nn.median():.5f}")

    # interpolation strip
    a, b = (int(idx[0]), int(idx[-1])) if args.pair is None else args.pair
    with torch.no_grad():
        path = model.interpolate(test[a:a + 1], test[b:b + 1], steps=args.steps, num_points=args.num_points)[0].float()
    strip = torch.cat([test[a:a + 1], path, test[b:b + 1]])
    p = _render(strip, out / f"{args.prefix}_interpolation.png", len(strip), [""], args.tile, up, front)
    ends = _cd_matrix(path[[0, -1]], test[[a, b]])
    sides = (path.amax(1) - path.amin(1)).numpy()
    print(f"{p}: test {a} -> test {b}; CD(first decoded, A) {ends[0, 0]:.5f} vs (first, B) {ends[0, 1]:.5f}; "
          f"CD(last, B) {ends[1, 1]:.5f} vs (last, A) {ends[1, 0]:.5f}")
    for t, s in zip(np.linspace(0, 1, args.steps), sides):
        print(f"  t={t:.2f}: bounding box x {s[0]:.2f}  y {s[1]:.2f}  z {s[2]:.2f}")
    sa, sb = (test[i].amax(0) - test[i].amin(0) for i in (a, b))
    print(f"  test A box {sa[0]:.2f} {sa[1]:.2f} {sa[2]:.2f}; test B box {sb[0]:.2f} {sb[1]:.2f} {sb[2]:.2f}")


if __name__ == "__main__":
    main()
