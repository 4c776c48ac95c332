"""The set codec never loses data and refuses damaged or crafted files quickly, with its own errors.

- Property tests (Hypothesis): random multisets (duplicates anywhere, all points equal, one point
  at every pixel, sizes 1..N, fixed and variable size) round-trip bit-exact, alone and in one file.
- Fuzz: bit and byte flips, truncations, appended bytes, header fields rewritten with the CRC
  recomputed, payload flips with the CRC recomputed, another model's files. Every trial ends in a
  decode equal to the original or a :class:`CodecError`, within a watchdog; a few hundred trials
  run by default, ``SETFLOW_FUZZ_TRIALS`` (or the slow test: 5,000) more.
"""

from __future__ import annotations

import os
import signal
import struct
import time
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from setflow.coding.format import CodecError, CorruptFileError
from setflow.coding.sets import _HEAD, compress_sets, decompress_sets, read_sets_header, set_bits
from setflow.models.set_codec import SortedSetAR


def _model(grid=5, n=6, seed=0, scale=0.5, **kw):
    torch.manual_seed(seed)
    args = dict(d_model=16, num_heads=2, num_layers=1, dim_feedforward=16, dropout=0.0) | kw
    m = SortedSetAR(grid=grid, num_points=n, **args)
    with torch.no_grad():  # non-trivial tables: the zero-initialised head would give a uniform model
        for p in m.parameters():
            p.add_(scale * torch.randn_like(p))
    return m.eval()


TINY = _model()
ISSUE = SortedSetAR(grid=28, num_points=50, d_model=16, num_heads=2, num_layers=1, dim_feedforward=16).eval()
# a model sure of gap 0: sets of repeated points cost next to nothing (the degenerate case of the guard)
SURE = _model(grid=3, n=8, seed=2, scale=0.0)
with torch.no_grad():
    SURE.gap_bias[0] = 30.0


def _canonical(sets, n):
    out = np.full((len(sets), n), -1, dtype=np.int64)
    for k, s in enumerate(sets):
        out[k, :len(s)] = np.sort(s)
    return out


def _roundtrip(m, sets, block=None):
    kw = {} if block is None else {"block": block}
    data = compress_sets(m, sets, **kw)
    back = decompress_sets(m, data)
    width = max(len(s) for s in sets)
    assert np.array_equal(back, _canonical(sets, width)), (sets, back)
    return data


def test_the_issue_repro_cases_round_trip():
    for sets in ([[3, 17, 250, 600, 600]], [[0]], [[3, 17, 250, 600, 601]], [[783]], [[0] * 50], [[783] * 50],
                 [[0, 0], [783, 783]], [list(range(50))], [list(range(734, 784))]):
        _roundtrip(ISSUE, sets)


def test_one_point_sets_at_every_pixel_alone_and_in_one_file():
    cells = np.arange(ISSUE.cells)
    _roundtrip(ISSUE, cells[:, None].tolist(), block=97)
    for c in (0, 1, 27, 28, 391, 782, 783):
        _roundtrip(ISSUE, [[int(c)]])
    for c in range(TINY.cells):  # every pixel of the tiny grid alone, and every pair of equal points
        _roundtrip(TINY, [[c]])
        _roundtrip(TINY, [[c] * TINY.num_points])


multisets = st.lists(st.integers(0, TINY.cells - 1), min_size=1, max_size=TINY.num_points)
edge = st.sampled_from([0, TINY.cells - 1]).flatmap(
    lambda v: st.integers(1, TINY.num_points).map(lambda k: [v] * k))  # all points equal, at an edge value


@settings(max_examples=int(os.environ.get("SETFLOW_PROPERTY_EXAMPLES", 300)), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(multisets, edge), min_size=1, max_size=12), st.integers(1, 5), st.booleans())
def test_property_random_multisets_round_trip_alone_and_in_one_file(sets, block, fixed):
    if fixed:  # a fixed-size file: every set padded with copies of its own points to N
        sets = [(s * TINY.num_points)[:TINY.num_points] for s in sets]
    _roundtrip(TINY, sets, block=block)  # one file
    for s in sets[:3]:
        _roundtrip(TINY, [s])  # alone
    perm = [list(np.random.default_rng(len(s)).permutation(s)) for s in sets]
    assert compress_sets(TINY, perm, block=block) == compress_sets(TINY, sets, block=block)  # multisets


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(0, SURE.cells - 1), min_size=1, max_size=SURE.num_points), min_size=1,
                max_size=80))
def test_property_a_model_that_codes_sets_in_under_a_bit(sets):
    data = _roundtrip(SURE, sets, block=16)
    h = read_sets_header(data)
    assert h.count <= 32 * h.words  # every set pays at least a bit: blocks are padded where needed


def test_under_a_bit_per_set_pads_the_blocks():
    sets = [[0] * SURE.num_points] * 3000  # each costs ~0 bits under SURE
    assert set_bits(SURE, sets).sum() < 3000 / 32
    data = _roundtrip(SURE, sets, block=512)
    h = read_sets_header(data)
    assert 3000 / 32 <= h.words <= 3000 / 32 + 8  # about one bit a set, not more


def test_variable_sizes_from_padding_masks_and_lists_agree():
    sets = [[5], [3, 3, 1], [24, 0, 0, 0, 0, 0]]
    padded = _canonical(sets, 6)
    shuffled = np.where(padded >= 0, padded, -1)[:, ::-1].copy()  # -1 padding anywhere in the row
    data = compress_sets(TINY, sets)
    assert compress_sets(TINY, shuffled) == data == compress_sets(TINY, padded)
    assert read_sets_header(data).variable and not read_sets_header(compress_sets(TINY, [[1, 2]] * 3)).variable
    col_row = np.where(padded[..., None] >= 0, np.stack([padded % 5, padded // 5], -1), -1)
    assert compress_sets(TINY, col_row) == data
    bits = set_bits(TINY, sets)
    assert bits.shape == (3,) and (bits > 0).all()


def test_padding_wider_than_the_largest_set_is_dropped():
    wide = np.full((2, 9), -1)  # 9 columns > the model's 6 points, but no set has more than 3
    wide[0, :3], wide[1, :1] = [4, 4, 0], [24]
    data = compress_sets(TINY, wide)
    assert read_sets_header(data).num_points == 3
    assert decompress_sets(TINY, data).tolist() == [[0, 4, 4], [24, -1, -1]]


@pytest.mark.parametrize("bad, match", [
    ([[1, -2]], "-1 marks an absent point"), ([[-1, -1]], "no points"), ([[25]], "0..24"),
    (np.zeros((2, 3)), "integer"), (np.zeros((2, 7), np.int64), "points"), ([[[1, -1]]], "(-1, -1)"),
])
def test_bad_sets_are_refused_in_one_line(bad, match):
    with pytest.raises(CodecError, match=match.replace("(", r"\(").replace(")", r"\)")):
        compress_sets(TINY, bad)


# ----------------------------------------------------------------------------- fuzz
class _Hang(Exception):
    pass


def _watchdog(seconds):
    def fire(*_):
        raise _Hang()
    signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)


def _reseal(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def _fuzz_cases(data: bytes, other: bytes, rng: np.random.Generator, trials: int):
    body, n_head = data[:-4], _HEAD.size
    fields = _HEAD.unpack_from(body)
    words = (len(body) - n_head) // 4
    field_values = {2: [0, 1, 4, 6, 255], 3: [0, 1, 5, 7, 65535], 4: [0, 1, fields[4] + 1, 32 * words, 2**24, 2**32 - 1],
                    5: [0, 1, 2, 4096, 4097, 65535], 8: [0, 1, 2, 255], 9: [0, words - 1, words + 1, 2**32 - 1]}
    kinds = ["bit", "byte", "truncate", "append", "field", "payload", "payload_word", "other"]
    for t in range(trials):
        kind = kinds[t % len(kinds)]
        if kind == "bit":
            buf = bytearray(data)
            buf[rng.integers(len(buf))] ^= 1 << int(rng.integers(8))
        elif kind == "byte":
            buf = bytearray(data)
            buf[rng.integers(len(buf))] = rng.integers(256)
        elif kind == "truncate":
            buf = data[:rng.integers(len(data))]
        elif kind == "append":
            buf = data + rng.bytes(int(rng.integers(1, 9)))
        elif kind == "field":
            f = list(fields)
            k = int(rng.choice(list(field_values)))
            f[k] = int(rng.choice(field_values[k]))
            buf = _reseal(_HEAD.pack(*f) + body[n_head:])
        elif kind == "payload":  # damage inside the payload, container resealed: only the decoder can tell
            pay = bytearray(body[n_head:])
            for _ in range(int(rng.integers(1, 4))):
                pay[rng.integers(len(pay))] ^= 1 << int(rng.integers(8))
            buf = _reseal(body[:n_head] + bytes(pay))
        elif kind == "payload_word":  # a whole word rewritten, the last one included (zero: constriction refuses)
            pay = np.frombuffer(body[n_head:], "<u4").copy()
            pay[rng.integers(len(pay)) if rng.random() < 0.5 else -1] = rng.choice([0, 1, 2**32 - 1,
                                                                                   rng.integers(2**32)])
            buf = _reseal(body[:n_head] + pay.tobytes())
        else:
            buf = other
        yield kind, bytes(buf)


def _fuzz(trials: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    m, other_model = TINY, _model(seed=9)
    base = np.random.default_rng(1).integers(0, m.cells, size=(40, m.num_points))
    base[::3, 1:] = base[::3, :1]  # repeated points, as in the data-loss report
    variable = [list(r[: 1 + k % m.num_points]) for k, r in enumerate(base)]
    files = [(compress_sets(m, base, block=8), np.sort(base, 1)),
             (compress_sets(m, variable, block=5), _canonical(variable, m.num_points))]
    other = compress_sets(other_model, base, block=8)
    outcome = {"refused": 0, "intact": 0, "wrong": [], "foreign": [], "hang": [], "slowest": 0.0}
    for k, (data, truth) in enumerate(files):
        for kind, case in _fuzz_cases(data, other, rng, trials // len(files)):
            t0 = time.perf_counter()
            _watchdog(10.0)
            try:
                out = decompress_sets(m, case)
                if np.array_equal(out, truth):
                    outcome["intact"] += 1
                else:
                    outcome["wrong"].append(kind)
            except CodecError:
                outcome["refused"] += 1
            except _Hang:
                outcome["hang"].append(kind)
            except Exception as e:  # noqa: BLE001  (the point: nothing but CodecError may escape)
                outcome["foreign"].append(f"{kind}: {type(e).__name__}: {e}")
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            outcome["slowest"] = max(outcome["slowest"], time.perf_counter() - t0)
    return outcome


def _check(outcome):
    assert outcome["wrong"] == [] and outcome["foreign"] == [] and outcome["hang"] == [], outcome
    assert outcome["refused"] > 0.8 * (outcome["refused"] + outcome["intact"])


def test_fuzz_default_run():
    _check(_fuzz(int(os.environ.get("SETFLOW_FUZZ_TRIALS", 400))))


@pytest.mark.slow
def test_fuzz_5000_trials():
    out = _fuzz(5000, seed=1)
    _check(out)
    assert out["refused"] + out["intact"] == 5000


def test_raised_set_count_is_refused_or_stops_at_once():
    sets = np.random.default_rng(3).integers(0, ISSUE.cells, size=(64, 50))
    data = compress_sets(ISSUE, sets, block=16)
    body = data[:-4]
    f = list(_HEAD.unpack_from(body))
    words = f[9]
    for count in (65, 1000, 32 * words, 32 * words + 1, 2**24):
        f[4] = count
        t0 = time.perf_counter()
        with pytest.raises(CodecError):
            decompress_sets(ISSUE, _reseal(_HEAD.pack(*f) + body[_HEAD.size:]))
        assert time.perf_counter() - t0 < 5.0


def test_a_zero_last_word_is_a_codec_error():
    data = compress_sets(TINY, [[1, 2, 3]])
    body = bytearray(data[:-4])
    body[-4:] = b"\0\0\0\0"
    with pytest.raises(CorruptFileError):
        decompress_sets(TINY, _reseal(bytes(body)))


# ----------------------------------------------------------------------------- command line
@pytest.fixture
def codec_ckpt(tmp_path):
    from setflow.train.checkpoint import save_checkpoint

    args = dict(grid=5, num_points=6, d_model=16, num_heads=2, num_layers=1, dim_feedforward=16, dropout=0.0)
    cfg = {"model": "set_codec", "model_args": args, "train": {"dtype": "float32"}}
    return save_checkpoint(tmp_path / "c.pt", {"config": cfg, "model": TINY.state_dict()})


def _compress_args(ckpt, src, out, verify=True):
    import argparse

    return argparse.Namespace(ckpt=str(ckpt), inputs=[str(src)], output=str(out), verify=verify)


def test_cli_npy_and_masked_npz_round_trip(tmp_path, codec_ckpt):
    from setflow.cli import main

    sets = np.random.default_rng(0).integers(0, 25, size=(9, 6))
    np.save(tmp_path / "s.npy", sets)
    assert main(["compress", str(codec_ckpt), str(tmp_path / "s.npy"), "-o", str(tmp_path / "a.sfs")]) == 0
    mask = np.arange(6)[None] < np.arange(9)[:, None] % 6 + 1  # sizes 1..6
    np.savez(tmp_path / "m.npz", sets=sets, mask=mask)
    assert main(["compress", str(codec_ckpt), str(tmp_path / "m.npz"), "-o", str(tmp_path / "m.sfs")]) == 0
    assert main(["decompress", str(codec_ckpt), str(tmp_path / "m.sfs"), "-o", str(tmp_path / "back.npz")]) == 0
    with np.load(tmp_path / "back.npz") as z:
        assert np.array_equal(z["mask"].sum(1), mask.sum(1))
        assert np.array_equal(z["sets"], canonical_masked := np.where(
            np.arange(6)[None] < mask.sum(1)[:, None],
            np.sort(np.where(mask, sets, 99), 1), -1))
        assert np.array_equal(np.where(z["mask"], z["pixels"][..., 1] * 5 + z["pixels"][..., 0], -1), canonical_masked)


@pytest.mark.parametrize("name, content, match", [
    ("img.png", b"\x89PNG\r\n\x1a\n", "is an image"),
    ("bad.npz", b"PK\x03\x04 not really a zip", "damaged or unreadable .npz"),
    ("empty.npy", b"", "an empty file; expected an .npz or .npy"),
    ("text.npz", b"hello", "not a zip archive; expected an .npz or .npy"),
])
def test_cli_refuses_wrong_files_in_one_line(tmp_path, codec_ckpt, name, content, match):
    from setflow.coding.cli import compress_sets_file

    (tmp_path / name).write_bytes(content)
    with pytest.raises(CodecError, match=match):
        compress_sets_file(_compress_args(codec_ckpt, tmp_path / name, tmp_path / "o.sfs"))
    assert not (tmp_path / "o.sfs").exists()


def test_cli_refuses_to_write_over_its_input(tmp_path, codec_ckpt):
    from setflow.coding.cli import compress_sets_file

    np.save(tmp_path / "s.npy", np.ones((2, 6), np.int64))
    before = (tmp_path / "s.npy").read_bytes()
    with pytest.raises(CodecError, match="is the input itself"):
        compress_sets_file(_compress_args(codec_ckpt, tmp_path / "s.npy", tmp_path / "s.npy"))
    assert (tmp_path / "s.npy").read_bytes() == before


def test_cli_zero_sets_is_refused_before_writing(tmp_path, codec_ckpt):
    from setflow.coding.cli import compress_sets_file

    np.save(tmp_path / "none.npy", np.zeros((0, 6), np.int64))
    with pytest.raises(CodecError, match="no sets"):
        compress_sets_file(_compress_args(codec_ckpt, tmp_path / "none.npy", tmp_path / "o.sfs"))
    assert not (tmp_path / "o.sfs").exists()


def test_cli_verify_on_write_leaves_no_file_when_the_check_fails(tmp_path, codec_ckpt, monkeypatch):
    from setflow.coding.cli import compress_sets_file
    from setflow.coding.sets import SetCodec

    np.save(tmp_path / "s.npy", np.random.default_rng(0).integers(0, 25, size=(4, 6)))
    (tmp_path / "old.sfs").write_bytes(b"keep me")
    monkeypatch.setattr(SetCodec, "decompress", lambda self, data: np.zeros((4, 6), np.int64))
    with pytest.raises(CodecError, match="verification failed"):
        compress_sets_file(_compress_args(codec_ckpt, tmp_path / "s.npy", tmp_path / "old.sfs"))
    assert (tmp_path / "old.sfs").read_bytes() == b"keep me"  # the old output is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt", "old.sfs", "s.npy"]  # no temp file left
    compress_sets_file(_compress_args(codec_ckpt, tmp_path / "s.npy", tmp_path / "old.sfs", verify=False))
    assert (tmp_path / "old.sfs").read_bytes()[:4] == b"\x89SFS"  # --no-verify skips the check


def test_a_model_changed_in_place_is_not_served_from_the_coding_cache():
    from setflow.coding.format import ModelMismatchError

    m = _model(seed=4)
    data = compress_sets(m, [[1, 2, 3]])
    with torch.no_grad():
        m.gap_bias[0] += 1.0
    with pytest.raises(ModelMismatchError):
        decompress_sets(m, data)
    assert np.array_equal(decompress_sets(m, compress_sets(m, [[1, 2, 3]])), [[1, 2, 3]])
