"""Files out of Debian packages without installing them: ``apt-get download`` + member extraction.

Offline data sets that Debian ships (CGAL's meshes in ``libcgal-demo``, FlightGear's aircraft in
``flightgear-data-ai``) are taken from the ``.deb`` alone: nothing is installed, no maintainer
script runs, no dependency is pulled. :func:`apt_download` fetches a ``.deb`` with the system's
apt (its size is reported first, from ``apt-cache show``); :func:`extract_members` copies only the
members whose paths match shell patterns (``fnmatch``: ``*`` also matches ``/``, as ``tar
--wildcards`` does) into a folder. It streams the package's data archive through ``dpkg-deb
--fsys-tarfile`` when that exists, else reads the ``ar`` container itself (gzip / xz / bzip2
data archives). Only regular files are written, each under ``dest`` at its member path with any
leading ``/`` or ``./`` removed; a member path with ``..`` is refused. :func:`unpacked_package`
does both in a temporary folder and hands the unpacked tree to the caller, who copies what it
needs before the folder is removed (the real photographs of ``setflow data photos``)::

    with unpacked_package("mate-backgrounds", workdir) as tree:
        data = (tree / "usr/share/backgrounds/mate/nature/Storm.jpg").read_bytes()

Every failure (no ``apt-get``, an unknown package, stale package lists, a broken ``.deb``) is a
one-line :class:`~setflow.data.common.DataError` saying what to do.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path, PurePosixPath
from typing import Iterator, Optional, Sequence

from .common import DataError, PathLike

__all__ = ["apt_package_size", "apt_download", "extract_members", "find_deb", "unpacked_package"]

#: seconds ``apt-get download`` may take (the largest package used is ~290 MB)
APT_TIMEOUT = 1800


def apt_package_size(package: str) -> Optional[int]:
    """Bytes of ``package``'s candidate ``.deb`` per ``apt-cache show`` (None when apt cannot say)."""
    if shutil.which("apt-cache") is None:
        return None
    try:
        out = subprocess.run(["apt-cache", "show", "--no-all-versions", package], capture_output=True, text=True,
                             timeout=60, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        if line.startswith("Size:"):
            try:
                return int(line.split()[1])
            except (IndexError, ValueError):
                return None
    return None


def find_deb(folder: PathLike, package: str) -> Optional[Path]:
    """The newest-named ``<package>_*.deb`` in ``folder`` (apt names them ``pkg_version_arch.deb``)."""
    folder = Path(folder)
    found = sorted(folder.glob(f"{package}_*.deb")) if folder.is_dir() else []
    return found[-1] if found else None


def apt_download(package: str, folder: PathLike) -> Path:
    """``apt-get download package`` into ``folder`` (no install, no root needed); returns the ``.deb``.

    Raises :class:`DataError` (one line) when apt is missing or the download fails.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if shutil.which("apt-get") is None:
        raise DataError(f"cannot fetch {package}: `apt-get` not found (not a Debian/Ubuntu system); "
                        f"put {package}_*.deb into {folder} by hand")
    try:
        proc = subprocess.run(["apt-get", "download", package], cwd=folder, capture_output=True, text=True,
                              check=False, timeout=APT_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise DataError(f"apt-get download {package} took longer than {APT_TIMEOUT} s in {folder}") from None
    deb = find_deb(folder, package)
    if proc.returncode != 0 or deb is None:
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        err = ([ln for ln in lines if ln.startswith("E:")] or lines or ["no .deb written"])[-1]
        raise DataError(f"apt-get download {package} failed in {folder}: {err} (try `apt-get update` first)")
    return deb


@contextlib.contextmanager
def unpacked_package(package: str, workdir: PathLike) -> Iterator[Path]:
    """Download and unpack ``package`` in a temporary folder under ``workdir``; yields the unpacked
    tree (``tree / "usr/share/..."``). The ``.deb`` and the tree are deleted on exit, so copy what
    you need inside the ``with`` block."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{package}.", dir=workdir))
    try:
        tmp.chmod(0o755)  # apt's unprivileged _apt user writes the download into it when run as root
        deb = apt_download(package, tmp / "deb")
        extract_members(deb, ["*"], tmp / "tree")
        yield tmp / "tree"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _safe_relpath(name: str) -> Optional[PurePosixPath]:
    p = PurePosixPath(name.lstrip("/"))
    parts = [x for x in p.parts if x not in ("", ".")]
    if not parts or ".." in parts:
        return None
    return PurePosixPath(*parts)


def _copy_matching(tar: tarfile.TarFile, patterns: Sequence[str], dest: Path) -> list[Path]:
    out = []
    for member in tar:  # streaming: members come in archive order, read once
        rel = _safe_relpath(member.name)
        if rel is None or not member.isfile() or not any(fnmatch.fnmatch(str(rel), pat) for pat in patterns):
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        src = tar.extractfile(member)
        if src is None:  # pragma: no cover - isfile() members always have data
            continue
        tmp = target.with_name(f".{target.name}.part")
        with open(tmp, "wb") as f:
            shutil.copyfileobj(src, f, 1 << 20)
        os.replace(tmp, target)
        out.append(target)
    return out


def _ar_data_member(deb: Path):
    """``(name, offset, size)`` of the ``data.tar.*`` member of a ``.deb`` (an ``ar`` archive)."""
    with open(deb, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise DataError(f"{deb}: not a Debian package (expected an ar archive starting '!<arch>')")
        while True:
            head = f.read(60)
            if len(head) < 60:
                raise DataError(f"{deb}: no data.tar member (truncated or not a binary package)")
            name = head[:16].decode("ascii", "replace").strip().rstrip("/")
            try:
                size = int(head[48:58].decode("ascii").strip())
            except ValueError:
                raise DataError(f"{deb}: corrupt ar member header at byte {f.tell() - 60}") from None
            if name.startswith("data.tar"):
                return name, f.tell(), size
            f.seek(size + (size & 1), 1)


def extract_members(deb: PathLike, patterns: Sequence[str], dest: PathLike) -> list[Path]:
    """Copy the files of ``deb``'s data archive whose paths match any of ``patterns`` into ``dest``.

    Returns the written paths (archive order). Uses ``dpkg-deb --fsys-tarfile`` when present;
    otherwise parses the ``.deb`` here (``data.tar.gz`` / ``.xz`` / ``.bz2``).
    """
    deb, dest = Path(deb), Path(dest)
    if not deb.is_file():
        raise DataError(f"{deb}: no such Debian package file")
    dest.mkdir(parents=True, exist_ok=True)
    if shutil.which("dpkg-deb"):
        proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        try:
            with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
                out = _copy_matching(tar, patterns, dest)
        except tarfile.TarError as e:
            proc.kill()
            raise DataError(f"{deb}: corrupt data archive ({e})") from None
        finally:
            proc.stdout.close()
            err = proc.stderr.read().decode(errors="replace").strip()
            proc.stderr.close()
            code = proc.wait()
        if code != 0:
            raise DataError(f"{deb}: dpkg-deb --fsys-tarfile failed: {err.splitlines()[-1] if err else code}")
        return out
    name, offset, size = _ar_data_member(deb)
    modes = {"data.tar.gz": "r|gz", "data.tar.xz": "r|xz", "data.tar.bz2": "r|bz2", "data.tar": "r|"}
    if name not in modes:
        raise DataError(f"{deb}: {name} needs dpkg-deb to unpack (install dpkg)")
    with open(deb, "rb") as f:
        f.seek(offset)
        try:
            with tarfile.open(fileobj=_Window(f, size), mode=modes[name]) as tar:
                return _copy_matching(tar, patterns, dest)
        except (tarfile.TarError, EOFError, OSError) as e:
            raise DataError(f"{deb}: corrupt {name} ({e})") from None


class _Window:
    """A read-only view of ``size`` bytes of an open file from its current position."""

    def __init__(self, f, size: int) -> None:
        self.f, self.left = f, size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n is None or n < 0 else min(n, self.left)
        data = self.f.read(n)
        self.left -= len(data)
        return data
