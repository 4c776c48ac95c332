"""Lossless coding of pixel multisets with :class:`~setflow.models.set_codec.SortedSetAR` and ANS.

A set is coded as its sorted tuple (the canonical order of the multiset), one symbol per point:
step ``i`` codes the gap ``idx_i - idx_{i-1}`` (``idx_1`` itself first) with the categorical
``p(. | idx_<i)``. The sets of a block are coded together, one step for all of them at a time:
a :class:`~setflow.models.set_codec.SetStepper` (keys and values cached, so each step costs one
token per set) gives every table, and one batched ``constriction`` call
(``Categorical(perfect=False)``) codes the step. Encoder and decoder run the *same* stepper over
the *same* block (CPU, float64 copy of the weights, one thread: see
:func:`setflow.coding.codec.deterministic_cpu`), so their tables are bit-identical; the block size
is part of the file. ANS is a stack, so the encoder pushes in the reverse of the decoding order.

How the decoder knows where the data ends (never from the coder's state): the header gives the
number of sets, and a variable-size file codes each set's size (uniform over ``1..N``) before
its points; so the decoder pops exactly the symbols that were pushed. Under them all lies one
guard symbol (``0xA5``, uniform over 256, pushed first): it keeps the coder's state off its
initial value while real symbols remain, so a coder that runs empty mid-stream means a damaged
file, and after the last set the guard must pop back intact and leave the coder exactly empty.

Bounded work: every set costs at least one bit. Where a block's tables give its sets fewer bits
than it has sets (a model sure of its gaps; a set stuck at the last pixel, whose only gap is 0),
the block is padded with ``0xA5`` symbols of 8 bits each, their number computed on both sides
from the same tables (trained models never need it). So a file of ``K`` words holds at most
``32 K`` sets (checked before decoding), and a header whose set count was raised runs dry
within a few phantom sets instead of decoding them for free.

Container ``.sfs`` version 2 (little-endian)::

    0   4  magic b"\\x89SFS"
    4   1  format version (2)
    5   1  grid side G
    6   2  points per set N (the largest set of a variable-size file)
    8   4  number of sets M
    12  2  sets per coded block
    14  8  model fingerprint (SHA-256 of weights + model config)
    22  4  CRC-32 of the decoded sets (int16 canonical indices, -1 padding), checked before returning
    26  1  flags: bit 0 = variable sizes (coded in the payload)
    27  4  payload words K
    31  4K ANS words
    -4  4  CRC-32 of every byte before it

All failures raise :class:`~setflow.coding.format.CodecError` subclasses. The codec is
:class:`SetCodec` (the :class:`~setflow.coding.base.Codec` interface it shares with the image
codec); :func:`compress_sets`, :func:`decompress_sets` and :func:`set_bits` are its one-call forms.
The command-line handlers are in :mod:`setflow.coding.cli`.

Sets are ``(M, N)`` linear indices ``row * G + col`` (or ``(M, N, 2)`` integer ``(col, row)``);
``-1`` marks an absent point, so a batch of sets of different sizes is one padded array (a
sequence of 1-D arrays is accepted too). :func:`decompress_sets` returns the same layout: each
row sorted, its ``-1`` padding last.

Example::

    >>> from setflow.models.set_codec import SortedSetAR
    >>> m = SortedSetAR(grid=4, num_points=3, d_model=8, num_heads=2, num_layers=1, dim_feedforward=8)
    >>> sets = np.array([[0, 0, 5], [1, 2, 15]])
    >>> data = compress_sets(m, sets)
    >>> np.array_equal(decompress_sets(m, data), sets)
    True
    >>> decompress_sets(m, compress_sets(m, [[7], [3, 3]])).tolist()   # sets of different sizes
    [[7, -1], [3, 3]]
"""

from __future__ import annotations

import copy
import json
import math
import struct
import zlib
from dataclasses import dataclass
from typing import Iterator

import constriction
import numpy as np
import torch
from torch import nn

from setflow.coding.base import Codec, weights_fingerprint
from setflow.coding.codec import deterministic_cpu
from setflow.coding.format import (CodecError, CorruptFileError, DecodeMismatchError, FormatError,
                                   ModelMismatchError, codec_errors)
from setflow.data.pixel_sets import canonical_sets

__all__ = ["SETS_MAGIC", "SETS_VERSION", "SetCodec", "SetsHeader", "compress_sets", "decompress_sets",
           "read_sets_header", "set_fingerprint", "set_bits"]

SETS_MAGIC = b"\x89SFS"
SETS_VERSION = 2
_HEAD = struct.Struct("<4sBBHIH8sIBI")
MAX_SETS = 1 << 24
MAX_BLOCK = 4096
SETS_PER_WORD = 32  # every set costs at least one bit of payload (padded blocks guarantee it)
GUARD_SYMBOL, GUARD_ALPHABET = 0xA5, 256
VARIABLE = 1  # flags bit: sizes are coded
DEFAULT_BLOCK = 512


@dataclass(frozen=True)
class SetsHeader:
    grid: int
    num_points: int
    count: int
    block: int
    fingerprint: bytes
    sets_crc: int
    variable: bool
    words: int


def set_fingerprint(model: nn.Module, config: dict | None = None) -> bytes:
    """8 bytes of SHA-256 over the format version, the model config and the float64 weights."""
    return weights_fingerprint("setflow-set-codec", SETS_VERSION, model, config or {}, weight_dtypes=False)


def _sets_crc(sets: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(sets, dtype="<i2").tobytes())


_PREPARED: dict = {}


def _coding_model(model: nn.Module, config: dict | None = None) -> tuple[nn.Module, bytes]:
    """``(float64 CPU eval copy, fingerprint)`` of ``model``, kept while no tensor of it changes
    (the key holds every parameter's and buffer's identity and in-place version counter)."""
    key = (id(model), json.dumps(config or {}, sort_keys=True, default=str),
           tuple((id(t), t._version) for t in model.state_dict(keep_vars=True).values()))
    if key not in _PREPARED:
        if len(_PREPARED) >= 4:
            _PREPARED.pop(next(iter(_PREPARED)))
        _PREPARED[key] = (copy.deepcopy(model).to("cpu", torch.float64).eval(), set_fingerprint(model, config))
    return _PREPARED[key]


def _check_sets(model: nn.Module, sets) -> tuple[np.ndarray, np.ndarray]:
    """Canonical ``(M, N)`` sets (``-1`` padding last) and their sizes ``(M,)``, or a FormatError."""
    try:
        arr = canonical_sets(sets, model.grid, absent=True)
    except ValueError as e:
        raise FormatError(str(e)) from None
    sizes = (arr >= 0).sum(1)
    n = int(sizes.max()) if len(sizes) else arr.shape[1]  # padding wider than the largest set is dropped
    if not 1 <= n <= model.num_points:
        raise FormatError(f"sets of {n} points; this model codes 1..{model.num_points} points per set")
    if arr.shape[0] > MAX_SETS:
        raise FormatError(f"at most {MAX_SETS} sets per file, got {arr.shape[0]}")
    return arr[:, :n], sizes


def _cat():
    return constriction.stream.model.Categorical(perfect=False)


def _step_table(stepper, prev: torch.Tensor, active: torch.Tensor, step: int) -> np.ndarray:
    """float64 ``(active, W)`` probabilities of the next gap of the active sets of a block.

    ``W`` is the widest support among them (gaps that stay on the grid, at least two entries: the
    coder needs two), the same on both sides."""
    width = max(stepper.model.cells - (int(prev[active].min()) if step else 0), 2)  # constriction needs 2
    return stepper.step(prev if step else None, rows=active, width=width).numpy()


def _block_steps(m: nn.Module, x: torch.Tensor, sizes: torch.Tensor) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(symbols, table)`` of every step of a known block ``x`` ``(b, n)``, in decoding order."""
    stepper = m.stepper(x.shape[0])
    prev = torch.zeros(x.shape[0], dtype=torch.long)
    for i in range(int(sizes.max())):
        active = sizes > i
        table = _step_table(stepper, prev, active, i)
        cur = torch.where(active, x[:, i], prev)
        yield (cur - prev)[active].numpy().astype(np.int32), table
        prev = cur


def _step_bits(symbols: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Bits of each coded symbol of a step under its table (float64; the same on both sides)."""
    with np.errstate(divide="ignore"):
        return -np.log2(table[np.arange(len(symbols)), symbols] / table.sum(1))


def _padding(bits: float, sets: int) -> int:
    """Guard symbols (8 bits each) that bring a block to at least one bit per set."""
    return 0 if bits >= sets else math.ceil((sets - bits) / 8)


def _uniform(rows: int, n: int) -> np.ndarray:
    return np.full((rows, n), 1.0 / n)


def _guard(coder, cat, count: int, encode: bool) -> None:
    if encode:
        coder.encode_reverse(np.full(count, GUARD_SYMBOL, np.int32), cat, _uniform(count, GUARD_ALPHABET))
    elif count and (coder.decode(cat, _uniform(count, GUARD_ALPHABET)) != GUARD_SYMBOL).any():
        raise CorruptFileError("a guard symbol decoded wrong: the payload is damaged")


def _guard_bits() -> int:
    """Valid bits of a coder that holds only the guard: every state of a valid stream above it has more."""
    coder = constriction.stream.stack.AnsCoder()
    _guard(coder, _cat(), 1, encode=True)
    return coder.num_valid_bits()


class SetCodec(Codec):
    """Lossless codec for pixel multisets on top of a :class:`~setflow.models.set_codec.SortedSetAR`
    (the :class:`~setflow.coding.base.Codec` contract; the module docstring has the format).

    Args:
        model: the set model (any device/dtype: the codec codes with a float64 CPU copy, made
            once per model state, so later changes to ``model`` do not affect this codec).
        config: the model config, part of the fingerprint (a checkpoint's ``config``).
        block: sets coded together (written into each file; :meth:`decompress` reads it there).

    Example:
        >>> from setflow.models.set_codec import SortedSetAR
        >>> codec = SetCodec(SortedSetAR(grid=4, num_points=3, d_model=8, num_heads=2, num_layers=1,
        ...                              dim_feedforward=8))
        >>> data = codec.compress([[5, 0, 0], [15, 1, 2]])
        >>> codec.decompress(data).tolist(), codec.header(data).count
        ([[0, 0, 5], [1, 2, 15]], 2)
    """

    def __init__(self, model: nn.Module, config: dict | None = None, block: int = DEFAULT_BLOCK) -> None:
        if not 1 <= block <= MAX_BLOCK:
            raise FormatError(f"block must be in 1..{MAX_BLOCK}, got {block}")
        self.model, self.config, self.block = model, config, int(block)
        self.grid, self.num_points = int(model.grid), int(model.num_points)
        self.net, self.fingerprint = _coding_model(model, config)

    def check(self, sets) -> tuple[np.ndarray, np.ndarray]:
        """Canonical ``(M, N)`` sets (each row sorted, ``-1`` padding last, padding wider than the
        largest set dropped) and their sizes ``(M,)``; a one-line FormatError for sets it cannot code."""
        return _check_sets(self.model, sets)

    def same(self, x, back) -> bool:
        """Whether decoded ``back`` holds the multisets of ``x`` (any order of each row's points)."""
        arr, _ = self.check(x)
        return np.array_equal(arr, back)

    def bits(self, sets) -> np.ndarray:
        """Analytic code length (bits) of each set's points under the coding tables, ``(M,)`` float64
        (a variable-size file adds ``log2 N`` bits a set for its size)."""
        arr, sizes = self.check(sets)
        block = self.block
        bits = np.zeros(arr.shape[0])
        with deterministic_cpu():
            for s in range(0, arr.shape[0], block):
                x, n = torch.from_numpy(arr[s:s + block]), torch.from_numpy(sizes[s:s + block])
                for i, (sym, table) in enumerate(_block_steps(self.net, x, n)):
                    bits[s:s + block][(n > i).numpy()] += _step_bits(sym, table)
        return bits

    def compress(self, sets) -> bytes:
        """Code ``(M, N)`` pixel indices (or ``(M, N, 2)`` integer ``(col, row)``; ``-1`` marks an absent
        point) into ``.sfs`` bytes. Sets are multisets: any order of each row gives the same file."""
        arr, sizes = self.check(sets)
        block = self.block
        variable = bool((sizes < arr.shape[1]).any())
        coder, cat = constriction.stream.stack.AnsCoder(), _cat()
        with deterministic_cpu():
            _guard(coder, cat, 1, encode=True)
            for s in reversed(range(0, arr.shape[0], block)):
                x, n = torch.from_numpy(arr[s:s + block]), torch.from_numpy(sizes[s:s + block])
                steps = list(_block_steps(self.net, x, n))
                bits = 0.0
                for sym, table in steps:
                    bits += float(_step_bits(sym, table).sum())
                _guard(coder, cat, _padding(bits, len(n)), encode=True)
                for sym, table in reversed(steps):
                    coder.encode_reverse(sym, cat, table)
                if variable:
                    coder.encode_reverse((n - 1).numpy().astype(np.int32), cat, _uniform(len(n), arr.shape[1]))
        words = coder.get_compressed().astype("<u4")
        if arr.shape[0] > SETS_PER_WORD * words.size:  # padded blocks make this impossible; never write such a file
            raise CodecError(f"internal error: {arr.shape[0]} sets in {words.size} words")
        head = _HEAD.pack(SETS_MAGIC, SETS_VERSION, self.grid, arr.shape[1], arr.shape[0], block,
                          self.fingerprint, _sets_crc(arr), VARIABLE if variable else 0, int(words.size))
        body = head + words.tobytes()
        return body + struct.pack("<I", zlib.crc32(body))

    def header(self, data: bytes) -> SetsHeader:
        """The ``.sfs`` header, checked (magic, version, lengths, CRC, work bounds) without decoding."""
        return read_sets_header(data)

    def decompress(self, data: bytes) -> np.ndarray:
        """Decode ``.sfs`` bytes -> ``(M, N)`` int64 pixel indices, each set sorted, ``-1`` padding last."""
        h = read_sets_header(data)
        if h.grid != self.grid or h.num_points > self.num_points:
            raise ModelMismatchError(f"file codes {h.num_points}-point sets on a {h.grid}x{h.grid} grid; the model "
                                     f"codes up to {self.num_points} points on {self.grid}x{self.grid}")
        self.check_fingerprint(h.fingerprint)
        with codec_errors("the set payload is damaged"), deterministic_cpu():
            out = _decode(self.net, h, np.frombuffer(data, dtype="<u4", count=h.words,
                                                     offset=_HEAD.size).astype(np.uint32))
        if _sets_crc(out) != h.sets_crc:
            raise DecodeMismatchError("decoded sets do not match their checksum (not returned)")
        return out


def set_bits(model: nn.Module, sets, block: int = DEFAULT_BLOCK) -> np.ndarray:
    """:meth:`SetCodec.bits` of a model's codec."""
    return SetCodec(model, block=block).bits(sets)


def compress_sets(model: nn.Module, sets, config: dict | None = None, block: int = DEFAULT_BLOCK) -> bytes:
    """:meth:`SetCodec.compress` of a model's codec: ``(M, N)`` pixel indices into ``.sfs`` bytes."""
    return SetCodec(model, config, block).compress(sets)


def read_sets_header(data: bytes) -> SetsHeader:
    """Parse and check the container (magic, version, lengths, CRC, work bounds) without decoding."""
    data = bytes(data)
    if len(data) < _HEAD.size + 4:
        raise CorruptFileError(f"not a .sfs file or truncated: {len(data)} bytes, expected at least {_HEAD.size + 4}")
    magic, version, grid, n, count, block, fp, sets_crc, flags, words = _HEAD.unpack_from(data)
    if magic != SETS_MAGIC:
        raise FormatError(f"not a .sfs file (magic {magic!r}, expected {SETS_MAGIC!r})")
    if version != SETS_VERSION:
        raise FormatError(f"unsupported .sfs format version {version}, expected {SETS_VERSION}"
                          + (" (version 1 files: decode them with the setflow release that wrote them)"
                             if version == 1 else ""))
    if len(data) != _HEAD.size + 4 * words + 4:
        raise CorruptFileError(f"file is {len(data)} bytes, the header announces {_HEAD.size + 4 * words + 4}")
    if zlib.crc32(data[:-4]) != struct.unpack("<I", data[-4:])[0]:
        raise CorruptFileError("checksum mismatch: the file is damaged")
    if not (1 <= grid and 1 <= n and 1 <= block <= MAX_BLOCK and count <= MAX_SETS and flags in (0, VARIABLE)
            and count <= SETS_PER_WORD * words):
        raise CorruptFileError(f"implausible header: grid {grid}, {n} points, {count} sets, block {block}, "
                               f"flags {flags}, {words} words (a set costs at least one bit)")
    return SetsHeader(grid, n, count, block, fp, sets_crc, bool(flags & VARIABLE), words)


def decompress_sets(model: nn.Module, data: bytes, config: dict | None = None) -> np.ndarray:
    """:meth:`SetCodec.decompress` of a model's codec: ``.sfs`` bytes -> ``(M, N)`` sorted indices."""
    return SetCodec(model, config).decompress(data)


def _decode(m: nn.Module, h: SetsHeader, words: np.ndarray) -> np.ndarray:
    coder, cat = constriction.stream.stack.AnsCoder(words), _cat()
    floor = _guard_bits()
    out = np.full((h.count, h.num_points), -1, dtype=np.int64)
    for s in range(0, h.count, h.block):
        b = min(h.block, h.count - s)
        if h.variable:
            sizes = torch.from_numpy(coder.decode(cat, _uniform(b, h.num_points)).astype(np.int64) + 1)
        else:
            sizes = torch.full((b,), h.num_points, dtype=torch.long)
        stepper, prev = m.stepper(b), torch.zeros(b, dtype=torch.long)
        x = torch.full((b, h.num_points), -1, dtype=torch.long)
        bits = 0.0
        for i in range(int(sizes.max())):
            if coder.num_valid_bits() < floor:  # the guard lies under every real symbol: a valid file never
                raise CorruptFileError("payload ended before every set was decoded")  # dips into it here
            active = sizes > i
            table = _step_table(stepper, prev, active, i)
            gaps = coder.decode(cat, table)
            bits += float(_step_bits(gaps, table).sum())
            cur = prev[active] + torch.from_numpy(gaps.astype(np.int64))
            if bool((cur >= m.cells).any()):
                raise CorruptFileError("decoded an index off the grid: the payload is damaged")
            x[active, i] = cur
            prev = prev.masked_scatter(active, cur)
        _guard(coder, cat, _padding(bits, b), encode=False)
        if coder.num_valid_bits() < floor:
            raise CorruptFileError("payload ended before every set was decoded")
        out[s:s + b] = x.numpy()
    _guard(coder, cat, 1, encode=False)
    if not coder.is_empty():
        raise CorruptFileError("the payload does not end where the header says: the file is damaged")
    return out
