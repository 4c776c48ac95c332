"""Offline photo tiles: real photographs from Debian packages as ImageNet32/64-style tiles.

No package registry reachable offline ships CIFAR-10 or downsampled ImageNet, but Debian ships
real photographs: desktop wallpapers and an image codec's test data. ``setflow data photos``
turns a fixed, checksummed list of them (:data:`PHOTO_SOURCES`) into small uint8 RGB tiles:

1. **sources**: each photo is looked up in ``<root>/photos/sources/`` (the cache), then where
   the installed package puts it; missing ones are fetched with ``apt-get download PKG`` +
   ``dpkg-deb -x`` (:mod:`setflow.data.debian`; nothing is installed) and copied into the
   cache. Every file's SHA-256 is checked against the one stored here; a mismatch is a
   one-line :class:`DataError` naming the file.
2. **decode**: Pillow, EXIF orientation applied; 8-bit RGB or greyscale only (greyscale
   becomes R = G = B; a 16-bit PNG or any other mode is refused, never silently truncated).
3. **area-average (box) downsampling** by an integer ``factor >= 2``: every output pixel is the
   mean of an ``f x f`` block, rounded half up, computed exactly in integers. This also
   averages away JPEG's 8x8 block structure.
4. **non-overlapping tiles** of ``size x size`` (32 or 64) output pixels: a grid of
   ``(H // (size f)) x (W // (size f))`` blocks of ``size f`` source pixels, centred in the
   photo (the margins are dropped). Steps 3-4 are one reshape and one sum in numpy.
5. **split by photo**, never by tile (:data:`PHOTO_SOURCES` says which photo goes where): the
   photos that were never JPEG-compressed (libjxl's test data) and three wallpapers are the
   test split, three more wallpapers the validation split, the rest train. Tiles are shuffled
   within their split with a fixed seed (so ``max_examples`` takes a mix of photos).

The result is cached as ``<root>/photos/photos{size}_f{factor}.npz`` (``train``, ``valid``,
``test``: ``(N, size, size, 3)`` uint8; ``<split>_photo``: each tile's photo name;
``<split>_origin``: its top-left source pixel ``(row, col)``) with a JSON manifest
(:mod:`setflow.data.cache`). As image data sets ``photos32`` / ``photos64`` they load as
``(N, 3, size, size)`` uint8 like CIFAR-10 and ImageNet32/64. These are *offline photo tiles*,
a few thousand tiles from 32 photographs: numbers on them are not comparable with CIFAR-10 or
ImageNet results.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from .cache import load_npz_cache, save_npz_cache
from .common import DataError, PathLike, atomic_write, downloads_allowed, file_digest, resolve_data_root

__all__ = [
    "PhotoSource",
    "PHOTO_SOURCES",
    "PACKAGES",
    "TILE_SIZES",
    "DEFAULT_FACTOR",
    "box_downsample",
    "photo_tiles",
    "read_photo",
    "verify_source",
    "locate_sources",
    "build_tile_splits",
    "prepare_photo_tiles",
    "load_photo_tiles",
    "photo_tiles_path",
]

SPLITS = ("train", "valid", "test")
TILE_SIZES = (32, 64)
DEFAULT_FACTOR = 4
#: bump when the tiling recipe changes (old caches are then rebuilt)
RECIPE_VERSION = 1
SHUFFLE_SEED = 0

#: package -> (version the checksums were taken from, licence of the photos used)
PACKAGES = {
    "plasma-workspace-wallpapers": ("4:5.27.5-2", "GPL-2+ (KDE Visual Design Group)"),
    "mate-backgrounds": ("1.26.0-1", "GPL-2+ (photographers named in its copyright file)"),
    "libjxl-testdata": ("0.0~git20230110.d6168ff-1", "BSD-3-Clause (flower) and CC0 1.0 (wesaturate, raw.pixls)"),
}


@dataclass(frozen=True)
class PhotoSource:
    """One photograph: a unique ``name`` (also the per-tile label), the Debian ``package`` and the
    ``path`` inside it, the file's ``sha256``, and the ``split`` all its tiles go to."""

    name: str
    package: str
    path: str
    sha256: str
    split: str

    @property
    def filename(self) -> str:
        """The file's name in the cache folder: ``<name><suffix>``."""
        return self.name + Path(self.path).suffix.lower()


_KDE = "usr/share/wallpapers/{}/contents/images/2560x1600.jpg"
_MATE = "usr/share/backgrounds/mate/nature/{}.jpg"
_JXL = "usr/share/libjxl-testdata/"


def _kde(name: str, sha: str, split: str = "train") -> PhotoSource:
    return PhotoSource(f"kde-{name}", "plasma-workspace-wallpapers", _KDE.format(name), sha, split)


def _mate(name: str, sha: str, split: str = "train") -> PhotoSource:
    return PhotoSource(f"mate-{name}", "mate-backgrounds", _MATE.format(name), sha, split)


def _jxl(name: str, path: str, sha: str) -> PhotoSource:
    return PhotoSource(f"jxl-{name}", "libjxl-testdata", _JXL + path, sha, "test")


#: The photographs, their checksums and their split. Left out on purpose: the other plasma
#: wallpapers (illustrations, renders; PastelHills too: flat gradient polygons, not a photo),
#: mate's desktop/ and abstract/ folders, libjxl's 16-bit PNGs (linear Rec.709 / Rec.2020 /
#: ACEScg / HLG renderings of the same raw files as the 8-bit sRGB ones kept here, or HDR),
#: its greyscale and alpha variants and 64x64 crops of the kept 500 px photos, and the
#: JPEG-recompressed copies of flower.png.
PHOTO_SOURCES: tuple[PhotoSource, ...] = (
    # plasma-workspace-wallpapers: 2560x1600 JPEG photographs
    _kde("BytheWater", "c272434ef39f2abf1ed48a15a8910088020f3165329a5092f3940ec9464bc05f"),
    _kde("ColdRipple", "05bef6722fc0ed81292cceb3ed026c38d17e510f3c84be7d68610c2b1a723c3f"),
    _kde("DarkestHour", "8e3703fae3a3c217b1fc2b399b706cd3720584268d071ba153e4809daa55f1ce"),
    _kde("FallenLeaf", "95603a6560c7e8d50e0e03b3f4adbe39c5258c72528e74e4ecaea1daf4e499de"),
    _kde("Grey", "88c31d8944b7e6935d1b9a296654c692f0772cb512491713eb30a972a604c0ed"),  # a greyscale JPEG
    _kde("Kite", "bdca288ce296a981e80659c021cf707caddc702c0c8d4247e60bd618476d47f8"),
    _kde("summer_1am", "c868b50789591dd42910153c768053f1ba0a98cb36bbfc2b7a96a1045d0477f8"),
    _kde("OneStandsOut", "cb507baf1dafdcae362264f3aba9483ed4be5f6c9fdd770f0ec0920c6d9e80fd", "valid"),
    _kde("Path", "7477457d7f17b736259f1b021864778ad4ba802cf3214e6728181ff29126bba8", "valid"),
    _kde("EveningGlow", "586682dcb362b9f620068f10138f87d0d3649939aef238adc5807cb951976a7a", "test"),
    _kde("ColorfulCups", "6e0f3a72feb5a4a9fec191b77e34874c3c69e2d93040deb3f07773e73385023d", "test"),
    # mate-backgrounds nature/: JPEG photographs, 1280x1024 to 2560x1920
    _mate("Aqua", "5c30118205982da441bf7e6a1ada636a8a0be879408140b3148280c665ed6bce"),
    _mate("Blinds", "f7aac0dcc2e06d0491643e84df3da1d9db7c4610f58806a880d56e074799f600"),
    _mate("Dune", "8a67c2cb0be8c46b70c237311a4fa4d2b4ac7d39568135384787801fa5cc9a91"),
    _mate("FreshFlower", "972b0a0c4e5e3fa93f4f244fc84bc64b121a5eac3aaa5856f1308c1f38a02f8e"),
    _mate("Garden", "d3095ee09d425ef23d27155412136cf14fc3c9af76ca58b452f55e23da324e78"),
    _mate("LadyBird", "e35a9a4126ef969c90b29c038058c5a575a20eadd84106a37bf1fa9931e7b61d"),
    _mate("GreenMeadow", "8fa0de0aa4089f7319c9fb7a6d006d4cab6023e8c8853731557cff53567b4832"),
    _mate("RainDrops", "3e4ea9671c28c90a86cf67b3db9daf18c4741587c596333a7529ca589aaa0c16"),
    _mate("TwoWings", "665e5abf8a5399070a91a9a8e455fe071e5b61697ff78fdeda4e9843ef545aeb"),
    _mate("Wood", "19c78500ac00a622e19907ab9cc7d06d46fe08c4a6142759a84195696150ec07"),
    _mate("YellowFlower", "254da96256acb7add685679775a04d1e4a5bc8cd13e5a5a3d61351ce198a5306", "valid"),
    _mate("Storm", "77ca53077831d3237f73393a91fc879158abc046d852941c26e90de336356957", "test"),
    # libjxl-testdata: 8-bit sRGB PNGs that were never JPEG-compressed, all test
    _jxl("flower", "jxl/flower/flower.png", "06fe0af7a5c790d2932a40e2d76b0d91aa6e73f3e55cc3f97ea6afae0133c2e7"),
    _jxl("keong_macan", "external/wesaturate/500px/cvo9xd_keong_macan_srgb8.png",
         "f4e2d8da468a4f6bfd3a651a7f0a24c2b883e7f398b326c0e77a9dab42fb5322"),
    _jxl("riaphotographs", "external/wesaturate/500px/tmshre_riaphotographs_srgb8.png",
         "b490de2143a336aff26a7ce4ee010f18dece53c3b0802cda76c1796daa5f32a0"),
    _jxl("bliznaca", "external/wesaturate/500px/u76c0g_bliznaca_srgb8.png",
         "9631423e430c1682fca3c2212adc6ae046df8839d22dfaa8b662761f34b6f711"),
    # raw.pixls: 64x64 sRGB renderings of raw files; they yield a tile only when size * factor <= 64
    _jxl("DJI-FC6310", "external/raw.pixls/DJI-FC6310-16bit_srgb8_v4_krita.png",
         "7a5c15d0066d3473b166365763466995c5c917b7a23952266e7f76a74d593944"),
    _jxl("Google-Pixel2XL", "external/raw.pixls/Google-Pixel2XL-16bit_srgb8_v4_krita.png",
         "2a213f1636a58d0baaf31b3ce3325e17fb9da1c08da249377f7b68ca2d3978ac"),
    _jxl("HUAWEI-EVA-L09", "external/raw.pixls/HUAWEI-EVA-L09-16bit_srgb8_dt.png",
         "bc9408e51e038fa97e5746949129927eabc073b8a73c8697d5a267c242e223df"),
    _jxl("Nikon-D300", "external/raw.pixls/Nikon-D300-12bit_srgb8_dt.png",
         "414a5df18198a830cbf32586560e24b1b598700fe35c85b5a726976f9c8aca49"),
    _jxl("Sony-DSC-RX1RM2", "external/raw.pixls/Sony-DSC-RX1RM2-14bit_srgb8_v4_krita.png",
         "e09acf3df72268ebedb639c116bbf7f036928409cde8c783ecf9c7818a83280b"),
)


# --------------------------------------------------------------------------- pixels
def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def read_photo(path: PathLike) -> np.ndarray:
    """Decode a JPEG or PNG photo to ``(H, W, 3)`` uint8 RGB (EXIF orientation applied).

    Raises:
        DataError: one line naming the file when it is unreadable, corrupt or truncated, or not
            8-bit RGB / greyscale (16-bit PNGs are refused rather than truncated to 8 bits).
    """
    from PIL import Image, ImageOps

    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(32)
        if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR" and head[24] != 8:  # IHDR bit depth
            raise DataError(f"{path}: {head[24]}-bit PNG; only 8-bit photos are used (convert it by hand)")
        with Image.open(path) as im:
            im.load()
            if im.mode not in ("RGB", "L"):
                raise DataError(f"{path}: image mode {im.mode}; expected 8-bit RGB or greyscale")
            rgb = ImageOps.exif_transpose(im).convert("RGB")
        return np.asarray(rgb, dtype=np.uint8)
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: not a readable JPEG/PNG image ({_one_line(exc)})") from None


def box_downsample(image: np.ndarray, factor: int) -> np.ndarray:
    """Area-average an ``(H, W, C)`` uint8 image by an integer ``factor``.

    Output pixel ``(i, j)`` is the mean of the source block ``[i f, (i+1) f) x [j f, (j+1) f)``,
    rounded half up, in exact integer arithmetic; trailing rows / columns that do not fill a
    block are dropped. Shapes: ``(H, W, C) -> (H // f, W // f, C)``.
    """
    if not isinstance(factor, (int, np.integer)) or isinstance(factor, bool) or factor < 1:
        raise ValueError(f"factor must be an integer >= 1, got {factor!r}")
    x = np.asarray(image)
    if x.ndim != 3 or x.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, C) uint8 image, got {x.dtype} {x.shape}")
    f = int(factor)
    h, w = x.shape[0] // f, x.shape[1] // f
    x = x[:h * f, :w * f]
    # Block sums as f + f strided whole-image additions (a loop over the offsets inside a block,
    # each step vectorised over all pixels): ~3x faster than one sum over a 5-D reshape.
    cols = np.zeros((h * f, w, x.shape[2]), np.uint32)
    for k in range(f):
        cols += x[:, k::f]
    sums = np.zeros((h, w, x.shape[2]), np.uint32)
    for k in range(f):
        sums += cols[k::f]
    n = f * f
    return ((sums + n // 2) // n).astype(np.uint8)


def photo_tiles(image: np.ndarray, size: int, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping ``size x size`` tiles of ``image`` downsampled by ``factor``.

    Each tile is one block of ``size * factor`` source pixels, box-downsampled; the blocks form
    a grid centred in the image. Returns ``(tiles (N, size, size, 3) uint8, origins (N, 2)
    int32)`` with ``origins`` the top-left source pixel ``(row, col)`` of every tile, in
    row-major grid order, so ``tiles[k] == box_downsample(image[r:r + size f, c:c + size f], f)``.
    """
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    x = np.asarray(image)
    span = size * factor
    rows, cols = x.shape[0] // span, x.shape[1] // span
    if rows == 0 or cols == 0:
        return np.zeros((0, size, size, x.shape[2]), np.uint8), np.zeros((0, 2), np.int32)
    top, left = (x.shape[0] - rows * span) // 2, (x.shape[1] - cols * span) // 2
    small = box_downsample(x[top:top + rows * span, left:left + cols * span], factor)
    tiles = small.reshape(rows, size, cols, size, -1).transpose(0, 2, 1, 3, 4).reshape(rows * cols, size, size, -1)
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    origins = np.stack([top + r.ravel() * span, left + c.ravel() * span], axis=1).astype(np.int32)
    return np.ascontiguousarray(tiles), origins


# --------------------------------------------------------------------------- source files
def verify_source(src: PhotoSource, path: PathLike, hint: str = "delete it to fetch it again") -> Path:
    """Check ``path``'s SHA-256 against ``src.sha256``; a mismatch is a one-line DataError."""
    path = Path(path)
    got = file_digest(path, "sha256")
    if got != src.sha256:
        raise DataError(f"{path}: sha256 {got} does not match the pinned {src.sha256} of photo {src.name} "
                        f"({src.package}: /{src.path}); {hint}")
    return path


def _cache_dir(root: Path) -> Path:
    return root / "photos" / "sources"


def locate_sources(root: PathLike, sources: Sequence[PhotoSource] = PHOTO_SOURCES, fetch: bool = True,
                   system_root: PathLike = "/") -> dict[str, Path]:
    """``{photo name: verified file}``: the cache ``<root>/photos/sources/``, then the installed
    package under ``system_root``; missing photos are fetched with ``apt-get download`` (when
    ``fetch``) and copied into the cache. Every file's checksum is verified.

    Raises:
        DataError: a checksum mismatch, a photo missing with ``fetch=False``, or apt failing.
    """
    root = Path(root)
    cache = _cache_dir(root)
    found: dict[str, Path] = {}
    missing: list[PhotoSource] = []
    for src in sources:
        cached, installed = cache / src.filename, Path(system_root) / src.path
        if cached.is_file():
            found[src.name] = verify_source(src, cached)
        elif installed.is_file() and file_digest(installed, "sha256") == src.sha256:
            found[src.name] = installed  # an installed package of another version falls through to apt
        else:
            missing.append(src)
    if missing and not fetch:
        names = ", ".join(sorted({m.package for m in missing}))
        raise DataError(f"photos: {len(missing)} source photos are missing from {cache} (e.g. {missing[0].filename} "
                        f"from {missing[0].package}) and downloads are off; run `setflow data photos` with apt "
                        f"access, or unpack {names} by hand (see datasets/README.md)")
    if missing:
        from .debian import unpacked_package

        for package in sorted({m.package for m in missing}):
            with unpacked_package(package, cache.parent) as tree:
                for src in (m for m in missing if m.package == package):
                    member = tree / src.path
                    if not member.is_file():
                        raise DataError(f"photos: {package} has no /{src.path} (a different package version than "
                                        f"{PACKAGES.get(package, ('?',))[0]}?)")
                    verify_source(src, member, f"this distribution ships another version than "
                                                f"{PACKAGES.get(package, ('?',))[0]}; see datasets/README.md")
                    data = member.read_bytes()
                    found[src.name] = atomic_write(cache / src.filename, lambda f, d=data: f.write(d))
    return {s.name: found[s.name] for s in sources}


# --------------------------------------------------------------------------- tiles and splits
def build_tile_splits(files: Mapping[str, PathLike], sources: Sequence[PhotoSource], size: int, factor: int,
                      seed: int = SHUFFLE_SEED) -> dict[str, np.ndarray]:
    """Tile every photo of ``sources`` (read from ``files[name]``) into its split.

    Returns the arrays of the cache: ``train`` / ``valid`` / ``test`` ``(N, size, size, 3)``
    uint8, ``<split>_photo`` ``(N,)`` photo names and ``<split>_origin`` ``(N, 2)`` int32 source
    pixels, shuffled within each split by ``seed``.
    """
    if size not in TILE_SIZES:
        raise ValueError(f"size must be one of {TILE_SIZES}, got {size}")
    if not isinstance(factor, int) or isinstance(factor, bool) or factor < 2:
        raise ValueError(f"factor must be an integer >= 2, got {factor!r}")
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise ValueError("photo names must be unique")
    bad = sorted({s.split for s in sources} - set(SPLITS))
    if bad:
        raise ValueError(f"unknown split(s) {bad}; expected {SPLITS}")
    parts: dict[str, list] = {s: [] for s in SPLITS}
    for src in sources:
        tiles, origins = photo_tiles(read_photo(files[src.name]), size, factor)
        parts[src.split].append((tiles, origins, np.full(len(tiles), src.name)))
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for split in SPLITS:
        chunks = parts[split]
        tiles = np.concatenate([c[0] for c in chunks]) if chunks else np.zeros((0, size, size, 3), np.uint8)
        if len(tiles) == 0:
            raise DataError(f"photos: no {size}x{size} tiles in the {split} split at factor {factor} (its photos are "
                            f"smaller than {size * factor} px); use a smaller --factor")
        order = rng.permutation(len(tiles))
        out[split] = tiles[order]
        out[f"{split}_photo"] = np.concatenate([c[2] for c in chunks]).astype(str)[order]
        out[f"{split}_origin"] = np.concatenate([c[1] for c in chunks])[order]
    return out


def photo_tiles_path(root: PathLike, size: int, factor: int) -> Path:
    return Path(root) / "photos" / f"photos{size}_f{factor}.npz"


def _cache_meta(size: int, factor: int, sources: Sequence[PhotoSource]) -> dict:
    return {"kind": "photo_tiles", "recipe": RECIPE_VERSION, "size": size, "factor": factor, "seed": SHUFFLE_SEED,
            "sources": {s.name: [s.split, s.sha256] for s in sources}}


def _source_line(arrays: Mapping[str, np.ndarray], size: int, factor: int, sources: Sequence[PhotoSource],
                 note: str) -> str:
    used = {str(n) for s in SPLITS for n in np.unique(arrays[f"{s}_photo"])}
    per_pkg = {p: sum(1 for s in sources if s.package == p and s.name in used) for p in PACKAGES}
    pkgs = ", ".join(f"{p} ({n})" for p, n in per_pkg.items() if n)
    counts = " / ".join(f"{len(arrays[s]):,}" for s in SPLITS)
    return (f"offline photo tiles from Debian packages {pkgs}: {len(used)} photos, {size}x{size} tiles after "
            f"{factor}x{factor} area averaging, train / valid / test {counts} tiles, split by photo "
            f"(not CIFAR-10 or ImageNet{size}; not comparable with published numbers; {note})")


def prepare_photo_tiles(data_root: Optional[PathLike] = None, size: int = 32, factor: int = DEFAULT_FACTOR,
                        download: bool = True, rebuild: bool = False,
                        sources: Sequence[PhotoSource] = PHOTO_SOURCES) -> tuple[dict[str, np.ndarray], str, dict]:
    """Build (or reuse) the tile cache; returns ``(arrays, source line, info)``.

    ``info`` holds the cache ``path``, ``seconds`` spent and whether the cache was ``reused``.
    Sources are fetched with apt only when ``download`` is allowed (see
    :func:`~setflow.data.common.downloads_allowed`).
    """
    t0 = time.perf_counter()
    root = resolve_data_root(data_root)
    path = photo_tiles_path(root, size, factor)
    meta = _cache_meta(size, factor, sources)
    hit = None if rebuild else load_npz_cache(path, meta)
    if hit is not None:
        arrays = hit[0]
        reused = True
    else:
        files = locate_sources(root, sources, fetch=downloads_allowed(download))
        arrays = build_tile_splits(files, sources, size, factor)
        save_npz_cache(path, arrays, meta)
        reused = False
    seconds = time.perf_counter() - t0
    note = f"cache {'reused' if reused else 'built'}: {path}"
    return arrays, _source_line(arrays, size, factor, sources, note), {"path": path, "seconds": seconds,
                                                                       "reused": reused}


def load_photo_tiles(size: int, root: PathLike, download: bool = True, factor: int = DEFAULT_FACTOR,
                     max_examples: Optional[int] = None) -> tuple[dict[str, np.ndarray], None, str]:
    """``(images, None, source)`` with images ``(N, 3, size, size)`` uint8 per split (the image
    loader interface of :mod:`setflow.data.images`; the tiles have no class labels)."""
    arrays, source, _ = prepare_photo_tiles(root, size, factor, download)
    images = {s: np.ascontiguousarray(arrays[s][:max_examples].transpose(0, 3, 1, 2)) for s in SPLITS}
    return images, None, source
