#!/usr/bin/env python
"""Benchmark the IDF codec against classical lossless image codecs on the same test images.

Every image is compressed on its own (one file / bitstream per image, headers included), as a
user compressing image files would; the IDF row "one file for all n" shows the header amortised.
Each baseline is checked to round-trip losslessly. Speeds are images per second, the median
of ``--runs`` passes over the ``n`` images, on the threads torch/imagecodecs get here (the IDF
coder always runs its networks on one thread, in float64, for bit-exact decoding).

Example::

    python scripts/bench_codecs.py --ckpt runs/idf_fashion_mnist_cpu/last.pt --n 200 --out bench_codecs.md

``--speed`` times only the IDF coder against JPEG XL (lossless, effort 7) on the same images, in
one process, alternating the three in every round (the median of ``--runs`` rounds): IDF one
image per forward pass (``compress``/``decompress`` per file, ``batch_size=1``), IDF batched
(``compress_many``/``decompress_many``, one file per image all the same), and JPEG XL. Speed
does not depend on training, so ``--random-model CONFIG`` uses an untrained model of a config::

    python scripts/bench_codecs.py --speed --random-model configs/images/idf_fashion_mnist_cpu.yaml --n 256
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import imagecodecs
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from setflow.coding import IDFCodec  # noqa: E402
from setflow.coding.codec import load_idf  # noqa: E402
from setflow.coding.format import unpack  # noqa: E402

Encode = Callable[[np.ndarray], bytes]
Decode = Callable[[bytes], np.ndarray]


def _hwc(x: np.ndarray) -> np.ndarray:
    """(C, H, W) -> (H, W) or (H, W, C), contiguous uint8."""
    a = x[0] if x.shape[0] == 1 else np.moveaxis(x, 0, -1)
    return np.ascontiguousarray(a, dtype=np.uint8)


def _rgb(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(a[..., None], 3, -1)) if a.ndim == 2 else a


def baselines() -> list[tuple[str, str, Encode, Decode, Callable[[np.ndarray], np.ndarray]]]:
    """``(name, settings, encode, decode, prepare)``; ``prepare`` maps an (H, W[, C]) image to the codec's input."""
    ic = imagecodecs
    same = lambda a: a  # noqa: E731
    return [
        ("PNG", "libpng, zlib level 9", lambda a: ic.png_encode(a, level=9), ic.png_decode, same),
        ("JPEG 2000", "OpenJPEG, reversible 5/3, J2K codestream",
         lambda a: ic.jpeg2k_encode(a, level=0, reversible=True, codecformat="J2K"), ic.jpeg2k_decode, same),
        ("WebP", "libwebp lossless, level 100, method 6 (grey as RGB)",
         lambda a: ic.webp_encode(a, lossless=True, level=100, method=6), ic.webp_decode, _rgb),
        ("JPEG XL", "libjxl lossless, effort 7", lambda a: ic.jpegxl_encode(a, lossless=True), ic.jpegxl_decode, same),
        ("JPEG XL", "libjxl lossless, effort 9",
         lambda a: ic.jpegxl_encode(a, lossless=True, effort=9), ic.jpegxl_decode, same),
        ("JPEG-LS", "CharLS, near=0", lambda a: ic.jpegls_encode(a, level=0), ic.jpegls_decode, same),
    ]


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _timed(fn: Callable[[], object], runs: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(runs):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def test_images(cfg: dict, split: str = "test", n: Optional[int] = None, data_root: Optional[str] = None,
                data: Optional[str] = None, photos: Optional[Sequence[str]] = None
                ) -> tuple[np.ndarray, str, Optional[np.ndarray]]:
    """``(images (N, C, H, W) uint8, source line, photo names)``: the first ``n`` (all if ``None``) images
    of a split of the checkpoint's data set, or of ``data`` instead (another data set: the IDF-dagger
    column); with ``photos`` (photo tiles only) just the tiles of photos whose name starts with one of
    them. ``photo names`` (each image's photo) is ``None`` unless the images are photo tiles."""
    from setflow.train.data import load_data

    name = data or cfg.get("data")
    size = {"photos32": 32, "photos64": 64}.get(name)
    if photos is not None or size is not None:
        photos = photos or [""]
        if size is None:
            raise ValueError(f"--photos selects photo tiles by photo name; the data set here is {name!r}, "
                             "not photos32 or photos64")
        from setflow.data.common import resolve_data_root
        from setflow.data.photos import DEFAULT_FACTOR, prepare_photo_tiles

        factor = int(cfg.get("data_args", {}).get("factor", DEFAULT_FACTOR)) if name == cfg.get("data") else DEFAULT_FACTOR
        arrays, line, _ = prepare_photo_tiles(resolve_data_root(data_root), size, factor, download=False)
        names = arrays[f"{split}_photo"].astype(str)
        keep = np.zeros(len(names), bool)
        for prefix in photos:
            keep |= np.char.startswith(names, prefix)
        if not keep.any():
            raise ValueError(f"no {split} tile comes from a photo named {' or '.join(p + '*' for p in photos)} "
                             f"(photos: {', '.join(sorted(set(names)))})")
        x = np.ascontiguousarray(arrays[split][keep].transpose(0, 3, 1, 2))
        names = names[keep]
        source = line.strip() if keep.all() else f"{line.strip()}; only the tiles of {', '.join(sorted(set(names)))}"
    else:
        other = dict(cfg, data=name, data_args={} if data and data != cfg.get("data") else cfg.get("data_args", {}))
        d = load_data(other, data_root)
        x, source, names = d.split(split).numpy(), d.source.strip(), None
    if n:
        x, names = x[:n], None if names is None else names[:n]
    return x, source, names


def parse_groups(specs: Sequence[str]) -> dict[str, list[str]]:
    """``["never-JPEG=jxl-", "wallpapers=kde-,mate-"]`` -> ``{label: [photo name prefixes]}``."""
    groups = {}
    for spec in specs:
        label, sep, prefixes = spec.partition("=")
        parts = [q for q in prefixes.split(",") if q]
        if not sep or not label or not parts:
            raise ValueError(f"--group wants LABEL=PREFIX[,PREFIX] (e.g. never-JPEG=jxl-), got {spec!r}")
        groups[label] = parts
    return groups


def _group_table(groups: dict[str, list[str]], names: Optional[np.ndarray], dims: int,
                 per_image: dict[str, np.ndarray], one_file: Callable[[np.ndarray], int]) -> list[str]:
    """Bits/dim of every codec on each group of photos, from the same files (nothing coded again but
    IDF's one file per group)."""
    if names is None:
        raise ValueError("--group needs photo tiles (photos32 / photos64)")
    masks = {}
    for label, prefixes in groups.items():
        keep = np.zeros(len(names), bool)
        for prefix in prefixes:
            keep |= np.char.startswith(names.astype(str), prefix)
        if not keep.any():
            raise ValueError(f"group {label}: no image comes from a photo named {' or '.join(q + '*' for q in prefixes)}")
        masks[label] = keep
    head = " | ".join(f"{label} ({int(m.sum())} tiles: {', '.join(sorted(set(names[m].astype(str))))})"
                      for label, m in masks.items())
    out = ["", "Bits/dim by source (the same files as above):", "", f"| codec | {head} |",
           "|---" * (len(masks) + 1) + "|"]
    bpd = lambda nbytes, m: 8.0 * nbytes / (int(m.sum()) * dims)  # noqa: E731
    for name, sizes in per_image.items():
        out.append(f"| {name} | " + " | ".join(f"{bpd(sizes[m].sum(), m):.3f}" for m in masks.values()) + " |")
        if name.startswith("IDF (file per image"):
            out.append("| IDF (one file per group) | "
                       + " | ".join(f"{bpd(one_file(m), m):.3f}" for m in masks.values()) + " |")
    return out


def bench(ckpt: str, n: Optional[int], runs: int = 3, split: str = "test", data_root: Optional[str] = None,
          data: Optional[str] = None, photos: Optional[Sequence[str]] = None, batch_size: int = 32,
          groups: Optional[dict[str, list[str]]] = None) -> str:
    model, cfg = load_idf(ckpt)
    x, source, names = test_images(cfg, split, n, data_root, data, photos)
    if tuple(x.shape[1:]) != tuple(model.input_shape):
        raise ValueError(f"the model codes images of shape {tuple(model.input_shape)}; "
                         f"these are {tuple(x.shape[1:])}")
    n, dims = x.shape[0], int(np.prod(x.shape[1:]))
    raw_bytes = n * dims
    rows = []

    def row(name: str, settings: str, nbytes: float, enc_s: Optional[float], dec_s: Optional[float], ok: str) -> None:
        bpd = 8.0 * nbytes / (n * dims)
        rate = lambda s: "–" if s is None else f"{n / s:.1f}"  # noqa: E731
        ratio = raw_bytes / nbytes
        rows.append(f"| {name} | {settings} | {bpd:.3f} | {ratio:.2f} | {rate(enc_s)} | {rate(dec_s)} | {ok} |")

    # ---------------------------------------------------------------- IDF
    codec = IDFCodec(model)
    with torch.no_grad():
        lp32 = -float(model.log_prob(torch.from_numpy(x)).sum()) / math.log(2.0)
    bits = np.asarray(codec.bits(x), np.float64)
    analytic = float(bits.sum())
    enc_s, files = _timed(lambda: [codec.compress(img) for img in x], runs)
    dec_s, back = _timed(lambda: [codec.decompress(f) for f in files], runs)
    ok = all(np.array_equal(a, b) for a, b in zip(x, back))
    per_image = sum(len(f) for f in files)
    payload = sum(4 * unpack(f)[1].size for f in files)
    header = (per_image - payload) / n
    many = IDFCodec(model, batch_size=batch_size)
    images = list(x)
    enc_b, files_b = _timed(lambda: many.compress_many(images), runs)
    dec_b, back_b = _timed(lambda: many.decompress_many(files_b), runs)
    ok_many = files_b == files and all(np.array_equal(a, b) for a, b in zip(x, back_b))
    batch_file = codec.compress(x)
    ok_batch = np.array_equal(codec.decompress(batch_file), x)
    row("IDF (analytic)", "-log2 p(x), float64 coding path", analytic / 8.0, None, None, "–")
    row("IDF (file per image)", f"ANS (constriction), {header:.0f}-byte header, one image per pass",
        per_image, enc_s, dec_s, "yes" if ok else "**NO**")
    row("IDF (file per image, batched)", f"same files, {batch_size} images per pass", per_image, enc_b, dec_b,
        "yes" if ok_many else "**NO** (or files differ)")
    row(f"IDF (one file, {n} images)", "same, header amortised", len(batch_file), None, None,
        "yes" if ok_batch else "**NO**")

    # ---------------------------------------------------------------- classical codecs
    sizes = {}
    per_img = {"IDF (analytic)": bits / 8.0, "IDF (file per image)": np.array([len(f) for f in files])}
    for name, settings, enc, dec, prep in baselines():
        imgs = [prep(_hwc(img)) for img in x]
        try:
            enc_t, streams = _timed(lambda: [enc(a) for a in imgs], runs)
            dec_t, outs = _timed(lambda: [dec(s) for s in streams], runs)
        except Exception as e:  # a codec missing from this imagecodecs build
            rows.append(f"| {name} | {settings} | n/a ({type(e).__name__}) | | | | |")
            continue
        good = all(np.array_equal(np.asarray(o).reshape(a.shape), a) for o, a in zip(outs, imgs))
        row(name, settings, sum(len(s) for s in streams), enc_t, dec_t, "yes" if good else "**NO**")
        sizes[f"{name}, {settings}"] = sum(len(s) for s in streams)
        per_img[f"{name}, {settings.split(', ')[-1]}" if name == "JPEG XL" else name] = np.array([len(s) for s in streams])

    overhead = 100.0 * (8 * payload - analytic) / analytic
    by_group = _group_table(groups, names, dims, per_img, lambda m: len(codec.compress(x[m]))) if groups else []
    best = min(sizes, key=sizes.get) if sizes else None
    verdict = "" if best is None else (
        f"- best classical codec: {best} at {8.0 * sizes[best] / (n * dims):.3f} bits/dim; IDF files per image "
        f"{100.0 * (per_image / sizes[best] - 1):+.1f}%, one file {100.0 * (len(batch_file) / sizes[best] - 1):+.1f}% "
        f"against it.")
    n_params = sum(p.numel() for p in model.parameters())
    cpu = _cpu_name()
    lines = [
        f"Lossless compression of {n} {split} images ({source}), "
        f"shape {tuple(x.shape[1:])}, each image its own file.",
        "",
        "| codec | settings | bits/dim | ratio | encode img/s | decode img/s | lossless |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"- IDF checkpoint: `{ckpt}` ({cfg.get('name', '')}: {n_params:,} parameters); "
        f"float32 model -log2 p = {lp32 / (n * dims):.4f} bits/dim, float64 coding path {analytic / (n * dims):.4f}.",
        f"- IDF payload vs analytic bits: {overhead:+.2f}% (ANS quantisation, escapes, final coder state); "
        f"header {header:.0f} bytes/image = {8 * header / dims:.3f} bits/dim.",
        *([verdict] if verdict else []),
        f"- ratio = raw bytes / compressed bytes; speeds: median of {runs} runs, {cpu}, "
        f"torch {torch.__version__}, imagecodecs {imagecodecs.__version__}, {torch.get_num_threads()} torch threads.",
        *by_group,
    ]
    return "\n".join(lines) + "\n"


def _speed_model(ckpt: Optional[str], config: Optional[str], seed: int = 0):
    """``(model, cfg)``: a checkpoint's IDF, or an untrained one of ``config`` (seeded)."""
    if ckpt:
        return load_idf(ckpt)
    from setflow.models import build_model
    from setflow.train.config import load_config

    cfg = load_config(config)
    torch.manual_seed(seed)
    return build_model(cfg["model"], **cfg["model_args"]).eval(), cfg


def speed(model, cfg: dict, n: int, runs: int = 3, batch_size: int = 32, split: str = "test",
          data_root: Optional[str] = None) -> str:
    """Images/s of IDF (one image per pass, batched) and JPEG XL effort 7 on the same images."""
    return speed_runs(model, cfg, n, runs, batch_size, split, data_root)["table"]


def speed_runs(model, cfg: dict, n: int, runs: int = 3, batch_size: int = 32, split: str = "test",
               data_root: Optional[str] = None, one_per_pass: bool = True) -> dict:
    """:func:`speed`'s measurements: ``times[coder] = (encode seconds per round, decode seconds per round)``,
    ``images``, ``jxl`` (the JPEG XL coder's name), ``batched`` (the batched IDF's) and ``table`` (markdown)."""
    from setflow.train.data import load_data

    try:
        x = load_data(cfg, data_root).split(split)[:n].numpy()
        source = f"the first {len(x)} {split} images of {cfg.get('data')}"
    except Exception as e:  # no data here: random images of the model's shape
        x = np.random.default_rng(0).integers(0, 256, (n, *model.input_shape), dtype=np.uint8)
        source = f"{n} random images ({type(e).__name__} loading {cfg.get('data')})"
    images = list(x)
    one, many = IDFCodec(model, batch_size=1), IDFCodec(model, batch_size=batch_size)
    _, jxl_settings, jxl_enc, jxl_dec, prep = [b for b in baselines() if b[0] == "JPEG XL"][0]
    planes = [prep(_hwc(img)) for img in images]
    ways = {
        "IDF, one image per pass": (lambda: [one.compress(a) for a in images],
                                    lambda fs: [one.decompress(f) for f in fs]),
        f"IDF, batched ({batch_size} per pass)": (lambda: many.compress_many(images), many.decompress_many),
        f"JPEG XL ({jxl_settings})": (lambda: [jxl_enc(a) for a in planes], lambda fs: [jxl_dec(f) for f in fs]),
    }
    if not one_per_pass:
        del ways["IDF, one image per pass"]
    many.compress_many(images[:batch_size])  # warm-up: tables of the top prior, grid levels, allocator
    times = {name: ([], []) for name in ways}
    outputs = {}
    for _ in range(runs):
        for name, (enc, dec) in ways.items():
            t0 = time.perf_counter()
            files = enc()
            t1 = time.perf_counter()
            back = dec(files)
            t2 = time.perf_counter()
            times[name][0].append(t1 - t0)
            times[name][1].append(t2 - t1)
            outputs[name] = (files, back)
    rows = []
    jxl = list(ways)[-1]
    rate = {name: (len(x) / statistics.median(e), len(x) / statistics.median(d)) for name, (e, d) in times.items()}
    for name, (files, back) in outputs.items():
        ok = all(np.array_equal(np.asarray(b).reshape(np.shape(a)), a)
                 for b, a in zip(back, planes if name == jxl else images))
        bpd = 8.0 * sum(len(f) for f in files) / x.size
        enc, dec = rate[name]
        rows.append(f"| {name} | {bpd:.4f} | {enc:.0f} | {dec:.0f} | {enc / rate[jxl][0]:.3f} | "
                    f"{dec / rate[jxl][1]:.3f} | {'yes' if ok else '**NO**'} |")
    same = outputs[list(ways)[0]][0] == outputs[list(ways)[1]][0] if one_per_pass else None
    lines = [
        f"Speed on {source}, shape {tuple(x.shape[1:])}, one file per image; median of {runs} alternating rounds, "
        f"{_cpu_name()}, torch {torch.__version__} ({torch.get_num_threads()} threads outside the coder, 1 inside), "
        f"imagecodecs {imagecodecs.__version__}.",
        "",
        "| coder | bits/dim | encode img/s | decode img/s | encode / JPEG XL | decode / JPEG XL | lossless |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]
    if same is not None:
        lines.append(f"- batched and one-per-pass IDF files are {'byte-identical' if same else '**DIFFERENT**'}.")
    lossless = all(r.endswith("| yes |") for r in rows)
    return {"times": times, "images": len(x), "jxl": jxl, "batched": f"IDF, batched ({batch_size} per pass)",
            "lossless": lossless, "table": "\n".join(lines) + "\n"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", default=None, help="IDF checkpoint (required unless --speed --random-model)")
    p.add_argument("--speed", action="store_true", help="time IDF (one per pass / batched) against JPEG XL only")
    p.add_argument("--random-model", default=None, metavar="CONFIG",
                   help="with --speed: an untrained model of this config instead of --ckpt")
    p.add_argument("--batch-size", type=int, default=32, help="IDF images per forward pass (batched rows)")
    p.add_argument("--n", type=int, default=100, help="number of test images (0: the whole split)")
    p.add_argument("--runs", type=int, default=3, help="timing runs (median)")
    p.add_argument("--split", default="test", choices=["train", "valid", "test"])
    p.add_argument("--data-root", default=None)
    p.add_argument("--data", default=None, metavar="NAME",
                   help="code another data set's images than the checkpoint's (same shape): the IDF-dagger column")
    p.add_argument("--photos", default=None, metavar="PREFIX[,PREFIX]",
                   help="photo tiles only: just the tiles of photos whose name starts so (e.g. jxl- for the "
                        "never-JPEG photos, kde-,mate- for the held-out wallpapers)")
    p.add_argument("--group", action="append", default=[], metavar="LABEL=PREFIX[,PREFIX]",
                   help="photo tiles: also bits/dim of every codec on the tiles of these photos (repeatable), "
                        "e.g. --group never-JPEG=jxl- --group wallpapers=kde-,mate-")
    p.add_argument("--out", default="bench_codecs.md", help="also write the table here")
    args = p.parse_args(argv)
    if args.speed:
        if not (args.ckpt or args.random_model):
            p.error("--speed needs --ckpt or --random-model CONFIG")
        model, cfg = _speed_model(args.ckpt, args.random_model)
        table = speed(model, cfg, args.n, args.runs, args.batch_size, args.split, args.data_root)
        print(table)
        return 0
    if not args.ckpt:
        p.error("--ckpt is required")
    if args.n < 0 or args.runs < 1 or args.batch_size < 1:
        p.error("--n must be >= 0 (0: all), --runs and --batch-size >= 1")
    photos = [s for s in args.photos.split(",") if s] if args.photos else None
    try:
        table = bench(args.ckpt, args.n or None, args.runs, args.split, args.data_root, args.data, photos,
                      args.batch_size, parse_groups(args.group))
    except (ValueError, OSError) as e:
        p.error(str(e).splitlines()[0] if str(e) else type(e).__name__)
    print(table)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(table)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
