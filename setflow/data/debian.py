"""Files out of a Debian package without installing it: ``apt-get download`` + ``dpkg-deb -x``.

Some offline data sets ship in Debian packages whose other contents (and dependencies) setflow
does not need: wallpapers (real photographs), image-codec test data, CGAL's sample meshes. This
module fetches the ``.deb`` of the distribution's current version into a private temporary
folder, unpacks it there with ``dpkg-deb -x`` (no maintainer scripts, no dependencies, no root
needed beyond an up-to-date ``apt-get update``) and hands the unpacked tree to the caller, who
copies what it needs before the folder is removed again::

    with unpacked_package("mate-backgrounds", workdir) as tree:
        data = (tree / "usr/share/backgrounds/mate/nature/Storm.jpg").read_bytes()

Every failure (no ``apt-get``, unknown package, stale package lists, a broken ``.deb``) is a
one-line :class:`~setflow.data.common.DataError` saying what to do.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

from .common import DataError, PathLike

__all__ = ["apt_download", "unpack_deb", "unpacked_package"]

#: seconds ``apt-get download`` may take (the largest package used is ~100 MB)
APT_TIMEOUT = 900


def _last_error(text: str) -> str:
    """The most telling line of a tool's output: the last ``E:`` line, else the last non-empty one."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("E:")]
    return (errors or lines or ["no output"])[-1]


def _run(cmd: list[str], cwd: Path, what: str, hint: str) -> None:
    try:
        r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=APT_TIMEOUT)
    except FileNotFoundError:
        raise DataError(f"{what}: `{cmd[0]}` not found (not a Debian/Ubuntu system?); {hint}") from None
    except subprocess.TimeoutExpired:
        raise DataError(f"{what}: `{' '.join(cmd)}` took longer than {APT_TIMEOUT} s; {hint}") from None
    if r.returncode != 0:
        raise DataError(f"{what}: `{' '.join(cmd)}` failed ({_last_error(r.stderr + r.stdout)}); {hint}")


def apt_download(package: str, folder: PathLike) -> Path:
    """``apt-get download PACKAGE`` into ``folder``; returns the ``.deb`` (the candidate version).

    Raises:
        DataError: apt-get missing or failing (e.g. stale lists: run ``sudo apt-get update``).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    before = set(folder.glob("*.deb"))
    _run(["apt-get", "download", package], folder, f"downloading Debian package {package}",
         "run `sudo apt-get update` and retry, or place the files by hand (see datasets/README.md)")
    debs = sorted(set(folder.glob(f"{package}_*.deb")) - before)
    if not debs:
        raise DataError(f"downloading Debian package {package}: apt-get reported success but no "
                        f"{package}_*.deb appeared in {folder}")
    return debs[-1]


def unpack_deb(deb: PathLike, dest: PathLike) -> Path:
    """``dpkg-deb -x DEB DEST`` (the package's files only, nothing installed); returns ``dest``."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    _run(["dpkg-deb", "-x", str(deb), str(dest)], dest, f"unpacking {Path(deb).name}",
         "delete it and retry (a truncated download?)")
    return dest


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
        yield unpack_deb(deb, tmp / "tree")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
