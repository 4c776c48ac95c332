"""A checksummed ``.npz`` cache with a JSON manifest beside it.

``name.npz`` holds the arrays; ``name.json`` holds the format version, the caller's
metadata (what the arrays were built from), the shape of every array and the SHA-256 of
the ``.npz``. :func:`load_npz_cache` returns the arrays only if the manifest matches what
the caller expects *and* the checksum verifies; anything else is reported with a
:class:`~setflow.data.common.DataWarning` and treated as a miss, so a corrupt cache is
rebuilt, never silently used. Both files are written atomically (temp file + ``os.replace``),
the ``.npz`` first, so a manifest never points at a half-written archive.
"""

from __future__ import annotations

import json
import time
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Mapping, Optional

import numpy as np

from .common import DataError, PathLike, atomic_write, file_digest, read_npz, warn

__all__ = ["CACHE_FORMAT_VERSION", "manifest_path", "save_npz_cache", "load_npz_cache"]

CACHE_FORMAT_VERSION = 1


def manifest_path(npz_path: PathLike) -> Path:
    """The manifest that belongs to ``npz_path`` (same name, ``.json``)."""
    return Path(npz_path).with_suffix(".json")


def _write_npz(f: BinaryIO, arrays: Mapping[str, np.ndarray]) -> None:
    """``np.savez`` with fixed zip timestamps and sorted keys: same arrays, same bytes (and
    the same SHA-256 on every machine and every rebuild)."""
    with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key in sorted(arrays):
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w", force_zip64=True) as out:
                np.lib.format.write_array(out, np.ascontiguousarray(arrays[key]), allow_pickle=False)


def save_npz_cache(npz_path: PathLike, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> dict:
    """Write ``arrays`` to ``npz_path`` and its manifest (``meta`` + shapes + sha256).

    Returns the manifest written. ``meta`` must be JSON-serialisable.
    """
    npz_path = Path(npz_path)
    atomic_write(npz_path, lambda f: _write_npz(f, arrays))
    manifest = {
        "format_version": CACHE_FORMAT_VERSION,
        **meta,
        "file": npz_path.name,
        "shapes": {k: list(np.shape(v)) for k, v in arrays.items()},
        "dtypes": {k: str(np.asarray(v).dtype) for k, v in arrays.items()},
        "sha256": file_digest(npz_path, "sha256"),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    atomic_write(manifest_path(npz_path), lambda f: f.write(text.encode()))
    return manifest


def _check(npz_path: Path, expect: Mapping[str, Any]) -> tuple[Optional[dict], Optional[dict], str]:
    """``(arrays, manifest, "")`` for a good cache, else ``(None, None, reason)``."""
    mpath = manifest_path(npz_path)
    if not mpath.is_file():
        return None, None, f"manifest {mpath.name} is missing"
    if not npz_path.is_file():
        return None, None, f"{npz_path.name} is missing (manifest {mpath.name} exists)"
    try:
        manifest = json.loads(mpath.read_text())
        if not isinstance(manifest, dict):
            raise ValueError(f"expected a JSON object, got {type(manifest).__name__}")
    except (OSError, ValueError) as exc:
        return None, None, f"unreadable manifest {mpath.name} ({exc})"
    wanted = {"format_version": CACHE_FORMAT_VERSION, **expect}
    for key, value in wanted.items():
        if manifest.get(key) != value:
            return None, None, f"manifest {key}={manifest.get(key)!r}, expected {value!r}"
    digest = file_digest(npz_path, "sha256")
    if digest != manifest.get("sha256"):
        return None, None, f"sha256 mismatch: manifest says {manifest.get('sha256')}, file has {digest}"
    try:
        arrays = read_npz(npz_path)
    except DataError as exc:
        return None, None, f"unreadable archive ({exc})"
    shapes = {k: list(v.shape) for k, v in arrays.items()}
    if shapes != manifest.get("shapes"):
        return None, None, f"array shapes {shapes}, manifest says {manifest.get('shapes')}"
    return arrays, manifest, ""


def load_npz_cache(npz_path: PathLike, expect: Mapping[str, Any]) -> Optional[tuple[dict, dict]]:
    """Return ``(arrays, manifest)`` from a verified cache, or ``None`` on a miss.

    A cache that does not exist at all is a silent miss. A cache that exists but fails any
    check (manifest missing or unreadable, ``expect`` mismatch, checksum mismatch, shapes)
    issues a :class:`DataWarning` naming the file and the reason, and is a miss.
    """
    npz_path = Path(npz_path)
    if not npz_path.exists() and not manifest_path(npz_path).exists():
        return None
    arrays, manifest, reason = _check(npz_path, expect)
    if arrays is None or manifest is None:
        warn(f"ignoring bad cache {npz_path}: {reason}; rebuilding it")
        return None
    return arrays, manifest
