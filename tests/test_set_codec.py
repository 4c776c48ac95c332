"""Set codec: exact sorted-tuple likelihood, bit-exact ANS round trips, file checks, fuzz."""

from __future__ import annotations

import itertools
import math
import struct
import zlib

import numpy as np
import pytest
import torch

from setflow.coding.format import CodecError, ModelMismatchError
from setflow.coding.sets import SETS_MAGIC, _HEAD, compress_sets, decompress_sets, read_sets_header, set_bits
from setflow.data.pixel_sets import canonical_sets, pixels_to_points, points_to_pixels
from setflow.models.set_codec import SortedSetAR


def _model(grid=5, n=6, seed=0):
    torch.manual_seed(seed)
    m = SortedSetAR(grid=grid, num_points=n, d_model=16, num_heads=2, num_layers=1, dim_feedforward=16, dropout=0.0)
    with torch.no_grad():  # non-trivial tables: the zero-initialised head would give a uniform model
        for p in m.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return m.eval()


def _sets(m, count, seed=1):
    rng = np.random.default_rng(seed)
    sets = rng.integers(0, m.grid ** 2, size=(count, m.num_points))
    sets[: count // 2, 1] = sets[: count // 2, 0]  # duplicates: multisets
    return sets


def test_total_mass_over_sorted_tuples_is_one():
    m = _model(grid=2, n=3).double()
    tuples = torch.tensor(list(itertools.product(range(4), repeat=3)))
    sorted_mask = (tuples[:, 1:] >= tuples[:, :-1]).all(1)
    srt = tuples[sorted_mask]
    assert srt.shape[0] == math.comb(4 + 3 - 1, 3)  # multisets of size 3 over 4 cells
    total = m.log_prob(srt).exp().sum().item()
    assert abs(total - 1.0) < 1e-12
    lp = m.step_log_probs(srt[:, :-1])  # support of every step: gaps that stay on the grid
    room = 3 - torch.cat([torch.zeros_like(srt[:, :1]), srt[:, :-1]], 1)
    assert torch.equal(torch.isinf(lp), torch.arange(4) > room[..., None])
    assert torch.allclose(lp.exp().sum(-1), torch.ones(()).double())
    bad = tuples[~sorted_mask]
    with pytest.raises(ValueError, match="sorted"):
        m.log_prob(bad[:1])


def test_round_trip_multisets_with_duplicates_canonical_order():
    m = _model()
    sets = _sets(m, 37)
    rng = np.random.default_rng(3)
    shuffled = np.stack([rng.permutation(r) for r in sets])
    data = compress_sets(m, shuffled, block=8)
    assert data == compress_sets(m, np.sort(sets, 1), block=8)  # any order of a row: the same file
    out = decompress_sets(m, data)
    assert out.dtype == np.int64 and np.array_equal(out, np.sort(sets, 1))
    assert (np.diff(out, axis=1) >= 0).all() and (np.diff(out, axis=1) == 0).any()
    col_row = np.stack([sets % 5, sets // 5], -1)
    assert compress_sets(m, col_row, block=8) == data


def test_file_bytes_match_analytic_bits():
    m = _model(grid=6, n=8)
    sets = _sets(m, 400)
    bits = set_bits(m, sets).sum()
    lp = m.double().log_prob(torch.from_numpy(np.sort(sets, 1))).sum().item()
    assert abs(bits + lp / math.log(2)) < 1e-6 * bits  # the tables are the model
    payload_bits = 8 * (len(compress_sets(m.float(), sets)) - _HEAD.size - 4)
    assert bits <= payload_bits <= 1.01 * bits + 64


def test_deterministic_across_threads_and_blocks():
    m = _model()
    sets = _sets(m, 30)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = compress_sets(m, sets, block=7)
        torch.set_num_threads(2)
        b = compress_sets(m, sets, block=7)
    finally:
        torch.set_num_threads(threads)
    assert a == b
    ref = set_bits(m, sets, block=30)
    for block in (1, 7, 30, 64):
        assert np.array_equal(decompress_sets(m, compress_sets(m, sets, block=block)), np.sort(sets, 1))
        assert np.allclose(set_bits(m, sets, block=block), ref, rtol=1e-12)


def test_header_and_model_checks():
    m = _model()
    sets = _sets(m, 4)
    data = compress_sets(m, sets)
    h = read_sets_header(data)
    assert (h.grid, h.num_points, h.count) == (5, 6, 4)
    with pytest.raises(ModelMismatchError):
        decompress_sets(_model(seed=5), data)
    with pytest.raises(CodecError, match="points"):
        compress_sets(m, np.zeros((2, 7), dtype=np.int64))
    with pytest.raises(CodecError, match="0..24"):
        compress_sets(m, np.full((2, 3), 25))
    with pytest.raises(CodecError, match="integer"):
        compress_sets(m, np.zeros((2, 3)))


def _resealed(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def test_fuzz_flips_truncations_crafted_headers():
    m = _model(grid=4, n=4)
    sets = _sets(m, 20)
    data = compress_sets(m, sets, block=4)
    rng = np.random.default_rng(0)
    cases = [data[:k] for k in range(0, len(data), 3)]
    for _ in range(60):
        buf = bytearray(data)
        buf[rng.integers(len(buf))] ^= 1 << int(rng.integers(8))
        cases.append(bytes(buf))
    body = data[:-4]
    fields = list(_HEAD.unpack_from(body))
    for k, values in ((2, [0, 3, 255]), (3, [0, 5, 65535]), (4, [0, 21, 2**24, 2**32 - 1]), (5, [0, 4097, 65535]),
                      (8, [1, 2, 255]), (9, [0, 2**32 - 1])):
        for v in values:
            f = fields.copy()
            f[k] = v
            cases.append(_resealed(_HEAD.pack(*f) + body[_HEAD.size:]))
    words = (len(body) - _HEAD.size) // 4
    for _ in range(30):  # valid container, random payload: must fail or decode to the checksummed sets
        payload = rng.integers(0, 2**32, size=words, dtype=np.uint64).astype("<u4").tobytes()
        cases.append(_resealed(body[:_HEAD.size] + payload))
    cases.append(_resealed(SETS_MAGIC[:3] + b"X" + body[4:]))
    wrong = 0
    for case in cases:
        try:
            out = decompress_sets(m, case)
        except CodecError:
            continue
        wrong += not np.array_equal(out, np.sort(sets, 1))
    assert wrong == 0


def test_pixel_conversions():
    idx = np.array([[0, 27, 28, 783, 783]])
    pts = pixels_to_points(idx)
    assert np.array_equal(points_to_pixels(pts + 0.49), idx)
    assert np.array_equal(canonical_sets(idx[:, ::-1]), idx)


def test_cli_compress_decompress_dispatch_on_checkpoint(tmp_path):
    from setflow.cli import main
    from setflow.train.checkpoint import save_checkpoint

    args = dict(grid=5, num_points=6, d_model=16, num_heads=2, num_layers=1, dim_feedforward=16, dropout=0.0)
    cfg = {"model": "set_codec", "model_args": args, "train": {"dtype": "float32"}}
    m = _model()
    ckpt = save_checkpoint(tmp_path / "c.pt", {"config": cfg, "model": m.state_dict()})
    sets = _sets(m, 9)
    np.savez(tmp_path / "s.npz", sets=sets)
    assert main(["compress", str(ckpt), str(tmp_path / "s.npz"), "-o", str(tmp_path / "s.sfs")]) == 0
    assert main(["decompress", str(ckpt), str(tmp_path / "s.sfs"), "-o", str(tmp_path / "back.npz")]) == 0
    with np.load(tmp_path / "back.npz") as z:
        assert np.array_equal(z["sets"], np.sort(sets, 1))
        assert np.array_equal(z["pixels"][..., 1] * 5 + z["pixels"][..., 0], z["sets"])
    data = (tmp_path / "s.sfs").read_bytes()
    assert decompress_sets(m, data, cfg).shape == (9, 6)


def test_evaluate_reports_the_set_likelihood_without_an_ordering_term():
    from setflow.evaluate import evaluate, format_metrics

    m = _model()
    x = torch.as_tensor(np.sort(_sets(m, 12), axis=1))
    res = evaluate(m, x, "nats_per_point", batch_size=5)
    expected = m.log_prob(x).double().mean().item() / m.num_points
    assert res.get("of_set") and "set_metric" not in res
    assert abs(res["metric"] - expected) < 1e-5
    assert "of the set" in format_metrics(res) and "papers" not in format_metrics(res)
