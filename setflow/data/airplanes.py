"""Real 3-D airplanes, offline: FlightGear's hand-built AI aircraft (Debian ``flightgear-data-ai``).

Source: the 212 AC3D models ``usr/share/games/flightgear/AI/Aircraft/<type>/Models/**.ac`` of
Debian's ``flightgear-data-ai`` 1:2020.3.16+dfsg-1 (GPL-2+; 287 MB ``.deb``), taken out of the
package with ``apt-get download`` + member extraction (:mod:`setflow.data.debian`); nothing is
installed. Only the ``.ac`` files are kept (109 MB), under ``<data root>/airplanes/flightgear/``.

Which files are airplanes (:func:`select_models`; run on all 212 at every build, which must
reproduce :data:`SPLITS` exactly):

1. files in a sub-folder of ``Models/`` are attachments (lights, flares, refuelling hoses) or a
   second model of a type already present (``f16/Models/rnlaf``): dropped;
2. types that are not airplanes by name: :data:`NOT_AIRPLANES` (the Bluebird hover-craft);
3. parts never seen in flight are removed from a model before anything is measured: objects
   named ``chute`` (the Vulcan's deployed brake parachute, 19 m behind the tail);
4. geometry must be a whole airplane: at least :data:`MIN_TRIANGLES` triangles and a longest
   side of :data:`MIN_EXTENT` m (drops lights, flares, toggles), wing span / length in
   :data:`SPAN_RATIO` (drops tanks, wheels, exhausts, banners, light cones and the Flash 2a hang
   glider) and height / max(length, span) at most :data:`MAX_HEIGHT_RATIO` (drops the hot-air
   balloons);
5. level-of-detail copies, liveries and freighter versions of one airframe: within a type folder,
   models whose bounding boxes agree to :data:`SAME_AIRFRAME_TOL` m on every axis are one
   airframe; the one with the most triangles (the highest detail) is kept, ties by name.
   Variants of other sizes (747-400 / 747-8, 777-200 / -300ER, 737-300 with winglets, ...) stay.

Splits: whole type folders go to one split (so a 747-400 and a 747-8 never straddle train and
test), fixed in :data:`SPLITS`; every selected source file is pinned by SHA-256
(:data:`SOURCE_SHA256`).

Pose: AC3D files are y-up and FlightGear's models put the nose toward -x with the left wing
toward +z (SimGear turns ``(x, y, z)`` into FlightGear's body frame ``(x, -z, y)``: x aft, y right,
z up). ShapeNetCore v2 (and PointFlow's ShapeNet PC15k, from it) is y-up with the front toward
-z, the right side toward +x. :data:`AC3D_TO_SHAPENET` maps one to the other: x' = -z, y' = y,
z' = x (a rotation by -90 degrees about y, det +1).

Clouds: every selected model (its whole mesh, line surfaces skipped) sampled area-weighted with
:func:`setflow.data.sampling.sample_surface`, ``num_points`` points, a seed per model
(from ``seed`` and the model name, so one model's cloud does not depend on the others), in metres
in the ShapeNet pose; cached with a checksummed manifest in
``<data root>/airplanes/airplanes_n<N>_seed<seed>.npz``. The ``airplanes`` source of
:func:`setflow.data.pointclouds.load_pointclouds` then puts every cloud in model units
(:func:`to_model_units`: bounding box centred, unit diagonal, the way ShapeNet's models are
size-normalised before PointFlow samples them) and applies its ``normalize`` protocol on top.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import time
from pathlib import Path
from typing import Mapping, Optional

import numpy as np

from .ac3d import AC3DMesh, read_ac3d
from .airplane_splits import REFERENCE_CLOUDS_SHA256, SOURCE_SHA256, SPLITS
from .cache import load_npz_cache, save_npz_cache
from .common import DataError, PathLike, downloads_allowed, file_digest, resolve_data_root, warn
from .debian import apt_download, apt_package_size, extract_members, find_deb
from .sampling import sample_surface

__all__ = ["PACKAGE", "PACKAGE_VERSION", "SPLITS", "SOURCE_SHA256", "AC3D_TO_SHAPENET", "select_models",
           "to_shapenet_pose", "to_model_units", "cloud_digest", "fetch_flightgear_models", "airplane_meshes",
           "load_airplanes", "AIRPLANES_LICENSE"]

PACKAGE = "flightgear-data-ai"
PACKAGE_VERSION = "1:2020.3.16+dfsg-1"
PACKAGE_SHA256 = "a86b2acbf99ff2d49698abd2a2f4bc28ab0cf5a744218b4ca4d8aede8a67dc2f"
PACKAGE_SIZE = 286_529_020
AIRPLANES_LICENSE = "GPL-2+"
#: members taken out of the .deb (``*`` matches ``/`` too, as with ``tar --wildcards``)
MEMBER_PATTERN = "*/AI/Aircraft/*/Models/*.ac"
AIRCRAFT_DIR = "usr/share/games/flightgear/AI/Aircraft"
NUM_SOURCE_FILES = 212

MIN_TRIANGLES = 200
MIN_EXTENT = 2.0
SPAN_RATIO = (0.4, 2.5)
MAX_HEIGHT_RATIO = 0.6
SAME_AIRFRAME_TOL = 0.1
NOT_AIRPLANES = {"bluebird": "the Bluebird hover-craft (not an airplane)"}
DROPPED_PARTS = re.compile(r"^chute$", re.IGNORECASE)

#: AC3D / FlightGear model frame (nose -x, y up, left wing +z) -> ShapeNetCore v2 (nose -z, y up, right wing +x)
AC3D_TO_SHAPENET = np.array([[0.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])



# --------------------------------------------------------------------------- selection
def _extent(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    used = v[np.unique(f)]
    return used.max(0) - used.min(0)


def model_mesh(mesh: AC3DMesh) -> tuple[np.ndarray, np.ndarray]:
    """``(vertices, faces)`` of a model without its :data:`DROPPED_PARTS` objects."""
    keep = mesh.part_mask(lambda path: not DROPPED_PARTS.match(path.rsplit("/", 1)[-1]))
    return mesh.vertices, mesh.faces[keep]


def select_models(meshes: Mapping[str, AC3DMesh]) -> tuple[list[str], dict[str, str]]:
    """Apply the module's rule to ``{<type>/Models/<path>: mesh}``; returns ``(kept, {dropped: why})``."""
    dropped: dict[str, str] = {}
    shaped: dict[str, tuple[np.ndarray, int]] = {}
    for key in sorted(meshes):
        parts = key.split("/")
        if len(parts) < 3 or parts[1] != "Models":
            raise ValueError(f"expected '<type>/Models/<file>.ac', got {key!r}")
        if len(parts) > 3:
            dropped[key] = "attachment in a sub-folder of Models/"
            continue
        if parts[0] in NOT_AIRPLANES:
            dropped[key] = NOT_AIRPLANES[parts[0]]
            continue
        v, f = model_mesh(meshes[key])
        ext = _extent(v, f)
        length, height, span = ext
        if len(f) < MIN_TRIANGLES or ext.max() < MIN_EXTENT:
            dropped[key] = f"a part ({len(f)} triangles, {ext.max():.2f} m)"
        elif not SPAN_RATIO[0] <= span / max(length, 1e-9) <= SPAN_RATIO[1]:
            dropped[key] = f"not plane-shaped (span / length {span / max(length, 1e-9):.2f})"
        elif height / max(length, span) > MAX_HEIGHT_RATIO:
            dropped[key] = f"not plane-shaped (height / size {height / max(length, span):.2f})"
        else:
            shaped[key] = (ext, len(f))
    kept = []
    by_type: dict[str, list[str]] = {}
    for key in shaped:
        by_type.setdefault(key.split("/")[0], []).append(key)
    for keys in by_type.values():
        # highest detail first, then by name: the first of each same-airframe group is kept
        for key in sorted(keys, key=lambda k: (-shaped[k][1], k)):
            twin = next((k for k in kept if k.split("/")[0] == key.split("/")[0]
                         and np.abs(shaped[k][0] - shaped[key][0]).max() <= SAME_AIRFRAME_TOL), None)
            if twin is None:
                kept.append(key)
            else:
                dropped[key] = f"same airframe as {twin} (level of detail / livery / variant)"
    return sorted(kept), dropped


def to_model_units(clouds: np.ndarray) -> np.ndarray:
    """``(M, N, 3)`` clouds in metres -> each centred on its bounding box and scaled to a unit
    bounding-box diagonal, as ShapeNet's models are size-normalised before PointFlow's clouds are
    drawn from them (an A380 and a Cri-cri then have the same size)."""
    x = np.asarray(clouds, dtype=np.float64)
    lo, hi = x.min(axis=1, keepdims=True), x.max(axis=1, keepdims=True)
    diag = np.linalg.norm(hi - lo, axis=2, keepdims=True)
    return ((x - (lo + hi) / 2) / np.maximum(diag, 1e-12)).astype(np.float32)


def to_shapenet_pose(vertices: np.ndarray) -> np.ndarray:
    """``(V, 3)`` AC3D / FlightGear model coordinates -> ShapeNetCore v2's pose (:data:`AC3D_TO_SHAPENET`)."""
    return np.asarray(vertices, dtype=np.float64) @ AC3D_TO_SHAPENET.T


# --------------------------------------------------------------------------- the files
def _say(msg: str) -> None:
    """A one-off progress note (download, extraction) on stderr; the source line stays the one summary."""
    print(msg, file=sys.stderr, flush=True)


def _aircraft_root(folder: Path) -> Path:
    return folder / AIRCRAFT_DIR


def _selected() -> list[str]:
    return [k for split in ("train", "valid", "test") for k in SPLITS[split]]


def _bad_sources(root: Path) -> list[str]:
    """Selected files that are missing or differ from :data:`SOURCE_SHA256`."""
    return [k for k in _selected() if not (root / k).is_file() or file_digest(root / k) != SOURCE_SHA256[k]]


def fetch_flightgear_models(data_root: Optional[PathLike] = None, download: bool = True) -> Path:
    """Make sure the selected ``.ac`` files are under ``<root>/airplanes/flightgear/``; returns their
    ``AI/Aircraft`` folder.

    The ``.deb`` is looked for in ``$SETFLOW_FLIGHTGEAR_DEB``, then ``<root>/airplanes/``; failing
    that, and with downloads allowed, ``apt-get download flightgear-data-ai`` fetches it there
    (287 MB; the size is printed first), its ``.ac`` members are extracted and the downloaded
    ``.deb`` is deleted again.
    """
    base = resolve_data_root(data_root) / "airplanes"
    folder = base / "flightgear"
    root = _aircraft_root(folder)
    if root.is_dir() and not _bad_sources(root):
        return root
    deb = None
    env = os.environ.get("SETFLOW_FLIGHTGEAR_DEB", "").strip()
    if env:
        deb = Path(env).expanduser()
        if not deb.is_file():
            raise DataError(f"SETFLOW_FLIGHTGEAR_DEB={env}: no such file")
    deb = deb or find_deb(base, PACKAGE)
    fetched = False
    if deb is None:
        if not downloads_allowed(download):
            raise DataError(f"FlightGear aircraft are not in {folder} and downloads are off: run "
                            f"`setflow data airplanes` (it runs `apt-get download {PACKAGE}`, "
                            f"{PACKAGE_SIZE / 1e6:.0f} MB), "
                            f"or put {PACKAGE}_*.deb into {base}")
        size = apt_package_size(PACKAGE)
        _say(f"downloading {PACKAGE} ({(size or PACKAGE_SIZE) / 1e6:.0f} MB) with `apt-get download` into {base}; "
             "only its .ac models are kept")
        deb = apt_download(PACKAGE, base)
        fetched = True
    t0 = time.time()
    digest = file_digest(deb)
    if digest != PACKAGE_SHA256:
        _say(f"note: {deb.name} is not {PACKAGE} {PACKAGE_VERSION} (sha256 {digest[:12]}...); "
             "the model checksums decide whether it can be used")
    files = extract_members(deb, [MEMBER_PATTERN], folder)
    _say(f"extracted {len(files)} .ac files from {deb.name} in {time.time() - t0:.0f} s")
    if fetched:
        deb.unlink()
    bad = _bad_sources(root)
    if bad:
        raise DataError(f"{deb.name}: {len(bad)} of the {len(_selected())} selected models are missing or differ "
                        f"from {PACKAGE} {PACKAGE_VERSION} (first: {bad[0]}); the splits are fixed for that version")
    return root


def airplane_meshes(root: PathLike, check_rule: bool = True) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{model: (vertices in the ShapeNet pose, faces)}`` of the selected models under ``root``
    (an ``AI/Aircraft`` folder). With ``check_rule`` every ``.ac`` there is read and the selection
    rule must give exactly :data:`SPLITS`."""
    root = Path(root)
    if check_rule:
        paths = sorted(root.glob("*/Models/**/*.ac"))
        meshes = {p.relative_to(root).as_posix(): read_ac3d(p, strict=False) for p in paths}
        kept, _ = select_models(meshes)
        if sorted(kept) != sorted(_selected()):
            extra, missing = sorted(set(kept) - set(_selected())), sorted(set(_selected()) - set(kept))
            raise DataError(f"{root}: the selection rule keeps {len(kept)} models, the fixed splits hold "
                            f"{len(_selected())} (new: {extra[:3]}, gone: {missing[:3]})")
    else:
        meshes = {k: read_ac3d(root / k, strict=False) for k in _selected()}
    out = {}
    for key in _selected():
        v, f = model_mesh(meshes[key])
        out[key] = (to_shapenet_pose(v), f)
    return out


def _model_seed(seed: int, key: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)])


def cloud_digest(clouds: np.ndarray) -> str:
    """SHA-256 of an array's C-ordered float32 bytes (what :data:`REFERENCE_CLOUDS_SHA256` records)."""
    return hashlib.sha256(np.ascontiguousarray(clouds, dtype=np.float32).tobytes()).hexdigest()


def _splits_digest() -> str:
    text = "\n".join(f"{s}:{k}:{SOURCE_SHA256[k]}" for s in ("train", "valid", "test") for k in SPLITS[s])
    return hashlib.sha256(text.encode()).hexdigest()


def load_airplanes(data_root: Optional[PathLike] = None, num_points: int = 2048, seed: int = 0,
                   download: bool = True) -> tuple[dict, str]:
    """``({split: (clouds (M, num_points, 3) float32 in metres, names (M,) str)}, source line)``.

    Built once per ``(num_points, seed)`` and cached (``<root>/airplanes/airplanes_n<N>_seed<s>.npz``
    plus a manifest with its SHA-256); the cache is used only when its manifest names the same
    splits and source checksums.
    """
    base = resolve_data_root(data_root) / "airplanes"
    cache = base / f"airplanes_n{num_points}_seed{seed}.npz"
    expect = {"num_points": int(num_points), "seed": int(seed), "package": f"{PACKAGE} {PACKAGE_VERSION}",
              "splits_sha256": _splits_digest()}
    hit = load_npz_cache(cache, expect)
    how = "cache reused"
    if hit is None:
        t0 = time.time()
        root = fetch_flightgear_models(data_root, download)
        meshes = airplane_meshes(root)
        arrays = {}
        for split in ("train", "valid", "test"):
            keys = SPLITS[split]
            clouds = [sample_surface(*meshes[k], num_points, _model_seed(seed, k)) for k in keys]
            arrays[split] = np.stack(clouds) if clouds else np.zeros((0, num_points, 3), np.float32)
            arrays[f"{split}_names"] = np.asarray(keys, dtype=str)
        manifest = save_npz_cache(cache, arrays, expect)
        how = f"built in {time.time() - t0:.0f} s"
        reference = REFERENCE_CLOUDS_SHA256.get((int(num_points), int(seed)), {})
        differ = [s for s, h in reference.items() if cloud_digest(arrays[s]) != h]
        if differ:
            warn(f"{cache}: the {', '.join(differ)} clouds differ from the reference build (SHA-256 of the arrays; "
                 "another numpy version may sample differently); the models and splits are the same")
    else:
        arrays, manifest = hit
    splits = {s: (arrays[s].astype(np.float32), [str(n) for n in arrays[f"{s}_names"]])
              for s in ("train", "valid", "test")}
    counts = ", ".join(f"{s} {len(splits[s][1])}" for s in ("train", "valid", "test"))
    source = (f"FlightGear AI aircraft (Debian {PACKAGE} {PACKAGE_VERSION}, {AIRPLANES_LICENSE}): "
              f"{sum(len(v[1]) for v in splits.values())} airplane models ({counts}), ShapeNet pose (y up, nose -z), "
              f"{num_points} area-weighted surface points each, seed {seed} ({how}: {cache}, "
              f"sha256 {manifest['sha256'][:16]})")
    return splits, source
