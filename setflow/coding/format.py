"""The ``.idf`` container: a small header, the ANS payload and a CRC-32 over everything.

Layout (all integers little-endian; ``varint`` = unsigned LEB128)::

    offset  size  field
    0       4     magic  b"\\x89IDF"   (a high-bit first byte, as in PNG, catches 7-bit transfers)
    4       1     format version (FORMAT_VERSION)
    5       1     dtype code of the original array (DTYPES)
    6       1     layout: low nibble = axis layout (LAYOUT_*), high nibble = source kind (SOURCE_*)
    7       1     ndim of the original array
    8       ...   ndim varints: the original shape
    ...     8     model fingerprint (first 8 bytes of a SHA-256 over weights + config + codec settings)
    ...     4     CRC-32 of the image's dtype, shape and values (checked after decoding: never
                  returns a wrong image)
    ...     4k    payload: the ANS coder's 32-bit words
    -4      4     CRC-32 of every byte before it (corruption / truncation check before decoding)

Payload (version 3). The header's shape alone says how many images there are; the coder's state
never does. One guard symbol lies under all data (:func:`setflow.coding.tables.push_guard`);
above it the images come in runs of ``IMAGES_PER_RUN`` (the last run may be shorter), run 0 on
top; a run is coded level by level (the top latents of all its images, then the next level's,
...; :mod:`setflow.coding.codec`), so a decoder inverts the flow on a whole run at once. After the
last image the guard must pop back intact and leave the coder exactly empty.

Limits, checked by :func:`unpack` before anything is allocated or decoded: ``1 <= ndim <=
MAX_NDIM``, each dimension in ``[1, MAX_DIM]``, at most ``MAX_ELEMENTS`` values (products in
Python ints, so nothing wraps), and no more values than the payload can hold
(:func:`check_payload_bits`). The generic pieces (:func:`check_container`, :class:`ByteReader`,
:func:`read_shape`, :func:`checked_product`, :func:`check_payload_bits`, :func:`codec_errors`)
serve every container of :mod:`setflow.coding`; each raises a :class:`CodecError` subclass.

CRC-32 detects every error burst of up to 32 bits (so every single flipped byte) and misses
random damage with probability 2^-32; the image CRC is a second, independent check that also
catches a decoder that disagrees with the encoder (e.g. a different machine's floating point).
"""

from __future__ import annotations

import contextlib
import struct
import zlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np

__all__ = [
    "MAGIC",
    "FORMAT_VERSION",
    "IMAGES_PER_RUN",
    "DTYPES",
    "LAYOUT_PLAIN",
    "LAYOUT_CHANNELS_LAST",
    "SOURCE_ARRAY",
    "SOURCE_PNG",
    "CodecError",
    "FormatError",
    "CorruptFileError",
    "ModelMismatchError",
    "DecodeMismatchError",
    "Header",
    "pack",
    "unpack",
    "MAX_NDIM",
    "MAX_DIM",
    "MAX_ELEMENTS",
    "MIN_BITS_PER_SYMBOL",
    "crc32",
    "write_varint",
    "check_container",
    "ByteReader",
    "check_range",
    "checked_product",
    "read_shape",
    "check_payload_bits",
    "codec_errors",
]

MAGIC = b"\x89IDF"
FORMAT_VERSION = 3  # 2: the image CRC covers dtype and shape too; 3: guard symbol, runs coded level
#                       by level, two-stage tables, split-prior parameters on a grid
#: images per run of a file's payload (part of the format)
IMAGES_PER_RUN = 32

#: dtype code <-> numpy dtype of the original array (values must lie in [0, 255])
DTYPES: dict[int, np.dtype] = {
    1: np.dtype(np.uint8),
    2: np.dtype(np.uint16),
    3: np.dtype(np.int16),
    4: np.dtype(np.int32),
    5: np.dtype(np.int64),
}
_DTYPE_CODES = {v: k for k, v in DTYPES.items()}

LAYOUT_PLAIN = 0  # the array is a reshape of (B, C, H, W)
LAYOUT_CHANNELS_LAST = 1  # (..., H, W, C): moved to channels-first before coding
SOURCE_ARRAY = 0  # decompress writes .npy by default
SOURCE_PNG = 1  # decompress writes .png by default

_TRAILER = 4


class CodecError(ValueError):
    """Base class of every decoding/encoding failure of the IDF codec."""


class FormatError(CodecError):
    """Not an ``.idf`` file, or an unsupported format version / dtype."""


class CorruptFileError(CodecError):
    """The file is truncated or damaged (checksum mismatch)."""


class ModelMismatchError(CodecError):
    """The file was written with a different model or codec settings (fingerprint mismatch)."""


class DecodeMismatchError(CodecError):
    """Decoding finished but the image does not match its stored checksum (never returned)."""


@dataclass(frozen=True)
class Header:
    dtype: np.dtype
    shape: tuple[int, ...]
    layout: int
    source: int
    fingerprint: bytes
    image_crc: int


# ---------------------------------------------------------------- generic, reusable bounds checks
#: format limits of every codec container (checked before anything is allocated or decoded)
MAX_NDIM = 8
MAX_DIM = 1 << 31
MAX_ELEMENTS = 1 << 40
#: every coded symbol costs at least this many bits: constriction's leaky 24-bit categoricals
#: give no symbol more than 1 - 2^-24 of the mass, so -log2 P >= 2^-24 / ln 2 > 2^-24
MIN_BITS_PER_SYMBOL = 2.0**-24
#: slack (bits) for the coder's state and small-state rounding in :func:`check_payload_bits`
PAYLOAD_SLACK_BITS = 64


def crc32(data: bytes) -> int:
    """CRC-32 of ``data`` as an unsigned int."""
    return zlib.crc32(data) & 0xFFFFFFFF


def write_varint(n: int) -> bytes:
    """Unsigned LEB128 encoding of ``n >= 0``."""
    if n < 0:
        raise ValueError("varints are unsigned")
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def check_container(data, magic: bytes, min_size: int, name: str = "IDF") -> bytes:
    """Verify magic bytes, a minimum length and the CRC-32 trailer; return the bytes before the trailer.

    ``data`` must be bytes-like (``TypeError`` otherwise); every other problem raises
    :class:`FormatError` (bad magic) or :class:`CorruptFileError` (short file, checksum).
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < len(magic) or data[: len(magic)] != magic:
        raise FormatError(f"not an {name}-compressed file (bad magic bytes)")
    if len(data) < max(min_size, len(magic) + _TRAILER):
        raise CorruptFileError(f"file is truncated ({len(data)} bytes)")
    (stored,) = struct.unpack("<I", data[-_TRAILER:])
    if crc32(data[:-_TRAILER]) != stored:
        raise CorruptFileError("checksum mismatch: the file is truncated or corrupted")
    return data[:-_TRAILER]


class ByteReader:
    """A cursor over a header: every read is bounds-checked and every value range-checked.

    Each method names the field it reads, so a rejection says what was wrong
    (:class:`CorruptFileError` for truncation or out-of-range values).
    """

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = bytes(data)
        self.pos = pos

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int, name: str) -> bytes:
        """The next ``n`` bytes (field ``name``)."""
        if n < 0 or n > self.remaining:
            raise CorruptFileError(f"file is truncated inside the {name}")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self, name: str, lo: int = 0, hi: int = 255) -> int:
        return check_range(self.take(1, name)[0], name, lo, hi)

    def u32(self, name: str, lo: int = 0, hi: int = 0xFFFFFFFF) -> int:
        return check_range(struct.unpack("<I", self.take(4, name))[0], name, lo, hi)

    def varint(self, name: str, lo: int = 0, hi: int = (1 << 63) - 1) -> int:
        """An unsigned LEB128 of at most 9 bytes, in ``[lo, hi]``."""
        n = shift = 0
        while True:
            b = self.take(1, name)[0]
            n |= (b & 0x7F) << shift
            if not b & 0x80:
                return check_range(n, name, lo, hi)
            shift += 7
            if shift > 63:
                raise CorruptFileError(f"malformed {name} in the header (varint too long)")


def check_range(value: int, name: str, lo: int, hi: int) -> int:
    """``value`` if ``lo <= value <= hi``, else :class:`CorruptFileError` naming the field."""
    if not lo <= value <= hi:
        raise CorruptFileError(f"header field {name} = {value} is out of range [{lo}, {hi}]")
    return value


def checked_product(dims, limit: int, name: str = "shape") -> int:
    """Product of ``dims`` in Python ints (no overflow); :class:`CorruptFileError` above ``limit``."""
    total = 1
    for d in dims:
        total *= int(d)
        if total > limit:
            raise CorruptFileError(f"{name} {tuple(dims)} has more than {limit} elements")
    return total


def read_shape(reader: ByteReader, ndim: int, *, max_ndim: int = MAX_NDIM, max_dim: int = MAX_DIM,
               max_elements: int = MAX_ELEMENTS, name: str = "shape") -> tuple[int, ...]:
    """``ndim`` varint dimensions, each in ``[1, max_dim]``, ``1 <= ndim <= max_ndim`` and the
    product at most ``max_elements``; checked field by field before anything is allocated."""
    check_range(ndim, f"{name} ndim", 1, max_ndim)
    shape = tuple(reader.varint(f"{name}[{i}]", 1, max_dim) for i in range(ndim))
    checked_product(shape, max_elements, name)
    return shape


def check_payload_bits(num_symbols: int, payload_bits: int, what: str = "symbols") -> None:
    """Refuse a header that claims more coded symbols than the payload can hold
    (``MIN_BITS_PER_SYMBOL`` each, plus slack); computed in Python ints/floats, no overflow."""
    if num_symbols * MIN_BITS_PER_SYMBOL > payload_bits + PAYLOAD_SLACK_BITS:
        raise CorruptFileError(
            f"header claims {num_symbols} {what} but the payload has only {payload_bits} bits"
        )


def dtype_code(dtype: np.dtype) -> int:
    dt = np.dtype(dtype)
    if dt not in _DTYPE_CODES:
        raise ValueError(f"unsupported image dtype {dt}; expected one of {[str(d) for d in DTYPES.values()]}")
    return _DTYPE_CODES[dt]


def image_crc(arr: np.ndarray, dtype=None) -> int:
    """CRC-32 of the image's dtype code, shape and content (as uint8 values in C order).

    ``dtype`` (default ``arr.dtype``) is the dtype the image is returned in; with the shape in
    the checksum, a header whose shape or dtype was changed never yields a reshaped image.
    """
    head = bytes([dtype_code(arr.dtype if dtype is None else dtype), arr.ndim])
    head += b"".join(write_varint(int(s)) for s in arr.shape)
    return crc32(head + np.ascontiguousarray(arr, dtype=np.uint8).tobytes())


def pack(header: Header, words: np.ndarray) -> bytes:
    """Serialise a header and the ANS payload (``uint32`` words) into file bytes."""
    if len(header.fingerprint) != 8:
        raise ValueError("fingerprint must be 8 bytes")
    if not 0 <= header.layout < 16 or not 0 <= header.source < 16:
        raise ValueError("layout and source must fit in a nibble")
    if not 1 <= len(header.shape) <= MAX_NDIM or any(not 1 <= int(s) <= MAX_DIM for s in header.shape):
        raise ValueError(f"image shape {header.shape} is outside the format's limits "
                         f"(1..{MAX_NDIM} dims, each 1..{MAX_DIM})")
    head = bytearray(MAGIC)
    head += bytes([FORMAT_VERSION, dtype_code(header.dtype), header.layout | (header.source << 4), len(header.shape)])
    for s in header.shape:
        head += write_varint(int(s))
    head += header.fingerprint
    head += struct.pack("<I", header.image_crc)
    head += np.ascontiguousarray(words, dtype="<u4").tobytes()
    head += struct.pack("<I", crc32(bytes(head)))
    return bytes(head)


def unpack(data: bytes) -> tuple[Header, np.ndarray]:
    """Parse and verify file bytes; raises a :class:`CodecError` subclass on any problem.

    Checked in order, before anything is allocated: magic, length, CRC-32 trailer, version,
    dtype code, layout, ``1 <= ndim <= MAX_NDIM``, each dimension in ``[1, MAX_DIM]``, their
    product (Python ints) at most ``MAX_ELEMENTS``, and a payload of whole 32-bit words.
    """
    body = check_container(data, MAGIC, 8 + 1 + 8 + 4 + _TRAILER, "IDF")
    r = ByteReader(body, len(MAGIC))
    version = r.u8("version")
    if version != FORMAT_VERSION:
        older = " (written by an older setflow: decode it with that release)" if version < FORMAT_VERSION else ""
        raise FormatError(f"unsupported IDF format version {version}{older}; this build reads version {FORMAT_VERSION}")
    code = r.u8("dtype")
    if code not in DTYPES:
        raise FormatError(f"unknown dtype code {code} in the header")
    packed = r.u8("layout")
    layout, source = packed & 0x0F, packed >> 4
    if layout not in (LAYOUT_PLAIN, LAYOUT_CHANNELS_LAST) or source not in (SOURCE_ARRAY, SOURCE_PNG):
        raise CorruptFileError(f"unknown layout/source byte {packed:#04x} in the header")
    shape = read_shape(r, r.u8("ndim"))
    fingerprint = r.take(8, "fingerprint")
    crc = r.u32("image checksum")
    if r.remaining % 4:
        raise CorruptFileError("file is truncated or has a malformed payload (not whole 32-bit words)")
    words = np.frombuffer(r.take(r.remaining, "payload"), dtype="<u4").astype(np.uint32)
    return Header(DTYPES[code], shape, layout, source, fingerprint, crc), words


@contextlib.contextmanager
def codec_errors(what: str = "the compressed stream is damaged") -> Iterator[None]:
    """Turn a foreign exception raised while decoding (numpy, struct, zlib, constriction, torch)
    into a :class:`CorruptFileError`; codec errors pass through unchanged."""
    try:
        yield
    except CodecError:
        raise
    except (ValueError, TypeError, IndexError, KeyError, OverflowError, ArithmeticError, AssertionError,
            RuntimeError, MemoryError, struct.error, zlib.error) as e:
        raise CorruptFileError(f"{what} ({type(e).__name__}: {e})") from e
