"""Checksum-verified, atomic downloads from a list of mirrors.

A :class:`RemoteFile` names a file, its mirrors and its checksum. :func:`fetch` streams it
into a temp file next to the destination while hashing, checks the digest, and only then
renames it into place, so an interrupted or tampered download never looks like a good file.
When every mirror is unreachable (network errors, not checksum mismatches), a marker ``.<name>.download-failed`` (holding the time and the error)
is left in the target folder; for :data:`RETRY_AFTER` seconds later calls fail at once with a
one-line :class:`DataError` instead of trying the network again. Delete the marker to retry.
Tests never reach this code with a real network: callers check
:func:`setflow.data.common.downloads_allowed` first.
"""

from __future__ import annotations

import hashlib
import json
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from .common import DataError, PathLike, atomic_write, file_digest

__all__ = ["RemoteFile", "fetch", "failure_marker", "recent_failure", "remember_failure", "DEFAULT_TIMEOUT",
           "RETRY_AFTER"]

#: Seconds a mirror may stay silent (connect or read) before the next one is tried.
DEFAULT_TIMEOUT = 30.0
#: Seconds a failed download is remembered (no new attempt in that time): one day.
RETRY_AFTER = 24 * 3600.0
_USER_AGENT = "setflow-data/0.1 (python urllib)"


@dataclass(frozen=True)
class RemoteFile:
    """A downloadable file: its name, mirrors (base URLs or full URLs) and checksum.

    Exactly one of ``sha256`` or ``md5`` must be given (SHA-256 preferred; MD5 only where
    no verified SHA-256 is published).
    """

    name: str
    mirrors: Sequence[str]
    sha256: Optional[str] = None
    md5: Optional[str] = None

    def __post_init__(self) -> None:
        if (self.sha256 is None) == (self.md5 is None):
            raise ValueError(f"RemoteFile {self.name!r}: give exactly one of sha256 or md5")

    @property
    def algorithm(self) -> str:
        return "sha256" if self.sha256 is not None else "md5"

    @property
    def digest(self) -> str:
        return (self.sha256 or self.md5 or "").lower()

    def urls(self) -> list[str]:
        """Full URLs, one per mirror (a mirror ending in ``/`` gets the file name appended)."""
        return [m + self.name if m.endswith("/") else m for m in self.mirrors]

    def verify(self, path: PathLike) -> bool:
        """True when the file at ``path`` has the expected checksum."""
        return file_digest(path, self.algorithm) == self.digest


def _download_one(url: str, dest: Path, remote: RemoteFile, timeout: float) -> None:
    """Stream ``url`` into ``dest`` atomically, verifying the checksum before the rename."""

    def write(out) -> None:
        h = hashlib.new(remote.algorithm)
        request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            for block in iter(lambda: resp.read(1 << 20), b""):
                h.update(block)
                out.write(block)
        got = h.hexdigest()
        if got != remote.digest:
            raise DataError(
                f"{url}: {remote.algorithm} mismatch for {dest.name}: expected {remote.digest}, got {got}"
            )

    atomic_write(dest, write)


def failure_marker(remote: RemoteFile, folder: PathLike) -> Path:
    """The file that records a failed download of ``remote`` into ``folder``."""
    return Path(folder) / f".{remote.name}.download-failed"


def recent_failure(marker: PathLike, what: str) -> Optional[str]:
    """A one-line reason when ``marker`` records a failure of ``what`` less than :data:`RETRY_AFTER` ago."""
    marker = Path(marker)
    try:
        info = json.loads(marker.read_text())
        age = time.time() - float(info["time"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not 0 <= age < RETRY_AFTER:
        return None
    hours = (RETRY_AFTER - age) / 3600
    return (f"{what} failed {age / 60:.0f} min ago "
            f"({info.get('error', '?')}); not retried for {hours:.1f} h (delete {marker} to retry now)")


def remember_failure(marker: PathLike, error: str) -> None:
    """Record a failure (time and error) in ``marker``; a read-only folder simply forgets it."""
    text = json.dumps({"time": time.time(), "error": error})
    try:
        atomic_write(marker, lambda f: f.write(text.encode()))
    except OSError:
        pass


def _recent_failure(marker: Path) -> Optional[str]:
    return recent_failure(marker, f"download of {marker.name[1:-len('.download-failed')]}")


def fetch(remote: RemoteFile, folder: PathLike, timeout: float = DEFAULT_TIMEOUT) -> tuple[Path, str]:
    """Make sure ``folder/remote.name`` exists with the right checksum, downloading it if needed.

    Returns ``(path, url)`` where ``url`` is the mirror used (``"cached"`` when a verified
    file was already there). An existing file with a wrong checksum is replaced.

    Raises:
        DataError: every mirror failed (the message lists each mirror's error).
    """
    folder = Path(folder)
    dest = folder / remote.name
    if dest.is_file() and remote.verify(dest):
        return dest, "cached"
    marker = failure_marker(remote, folder)
    recent = _recent_failure(marker)
    if recent is not None:
        raise DataError(recent)
    folder.mkdir(parents=True, exist_ok=True)
    errors, unreachable = [], True
    for url in remote.urls():
        try:
            _download_one(url, dest, remote, timeout)
            marker.unlink(missing_ok=True)
            return dest, url
        except (OSError, DataError, ValueError) as exc:  # URLError, timeouts, HTTP errors
            errors.append(f"{url}: {exc}")
            unreachable = unreachable and isinstance(exc, OSError)
    if unreachable and errors:
        remember_failure(marker, errors[-1])
    raise DataError(f"could not download {remote.name} into {folder}:\n  " + "\n  ".join(errors))
