"""Lossless coding of pixel multisets with :class:`~setflow.models.set_codec.SortedSetAR` and ANS.

A set is coded as its sorted tuple (the canonical order of the multiset), one symbol per step:
step ``i`` of a block of sets pushes the gap ``idx_i - idx_{i-1}`` (``idx_1`` itself first) with the categorical ``p(. | idx_<i)`` of every
set of the block in one batched ``constriction`` call (``Categorical(perfect=False)``, 2-D table).
Encoder and decoder compute each table by the same call ``model.step_log_probs(prefix)`` on the
same ``(block, i)`` prefix tensor (CPU, float64 copy of the weights, one thread: see
:func:`setflow.coding.codec.deterministic_cpu`), so the tables are bit-identical. The block size
is part of the file; the encoder pushes blocks and steps in reverse (ANS is a stack).

Container ``.sfs`` (little-endian)::

    0   4  magic b"\\x89SFS"
    4   1  format version
    5   1  grid side G
    6   2  points per set N
    8   4  number of sets M
    12  2  sets per coded block
    14  8  model fingerprint (SHA-256 of weights + model config)
    22  4  CRC-32 of the decoded sets (int16 canonical indices), checked before returning
    26  4  payload words K
    30  4K ANS words
    -4  4  CRC-32 of every byte before it

Every field is checked against the file length, the model and fixed limits before anything is
allocated; a file claiming more than 64 sets per payload word (under half a bit per set) is
refused, so a crafted header cannot make the decoder loop for long. All failures raise
:class:`~setflow.coding.format.CodecError` subclasses.

Example::

    >>> from setflow.models.set_codec import SortedSetAR
    >>> m = SortedSetAR(grid=4, num_points=3, d_model=8, num_heads=2, num_layers=1, dim_feedforward=8)
    >>> sets = np.array([[0, 0, 5], [1, 2, 15]])
    >>> data = compress_sets(m, sets)
    >>> np.array_equal(decompress_sets(m, data), sets)
    True
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import struct
import zlib
from dataclasses import dataclass

import constriction
import numpy as np
import torch
from torch import nn

from setflow.coding.codec import deterministic_cpu
from setflow.coding.format import CodecError, CorruptFileError, DecodeMismatchError, FormatError, ModelMismatchError
from setflow.data.pixel_sets import canonical_sets

__all__ = ["SETS_MAGIC", "SETS_VERSION", "SetsHeader", "compress_sets", "decompress_sets", "read_sets_header",
           "holds_set_codec", "cli_compress_sets", "cli_decompress_sets",
           "set_fingerprint", "set_bits"]

SETS_MAGIC = b"\x89SFS"
SETS_VERSION = 1
_HEAD = struct.Struct("<4sBBHIH8sII")
MAX_SETS = 1 << 24
MAX_BLOCK = 4096
SETS_PER_WORD = 64
DEFAULT_BLOCK = 128


@dataclass(frozen=True)
class SetsHeader:
    grid: int
    num_points: int
    count: int
    block: int
    fingerprint: bytes
    sets_crc: int
    words: int


def set_fingerprint(model: nn.Module, config: dict | None = None) -> bytes:
    """8 bytes of SHA-256 over the format version, the model config and the float64 weights."""
    h = hashlib.sha256(b"setflow-set-codec\0" + bytes([SETS_VERSION]))
    h.update(json.dumps(config or {}, sort_keys=True, default=str).encode())
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu()
        t = t.to(torch.float64) if t.is_floating_point() else t
        h.update(name.encode() + b"\0" + str(tuple(t.shape)).encode() + t.contiguous().numpy().tobytes())
    return h.digest()[:8]


def _sets_crc(sets: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(sets, dtype="<i2").tobytes())


def _coding_model(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).to("cpu", torch.float64).eval()


def _table(m: nn.Module, prefix: torch.Tensor) -> np.ndarray:
    """float64 ``(B, G^2)`` probabilities of the next gap after ``prefix`` ``(B, i)``."""
    return m.step_log_probs(prefix)[:, -1].exp().numpy()


def _gap(x: torch.Tensor, i: int) -> torch.Tensor:
    """The symbol of step ``i``: ``x[:, 0]``, or the gap ``x[:, i] - x[:, i - 1]``."""
    return x[:, i] - x[:, i - 1] if i else x[:, 0]


def _check_sets(model: nn.Module, sets) -> np.ndarray:
    try:
        arr = canonical_sets(np.asarray(sets), model.grid)
    except ValueError as e:
        raise FormatError(str(e)) from None
    if not 1 <= arr.shape[1] <= model.num_points:
        raise FormatError(f"sets of {arr.shape[1]} points; this model codes 1..{model.num_points} points per set")
    if arr.shape[0] > MAX_SETS:
        raise FormatError(f"at most {MAX_SETS} sets per file, got {arr.shape[0]}")
    return arr


def set_bits(model: nn.Module, sets, block: int = DEFAULT_BLOCK) -> np.ndarray:
    """Analytic code length (bits) of each set under the coding tables, ``(M,)`` float64."""
    arr = _check_sets(model, sets)
    m = _coding_model(model)
    bits = np.zeros(arr.shape[0])
    with deterministic_cpu():
        for s in range(0, arr.shape[0], block):
            x = torch.from_numpy(arr[s:s + block])
            for i in range(x.shape[1]):
                p = _table(m, x[:, :i])
                bits[s:s + block] -= np.log2(p[np.arange(x.shape[0]), _gap(x, i).numpy()])
    return bits


def compress_sets(model: nn.Module, sets, config: dict | None = None, block: int = DEFAULT_BLOCK) -> bytes:
    """Code ``(M, N)`` pixel indices (or ``(M, N, 2)`` integer (col, row)) into ``.sfs`` bytes.

    Sets are multisets: any order of each row gives the same file. ``block`` sets share each
    batched coder call (written into the file; the decoder uses it).
    """
    arr = _check_sets(model, sets)
    if not 1 <= block <= MAX_BLOCK:
        raise FormatError(f"block must be in 1..{MAX_BLOCK}, got {block}")
    m = _coding_model(model)
    coder = constriction.stream.stack.AnsCoder()
    cat = constriction.stream.model.Categorical(perfect=False)
    with deterministic_cpu():
        for s in reversed(range(0, arr.shape[0], block)):
            x = torch.from_numpy(arr[s:s + block])
            for i in reversed(range(x.shape[1])):
                coder.encode_reverse(_gap(x, i).numpy().astype(np.int32), cat, _table(m, x[:, :i]))
    words = coder.get_compressed().astype("<u4")
    if arr.shape[0] > SETS_PER_WORD * max(int(words.size), 1):
        raise FormatError(f"{arr.shape[0]} sets coded in {words.size} word(s): more than {SETS_PER_WORD} sets "
                          "per word would be refused by the decoder")
    head = _HEAD.pack(SETS_MAGIC, SETS_VERSION, model.grid, arr.shape[1], arr.shape[0], block,
                      set_fingerprint(model, config), _sets_crc(arr), int(words.size))
    body = head + words.tobytes()
    return body + struct.pack("<I", zlib.crc32(body))


def read_sets_header(data: bytes) -> SetsHeader:
    """Parse and check the container (magic, version, lengths, CRC) without decoding."""
    data = bytes(data)
    if len(data) < _HEAD.size + 4:
        raise CorruptFileError(f"not a .sfs file or truncated: {len(data)} bytes, expected at least {_HEAD.size + 4}")
    magic, version, grid, n, count, block, fp, sets_crc, words = _HEAD.unpack_from(data)
    if magic != SETS_MAGIC:
        raise FormatError(f"not a .sfs file (magic {magic!r}, expected {SETS_MAGIC!r})")
    if version != SETS_VERSION:
        raise FormatError(f"unsupported .sfs format version {version}, expected {SETS_VERSION}")
    if len(data) != _HEAD.size + 4 * words + 4:
        raise CorruptFileError(f"file is {len(data)} bytes, the header announces {_HEAD.size + 4 * words + 4}")
    if zlib.crc32(data[:-4]) != struct.unpack("<I", data[-4:])[0]:
        raise CorruptFileError("checksum mismatch: the file is damaged")
    if not (1 <= grid and 1 <= n and 1 <= block <= MAX_BLOCK and count <= MAX_SETS
            and count <= SETS_PER_WORD * max(words, 1)):
        raise CorruptFileError(f"implausible header: grid {grid}, {n} points, {count} sets, block {block}, "
                               f"{words} words")
    return SetsHeader(grid, n, count, block, fp, sets_crc, words)


def decompress_sets(model: nn.Module, data: bytes, config: dict | None = None) -> np.ndarray:
    """Decode ``.sfs`` bytes -> ``(M, N)`` int64 pixel indices, each set sorted (canonical order)."""
    h = read_sets_header(data)
    if h.grid != model.grid or h.num_points > model.num_points:
        raise ModelMismatchError(f"file codes {h.num_points}-point sets on a {h.grid}x{h.grid} grid; the model "
                                 f"codes up to {model.num_points} points on {model.grid}x{model.grid}")
    if h.fingerprint != set_fingerprint(model, config):
        raise ModelMismatchError("the file was written with a different model (fingerprint mismatch)")
    words = np.frombuffer(data, dtype="<u4", count=h.words, offset=_HEAD.size).astype(np.uint32)
    coder = constriction.stream.stack.AnsCoder(words)
    cat = constriction.stream.model.Categorical(perfect=False)
    m = _coding_model(model)
    out = np.empty((h.count, h.num_points), dtype=np.int64)
    with deterministic_cpu():
        for s in range(0, h.count, h.block):
            x = torch.empty(min(h.block, h.count - s), 0, dtype=torch.long)
            for i in range(h.num_points):
                if coder.is_empty():
                    raise CorruptFileError("payload ended before every set was decoded")
                sym = torch.from_numpy(coder.decode(cat, _table(m, x)).astype(np.int64))
                if i:
                    sym = sym + x[:, -1]
                if bool((sym >= m.cells).any()):
                    raise CorruptFileError("decoded an index off the grid: the payload is damaged")
                x = torch.cat([x, sym[:, None]], 1)
            out[s:s + x.shape[0]] = x.numpy()
    if not coder.is_empty():
        raise CorruptFileError("payload has words left after the last set")
    if _sets_crc(out) != h.sets_crc:
        raise DecodeMismatchError("decoded sets do not match their checksum (not returned)")
    return out


# ----------------------------------------------------------------------------- command line
def holds_set_codec(ckpt: str) -> bool:
    """Whether a checkpoint holds a ``set_codec`` model (``setflow compress`` dispatches on it)."""
    from setflow.train.checkpoint import load_checkpoint

    return load_checkpoint(ckpt)["config"].get("model") == "set_codec"


def _read_npz_sets(path: str) -> np.ndarray:
    """The sets of an ``.npz``: key ``sets``, else ``test``, else its only array."""
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = list(z.keys())
            key = "sets" if "sets" in keys else "test" if "test" in keys else keys[0] if len(keys) == 1 else None
            if key is None:
                raise FormatError(f"{path}: expected an array 'sets' (or 'test', or a single array), got {keys}")
            return z[key]
    except (OSError, ValueError) as e:
        raise FormatError(f"{path}: not a readable .npz of sets ({e})") from None


def cli_compress_sets(args) -> int:
    """``setflow compress SETCODEC.pt sets.npz -o out.sfs``: all sets of the file into one ``.sfs``."""
    import time

    from setflow.train.checkpoint import load_model

    if len(args.inputs) != 1:
        raise FormatError("the set codec takes one .npz of sets (M, N) per call")
    model, cfg = load_model(args.ckpt, device="cpu")
    sets = _read_npz_sets(args.inputs[0])
    t0 = time.perf_counter()
    data = compress_sets(model, sets, cfg)
    dt = time.perf_counter() - t0
    with open(args.output, "wb") as fh:
        fh.write(data)
    m, n = sets.shape[:2]
    print(f"{args.inputs[0]} -> {args.output}: {m} sets x {n} points, {len(data)} bytes, "
          f"{8 * len(data) / (m * n):.3f} bits/point, {m / dt:.0f} sets/s")
    return 0


def cli_decompress_sets(args) -> int:
    """``setflow decompress SETCODEC.pt out.sfs -o sets.npz``: writes ``sets`` (M, N) sorted indices
    and ``pixels`` (M, N, 2) integer (col, row)."""
    import time

    from setflow.train.checkpoint import load_model

    if len(args.inputs) != 1:
        raise FormatError("the set codec decodes one .sfs file per call")
    model, cfg = load_model(args.ckpt, device="cpu")
    with open(args.inputs[0], "rb") as fh:
        data = fh.read()
    t0 = time.perf_counter()
    sets = decompress_sets(model, data, cfg)
    dt = time.perf_counter() - t0
    np.savez(args.output, sets=sets, pixels=np.stack([sets % model.grid, sets // model.grid], -1))
    print(f"{args.inputs[0]} -> {args.output}: {sets.shape[0]} sets x {sets.shape[1]} points, "
          f"{sets.shape[0] / max(dt, 1e-9):.0f} sets/s")
    return 0
