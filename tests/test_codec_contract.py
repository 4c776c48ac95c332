"""The codec base class: the image codec and the set codec keep one contract (round trip, bits,
a stable fingerprint, one refusal of another model's file), and files written before the shared
base existed still decode."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from setflow.coding import Codec, IDFCodec, SetCodec
from setflow.coding.format import DecodeMismatchError, ModelMismatchError
from setflow.models.idf import IDF
from setflow.models.set_codec import SortedSetAR


def _idf(seed: int = 0) -> IDF:
    torch.manual_seed(seed)
    return IDF((1, 4, 4), num_levels=2, num_flows=1, hidden_channels=4, depth=1, coupling="shallow",
               split_prior="shallow")


def _sar(seed: int = 1) -> SortedSetAR:
    torch.manual_seed(seed)
    return SortedSetAR(grid=5, num_points=4, d_model=8, num_heads=2, num_layers=1, dim_feedforward=8)


IMAGES = np.arange(32, dtype=np.uint8).reshape(2, 1, 4, 4) * 7
SETS = [[3, 1, 4, 1], [5, 9, -1, -1]]
SETS_CONFIG = {"model": "set_codec"}

# Written by setflow at main@8353ec2 (before the codec base class) from _idf() / _sar() and the
# inputs above, with IDFCodec(_idf()).compress(IMAGES) and compress_sets(_sar(), SETS, SETS_CONFIG).
OLD_IDF_FILE = ("8949444603010004020104040eabf3a2c8e41026cbe7a6fd03bc599e75b84a85d819a124c8f681f1c16a26f353"
                "5b0f6c10c85d0bae240136e9f63de7b7d5eb2fb219efa03b2260002a0cd66d")
OLD_SFS_FILE = "8953465302050400020000000002e293484d60f13ae67736fd100102000000a909d181336f60000eb61eda"


def _codec(kind: str, seed=None) -> Codec:
    if kind == "idf":
        return IDFCodec(_idf() if seed is None else _idf(seed))
    return SetCodec(_sar() if seed is None else _sar(seed), SETS_CONFIG)


def _input(kind: str):
    return IMAGES if kind == "idf" else SETS


KINDS = ["idf", "sets"]


@pytest.mark.parametrize("kind", KINDS)
def test_both_codecs_are_codecs_and_round_trip(kind):
    codec = _codec(kind)
    assert isinstance(codec, Codec)
    x = _input(kind)
    data = codec.compress(x)
    assert isinstance(data, bytes)
    back = codec.decompress(data)
    assert codec.same(x, back)
    codec.verify(x, data)
    assert codec.header(data).fingerprint == codec.fingerprint


def test_set_codec_compares_sets_as_multisets():
    codec = _codec("sets")
    back = codec.decompress(codec.compress(SETS))
    assert back.tolist() == [[1, 1, 3, 4], [5, 9, -1, -1]]  # each row sorted, padding last
    assert codec.same([[4, 3, 1, 1], [9, 5]], back) and not codec.same([[4, 3, 1, 2], [9, 5]], back)


@pytest.mark.parametrize("kind", KINDS)
def test_bits_are_one_positive_length_per_item_near_the_file_size(kind):
    codec = _codec(kind)
    x = _input(kind)
    bits = codec.bits(x)
    assert bits.shape == (2,) and bits.dtype == np.float64 and bool((bits > 0).all())
    assert np.array_equal(bits, codec.bits(x))  # deterministic
    payload = 8 * len(codec.compress(x))
    # the file is the ideal length plus a bounded overhead (header, ANS state, guard, escapes)
    assert 0.5 * bits.sum() < payload < bits.sum() + 8 * 64 + 64 * 2


@pytest.mark.parametrize("kind", KINDS)
def test_fingerprint_is_stable_and_names_the_weights(kind):
    a, b = _codec(kind), _codec(kind)
    assert isinstance(a.fingerprint, bytes) and len(a.fingerprint) == 8 and a.fingerprint == b.fingerprint
    model = a.net if kind == "idf" else a.model
    twin = copy.deepcopy(model).double()  # the same weights in float64: the same fingerprint
    assert (IDFCodec(twin) if kind == "idf" else SetCodec(twin, SETS_CONFIG)).fingerprint == a.fingerprint
    assert _codec(kind, seed=7).fingerprint != a.fingerprint


@pytest.mark.parametrize("kind", KINDS)
def test_another_models_file_is_refused_the_same_way(kind):
    data = _codec(kind).compress(_input(kind))
    other = _codec(kind, seed=7)
    with pytest.raises(ModelMismatchError, match=r"^this file was compressed with a different model or codec "
                                                 r"settings \(file fingerprint [0-9a-f]{16}, model [0-9a-f]{16}\)$"):
        other.decompress(data)


@pytest.mark.parametrize("kind", KINDS)
def test_verify_refuses_a_file_of_another_input(kind):
    codec = _codec(kind)
    x = _input(kind)
    other = IMAGES[::-1].copy() if kind == "idf" else [[0, 0, 0, 0], [2]]
    with pytest.raises(DecodeMismatchError, match="does not decode back to its input"):
        codec.verify(x, codec.compress(other))


def test_files_written_before_the_base_class_still_decode_to_the_same_bytes():
    idf, sets = _codec("idf"), _codec("sets")
    assert np.array_equal(idf.decompress(bytes.fromhex(OLD_IDF_FILE)), IMAGES)
    assert sets.same(SETS, sets.decompress(bytes.fromhex(OLD_SFS_FILE)))
    assert idf.compress(IMAGES).hex() == OLD_IDF_FILE and sets.compress(SETS).hex() == OLD_SFS_FILE


def test_a_codec_must_write_the_whole_contract():
    class Half(Codec):
        fingerprint = bytes(8)

        def compress(self, x):
            return b""

    with pytest.raises(TypeError, match="abstract"):
        Half()
