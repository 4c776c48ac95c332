"""The IDF codec's stream ends and its batched path (format version 3).

* where the data ends is known from the file, never from the coder: constant images at every
  value and edge cases that code as the first symbol of their tables, alone and as the last
  image of a batch, on untrained, perturbed and over-confident models (none loses data);
* files do not depend on how images were batched: the same bytes at every batch size, and any
  batch size decodes them (the network computes each image on its own, tables are functions
  of integer keys of the parameters);
* ``compress_many`` / ``decompress_many``: many files, files of many runs, damaged files among
  good ones, old format versions.
"""

import math
import struct
import zlib

import constriction
import numpy as np
import pytest
import torch

from setflow.coding import CodecError, FormatError, IDFCodec, TableSpec
from setflow.coding.codec import _coding_copy, _TapConv
from setflow.coding.format import FORMAT_VERSION, IMAGES_PER_RUN, unpack
from setflow.coding.tables import (
    GridRows,
    coarse_probs,
    direct_rows,
    fine_probs,
    guard_bits,
    pop_guard,
    push_guard,
)
from setflow.models.idf import IDF

pytestmark = pytest.mark.usefixtures("one_thread")

#: the model of configs/images/idf_fashion_mnist_cpu.yaml
FASHION = dict(input_shape=(1, 28, 28), num_levels=2, num_flows=4, hidden_channels=32, depth=2, num_mixtures=5,
               coupling="densenet", split_prior="densenet", init_log_scale=-2.0)


def _tiny(shape=(1, 4, 4), seed=0, kind="random", levels=2) -> IDF:
    torch.manual_seed(seed)
    m = IDF(shape, num_levels=levels, num_flows=1, hidden_channels=4, depth=1, coupling="shallow", split_prior="shallow")
    with torch.no_grad():
        if kind != "random":
            g = torch.Generator().manual_seed(seed + 100)
            for p in m.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g))
        if kind == "sharp":  # an over-confident top prior: most latents escape or sit on one bin
            m.base.log_scales.fill_(math.log(0.05 / 256))
    return m.eval()


def _fashion(seed=0, perturb=0.0) -> IDF:
    torch.manual_seed(seed)
    m = IDF(**FASHION)
    if perturb:
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(perturb * torch.randn(p.shape, generator=g))
    return m.eval()


# ---------------------------------------------------------------- task: no data lost at the stream's ends
def test_constriction_hazard_and_the_guard():
    """The hazard: a symbol whose cumulative frequency starts at 0, pushed on an empty stack, leaves
    it empty (``is_empty()``) although it holds a symbol. The guard under all data prevents it."""
    cat = constriction.stream.model.Categorical(perfect=False)
    bare = constriction.stream.stack.AnsCoder()
    bare.encode_reverse(np.zeros(3, dtype=np.int32), cat, np.full((3, 4), 0.25))
    assert bare.is_empty() and bare.num_valid_bits() == 0  # three symbols, an "empty" coder
    guarded = constriction.stream.stack.AnsCoder()
    push_guard(guarded)
    assert guarded.num_valid_bits() == guard_bits() >= 1
    guarded.encode_reverse(np.zeros(3, dtype=np.int32), cat, np.full((3, 4), 0.25))
    dec = constriction.stream.stack.AnsCoder(guarded.get_compressed())
    assert not dec.is_empty() and dec.num_valid_bits() >= guard_bits()
    assert np.array_equal(dec.decode(cat, np.full((3, 4), 0.25)), np.zeros(3))
    assert dec.num_valid_bits() >= guard_bits()  # only the guard is left, and it is not "empty"
    pop_guard(dec)
    assert dec.is_empty()


def _edge_images(shape, values):
    c, h, w = shape
    out = [np.full(shape, v, np.uint8) for v in values]
    ramp = (np.arange(h * w).reshape(h, w) % 256).astype(np.uint8)
    out.append(np.broadcast_to(ramp, shape).copy())
    checker = np.indices((h, w)).sum(0) % 2 * 255
    out.append(np.broadcast_to(checker, shape).astype(np.uint8))
    return out


@pytest.mark.parametrize("spec", [TableSpec(), TableSpec(max_bins=1), TableSpec(max_bins=3, chunk=2)],
                         ids=["default", "one-bin", "three-bin"])
def test_constant_and_edge_images_never_lose_data_tiny_models(spec):
    """Every constant image 0..255 (and ramps, checkerboards) on tiny models whose latents code
    as the first symbol of their tables or escape: alone, as the last image of a batch, and as
    one file each; each decodes exactly."""
    for shape, kind, seed in [((1, 4, 4), "random", 0), ((1, 4, 4), "perturbed", 1), ((1, 4, 4), "sharp", 2),
                              ((3, 4, 4), "perturbed", 3), ((1, 2, 2), "sharp", 4)]:
        codec = IDFCodec(_tiny(shape, seed, kind, levels=1 if shape[-1] == 2 else 2), spec)
        images = _edge_images(shape, range(256))
        files = codec.compress_many(images)
        assert all(np.array_equal(y, x) for x, y in zip(images, codec.decompress_many(files)))
        rng = np.random.default_rng(seed)
        for x in images[:: 17] + images[-2:]:
            batch = np.concatenate([rng.integers(0, 256, (2, *shape), dtype=np.uint8), x[None]])  # edge image last
            for data in (codec.compress(batch), codec.compress(x), codec.compress(np.stack([x, x]))):
                y = codec.decompress(data)
                assert np.array_equal(y.reshape(-1, *shape)[-1], x)


@pytest.mark.parametrize("perturb", [0.0, 0.02], ids=["untrained", "perturbed"])
def test_constant_and_edge_images_never_lose_data_fashion_model(perturb):
    codec = IDFCodec(_fashion(seed=3, perturb=perturb))
    images = _edge_images((1, 28, 28), [0, 1, 127, 128, 254, 255])
    files = codec.compress_many(images)
    assert all(np.array_equal(y, x) for x, y in zip(images, codec.decompress_many(files)))
    last = np.concatenate([np.random.default_rng(0).integers(0, 256, (3, 1, 28, 28), dtype=np.uint8),
                           images[0][None], images[5][None]])
    assert np.array_equal(codec.decompress(codec.compress(last)), last)


def test_the_end_is_read_from_the_header_and_checked_exactly():
    codec = IDFCodec(_tiny(kind="perturbed"))
    x = np.random.default_rng(0).integers(0, 256, (3, 1, 4, 4), dtype=np.uint8)
    assert unpack(_rewrap(codec.compress(x), (3, 1, 4, 4)))[0].shape == (3, 1, 4, 4)
    assert np.array_equal(codec.decompress(_rewrap(codec.compress(x), (3, 1, 4, 4))), x)
    for claimed in (1, 2, 4, 5):  # the payload of 3 images under a header claiming another count
        forged = _rewrap(codec.compress(x), (claimed, 1, 4, 4))
        with pytest.raises(CodecError):
            codec.decompress(forged)


def _rewrap(data: bytes, shape) -> bytes:
    """``data`` with another shape in its header (trailer CRC recomputed, image CRC kept)."""
    from setflow.coding.format import MAGIC, write_varint

    body = data[:-4]
    ndim = body[7]
    pos = 8
    for _ in range(ndim):
        while body[pos] & 0x80:
            pos += 1
        pos += 1
    head = bytearray(MAGIC) + body[4:7] + bytes([len(shape)]) + b"".join(write_varint(s) for s in shape)
    out = bytes(head) + body[pos:]
    return out + struct.pack("<I", zlib.crc32(out) & 0xFFFFFFFF)


def test_older_format_versions_are_refused_with_one_clear_line():
    codec = IDFCodec(_tiny())
    data = bytearray(codec.compress(np.zeros((1, 4, 4), np.uint8)))[:-4]
    data[4] = FORMAT_VERSION - 1
    data = bytes(data) + struct.pack("<I", zlib.crc32(bytes(data)) & 0xFFFFFFFF)
    want = f"version {FORMAT_VERSION - 1} .*older setflow.*reads version {FORMAT_VERSION}"
    with pytest.raises(FormatError, match=want):
        codec.decompress(data)


# ---------------------------------------------------------------- batch invariance
def _latents_and_params(net, x):
    with torch.no_grad():
        return net.split_latents(torch.from_numpy(x).to(torch.float64), with_params=True)


@pytest.mark.parametrize("seed", range(3))
def test_the_coding_network_computes_each_image_on_its_own(seed):
    """Latents and split-prior parameters of an image are bit-identical at batch sizes 1, 7, 33
    and at any position in the batch; the inverse pass too."""
    net = _coding_copy(_fashion(seed, perturb=0.03))
    old = torch.get_num_threads()
    x = np.random.default_rng(seed).integers(0, 256, (33, 1, 28, 28)).astype(np.int64)
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            full = _latents_and_params(net, x)
            for lo, hi in [(0, 1), (5, 6), (32, 33), (3, 10), (26, 33)]:
                part = _latents_and_params(net, x[lo:hi])
                for (zf, pf), (zp, pp) in zip(full, part):
                    assert torch.equal(zf[lo:hi], zp)
                    for a, b in zip(pf, pp):
                        assert torch.equal(a[lo:hi] if a.shape[0] == 33 else a, b)
            with torch.no_grad():
                zs = [z for z, _ in full]
                back = net.join_latents(zs)
                assert torch.equal(back, torch.from_numpy(x).double())
                for lo, hi in [(0, 1), (4, 11)]:
                    assert torch.equal(net.join_latents([z[lo:hi] for z in zs]), back[lo:hi])
    finally:
        torch.set_num_threads(old)


def test_tap_convolution_is_the_convolution():
    torch.manual_seed(0)
    for c_in, c_out, h in [(35, 1, 14), (34, 4, 14), (38, 2, 7), (3, 1, 5)]:
        conv = torch.nn.Conv2d(c_in, c_out, 3, padding=1).double()
        x = torch.randn(4, c_in, h, h, dtype=torch.float64)
        with torch.no_grad():
            assert torch.allclose(_TapConv(conv)(x), conv(x), rtol=0, atol=1e-12)
    assert not _TapConv.fits(torch.nn.Conv2d(8, 16, 3, padding=1))  # wide outputs keep the direct convolution


def test_grid_rows_are_functions_of_their_keys():
    """A row does not depend on the rows built beside it, on the call or on the cache's history."""
    spec = TableSpec()
    rng = np.random.default_rng(0)
    loc = np.concatenate([rng.normal(0, 50, 300), [0.0, 0.5, -0.5, 1e-9, 2**39], rng.normal(0, 1, 50)])
    log_scale = np.concatenate([rng.uniform(-9, 13, 300), [3.5452, 0.0, -20.0, 40.0, 1.0], rng.uniform(-1, 1, 50)])
    ref = GridRows(spec).rows(loc, log_scale)
    ref_c = coarse_probs(ref, spec)
    chunk = np.maximum(0, -(-ref.width // spec.chunk) - 1) // 2
    ref_f = fine_probs(ref, chunk, spec)
    warm = GridRows(spec)
    warm.rows(rng.normal(0, 9, 500), rng.uniform(-3, 6, 500))  # other levels first
    tiny_cache = GridRows(spec, max_values=5000)  # clears itself again and again
    for grid in (warm, tiny_cache, GridRows(spec)):
        for idx in (np.arange(len(loc)), rng.permutation(len(loc)), np.array([7]), np.arange(300, 355)):
            rows = grid.rows(loc[idx], log_scale[idx])
            assert np.array_equal(rows.lo, ref.lo[idx]) and np.array_equal(rows.width, ref.width[idx])
            assert np.array_equal(coarse_probs(rows, spec), ref_c[idx])
            assert np.array_equal(fine_probs(rows, chunk[idx], spec), ref_f[idx])


def test_grid_tables_cost_little():
    """The grid moves parameters by a little: coded size within 0.1% of exact per-row tables."""
    from setflow.coding.codec import IDFCodec as Codec

    class Exact(Codec):  # tables straight from the float parameters (batch-size dependent in general)
        def _split_rows(self, params):
            return direct_rows(*(t.detach().numpy() for t in params), self.spec)

    for model in (_fashion(seed=1), _fashion(seed=2, perturb=0.01)):
        x = model.sample(24).to(torch.uint8).numpy()
        grid, exact = len(IDFCodec(model).compress(x)), len(Exact(model).compress(x))
        assert abs(grid - exact) <= 1e-3 * exact, (grid, exact)


@pytest.mark.parametrize("seed", range(4))
def test_files_are_the_same_at_every_batch_size_and_decode_at_any(seed):
    model = _fashion(seed, perturb=0.02 * (seed % 2)) if seed < 2 else _tiny((3, 8, 8), seed, "perturbed")
    shape = tuple(model.input_shape)
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(13)]
    with torch.no_grad():
        images += list(model.sample(6).to(torch.uint8).numpy())  # images the model fits
    files = {bs: IDFCodec(model, batch_size=bs).compress_many(images) for bs in (1, 7, 64)}
    assert files[1] == files[7] == files[64]
    one_pass = IDFCodec(model, batch_size=1)
    assert [one_pass.compress(x) for x in images[:3]] == files[1][:3]
    for bs in (1, 7, 64):
        decoded = IDFCodec(model, batch_size=bs).decompress_many(files[1])
        assert all(np.array_equal(a, b) for a, b in zip(decoded, images))
    batch = np.stack(images)  # one file of several runs, at any batch size
    assert IDFCodec(model, batch_size=1).compress(batch) == IDFCodec(model, batch_size=5).compress(batch)


def test_compress_many_decompress_many_mixed_files_and_errors():
    model = _tiny((1, 8, 8), 5, "perturbed")
    codec = IDFCodec(model, batch_size=8)
    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, (2 * IMAGES_PER_RUN + 5, 1, 8, 8), dtype=np.uint8)  # three runs in one file
    arrays = [big, rng.integers(0, 256, (8, 8), dtype=np.uint8), rng.integers(0, 256, (2, 8, 8), dtype=np.int64),
              rng.integers(0, 256, (1, 8, 8), dtype=np.uint8)]
    files = codec.compress_many(arrays)
    assert files == [codec.compress(a) for a in arrays]
    out = codec.decompress_many(files)
    assert all(np.array_equal(a, b) and a.dtype == b.dtype and a.shape == b.shape for a, b in zip(out, arrays))
    damaged = list(files)
    bad = bytearray(damaged[1])
    bad[30] ^= 0x10
    damaged[1] = bytes(bad[:-4]) + struct.pack("<I", zlib.crc32(bytes(bad[:-4])) & 0xFFFFFFFF)  # past the trailer CRC
    damaged.append(b"not a file")
    results = codec.decompress_many(damaged, errors="return")
    assert isinstance(results[1], CodecError) and isinstance(results[-1], CodecError)
    assert all(np.array_equal(results[i], arrays[i]) for i in (0, 2, 3))
    with pytest.raises(CodecError):
        codec.decompress_many(damaged)
    assert codec.compress_many([]) == [] and codec.decompress_many([]) == []
    t = codec.decompress_many(files[3:], as_tensor=True)[0]
    assert isinstance(t, torch.Tensor) and torch.equal(t, torch.from_numpy(arrays[3]))


def test_cli_compresses_a_folder_in_batches_to_the_same_files(tmp_path, capsys):
    from setflow.cli import main
    from setflow.train.checkpoint import save_checkpoint

    model = _tiny((1, 8, 8), 6, "perturbed")
    ckpt = tmp_path / "idf.pt"
    args = dict(input_shape=[1, 8, 8], num_levels=2, num_flows=1, hidden_channels=4, depth=1, coupling="shallow",
                split_prior="shallow")
    save_checkpoint(ckpt, {"config": {"model": "idf", "model_args": args, "train": {"dtype": "float32"}},
                           "model": model.state_dict()})
    codec = IDFCodec.from_checkpoint(str(ckpt))
    rng = np.random.default_rng(0)
    src = tmp_path / "src"
    src.mkdir()
    arrays = {f"img{i:02d}": rng.integers(0, 256, (8, 8) if i % 3 else (2, 1, 8, 8), dtype=np.uint8)
              for i in range(codec.batch_size + 9)}  # more files than one pass takes
    for name, a in arrays.items():
        np.save(src / f"{name}.npy", a)
    assert main(["compress", str(ckpt), str(src), "-o", str(tmp_path / "z") + "/"]) == 0
    out = capsys.readouterr().out
    assert out.count(" -> ") == len(arrays) and "total:" in out
    for name, a in arrays.items():
        assert (tmp_path / "z" / f"{name}.idf").read_bytes() == codec.compress(a)
    assert main(["decompress", str(ckpt), str(tmp_path / "z"), "-o", str(tmp_path / "back") + "/"]) == 0
    assert all(np.array_equal(np.load(tmp_path / "back" / f"{name}.npy"), a) for name, a in arrays.items())
