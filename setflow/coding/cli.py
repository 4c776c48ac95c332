"""``setflow compress | decompress | progressive``: plugged into :mod:`setflow.cli` by ``register``.

Examples::

    setflow compress runs/idf_fashion_mnist_cpu/last.pt img.png more/ -o out/       # out/img.idf, ...
    setflow decompress runs/idf_fashion_mnist_cpu/last.pt out/ -o restored/        # PNG in -> PNG out
    setflow progressive runs/idf_fashion_mnist_cpu/last.pt img.png -o fig.png
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch

from setflow.coding.codec import IDFCodec, load_idf, to_model_layout
from setflow.coding.format import SOURCE_PNG
from setflow.coding.io import IMAGE_SUFFIXES, collect_files, output_paths, read_image, write_image

__all__ = ["register", "run_compress", "run_decompress", "run_progressive"]


def _codec(ckpt: str) -> IDFCodec:
    model, _ = load_idf(ckpt)
    return IDFCodec(model)


def run_compress(args: argparse.Namespace) -> int:
    from setflow.coding.sets import cli_compress_sets, holds_set_codec

    if holds_set_codec(args.ckpt):  # a set_codec checkpoint codes point sets (.npz <-> .sfs)
        return cli_compress_sets(args)
    codec = _codec(args.ckpt)
    inputs = collect_files(args.inputs, IMAGE_SUFFIXES)
    outputs = output_paths(inputs, args.output, lambda p: ".idf")
    total_in = total_out = 0
    for src, dst in zip(inputs, outputs):
        arr, source = read_image(src)
        t0 = time.perf_counter()
        data = codec.compress(arr, source=source)
        dt = time.perf_counter() - t0
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(data)
        total_in += arr.size
        total_out += len(data)
        print(f"{src} -> {dst}: {len(data)} bytes, {8 * len(data) / arr.size:.3f} bits/dim, {dt:.2f} s")
    if len(inputs) > 1:
        print(f"total: {total_out} bytes for {total_in} values, {8 * total_out / total_in:.3f} bits/dim, "
              f"ratio {total_in / total_out:.2f}")
    return 0


def run_decompress(args: argparse.Namespace) -> int:
    from setflow.coding.sets import cli_decompress_sets, holds_set_codec

    if holds_set_codec(args.ckpt):  # a set_codec checkpoint codes point sets (.npz <-> .sfs)
        return cli_decompress_sets(args)
    codec = _codec(args.ckpt)
    inputs = collect_files(args.inputs, (".idf",))
    headers = {}
    for p in inputs:
        headers[p] = IDFCodec.header(p.read_bytes())

    def suffix_of(p: Path) -> str:
        if args.format != "auto":
            return "." + args.format
        h = headers[p]
        return ".png" if h.source == SOURCE_PNG and len(h.shape) in (2, 3) else ".npy"

    outputs = output_paths(inputs, args.output, suffix_of)
    for src, dst in zip(inputs, outputs):
        t0 = time.perf_counter()
        arr = codec.decompress(src.read_bytes())
        dt = time.perf_counter() - t0
        write_image(dst, arr)
        print(f"{src} -> {dst}: shape {tuple(arr.shape)} {arr.dtype}, {dt:.2f} s")
    return 0


def run_progressive(args: argparse.Namespace) -> int:
    from setflow.coding.progressive import plot_progressive, progressive_decode

    model, cfg = load_idf(args.ckpt)
    fractions = [float(f) for f in args.fractions.split(",")]
    images = []
    for src in collect_files(args.inputs, IMAGE_SUFFIXES):
        arr, _ = read_image(src)
        xb, _ = to_model_layout(arr, tuple(model.input_shape))
        images.append(xb)
    x = torch.from_numpy(np.concatenate(images)[: args.max_images]).to(torch.uint8)
    rows = progressive_decode(model, x, fractions, seed=args.seed)
    dims = math.prod(model.input_shape)
    plot_progressive(rows, fractions, args.output,
                     title=args.title if args.title is not None else f"progressive decoding ({dims} latent dims)")
    print(f"wrote {args.output}: {len(fractions)} rows x {x.shape[0]} images")
    return 0


def register(subparsers) -> None:
    """Add ``compress``, ``decompress`` and ``progressive`` to the ``setflow`` command line."""
    p = subparsers.add_parser("compress", help="losslessly compress PNG/NPY images with an IDF checkpoint")
    p.add_argument("ckpt", help="an IDF checkpoint (.pt)")
    p.add_argument("inputs", nargs="+", metavar="IMG", help="PNG or NPY files, or folders of them")
    p.add_argument("-o", "--output", required=True,
                   help="output file (one input, with a suffix) or folder (<stem>.idf per input)")
    p.set_defaults(func=run_compress)

    p = subparsers.add_parser("decompress", help="decode .idf files back to PNG/NPY, bit-exact")
    p.add_argument("ckpt", help="the IDF checkpoint used to compress")
    p.add_argument("inputs", nargs="+", metavar="FILE", help=".idf files or folders of them")
    p.add_argument("-o", "--output", required=True, help="output file (one input, with a suffix) or folder")
    p.add_argument("--format", choices=["auto", "png", "npy"], default="auto",
                   help="auto: PNG for images that came from PNG, NPY otherwise")
    p.set_defaults(func=run_decompress)

    p = subparsers.add_parser("progressive", help="progressive decoding figure (IDF paper, fig. 8)")
    p.add_argument("ckpt", help="an IDF checkpoint")
    p.add_argument("inputs", nargs="+", metavar="IMG", help="PNG/NPY images or folders")
    p.add_argument("-o", "--output", default="progressive.png")
    p.add_argument("--fractions", default="0.15,0.3,0.6,1.0", help="comma-separated latent fractions, top first")
    p.add_argument("--seed", type=int, default=0, help="seed for sampling the missing latents")
    p.add_argument("--max-images", type=int, default=8)
    p.add_argument("--title", default=None)
    p.set_defaults(func=run_progressive)
