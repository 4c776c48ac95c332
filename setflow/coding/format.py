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
    ...     4     CRC-32 of the raw image bytes (checked after decoding: never returns a wrong image)
    ...     4k    payload: the ANS coder's 32-bit words
    -4      4     CRC-32 of every byte before it (corruption / truncation check before decoding)

CRC-32 detects every error burst of up to 32 bits (so every single flipped byte) and misses
random damage with probability 2^-32; the image CRC is a second, independent check that also
catches a decoder that disagrees with the encoder (e.g. a different machine's floating point).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np

__all__ = [
    "MAGIC",
    "FORMAT_VERSION",
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
]

MAGIC = b"\x89IDF"
FORMAT_VERSION = 1

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


def _varint(n: int) -> bytes:
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


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        if pos >= len(buf):
            raise CorruptFileError("file is truncated inside the header")
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return n, pos
        shift += 7
        if shift > 63:
            raise CorruptFileError("malformed shape in the header")


def dtype_code(dtype: np.dtype) -> int:
    dt = np.dtype(dtype)
    if dt not in _DTYPE_CODES:
        raise ValueError(f"unsupported image dtype {dt}; expected one of {[str(d) for d in DTYPES.values()]}")
    return _DTYPE_CODES[dt]


def image_crc(arr: np.ndarray) -> int:
    """CRC-32 of the image content (as uint8 values in C order), independent of the stored dtype."""
    return zlib.crc32(np.ascontiguousarray(arr, dtype=np.uint8).tobytes()) & 0xFFFFFFFF


def pack(header: Header, words: np.ndarray) -> bytes:
    """Serialise a header and the ANS payload (``uint32`` words) into file bytes."""
    if len(header.fingerprint) != 8:
        raise ValueError("fingerprint must be 8 bytes")
    if not 0 <= header.layout < 16 or not 0 <= header.source < 16:
        raise ValueError("layout and source must fit in a nibble")
    head = bytearray(MAGIC)
    head += bytes([FORMAT_VERSION, dtype_code(header.dtype), header.layout | (header.source << 4), len(header.shape)])
    for s in header.shape:
        head += _varint(int(s))
    head += header.fingerprint
    head += struct.pack("<I", header.image_crc)
    head += np.ascontiguousarray(words, dtype="<u4").tobytes()
    head += struct.pack("<I", zlib.crc32(bytes(head)) & 0xFFFFFFFF)
    return bytes(head)


def unpack(data: bytes) -> tuple[Header, np.ndarray]:
    """Parse and verify file bytes; raises a :class:`CodecError` subclass on any problem."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < len(MAGIC) or data[: len(MAGIC)] != MAGIC:
        raise FormatError("not an IDF-compressed file (bad magic bytes)")
    if len(data) < 8 + 8 + 4 + _TRAILER:
        raise CorruptFileError(f"file is truncated ({len(data)} bytes)")
    (stored,) = struct.unpack("<I", data[-_TRAILER:])
    if zlib.crc32(data[:-_TRAILER]) & 0xFFFFFFFF != stored:
        raise CorruptFileError("checksum mismatch: the file is truncated or corrupted")
    version = data[4]
    if version != FORMAT_VERSION:
        raise FormatError(f"unsupported IDF format version {version} (this build reads version {FORMAT_VERSION})")
    if data[5] not in DTYPES:
        raise FormatError(f"unknown dtype code {data[5]} in the header")
    layout, source, ndim = data[6] & 0x0F, data[6] >> 4, data[7]
    pos = 8
    shape = []
    for _ in range(ndim):
        s, pos = _read_varint(data, pos)
        shape.append(s)
    end = len(data) - _TRAILER
    if pos + 12 > end or (end - pos - 12) % 4:
        raise CorruptFileError("file is truncated or has a malformed payload")
    fingerprint = data[pos : pos + 8]
    (crc,) = struct.unpack("<I", data[pos + 8 : pos + 12])
    words = np.frombuffer(data[pos + 12 : end], dtype="<u4").astype(np.uint32)
    header = Header(DTYPES[data[5]], tuple(shape), layout, source, fingerprint, crc)
    return header, words
