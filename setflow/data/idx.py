"""Reader and writer for the IDX format of MNIST and Fashion-MNIST.

An IDX file is a 4-byte magic number ``00 00 TT NN`` (``TT`` the element type, ``NN``
the number of dimensions), ``NN`` big-endian uint32 sizes, then the elements in C order,
big-endian. MNIST labels are ``0x00000801`` (uint8, 1-D) and images ``0x00000803``
(uint8, 3-D). Files may be gzip-compressed; compression is detected by the gzip magic
bytes ``1f 8b``, not by the file name.

Example::

    >>> import numpy as np, tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "x-idx3-ubyte.gz"
    >>> _ = write_idx(path, np.zeros((2, 28, 28), np.uint8))
    >>> read_idx(path, ndim=3).shape
    (2, 28, 28)
"""

from __future__ import annotations

import gzip
import hashlib
import io
import zlib
from pathlib import Path
from typing import Optional

import numpy as np

from .common import DataError, PathLike, atomic_write

__all__ = ["IDX_TYPES", "read_idx", "read_idx_shape", "idx_digest", "write_idx", "is_gzip"]

#: IDX element-type byte -> numpy dtype (big-endian as stored on disk).
IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_TYPE_OF_DTYPE = {dt.newbyteorder("=") if dt.itemsize > 1 else dt: code for code, dt in IDX_TYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"


def is_gzip(path: PathLike) -> bool:
    """True when the file starts with the gzip magic bytes ``1f 8b``."""
    with open(path, "rb") as f:
        return f.read(2) == _GZIP_MAGIC


def _read_bytes(path: Path) -> bytes:
    """The file's (decompressed) bytes; a damaged gzip stream raises :class:`DataError`."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: IDX file not found") from None
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as g:
            return g.read()
    except (EOFError, OSError, zlib.error) as exc:
        raise DataError(f"{path}: corrupt or truncated gzip stream ({exc})") from None


def read_idx(
    path: PathLike,
    ndim: Optional[int] = None,
    dtype: Optional[np.dtype] = np.uint8,
) -> np.ndarray:
    """Read an IDX file (raw or gzip) into a native-endian numpy array.

    Args:
        path: the file.
        ndim: the number of dimensions the caller expects (1 for labels, 3 for images);
            ``None`` accepts any.
        dtype: the element type the caller expects (``np.uint8`` for MNIST, i.e. type byte
            0x08); ``None`` accepts any IDX type.

    Raises:
        DataError: naming ``path`` when the magic number, the type byte, the number of
            dimensions or the payload size is wrong (a truncated file, a file with trailing
            bytes, or not an IDX file at all).
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataError(f"{path}: {len(data)} bytes, too short for an IDX header (need >= 4)")
    magic = int.from_bytes(data[:4], "big")
    type_code, nd = data[2], data[3]
    want = ""
    if ndim is not None and dtype is not None:
        code = _TYPE_OF_DTYPE.get(np.dtype(dtype))
        want = f" (expected 0x0000{code:02X}{ndim:02X})" if code is not None else ""
    if data[:2] != b"\x00\x00" or type_code not in IDX_TYPES or nd == 0:
        raise DataError(
            f"{path}: bad IDX magic number 0x{magic:08X}{want or ' (expected 0x0000TTNN)'}; "
            "not an IDX file (MNIST labels are 0x00000801, images 0x00000803)"
        )
    file_dtype = IDX_TYPES[type_code]
    if dtype is not None and file_dtype.newbyteorder("=") != np.dtype(dtype).newbyteorder("="):
        raise DataError(
            f"{path}: IDX type byte 0x{type_code:02X} ({file_dtype}), expected "
            f"{np.dtype(dtype)}{want}; magic number 0x{magic:08X}"
        )
    if ndim is not None and nd != ndim:
        raise DataError(f"{path}: IDX magic number 0x{magic:08X} has {nd} dimensions, expected {ndim}{want}")
    header = 4 + 4 * nd
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header: {len(data)} bytes, the {nd} sizes need {header}")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=nd, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * file_dtype.itemsize
    got = len(data) - header
    if got != expected:
        what = "truncated" if got < expected else "trailing bytes after the data"
        raise DataError(
            f"{path}: {what}: header says shape {shape} = {expected} bytes of payload, "
            f"file holds {got}"
        )
    array = np.frombuffer(data, dtype=file_dtype, offset=header).reshape(shape)
    return array.astype(file_dtype.newbyteorder("="), copy=True)


def read_idx_shape(path: PathLike) -> tuple[int, ...]:
    """The shape an IDX file's header declares (raw or gzip), reading only the header.

    Raises:
        DataError: a missing file, a bad magic number or a header cut short.
    """
    path = Path(path)
    try:
        with open(path, "rb") as raw:
            stream = gzip.GzipFile(fileobj=raw) if raw.read(2) == _GZIP_MAGIC else raw
            raw.seek(0)
            head = stream.read(4)
            nd = head[3] if len(head) == 4 else 0
            if len(head) < 4 or head[:2] != b"\x00\x00" or head[2] not in IDX_TYPES or nd == 0:
                raise DataError(f"{path}: bad IDX header {head.hex() or '(empty)'}; not an IDX file "
                                "(MNIST labels start 00000801, images 00000803)")
            sizes = stream.read(4 * nd)
    except FileNotFoundError:
        raise DataError(f"{path}: IDX file not found") from None
    except (EOFError, OSError, zlib.error) as exc:
        raise DataError(f"{path}: corrupt or truncated gzip stream ({exc})") from None
    if len(sizes) < 4 * nd:
        raise DataError(f"{path}: truncated IDX header: the {nd} sizes need {4 + 4 * nd} bytes")
    return tuple(int(d) for d in np.frombuffer(sizes, dtype=">u4"))


def idx_digest(array: np.ndarray, algorithm: str = "sha256") -> str:
    """Hex digest of the uncompressed IDX file that holds ``array`` (as :func:`write_idx` writes
    it): for an array read with :func:`read_idx` it equals the digest of the file's (decompressed)
    bytes, without reading the file again."""
    array = np.asarray(array)
    native = array.dtype.newbyteorder("=") if array.dtype.itemsize > 1 else array.dtype
    code = _TYPE_OF_DTYPE.get(native)
    if code is None:
        raise DataError(f"no IDX type for dtype {array.dtype}")
    h = hashlib.new(algorithm)
    h.update(bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes())
    h.update(np.ascontiguousarray(array, dtype=IDX_TYPES[code]).data)
    return h.hexdigest()


def write_idx(path: PathLike, array: np.ndarray, compress: Optional[bool] = None) -> Path:
    """Write ``array`` as an IDX file, atomically.

    Args:
        path: destination; gzip-compressed when ``compress`` is True, or when it is ``None``
            and the name ends in ``.gz``.
        array: an array of an IDX element type (uint8, int8, int16, int32, float32, float64)
            with 1 to 255 dimensions.
    """
    path = Path(path)
    array = np.asarray(array)
    native = array.dtype.newbyteorder("=") if array.dtype.itemsize > 1 else array.dtype
    code = _TYPE_OF_DTYPE.get(native)
    if code is None:
        raise DataError(f"{path}: cannot write dtype {array.dtype} as IDX (expected one of "
                        f"{sorted(str(d) for d in _TYPE_OF_DTYPE)})")
    if not 1 <= array.ndim <= 255:
        raise DataError(f"{path}: IDX needs 1..255 dimensions, got {array.ndim}")
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + np.ascontiguousarray(array, dtype=IDX_TYPES[code]).tobytes()
    if compress is None:
        compress = path.name.endswith(".gz")
    if compress:
        payload = gzip.compress(payload, mtime=0)
    return atomic_write(path, lambda f: f.write(payload))
