"""Shared plumbing of the data layer: errors, the data root, atomic writes, hashes, logging.

Every loader in :mod:`setflow.data` resolves its files under one *data root*:

1. the ``data_root`` argument when given,
2. else the environment variable ``SETFLOW_DATA``,
3. else ``./datasets``: the folder ``datasets`` of the current working directory (in a
   checkout that is the repository's ``datasets/``; run elsewhere, nothing is written into
   the package's folder).

Downloads are skipped when ``download=False`` or the environment sets
``SETFLOW_OFFLINE=1`` (the CLI's ``--offline``). A failed download is remembered for a day
in the target folder (see :mod:`setflow.data.download`).
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import BinaryIO, Callable, Optional, Union

__all__ = [
    "DataError",
    "DataWarning",
    "PathLike",
    "default_data_root",
    "resolve_data_root",
    "offline",
    "downloads_allowed",
    "atomic_write",
    "read_npz",
    "not_a_zip",
    "set_default_mode",
    "file_digest",
    "report_source",
    "warn",
]

PathLike = Union[str, "os.PathLike[str]"]

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read the process umask once, so written files get normal permissions


class DataError(ValueError):
    """A data file is missing, truncated, corrupt or of the wrong format.

    The message always names the file (or folder) and says what was expected and what
    was found.
    """


class DataWarning(UserWarning):
    """Something about the data was off but was repaired (e.g. a corrupt cache rebuilt)."""


def warn(message: str) -> None:
    """Emit a :class:`DataWarning` attributed to the caller of the public loader."""
    warnings.warn(message, DataWarning, stacklevel=3)


def default_data_root() -> Path:
    """The data root used when no ``data_root`` argument is given (see module docstring)."""
    env = os.environ.get("SETFLOW_DATA", "").strip()
    if env:
        return Path(env).expanduser()
    return Path.cwd() / "datasets"


def resolve_data_root(data_root: Optional[PathLike] = None) -> Path:
    """``data_root`` as a :class:`Path`, or :func:`default_data_root` when it is ``None``."""
    return Path(data_root).expanduser() if data_root is not None else default_data_root()


def offline() -> bool:
    """True when the environment forbids downloads (``SETFLOW_OFFLINE`` set to 1/true/yes)."""
    return os.environ.get("SETFLOW_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def downloads_allowed(download: bool) -> bool:
    """Whether a loader called with ``download`` may touch the network."""
    return bool(download) and not offline()


def atomic_write(path: PathLike, write: Callable[[BinaryIO], None],
                 check: Optional[Callable[[Path], None]] = None) -> Path:
    """Write ``path`` atomically: ``write(f)`` fills a temp file next to it, then ``os.replace``.

    ``check(tmp)``, when given, reads the complete temp file before the rename (e.g. a codec
    decoding what it wrote) and raises to refuse it. A crash or an exception in ``write`` or
    ``check`` never leaves a half-written ``path`` behind (the temp file is removed, an
    existing ``path`` is untouched); readers see either the old file or the complete new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if check is not None:
            check(Path(tmp_name))
        set_default_mode(tmp_name)
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    return path


_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # an archive with members, an empty archive


def not_a_zip(path: PathLike) -> Optional[str]:
    """``None`` when the file starts like a zip archive (an ``.npz``, a PyTorch ``.pt``), else
    what it looks like instead ("an empty file", "a .npy array", ...), for error messages."""
    with open(path, "rb") as f:
        head = f.read(8)
    if head[:4] in _ZIP_MAGIC:
        return None
    if not head:
        return "an empty file"
    known = {b"\x93NUMPY": "a .npy array", b"\x89PNG": "a PNG image", b"\x80": "a bare pickle, never unpickled"}
    return next((what for magic, what in known.items() if head.startswith(magic)), "not a zip archive")


def read_npz(path: PathLike, expected: str = "an .npz archive of arrays") -> dict:
    """Every array of an ``.npz`` file as ``{name: ndarray}``, read without unpickling anything.

    A missing file, a folder, an empty, truncated or damaged archive, a ``.npy`` or any other
    file, or an archive holding pickled objects raises one :class:`DataError` line naming the
    file and ``expected`` (what it should have been, e.g. "a samples .npz from `setflow sample`").
    """
    import zipfile
    import zlib

    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {'a folder' if path.is_dir() else 'no such file'}; expected {expected}")
    found = not_a_zip(path)
    if found:
        raise DataError(f"{path}: {found}; expected {expected}")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as e:
        raise DataError(f"{path}: a damaged or unreadable .npz ({type(e).__name__}: {e}); expected {expected}") from None


def set_default_mode(path: PathLike, directory: bool = False) -> None:
    """Give a ``tempfile``-made file (0600) or folder (0700) the usual umask-based mode."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_UMASK)


def file_digest(path: PathLike, algorithm: str = "sha256", chunk_size: int = 1 << 20) -> str:
    """Hex digest of a file's bytes (``algorithm`` is any :mod:`hashlib` name)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_size), b""):
            h.update(block)
    return h.hexdigest()


def report_source(source: str, verbose: bool = True) -> str:
    """Print the one line naming the data source (``data: <source>``) to stderr.

    Returns the line so callers (the CLI) can log it elsewhere too. Printed on stderr so
    that commands whose stdout is machine-readable (JSON metrics) stay clean.
    """
    line = f"data: {source}"
    if verbose:
        print(line, file=sys.stderr, flush=True)
    return line
