"""``setflow compress | decompress | progressive``: plugged into :mod:`setflow.cli` by ``register``.

The checkpoint picks the codec: an IDF codes images (``.png``/``.npy`` <-> ``.idf``), a ``set_codec``
model codes pixel sets (``.npz``/``.npy`` <-> ``.sfs``). Examples::

    setflow compress runs/idf_fashion_mnist_cpu/last.pt img.png more/ -o out/       # out/img.idf, ...
    setflow decompress runs/idf_fashion_mnist_cpu/last.pt out/ -o restored/        # PNG in -> PNG out
    setflow progressive runs/idf_fashion_mnist_cpu/last.pt img.png -o fig.png
    setflow compress runs/set_codec_spatial_mnist_cpu/last.pt sets.npz -o test.sfs  # pixel sets
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch

from setflow.coding.codec import IDFCodec, check_pixels, load_idf, to_model_layout
from setflow.coding.format import SOURCE_PNG, CodecError, DecodeMismatchError, FormatError
from setflow.coding.io import (IMAGE_SUFFIXES, collect_files, output_paths, png_layout, read_image, read_sets_file,
                               write_image)
from setflow.data.common import atomic_write

__all__ = ["register", "run_compress", "run_decompress", "run_progressive", "holds_set_codec", "compress_sets_file",
           "decompress_sets_file"]


def _codec(ckpt: str) -> IDFCodec:
    model, _ = load_idf(ckpt)
    return IDFCodec(model)


def _validate(items, check, skip: bool, what: str) -> list:
    """``check(item)`` for every item before anything is written: the first failure raises
    (``ValueError``), or with ``skip`` every failure is reported and the item dropped."""
    good, failed = [], []
    for item in items:
        try:
            good.append((item, check(item)))
        except (ValueError, OSError) as e:  # CodecError is a ValueError
            msg = str(e) if str(e).startswith(str(item)) else f"{item}: {e}"
            if not skip:
                raise ValueError(f"{msg} (nothing was written; --skip-errors skips bad inputs)") from e
            failed.append(msg)
    for msg in failed:
        print(f"skipped {msg}")
    if failed:
        print(f"skipped {len(failed)} of {len(items)} {what} (--skip-errors)")
    if not good:
        raise ValueError(f"none of the {len(items)} {what} could be read")
    return good


def _decodes_to(arr: np.ndarray, back, data: bytes, src: Path, dst: Path):
    """The check :func:`~setflow.data.common.atomic_write` runs on the written temp file: ``data``
    decoded (``back``, from one batched pass) to ``arr`` exactly (values, shape, dtype), and the
    temp file holds exactly ``data``; else nothing is written for ``src``."""
    def check(tmp: Path) -> None:
        if isinstance(back, CodecError):
            why = f"{type(back).__name__}: {back}"
        elif not (back.dtype == arr.dtype and back.shape == arr.shape and np.array_equal(back, arr)):
            why = "it decodes to a different image"
        else:
            why = "" if tmp.read_bytes() == data else "the written file differs from the coded bytes"
        if why:
            raise DecodeMismatchError(f"{src}: verification failed, {dst} was not written (the compressed file "
                                      f"does not decode back to the input: {why}); the input is untouched")
    return check


def run_compress(args: argparse.Namespace) -> int:
    if holds_set_codec(args.ckpt):  # a set_codec checkpoint codes point sets (.npz <-> .sfs)
        return compress_sets_file(args)
    codec = _codec(args.ckpt)
    channels = codec.input_shape[0]

    def check(src: Path):
        arr, source = read_image(src, channels=channels)
        codec.check_image(arr)
        return arr, source

    good = _validate(collect_files(args.inputs, IMAGE_SUFFIXES), check, args.skip_errors, "inputs")
    outputs = output_paths([src for src, _ in good], args.output, lambda p: ".idf")
    verify = getattr(args, "verify", True)
    total_in = total_out = 0
    from setflow.coding.io import Progress

    jobs = list(zip(good, outputs))
    with Progress(len(jobs), quiet=getattr(args, "quiet", False)) as bar:
        for start in range(0, len(jobs), codec.batch_size):  # one forward pass per batch of files
            batch = jobs[start : start + codec.batch_size]
            arrays = [arr for (_, (arr, _)), _ in batch]
            t0 = time.perf_counter()
            datas = codec.compress_many(arrays, [kind for (_, (_, kind)), _ in batch])
            dt = (time.perf_counter() - t0) / len(batch)
            backs = codec.decompress_many(datas, errors="return") if verify else [None] * len(batch)
            for ((src, (arr, _)), dst), data, back in zip(batch, datas, backs):
                atomic_write(dst, lambda f: f.write(data),
                             check=_decodes_to(arr, back, data, src, dst) if verify else None)
                total_in += arr.size
                total_out += len(data)
                bar.say(f"{src} -> {dst}: {len(data)} bytes, {8 * len(data) / arr.size:.3f} bits/dim, {dt:.3f} s"
                        + ("" if verify else " (not verified)"))
            bar.update(len(batch))
    if len(good) > 1:
        print(f"total: {total_out} bytes for {total_in} values, {8 * total_out / total_in:.3f} bits/dim, "
              f"ratio {total_in / total_out:.2f}")
    return 0


def run_decompress(args: argparse.Namespace) -> int:
    if holds_set_codec(args.ckpt):  # a set_codec checkpoint codes point sets (.npz <-> .sfs)
        return decompress_sets_file(args)
    codec = _codec(args.ckpt)

    def check(src: Path):
        data = src.read_bytes()
        arr = codec.decompress(data)  # decoding is the only full check (fingerprint, stream, checksum)
        return IDFCodec.header(data), arr

    good = _validate(collect_files(args.inputs, (".idf",)), check, args.skip_errors, "files")
    headers = {src: h for src, (h, _) in good}

    def suffix_of(p: Path) -> str:
        if args.format != "auto":
            return "." + args.format
        h = headers[p]
        return ".png" if h.source == SOURCE_PNG and len(h.shape) in (2, 3) else ".npy"

    outputs = output_paths([src for src, _ in good], args.output, suffix_of)
    for (src, (_, arr)), dst in zip(good, outputs):
        if dst.suffix.lower() == ".png":
            png_layout(arr)  # raises before writing for arrays PNG cannot hold
    for (src, (_, arr)), dst in zip(good, outputs):
        write_image(dst, arr)
        print(f"{src} -> {dst}: shape {tuple(arr.shape)} {arr.dtype}")
    return 0


def run_progressive(args: argparse.Namespace) -> int:
    from setflow.coding.progressive import plot_progressive, progressive_decode
    from setflow.train.config import check_positive

    check_positive(args.max_images, "--max-images")
    try:
        fractions = [float(f) for f in args.fractions.split(",")]
    except ValueError:
        raise ValueError(f"--fractions must be comma-separated numbers in [0, 1], got {args.fractions!r}") from None
    model, cfg = load_idf(args.ckpt)
    images = []
    for src in collect_files(args.inputs, IMAGE_SUFFIXES):
        arr, _ = read_image(src, channels=model.input_shape[0])
        try:
            xb, _ = to_model_layout(check_pixels(arr), tuple(model.input_shape))
        except ValueError as e:
            raise ValueError(f"{src}: {e}") from None
        images.append(xb)
    x = torch.from_numpy(np.concatenate(images)[: args.max_images]).to(torch.uint8)
    rows = progressive_decode(model, x, fractions, seed=args.seed)
    dims = math.prod(model.input_shape)
    plot_progressive(rows, fractions, args.output,
                     title=args.title if args.title is not None else f"progressive decoding ({dims} latent dims)")
    print(f"wrote {args.output}: {len(fractions)} rows x {x.shape[0]} images")
    return 0


# ----------------------------------------------------------------------------- pixel sets
def holds_set_codec(ckpt: str) -> bool:
    """Whether a checkpoint holds a ``set_codec`` model (``setflow compress`` dispatches on it)."""
    from setflow.train.checkpoint import load_checkpoint

    return load_checkpoint(ckpt)["config"].get("model") == "set_codec"


def _set_codec(args: argparse.Namespace, suffix: str, what: str):
    """``(codec, output path)`` of a set-codec command: one input, an output that is not the input
    (a folder gets ``<input stem><suffix>``), and the checkpoint's :class:`SetCodec`."""
    from setflow.coding.sets import SetCodec
    from setflow.train.checkpoint import load_model

    if len(args.inputs) != 1:
        raise FormatError(what)
    try:
        dst = output_paths([Path(args.inputs[0])], args.output, lambda p: suffix)[0]
    except ValueError as e:
        raise FormatError(str(e)) from None
    model, cfg = load_model(args.ckpt, device="cpu")
    return SetCodec(model, cfg), dst


def compress_sets_file(args: argparse.Namespace) -> int:
    """``setflow compress SETCODEC.pt sets.npz -o out.sfs``: all sets of the file into one ``.sfs``,
    decoded again before it is written unless ``--no-verify``."""
    codec, dst = _set_codec(args, ".sfs", "the set codec takes one .npz (or .npy) of sets (M, N) per call")
    sets, _ = codec.check(read_sets_file(args.inputs[0]))
    if sets.shape[0] == 0:
        raise FormatError(f"{args.inputs[0]} holds no sets: nothing to compress")
    t0 = time.perf_counter()
    data = codec.compress(sets)
    dt = time.perf_counter() - t0
    checked = []

    def decodes_back(_tmp) -> None:
        t1 = time.perf_counter()
        try:
            codec.verify(sets, data)
        except CodecError as e:
            raise DecodeMismatchError(f"verification failed, nothing written ({dst} untouched, the input "
                                      f"too): the new file does not decode back to the sets: {e}") from None
        checked.append(sets.shape[0] / max(time.perf_counter() - t1, 1e-9))

    verify = getattr(args, "verify", True)
    atomic_write(dst, lambda f: f.write(data), check=decodes_back if verify else None)
    note = f"verified: decodes back bit-exact ({checked[0]:.0f} sets/s)" if verify else "not verified (--no-verify)"
    points = int((sets >= 0).sum())
    print(f"{args.inputs[0]} -> {dst}: {sets.shape[0]} sets, {points} points, {len(data)} bytes, "
          f"{8 * len(data) / points:.3f} bits/point, {sets.shape[0] / max(dt, 1e-9):.0f} sets/s; {note}")
    return 0


def decompress_sets_file(args: argparse.Namespace) -> int:
    """``setflow decompress SETCODEC.pt out.sfs -o sets.npz``: writes ``sets`` (M, N) sorted indices
    (``-1`` marks an absent point), ``pixels`` (M, N, 2) integer (col, row) and ``mask`` (M, N)."""
    codec, dst = _set_codec(args, ".npz", "the set codec decodes one .sfs file per call")
    try:
        with open(args.inputs[0], "rb") as fh:
            data = fh.read()
    except OSError as e:
        raise FormatError(f"{args.inputs[0]}: cannot read ({e.strerror})") from None
    t0 = time.perf_counter()
    sets = codec.decompress(data)
    dt = time.perf_counter() - t0
    mask = sets >= 0
    pixels = np.where(mask[..., None], np.stack([sets % codec.grid, sets // codec.grid], -1), -1)
    atomic_write(dst, lambda f: np.savez(f, sets=sets, pixels=pixels, mask=mask))
    print(f"{args.inputs[0]} -> {dst}: {sets.shape[0]} sets, {int(mask.sum())} points, "
          f"{sets.shape[0] / max(dt, 1e-9):.0f} sets/s")
    return 0


def register(subparsers) -> None:
    """Add ``compress``, ``decompress`` and ``progressive`` to the ``setflow`` command line."""
    p = subparsers.add_parser("compress", help="losslessly compress PNG/NPY images with an IDF checkpoint")
    p.add_argument("ckpt", help="an IDF checkpoint (.pt)")
    p.add_argument("inputs", nargs="+", metavar="IMG", help="PNG or NPY files, or folders of them")
    p.add_argument("-o", "--output", required=True,
                   help="output file (one input, with a suffix) or folder (<stem>.idf per input): an existing "
                        "folder or a new one with a trailing '/'")
    p.add_argument("--skip-errors", action="store_true",
                   help="skip unreadable or unfitting inputs (listed at the end) instead of stopping before writing")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip decoding each output before it is kept (faster; by default a file that does not "
                        "decode back to its input is never written)")
    p.set_defaults(func=run_compress)

    p = subparsers.add_parser("decompress", help="decode .idf files back to PNG/NPY, bit-exact")
    p.add_argument("ckpt", help="the IDF checkpoint used to compress")
    p.add_argument("inputs", nargs="+", metavar="FILE", help=".idf files or folders of them")
    p.add_argument("-o", "--output", required=True,
                   help="output file (one input, with a suffix) or folder (existing, or new with a trailing '/')")
    p.add_argument("--skip-errors", action="store_true",
                   help="skip damaged or mismatched files (listed at the end) instead of stopping before writing")
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
