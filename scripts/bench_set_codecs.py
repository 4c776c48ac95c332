"""Bits per point of lossless codecs for SpatialMNIST pixel multisets, side by side.

Usage::

    python scripts/bench_set_codecs.py runs/set_codec_cpu/last.pt [--split test] [--per-set 100]
    python scripts/bench_set_codecs.py --speed [--sets 512] [--rounds 3]   # throughput only

``--speed`` times the learned codec (a random-init model of the size in docs/results/codecs.md unless a checkpoint
is given: speed does not depend on the weights) against JPEG XL (effort 9, occupancy images, one
file per set) in the same run: CPU seconds of this process (so another process on the cores
does not count), median and range over rounds after a warm-up, one thread.

Rows (all on the same sorted pixel sets of the split; one file for all sets, and one file per
set where it applies; bits per point = 8 * bytes / (sets * points)):
uniform codes (log2 C(784, N) for a subset, log2 C(784 + N - 1, N) for a multiset); the 28x28
occupancy image (1-bit where no pixel repeats, else 8-bit counts) with PNG, WebP lossless and
JPEG XL lossless (JBIG2: imagecodecs has no encoder); sorted (col, row) bytes with zstd -19 and
xz -9; the learned model's analytic bits on the sorted set and on the unsorted tuple (plus
log2(N! / prod m_i!), the order a list codec pays); the learned codec's file bytes.
Encode / decode throughput in sets/s beside each.
"""

from __future__ import annotations

import argparse
import io
import json
import lzma
import math
import sys
import time

import imagecodecs
import numpy as np
from PIL import Image

from setflow.coding.sets import compress_sets, decompress_sets, set_bits
from setflow.data.pixel_sets import GRID, pixel_set_splits


def _occupancy(sets: np.ndarray) -> np.ndarray:
    """(M, N) indices -> (M, 28, 28) uint8 counts."""
    occ = np.zeros((sets.shape[0], GRID * GRID), dtype=np.uint8)
    np.add.at(occ, (np.arange(sets.shape[0])[:, None], sets), 1)
    return occ.reshape(-1, GRID, GRID)


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    if img.max() <= 1:
        Image.fromarray(img.astype(bool)).save(buf, format="PNG", optimize=True)  # 1-bit
    else:
        Image.fromarray(img).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _webp(img: np.ndarray) -> bytes:
    v = (img.astype(np.uint16) * 255 // max(int(img.max()), 1)).astype(np.uint8) if img.max() <= 1 else img
    return imagecodecs.webp_encode(np.repeat(v[..., None], 3, -1), lossless=True)


def _jxl(img: np.ndarray) -> bytes:
    return imagecodecs.jpegxl_encode(img, lossless=True, effort=9)


def _coords(sets: np.ndarray) -> bytes:
    return np.stack([sets % GRID, sets // GRID], -1).astype(np.uint8).tobytes()


def _timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def speed(model, sets: np.ndarray, rounds: int) -> dict:
    """Median (min, max) sets/s by CPU time: .sfs encode/decode vs JPEG XL per-set files."""
    import torch

    torch.set_num_threads(1)
    occ = _occupancy(sets)
    m = sets.shape[0]

    per_round: dict = {}

    def rate(fn, key):
        fn()  # warm-up
        out = per_round.setdefault(key, [])
        for _ in range(rounds):
            t0 = time.process_time()
            fn()
            out.append(m / (time.process_time() - t0))
        return float(np.median(out)), min(out), max(out)

    data = compress_sets(model, sets)
    files = [imagecodecs.jpegxl_encode(o, lossless=True, effort=9) for o in occ]
    res = {"sfs_encode": rate(lambda: compress_sets(model, sets), "sfs_encode"),
           "sfs_decode": rate(lambda: decompress_sets(model, data), "sfs_decode"),
           "jxl9_encode": rate(lambda: [imagecodecs.jpegxl_encode(o, lossless=True, effort=9) for o in occ],
                               "jxl9_encode"),
           "jxl9_decode": rate(lambda: [imagecodecs.jpegxl_decode(f) for f in files], "jxl9_decode")}
    res["rounds"] = per_round  # sets/s of each round, by coder and direction
    res["encode_ratio"] = res["sfs_encode"][0] / res["jxl9_encode"][0]
    res["decode_ratio"] = res["sfs_decode"][0] / res["jxl9_decode"][0]
    res["sfs_bits_per_point"] = 8 * len(data) / sets.size
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ckpt", nargs="?", help="a set_codec checkpoint (--speed: optional)")
    ap.add_argument("--speed", action="store_true", help="throughput against JPEG XL only")
    ap.add_argument("--sets", type=int, default=512, help="--speed: sets of the split to time")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--split", default="test")
    ap.add_argument("--per-set", type=int, default=100, help="sets coded one file each (the first K)")
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args(argv)

    from setflow.train.checkpoint import load_model

    sets, source = pixel_set_splits(download=False)
    sets = sets[args.split]
    print(f"data: {source}")
    if args.speed:
        if args.ckpt:
            model, what = load_model(args.ckpt, device="cpu")[0], args.ckpt
        else:
            from setflow.models.set_codec import SortedSetAR

            model = SortedSetAR(grid=28, num_points=50, d_model=64, num_heads=4, num_layers=2,
                                dim_feedforward=128).eval()
            what = "random-init model of the size in docs/results/codecs.md (d_model 64, 2 layers, 4 heads)"
        res = speed(model, sets[:args.sets], args.rounds)
        print(f"{min(args.sets, len(sets))} sets x 50 points, {what}; sets/s by CPU time, median (min-max) of "
              f"{args.rounds} rounds, one thread")
        for k in ("sfs_encode", "sfs_decode", "jxl9_encode", "jxl9_decode"):
            med, lo, hi = res[k]
            print(f"  {k:12s} {med:8.0f} ({lo:.0f}-{hi:.0f})")
        print(f"  .sfs / JPEG XL: encode {res['encode_ratio']:.3f}x, decode {res['decode_ratio']:.3f}x")
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(res, fh, indent=1)
        return 0
    if not args.ckpt:
        ap.error("a set_codec checkpoint is needed unless --speed")
    model, cfg = load_model(args.ckpt, device="cpu")
    m, n = sets.shape
    pts = m * n
    rows = []

    def row(name, total_bits, per_set_bits=None, enc=None, dec=None):
        rows.append({"codec": name, "bpp_all": total_bits / pts,
                     "bpp_per_set": None if per_set_bits is None else per_set_bits,
                     "enc_sets_s": enc, "dec_sets_s": dec})

    row(f"uniform subset code log2 C(784,{n})", math.log2(math.comb(GRID * GRID, n)) * m)
    row(f"uniform multiset code log2 C(784+{n}-1,{n})", math.log2(math.comb(GRID * GRID + n - 1, n)) * m)
    occ = _occupancy(sets)
    k = min(args.per_set, m)
    tall = occ.reshape(m * GRID, GRID)  # all sets as one tall image
    png_dec = lambda b: np.asarray(Image.open(io.BytesIO(b))).astype(np.uint8)
    webp_dec = lambda b: imagecodecs.webp_decode(b)[..., 0] // (255 if tall.max() <= 1 else 1)
    for name, fn, dec in (("occupancy PNG (1-bit; 8-bit counts)", _png, png_dec),
                          ("occupancy WebP lossless", _webp, webp_dec),
                          ("occupancy JPEG XL lossless", _jxl, imagecodecs.jpegxl_decode)):
        stacked, te = _timed(fn, tall)
        back, td = _timed(dec, stacked)
        assert np.array_equal(np.asarray(back).reshape(tall.shape), tall), name
        per = [fn(o) for o in occ[:k]]
        row(name, 8 * len(stacked), 8 * sum(map(len, per)) / (k * n), enc=m / te, dec=m / td)
    raw = _coords(sets)
    for name, enc, dec in (("sorted (col,row) bytes + zstd -19", lambda b: imagecodecs.zstd_encode(b, level=19),
                            imagecodecs.zstd_decode),
                           ("sorted (col,row) bytes + xz -9", lambda b: lzma.compress(b, preset=9 | lzma.PRESET_EXTREME),
                            lzma.decompress)):
        blob, te = _timed(enc, raw)
        back, td = _timed(dec, blob)
        assert back == raw
        per = [enc(_coords(sets[i:i + 1])) for i in range(k)]
        row(name, 8 * len(blob), 8 * sum(map(len, per)) / (k * n), enc=m / te, dec=m / td)

    bits = set_bits(model, sets)
    order = np.array([math.lgamma(n + 1) - sum(math.lgamma(c + 1) for c in np.unique(s, return_counts=True)[1])
                      for s in sets]) / math.log(2)
    row("learned model, unsorted tuple (pays log2 N!/prod m_i!)", float((bits + order).sum()))
    row("learned model, sorted set (analytic)", float(bits.sum()))
    data, te = _timed(compress_sets, model, sets, cfg)
    back, td = _timed(decompress_sets, model, data, cfg)
    assert np.array_equal(back, np.sort(sets, 1))
    per = [len(compress_sets(model, sets[i:i + 1], cfg)) for i in range(k)]
    row("learned codec .sfs file bytes", 8 * len(data), 8 * sum(per) / (k * n), enc=m / te, dec=m / td)

    print(f"{args.split}: {m} sets x {n} points; per-set column: first {k} sets, one file each")
    print("| codec | bits/point (one file) | bits/point (file per set) | encode sets/s | decode sets/s |")
    print("|---|---:|---:|---:|---:|")
    f = lambda v, d=3: "" if v is None else f"{v:.{d}f}"
    for r in rows:
        print(f"| {r['codec']} | {f(r['bpp_all'])} | {f(r['bpp_per_set'])} | {f(r['enc_sets_s'], 0)} | "
              f"{f(r['dec_sets_s'], 0)} |")
    print(f"file / analytic bits: {8 * len(data) / bits.sum():.5f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"split": args.split, "sets": m, "points": n, "rows": rows,
                       "file_over_analytic": 8 * len(data) / float(bits.sum())}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
