"""Fuzzing the ``.idf`` decoder: random bit flips, truncations, appended bytes and crafted
headers (huge counts, 255 dims, products that wrap int64, zero dims, payloads that run dry).

Every trial must either return the original image exactly or raise a
:class:`~setflow.coding.format.CodecError`; each one runs under a time limit, and the whole test
has a bounded number of trials on a tiny model (4x4 greyscale, one level), so it stays short.
"""

import math
import signal
import struct
import time
import zlib

import numpy as np
import pytest
import torch

from setflow.coding import CodecError, CorruptFileError, DecodeMismatchError, IDFCodec, TableSpec
from setflow.coding.format import FORMAT_VERSION, MAGIC, unpack, write_varint
from setflow.models.idf import IDF

TRIAL_SECONDS = 2.0  # per-trial limit: a decode of a few 4x4 images takes milliseconds (slack for busy CPUs)


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang()


@pytest.fixture(scope="module", params=[1024, 1], ids=["default", "one-bin-windows"])
def tiny(request):
    """A tiny IDF codec and a few encoded files (one image, a batch of 3, a batch of 2 without
    a channel axis). With one-bin windows a phantom image decoded from an exhausted stack is
    the prior's mode, a valid-looking image: only the run-dry checks stop it."""
    torch.manual_seed(0)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    model = IDF((1, 4, 4), num_levels=2, num_flows=1, hidden_channels=4, depth=1,
                coupling="shallow", split_prior="shallow").eval()
    with torch.no_grad():
        model.base.log_scales.add_(math.log(6 / 256))
        model.base.locs.zero_()  # prior modes at grey 128: phantom images lie in [0, 255]
    codec = IDFCodec(model, spec=TableSpec(max_bins=request.param))
    rng = np.random.default_rng(0)
    images = [rng.integers(100, 140, (1, 4, 4), dtype=np.uint8), rng.integers(0, 256, (3, 1, 4, 4), dtype=np.uint8),
              rng.integers(0, 256, (2, 4, 4), dtype=np.uint8)]
    files = [(x, codec.compress(x)) for x in images]
    yield codec, files
    torch.set_num_threads(old)


def _header(shape, payload: bytes, fingerprint: bytes, dtype_code: int = 1, layout: int = 0) -> bytes:
    """A well-formed file (valid trailer CRC) around an arbitrary shape and payload."""
    head = bytearray(MAGIC) + bytes([FORMAT_VERSION, dtype_code, layout, len(shape) & 0xFF])
    for s in shape:
        head += write_varint(s)
    head += fingerprint + struct.pack("<I", 0) + payload
    return bytes(head) + struct.pack("<I", zlib.crc32(bytes(head)) & 0xFFFFFFFF)


def _crafted(codec, files, rng) -> list:
    fp = codec.fingerprint
    words = unpack(files[1][1])[1].astype("<u4").tobytes()  # a real payload (3 images)
    out = [
        _header((10**9, 1, 4, 4), words, fp),  # 10^9 images in ~100 bytes
        _header((10**6, 1, 4, 4), words, fp),  # more images than the stream holds
        _header((1000, 1, 4, 4), words, fp),
        _header((4, 1, 4, 4), words, fp),  # one image too many
        _header((2, 1, 4, 4), words, fp),  # one image too few: leftover data
        _header((64, 288230376151711747), words, fp),  # int64 product wraps to a small number
        _header((2**32,) * 8, words, fp),
        _header((1,) * 255, words, fp),  # 255 dimensions
        _header((), words, fp),
        _header((0, 1, 4, 4), words, fp),
        _header((3, 0, 4, 4), words, fp),
        _header((3, 1, 4, 4), words, fp, dtype_code=99),
        _header((3, 1, 4, 4), words, fp, layout=0x77),
        _header((3, 1, 4, 4), b"", fp),  # no payload at all
        _header((3, 1, 4, 4), words[:-1], fp),  # not whole words
        _header((3, 1, 4, 4), bytes(4), fp),  # a zero last word
        _header((3, 1, 4, 4), b"\xff" * 8, fp),
    ]
    long_varint = MAGIC + bytes([FORMAT_VERSION, 1, 0, 1] + [0xFF] * 10 + [0x01]) + bytes(16)
    out.append(long_varint + struct.pack("<I", zlib.crc32(long_varint) & 0xFFFFFFFF))
    for _ in range(200):  # random payloads under plausible and implausible image counts
        n = int(rng.choice([1, 2, 3, 5, 100, 10**5, 10**7]))
        payload = rng.integers(0, 2**32, int(rng.integers(1, 12)), dtype=np.uint32).tobytes()
        out.append(_header((n, 1, 4, 4), payload, fp))
    return out


def _damaged(data: bytes, rng) -> bytes:
    kind = rng.integers(4)
    buf = bytearray(data)
    if kind == 0:  # bit flips
        for pos in rng.choice(len(buf) * 8, size=int(rng.integers(1, 5)), replace=False):
            buf[pos // 8] ^= 1 << (pos % 8)
    elif kind == 1:  # truncation
        buf = buf[: int(rng.integers(0, len(buf)))]
    elif kind == 2:  # appended bytes
        buf += rng.integers(0, 256, int(rng.integers(1, 9)), dtype=np.uint8).tobytes()
    else:  # flips with a recomputed trailer CRC (only the decoder's own checks are left)
        for pos in rng.choice(len(buf) - 4, size=int(rng.integers(1, 4)), replace=False):
            buf[pos] ^= int(rng.integers(1, 256))
        buf[-4:] = struct.pack("<I", zlib.crc32(bytes(buf[:-4])) & 0xFFFFFFFF)
    return bytes(buf)


def test_fuzz_decoder_never_hangs_never_lies_never_leaks_foreign_errors(tiny):
    codec, files = tiny
    rng = np.random.default_rng(1234)
    trials = [(None, b) for b in _crafted(codec, files, rng)]
    for _ in range(1000):
        x, data = files[int(rng.integers(len(files)))]
        trials.append((x, _damaged(data, rng)))
    trials += [(x, d) for x, d in files]  # the undamaged files decode
    outcomes = {"rejected": 0, "exact": 0, "wrong": 0, "hang": 0, "foreign": 0}
    foreign = []
    old = signal.signal(signal.SIGALRM, _alarm)
    t0 = time.perf_counter()
    try:
        for x, data in trials:
            signal.setitimer(signal.ITIMER_REAL, TRIAL_SECONDS)
            try:
                y = codec.decompress(data)
                ok = x is not None and y.dtype == x.dtype and y.shape == x.shape and np.array_equal(y, x)
                outcomes["exact" if ok else "wrong"] += 1
            except CodecError:
                outcomes["rejected"] += 1
            except _Hang:
                outcomes["hang"] += 1
            except Exception as e:  # noqa: BLE001 - counted and reported
                outcomes["foreign"] += 1
                foreign.append(f"{type(e).__name__}: {e}")
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
    finally:
        signal.signal(signal.SIGALRM, old)
    elapsed = time.perf_counter() - t0
    print(f"fuzz: {len(trials)} trials in {elapsed:.1f} s: {outcomes}")
    assert outcomes["wrong"] == 0 and outcomes["hang"] == 0, outcomes
    assert outcomes["foreign"] == 0, foreign[:5]
    assert outcomes["exact"] >= len(files)  # the undamaged files (and harmless damage) decode


def test_crafted_headers_are_refused_at_once_with_the_reason(tiny):
    codec, files = tiny
    fp = codec.fingerprint
    words = unpack(files[1][1])[1].astype("<u4").tobytes()  # 3 images
    cases = [
        ((10**9, 1, 4, 4), "payload has only"),  # 10^9 images in ~100 bytes: before any decoding
        ((64, 288230376151711747), r"out of range \[1, 2147483648\]"),  # the int64 product wraps
        ((2**31,) * 8, "more than 1099511627776 elements"),
        ((1,) * 255, r"ndim = 255 is out of range \[1, 8\]"),
        ((), "ndim = 0"),
        ((0, 1, 4, 4), "shape\\[0\\] = 0"),
        ((3, 1, 4, 5), "does not fit the model input"),
        ((4, 1, 4, 4), "wrong number of images"),  # a run of 4 read from a run of 3: dry or damaged
        ((2, 1, 4, 4), "wrong number of images"),  # data left over (or damaged on the way)
    ]
    for shape, msg in cases:
        t0 = time.perf_counter()
        with pytest.raises(CorruptFileError, match=msg):
            codec.decompress(_header(shape, words, fp))
        assert time.perf_counter() - t0 < TRIAL_SECONDS
    with pytest.raises(DecodeMismatchError):  # the right stream under a header with the wrong image CRC
        codec.decompress(_header((3, 1, 4, 4), words, fp))
    x, data = files[1]
    assert np.array_equal(codec.decompress(data), x)
    body = bytearray(data[:-4])  # header (3, 1, 4, 4) -> (1, 3, 4, 4) or uint8 -> uint16, trailer recomputed
    for edits in ({8: 1, 9: 3}, {5: 2}):
        forged = bytearray(body)
        for pos, value in edits.items():
            forged[pos] = value
        with pytest.raises(DecodeMismatchError):
            codec.decompress(bytes(forged) + struct.pack("<I", zlib.crc32(bytes(forged)) & 0xFFFFFFFF))
