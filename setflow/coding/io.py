"""Reading and writing for the codec CLI: images (PNG and NPY files, and folders of them) and pixel sets."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterable, Optional, Sequence

import imagecodecs
import numpy as np

from setflow.coding.format import SOURCE_ARRAY, SOURCE_PNG, FormatError

__all__ = ["IMAGE_SUFFIXES", "collect_files", "read_image", "as_greyscale", "write_image", "output_paths", "Progress",
           "read_sets_file"]

IMAGE_SUFFIXES = (".png", ".npy")


def collect_files(paths: Iterable[str], suffixes: Sequence[str]) -> list[Path]:
    """Expand files and folders (their direct children with a matching suffix, sorted)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(c for c in p.iterdir() if c.is_file() and c.suffix.lower() in suffixes)
            if not found:
                raise FileNotFoundError(f"no {'/'.join(suffixes)} files in folder {p}")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"no such file or folder: {p}")
    return out


def as_greyscale(arr: np.ndarray, path) -> np.ndarray:
    """``(H, W, 3|4)`` with equal colour channels (and an opaque alpha) -> ``(H, W)``.

    Palette PNGs arrive here expanded to RGB, so a grey palette is accepted too; a colour image
    raises ``ValueError`` saying how to convert it.
    """
    rgb = arr[..., :3]
    if arr.shape[-1] == 4 and np.any(arr[..., 3] != 255):
        raise ValueError(f"{path}: the image has transparency but the model is greyscale; "
                         "flatten it to a greyscale PNG first (e.g. `convert in.png -background white -flatten "
                         "-colorspace Gray out.png`)")
    if np.any(rgb != rgb[..., :1]):
        raise ValueError(f"{path}: a colour (RGB/palette) image, but the model is greyscale; convert it to "
                         "greyscale first (e.g. `convert in.png -colorspace Gray out.png`)")
    return np.ascontiguousarray(rgb[..., 0])


def read_image(path: Path, channels: Optional[int] = None) -> tuple[np.ndarray, int]:
    """``(array, source kind)``; PNG gives ``(H, W)`` or ``(H, W, C)`` uint8, NPY any integer array.

    With ``channels=1`` (a greyscale model) an RGB/RGBA/palette PNG whose colour channels are
    equal is read as ``(H, W)`` greyscale (and says so on stdout); other colour PNGs are refused.
    """
    suffix = path.suffix.lower()
    if suffix == ".png":
        try:
            arr = imagecodecs.png_decode(path.read_bytes())
        except Exception as e:
            raise ValueError(f"{path}: not a readable PNG ({e})") from e
        if arr.dtype != np.uint8:
            raise ValueError(f"{path}: only 8-bit PNGs are supported, got {arr.dtype}")
        if channels == 1 and arr.ndim == 3 and arr.shape[-1] in (3, 4):
            arr = as_greyscale(arr, path)
            print(f"{path}: RGB/palette PNG with equal channels, read as greyscale")
        return arr, SOURCE_PNG
    if suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except Exception as e:
            raise ValueError(f"{path}: not a readable .npy file ({e})") from e
        return arr, SOURCE_ARRAY
    raise ValueError(f"{path}: unsupported image type {suffix!r}; expected one of {IMAGE_SUFFIXES}")


def write_image(path: Path, arr: np.ndarray) -> None:
    """Write ``arr`` as PNG (``(H, W)``/``(H, W, C)`` uint8; ``(1, H, W)``/``(C, H, W)`` are moved) or NPY."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".npy":
        np.save(path, arr, allow_pickle=False)
        return
    path.write_bytes(imagecodecs.png_encode(png_layout(arr)))


def png_layout(arr: np.ndarray) -> np.ndarray:
    """``arr`` as ``(H, W)`` or ``(H, W, C)`` uint8 for PNG; raises for batches."""
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
        a = np.moveaxis(a, 0, -1)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
        raise ValueError(f"an array of shape {a.shape} cannot be written as PNG; use .npy")
    return np.ascontiguousarray(a, dtype=np.uint8)


def output_paths(inputs: Sequence[Path], out: str, suffix_of) -> list[Path]:
    """Map inputs to outputs.

    One input: ``out`` is the output file, unless it is an existing folder or ends with ``/``.
    Several inputs: ``out`` must be a folder, an existing one or a new one written with a trailing
    ``/`` (``-o out/``); it receives ``<stem><suffix>`` per input (name clashes are errors).
    Nothing is created here.
    """
    explicit = out.endswith(("/", "\\"))
    o = Path(out)
    folder = explicit or o.is_dir()
    if len(inputs) == 1 and not folder:
        if not o.suffix:
            raise ValueError(f"-o {out}: give the output file a suffix (e.g. {o.name}{suffix_of(inputs[0])}), "
                             f"or write a folder with a trailing '/' (-o {out}/)")
        paths = [o]
    elif not folder:
        raise ValueError(f"{len(inputs)} inputs need -o to be a folder: an existing one, or a new one written "
                         f"with a trailing '/' (e.g. -o {o.with_suffix('')}/); {out} is neither")
    else:
        paths = [o / (p.stem + suffix_of(p)) for p in inputs]
    seen: dict[Path, Path] = {}
    for src, dst in zip(inputs, paths):
        if dst in seen:
            raise ValueError(f"{src} and {seen[dst]} would both be written to {dst}")
        if dst.exists() and dst.samefile(src):
            raise ValueError(f"{src}: the output {dst} is the input itself; choose another -o (nothing was written)")
        seen[dst] = src
    return paths


class Progress:
    """A progress bar (tqdm, on stderr) over ``total`` files, shown only on a terminal and without
    ``quiet``; :meth:`say` prints a line to stdout without breaking the bar."""

    def __init__(self, total: int, quiet: bool = False, unit: str = "file") -> None:
        from tqdm import tqdm

        show = total > 1 and not quiet and sys.stderr.isatty()
        self._bar = tqdm(total=total, unit=unit, file=sys.stderr, disable=not show, leave=False)
        self._write = tqdm.write if show else print

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self._bar.close()

    def say(self, line: str) -> None:
        self._write(line)

    def update(self, n: int = 1) -> None:
        self._bar.update(n)


#: suffixes of pictures, which the set codec refuses with a pointer to the image codec
_PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".jxl")


def read_sets_file(path: str) -> np.ndarray:
    """The sets of an ``.npz`` (key ``sets``, else ``test``, else its only array; a boolean ``mask``
    beside ``sets`` marks the present points) or of an ``.npy``; a one-line FormatError otherwise."""
    from setflow.data.common import DataError, not_a_zip, read_npz

    expected = "an .npz or .npy of pixel sets (M, N)"
    if str(path).lower().endswith(_PICTURE_SUFFIXES):
        raise FormatError(f"{path} is an image: the set codec codes {expected}; images need an IDF checkpoint")
    try:
        if os.path.isfile(path) and not_a_zip(path) == "a .npy array":
            try:
                return np.load(path, allow_pickle=False)
            except (OSError, ValueError, EOFError) as e:
                raise DataError(f"{path}: a damaged .npy ({type(e).__name__}: {e}); expected {expected}") from None
        z = read_npz(path, expected)
    except DataError as e:
        raise FormatError(str(e)) from None
    keys = list(z)
    key = "sets" if "sets" in keys else "test" if "test" in keys else keys[0] if len(keys) == 1 else None
    if key is None:
        raise FormatError(f"{path}: expected an array 'sets' (or 'test', or a single array), got {keys}")
    sets = z[key]
    if "mask" in keys and key == "sets":
        mask = z["mask"]
        if mask.dtype != bool or mask.shape != sets.shape[:2]:
            raise FormatError(f"{path}: 'mask' must be boolean {sets.shape[:2]}, got {mask.dtype} {mask.shape}")
        sets = np.where(mask if sets.ndim == 2 else mask[..., None], sets, -1)
    return sets
