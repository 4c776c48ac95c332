"""3-D point clouds: surface sampling of meshes, offline shapes, and mesh folders / PyG data sets.

Sources, registered by name in :data:`setflow.registry.POINTCLOUD_SOURCES` (each loader returns a
:class:`PointClouds` whose ``source`` names what was used; a new source is one decorated function):

* ``shapes`` -- a seeded procedural family (sphere, torus, box, cylinder, cone, ellipsoid,
  capsule-like double cone) with random proportions and a random rotation; offline, any size.
* ``cgal`` -- real meshes (Stanford bunny, armadillo, Chinese dragon, animals, ...) from the
  data archive Debian's ``libcgal-demo`` package ships (``/usr/share/doc/libcgal-dev/data.tar.gz``;
  CGAL files without their own notice are CC0 1.0); one class per mesh, each cloud a fresh
  surface sample of it.
* ``meshes DIR`` -- any folder of OFF / PLY / OBJ / STL meshes (read with open3d), a class
  per sub-folder.
* ``modelnet10`` / ``modelnet40`` / ``shapenet`` -- PyG's dataset classes (download on first
  use; offline a clear :class:`DataError`).
* ``airplanes`` -- 111 real airplane models (airliners, light aircraft, fighters, bombers) of
  FlightGear's AI aircraft in Debian's ``flightgear-data-ai`` (GPL-2+), in ShapeNet's pose and
  model units (bbox centred, unit diagonal), one cloud per model, fixed splits (see
  :mod:`setflow.data.airplanes`).

Points are sampled uniformly on the surface (faces drawn with probability proportional to
their area, then uniform barycentric coordinates), with a fixed seed per cloud. Normalisation,
stated in ``source`` (training-split statistics are reused for valid and test):

* ``"shape"``: each cloud's bounding-box centre at 0, its longest side 1 (in [-0.5, 0.5]);
* ``"bbox"``: DPM's ``shape_bbox``: the same box scaled to [-1, 1] (longest side 2);
* ``"global"``: each cloud's own mean subtracted, every cloud divided by one standard
  deviation of the training split (DPM's ``global_unit``);
* ``"pointflow"``: PointFlow's default (``normalize_per_shape=False``): one mean (a 3-vector
  over every point of the training split) subtracted and one standard deviation (over all its
  coordinates) divided, the same two numbers for every cloud of every split;
* ``"none"``: the units of the source (mesh units; model units for ``airplanes``).
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from setflow.registry import POINTCLOUD_SOURCES, register_pointcloud_source, signature_names

from .common import DataError, downloads_allowed, report_source, resolve_data_root
from .sampling import sample_surface

__all__ = [
    "PointClouds",
    "SHAPE_CLASSES",
    "CGAL_MESHES",
    "MESH_SUFFIXES",
    "sample_surface",
    "read_mesh",
    "normalize_clouds",
    "procedural_shapes",
    "load_cgal_meshes",
    "load_mesh_folder",
    "load_pyg_pointclouds",
    "load_pointclouds",
    "find_cgal_archive",
    "NORMALIZATIONS",
]

MESH_SUFFIXES = (".off", ".ply", ".obj", ".stl")
NORMALIZATIONS = ("shape", "bbox", "global", "pointflow", "none")
#: meshes taken from CGAL's data archive (closed, recognisable objects)
CGAL_MESHES = ("bunny00", "armadillo", "ChineseDragon-10kv", "elephant", "cow", "camel", "bull", "dino",
               "elk", "lion", "triceratops", "homer", "hand", "mushroom", "knot1", "fandisk", "rotor",
               "anchor", "blobby", "head")
#: where scripts/install_system_deps.sh unpacks libcgal-demo, then a regular install
CGAL_ARCHIVES = ("/opt/setflow/libcgal-demo/usr/share/doc/libcgal-dev/data.tar.gz",
                 "/usr/share/doc/libcgal-dev/data.tar.gz")


@dataclass
class PointClouds:
    """Point-cloud splits: ``(M, N, 3)`` float32 clouds, ``(M,)`` int64 labels, class names."""

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    train_labels: np.ndarray
    valid_labels: np.ndarray
    test_labels: np.ndarray
    classes: list = field(default_factory=list)
    source: str = ""
    #: per split, the name of each cloud's source model (sources with named models only)
    names: dict = field(default_factory=dict)


def read_mesh(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(vertices (V, 3) float64, faces (F, 3) int64)`` of an OFF / PLY / OBJ / STL file (open3d)."""
    path = Path(path)
    if path.suffix.lower() not in MESH_SUFFIXES:
        raise DataError(f"{path}: expected a mesh file ending in one of {', '.join(MESH_SUFFIXES)}")
    if not path.is_file():
        raise DataError(f"{path}: no such mesh file")
    import open3d as o3d

    kind = f"a triangle mesh in {path.suffix[1:].upper()} format"
    try:  # quiet: open3d's warning repeats the error below, and quotes binary junk as a UnicodeDecodeError
        with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):
            mesh = o3d.io.read_triangle_mesh(str(path))
    except (UnicodeDecodeError, RuntimeError, ValueError) as e:
        raise DataError(f"{path}: not readable as {kind} ({type(e).__name__}: {e})") from None
    v, f = np.asarray(mesh.vertices), np.asarray(mesh.triangles)
    if len(v) == 0 or len(f) == 0:
        raise DataError(f"{path}: open3d read no triangles; expected {kind} (a corrupt file, or points only)")
    return v, f.astype(np.int64)


def normalize_clouds(clouds: np.ndarray, mode: str, scale=None) -> tuple[np.ndarray, object]:
    """Normalise ``(M, N, 3)`` clouds (see module docstring); returns ``(clouds, stats)``.

    ``stats`` is what the training split fixes: the std (a float) for ``"global"``, ``(mean (3,),
    std)`` for ``"pointflow"``, ``1.0`` otherwise. Pass it back as ``scale`` to normalise valid
    and test with the training split's numbers; without it they are measured on ``clouds``.
    """
    if mode not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}; got {mode!r}")
    x = np.asarray(clouds, dtype=np.float64)
    if mode == "none":
        return x.astype(np.float32), 1.0
    if mode in ("shape", "bbox"):
        lo, hi = x.min(axis=1, keepdims=True), x.max(axis=1, keepdims=True)
        side = (hi - lo).max(axis=2, keepdims=True) / (2.0 if mode == "bbox" else 1.0)
        return ((x - (lo + hi) / 2) / np.maximum(side, 1e-12)).astype(np.float32), 1.0
    if mode == "pointflow":
        if scale is None:
            mean, std = x.reshape(-1, 3).mean(axis=0), float(x.std())
        else:
            mean, std = np.asarray(scale[0], dtype=np.float64).reshape(3), float(scale[1])
        return ((x - mean) / std).astype(np.float32), (mean, std)
    x = x - x.mean(axis=1, keepdims=True)
    scale = float(x.std()) if scale is None else float(scale)
    return (x / scale).astype(np.float32), scale


# --------------------------------------------------------------------------- procedural shapes
def _grid_mesh(u_n: int, v_n: int, fn: Callable, wrap_u: bool = True, wrap_v: bool = False):
    """Triangulate a parametric surface ``fn(u, v) -> (..., 3)`` on a ``u_n x v_n`` grid in [0, 1]^2."""
    u = np.linspace(0, 1, u_n, endpoint=not wrap_u)
    v = np.linspace(0, 1, v_n, endpoint=not wrap_v)
    uu, vv = np.meshgrid(u, v, indexing="ij")
    verts = fn(uu, vv).reshape(-1, 3)
    i, j = np.meshgrid(np.arange(u_n if wrap_u else u_n - 1), np.arange(v_n if wrap_v else v_n - 1), indexing="ij")
    i, j = i.ravel(), j.ravel()
    i1, j1 = (i + 1) % u_n, (j + 1) % v_n
    a, b, c, d = i * v_n + j, i1 * v_n + j, i1 * v_n + j1, i * v_n + j1
    return verts, np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])


def _revolve(profile: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], n: int = 48):
    """Surface of revolution about z of a profile ``t -> (radius, z)``, t in [0, 1]."""
    def fn(u, v):
        r, z = profile(v)
        ang = 2 * np.pi * u
        return np.stack([r * np.cos(ang), r * np.sin(ang), z], -1)
    return _grid_mesh(n, n, fn)


def _box_mesh():
    v = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float64)
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    f = np.array([t for a, b, c, d in quads for t in ((a, b, c), (a, c, d))])
    return v, f


def _shape_mesh(name: str, rng: np.random.Generator):
    """An untransformed random member of class ``name``: ``(vertices, faces)``."""
    if name == "sphere":
        return _revolve(lambda t: (np.sin(np.pi * t), -np.cos(np.pi * t)))
    if name == "ellipsoid":
        v, f = _revolve(lambda t: (np.sin(np.pi * t), -np.cos(np.pi * t)))
        return v * rng.uniform(0.3, 1.0, 3), f
    if name == "torus":
        rr = rng.uniform(0.15, 0.5)
        return _grid_mesh(48, 24, lambda u, v: np.stack([(1 + rr * np.cos(2 * np.pi * v)) * np.cos(2 * np.pi * u),
                                                         (1 + rr * np.cos(2 * np.pi * v)) * np.sin(2 * np.pi * u),
                                                         rr * np.sin(2 * np.pi * v)], -1), wrap_v=True)
    if name == "box":
        v, f = _box_mesh()
        return v * rng.uniform(0.2, 1.0, 3), f
    h = rng.uniform(0.5, 2.0)
    if name == "cylinder":  # closed: cap, side, cap
        return _revolve(lambda t: (np.clip(np.minimum(3 * t, 3 - 3 * t), 0, 1), h * np.clip(3 * t - 1, 0, 1)))
    if name == "cone":  # base disc then the slanted side
        return _revolve(lambda t: (np.where(t < 0.5, 2 * t, 2 - 2 * t), h * np.clip(2 * t - 1, 0, 1)))
    if name == "bicone":
        return _revolve(lambda t: (1 - np.abs(2 * t - 1), h * t))
    raise ValueError(f"unknown shape class {name!r}; expected one of {SHAPE_CLASSES}")


SHAPE_CLASSES = ("sphere", "ellipsoid", "torus", "box", "cylinder", "cone", "bicone")


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _yaw_rotation(rng: np.random.Generator) -> np.ndarray:
    a = rng.uniform(0.0, 2.0 * np.pi)
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


#: ``rotate`` choices of :func:`procedural_shapes`: any rotation, about the upright z axis only, none
ROTATIONS = ("so3", "z", "none")


def procedural_shapes(per_class: int, num_points: int, seed: int = 0,
                      classes: Sequence[str] = SHAPE_CLASSES, rotate: bool | str = True) -> tuple[np.ndarray, np.ndarray]:
    """``per_class`` random shapes of each class, sampled to ``num_points`` surface points.

    Each shape gets its own proportions, a rotation and its own sampling seed drawn from
    ``seed``. ``rotate``: ``"so3"`` (or ``True``) a uniformly random rotation; ``"z"`` a random
    turn about the upright z axis (the shapes stay upright, as aligned ShapeNet models do);
    ``"none"`` (or ``False``) the canonical pose (tori flat, boxes axis-aligned). Returns
    ``(clouds (M, N, 3) float32, labels (M,) int64)`` in class order; coordinates are in shape
    units (normalise afterwards).
    """
    if isinstance(rotate, bool):
        rotate = "so3" if rotate else "none"
    if rotate not in ROTATIONS:
        raise ValueError(f"rotate must be one of {ROTATIONS}; got {rotate!r}")
    rng = np.random.default_rng(seed)
    clouds, labels = [], []
    for c, name in enumerate(classes):
        for _ in range(per_class):
            v, f = _shape_mesh(name, rng)
            if rotate != "none":
                v = v @ (_random_rotation(rng) if rotate == "so3" else _yaw_rotation(rng)).T
            clouds.append(sample_surface(v, f, num_points, rng))
            labels.append(c)
    return np.stack(clouds), np.asarray(labels, dtype=np.int64)


# --------------------------------------------------------------------------- finishing splits
def _finish(splits: dict, classes: list, normalize: str, source: str, names: Optional[dict] = None) -> PointClouds:
    tr, stats = normalize_clouds(splits["train"][0], normalize)
    shared = stats if normalize in ("global", "pointflow") else None
    va, _ = normalize_clouds(splits["valid"][0], normalize, shared)
    te, _ = normalize_clouds(splits["test"][0], normalize, shared)
    if normalize == "global":
        desc = f"per-cloud mean 0, one global std {stats:.4g} from train"
    elif normalize == "pointflow":
        desc = (f"PointFlow's: one mean ({', '.join(f'{m:.4g}' for m in stats[0])}) and one std {stats[1]:.4g} "
                "from train for every cloud")
    else:
        desc = {"shape": "per-shape unit box (bbox centre 0, longest side 1)",
                "bbox": "per-shape bbox in [-1, 1] (centre 0, longest side 2; DPM's shape_bbox)",
                "none": "none (the units of the source)"}[normalize]
    return PointClouds(tr, va, te, splits["train"][1], splits["valid"][1], splits["test"][1], list(classes),
                       f"{source}; normalised: {desc}", dict(names or {}))


@register_pointcloud_source("shapes")
def _shapes_source(per_class: int, num_points: int, seed: int, normalize: str, rotate: str = "so3") -> PointClouds:
    splits = {s: procedural_shapes(n, num_points, seed=seed * 10 + i, rotate=rotate)
              for i, (s, n) in enumerate((("train", per_class), ("valid", max(1, per_class // 8)),
                                          ("test", max(1, per_class // 4))))}
    pose = {"so3": "random rotation", "z": "random turn about z (upright)", "none": "canonical pose"}[rotate]
    return _finish(splits, list(SHAPE_CLASSES), normalize,
                   f"procedural shapes ({len(SHAPE_CLASSES)} classes x {per_class} train, seed {seed}, "
                   f"{num_points} points each, {pose})")


#: clouds per mesh that give every mesh one valid, one test and at least one training cloud
MIN_CLOUDS_PER_MESH = 3


def _check_clouds_per_mesh(per_mesh: int) -> None:
    """Refuse (before any mesh is read) a count that would leave the valid and test splits empty."""
    if per_mesh < MIN_CLOUDS_PER_MESH:
        raise DataError(f"per_class (--per-class) = {per_mesh} clouds per mesh would leave the valid and test splits "
                        f"empty; use {MIN_CLOUDS_PER_MESH} or more (one valid, one test, the rest train)")


def _clouds_of_meshes(meshes: list, per_mesh: int, num_points: int, seed: int):
    """For each ``(label, vertices, faces)`` draw ``per_mesh`` clouds (checked by
    :func:`_check_clouds_per_mesh`); split 3/4, 1/8, 1/8 per mesh, at least one valid and one test cloud."""
    rng = np.random.default_rng(seed)
    n_va = max(1, per_mesh // 8)
    n_te = n_va
    out = {"train": ([], []), "valid": ([], []), "test": ([], [])}
    for label, v, f in meshes:
        pts = sample_surface(v, f, num_points, rng, num_clouds=per_mesh)
        for split, part in (("valid", pts[:n_va]), ("test", pts[n_va:n_va + n_te]), ("train", pts[n_va + n_te:])):
            out[split][0].append(part)
            out[split][1].append(np.full(len(part), label, dtype=np.int64))
    return {k: (np.concatenate(a), np.concatenate(b)) for k, (a, b) in out.items()}


def find_cgal_archive() -> Optional[Path]:
    """The ``data.tar.gz`` of libcgal-demo (``$SETFLOW_CGAL_ARCHIVE``, then :data:`CGAL_ARCHIVES`), or ``None``."""
    import os

    for p in (os.environ.get("SETFLOW_CGAL_ARCHIVE", ""), *CGAL_ARCHIVES):
        if Path(p).is_file():
            return Path(p)
    return None


def load_cgal_meshes(data_root=None, names: Sequence[str] = CGAL_MESHES) -> list:
    """``[(name, vertices, faces)]`` of CGAL's meshes, extracted once into ``<root>/cgal_meshes/``."""
    folder = resolve_data_root(data_root) / "cgal_meshes"
    missing = [n for n in names if not (folder / f"{n}.off").is_file()]
    if missing:
        archive = find_cgal_archive()
        if archive is None:
            raise DataError(
                "CGAL meshes unavailable: run `sudo bash scripts/install_system_deps.sh` (part of `make install`), "
                "or `apt-get download libcgal-demo && dpkg-deb -x libcgal-demo*.deb DIR` and copy "
                f"DIR/usr/share/doc/libcgal-dev/data.tar.gz's data/meshes/*.off to {folder}/)")
        folder.mkdir(parents=True, exist_ok=True)
        wanted = {f"data/meshes/{n}.off": n for n in missing}
        with tarfile.open(archive) as tf:
            for member in tf:
                if member.name in wanted and member.isfile():
                    (folder / f"{wanted[member.name]}.off").write_bytes(tf.extractfile(member).read())
        still = [n for n in names if not (folder / f"{n}.off").is_file()]
        if still:
            raise DataError(f"{archive} lacks meshes {still}")
    return [(n, *read_mesh(folder / f"{n}.off")) for n in names]


@register_pointcloud_source("cgal")
def _cgal_source(per_class: int, num_points: int, seed: int, normalize: str, data_root=None) -> PointClouds:
    per_mesh = per_class  # one class per mesh
    _check_clouds_per_mesh(per_mesh)
    meshes = load_cgal_meshes(data_root)
    splits = _clouds_of_meshes([(i, v, f) for i, (_, v, f) in enumerate(meshes)], per_mesh, num_points, seed)
    return _finish(splits, [m[0] for m in meshes], normalize,
                   f"CGAL meshes from Debian libcgal-demo (CC0; {len(meshes)} meshes x {per_mesh} surface "
                   f"samples, seed {seed}, {num_points} points each)")


def load_mesh_folder(root: str | Path, num_points: int = 2048, per_mesh: int = 1, seed: int = 0,
                     normalize: str = "shape") -> PointClouds:
    """Sample every mesh under ``root`` (a class per sub-folder; files directly in ``root`` form
    class ``root``'s name). With ``per_mesh == 1`` meshes are split 3/4, 1/8, 1/8 per class in
    sorted-name order; with more, each mesh's clouds are split that way."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: expected a folder of meshes (a class per sub-folder)")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in MESH_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"{root}: no {'/'.join(s[1:].upper() for s in MESH_SUFFIXES)} meshes found")
    classes = sorted({p.parent.relative_to(root).parts[0] if p.parent != root else root.name for p in files})
    label_of = {c: i for i, c in enumerate(classes)}
    rng = np.random.default_rng(seed)
    if per_mesh > 1:
        _check_clouds_per_mesh(per_mesh)
        meshes = [(label_of[p.parent.relative_to(root).parts[0] if p.parent != root else root.name], *read_mesh(p))
                  for p in files]
        splits = _clouds_of_meshes(meshes, per_mesh, num_points, seed)
    else:
        out = {"train": ([], []), "valid": ([], []), "test": ([], [])}
        by_class: dict = {}
        for p in files:
            by_class.setdefault(p.parent.relative_to(root).parts[0] if p.parent != root else root.name, []).append(p)
        if max(len(paths) for paths in by_class.values()) < 8:
            raise DataError(f"{root}: one cloud per mesh (per_class 1) splits each class's meshes 3/4, 1/8, 1/8, but no "
                            f"class has the 8 meshes that gives one valid and one test mesh, so those splits would be "
                            f"empty; use --per-class {MIN_CLOUDS_PER_MESH} or more (each mesh's clouds are split)")
        for c, paths in by_class.items():
            n_va = len(paths) // 8
            for k, p in enumerate(paths):
                split = "valid" if k < n_va else "test" if k < 2 * n_va else "train"
                out[split][0].append(sample_surface(*read_mesh(p), num_points, rng))
                out[split][1].append(label_of[c])
        empty = np.zeros((0, num_points, 3), np.float32)
        splits = {k: (np.stack(a) if a else empty, np.asarray(b, dtype=np.int64)) for k, (a, b) in out.items()}
    return _finish(splits, classes, normalize, f"meshes in {root} ({len(files)} files, {len(classes)} classes, "
                                                 f"seed {seed}, {num_points} points each)")


@register_pointcloud_source("meshes")
def _meshes_source(path: Optional[str], num_points: int, per_class: int, seed: int, normalize: str) -> PointClouds:
    if path is None:
        raise ValueError("source 'meshes' needs path=<folder of meshes>")
    return load_mesh_folder(path, num_points, per_mesh=per_class, seed=seed, normalize=normalize)


def _pyg_source(name: str) -> Callable[..., PointClouds]:
    def load(num_points: int, seed: int, normalize: str, data_root=None, categories: Optional[Sequence[str]] = None,
             download: bool = True) -> PointClouds:
        return load_pyg_pointclouds(name, data_root, num_points, seed, normalize, categories, download)

    load.__name__ = f"_{name}_source"
    return load


def load_pyg_pointclouds(name: str, data_root=None, num_points: int = 2048, seed: int = 0,
                         normalize: str = "shape", categories: Optional[Sequence[str]] = None,
                         download: bool = True) -> PointClouds:
    """ModelNet10/40 (meshes, surface-sampled here) or ShapeNet (PyG's part-segmentation point
    clouds, subsampled to ``num_points``) through ``torch_geometric.datasets``.

    ModelNet's test split is PyG's; its validation split is every 8th training mesh.
    """
    if name not in ("modelnet10", "modelnet40", "shapenet"):
        raise ValueError(f"unknown PyG point-cloud data set {name!r}; expected modelnet10, modelnet40 or shapenet")
    root = resolve_data_root(data_root) / name
    raw = root / "raw"
    if not downloads_allowed(download) and not (raw.is_dir() and any(raw.iterdir())):
        raise DataError(f"{name} is not in {root} and downloads are off; run `setflow data {name}` with a network "
                        "(PyG downloads and processes it), or use the offline sources `shapes` / `cgal`")
    try:
        from torch_geometric import datasets as pyg_datasets
    except ImportError as e:  # pragma: no cover - torch_geometric is a dependency
        raise DataError(f"{name} needs torch_geometric ({e})") from e
    rng = np.random.default_rng(seed)
    try:
        if name.startswith("modelnet"):
            sets = {s: pyg_datasets.ModelNet(str(root), name=name[-2:], train=(s == "train")) for s in ("train", "test")}
            classes = sorted(p.name for p in raw.iterdir() if p.is_dir())

            def clouds(ds):
                return (np.stack([sample_surface(d.pos.numpy(), d.face.numpy().T, num_points, rng) for d in ds]),
                        np.asarray([int(d.y) for d in ds], dtype=np.int64))
            tr_all, te = clouds(sets["train"]), clouds(sets["test"])
        else:
            cats = list(categories) if categories else None
            sets = {s: pyg_datasets.ShapeNet(str(root), categories=cats, split=s) for s in ("train", "val", "test")}
            classes = cats or sorted(sets["train"].categories)

            def clouds(ds):
                pts = []
                for d in ds:
                    p = d.pos.numpy()
                    pts.append(p[rng.choice(len(p), num_points, replace=len(p) < num_points)])
                return np.stack(pts).astype(np.float32), np.asarray([int(d.category) for d in ds], dtype=np.int64)
            tr_all, va, te = (clouds(sets[s]) for s in ("train", "val", "test"))
    except (OSError, RuntimeError, ConnectionError) as e:
        raise DataError(f"{name}: PyG could not download or process it into {root} ({e}); "
                        "offline, use the sources `shapes` / `cgal`") from e
    if name.startswith("modelnet"):
        is_va = np.arange(len(tr_all[0])) % 8 == 7
        va = (tr_all[0][is_va], tr_all[1][is_va])
        tr_all = (tr_all[0][~is_va], tr_all[1][~is_va])
    return _finish({"train": tr_all, "valid": va, "test": te}, classes, normalize,
                   f"{name} via torch_geometric in {root} (seed {seed}, {num_points} points each)")


for _name in ("modelnet10", "modelnet40", "shapenet"):
    register_pointcloud_source(_name, _pyg_source(_name))
del _name


@register_pointcloud_source("airplanes")
def _airplanes_source(num_points: int, seed: int, normalize: str, data_root=None, download: bool = True) -> PointClouds:
    from .airplanes import load_airplanes, to_model_units

    splits, source = load_airplanes(data_root, num_points, seed, download=download)
    data = {s: (to_model_units(clouds), np.zeros(len(clouds), dtype=np.int64)) for s, (clouds, _) in splits.items()}
    return _finish(data, ["airplane"], normalize, f"{source}; each model centred, unit bbox diagonal",
                   {s: names for s, (_, names) in splits.items()})


def load_pointclouds(source: str = "shapes", data_root=None, num_points: int = 512, per_class: int = 64,
                     seed: int = 0, normalize: str = "shape", path: Optional[str] = None,
                     categories: Optional[Sequence[str]] = None, download: bool = True,
                     verbose: bool = True, rotate: str = "so3") -> PointClouds:
    """Point clouds from ``source``, a name in :data:`~setflow.registry.POINTCLOUD_SOURCES`: ``shapes``,
    ``cgal``, ``meshes`` (needs ``path``), ``modelnet10``, ``modelnet40``, ``shapenet`` or ``airplanes``.
    Each source is called with the options its signature names (a source that takes no ``rotate``
    refuses one other than ``"so3"``); the others do not apply to it. ``per_class`` is shapes per
    class (``shapes``), clouds per mesh (``cgal``, ``meshes``); ``airplanes`` has one cloud per
    model and ignores it. ``rotate`` is the pose of the ``shapes`` (see
    :func:`procedural_shapes`). Prints ``data: <source>`` when ``verbose``."""
    if num_points < 2:
        raise ValueError(f"num_points must be >= 2; got {num_points}")
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1; got {per_class}")
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}; got {normalize!r}")
    if rotate not in ROTATIONS:
        raise ValueError(f"rotate must be one of {ROTATIONS}; got {rotate!r}")
    loader = POINTCLOUD_SOURCES.get(source)  # an unknown name: one line listing the registered sources
    takes, _ = signature_names(loader)
    if rotate != "so3" and "rotate" not in takes:
        posed = [n for n in POINTCLOUD_SOURCES if "rotate" in signature_names(POINTCLOUD_SOURCES.get(n))[0]]
        raise ValueError(f"rotate={rotate!r} poses the procedural shapes (sources {', '.join(posed)}), not {source!r}")
    options = dict(num_points=num_points, per_class=per_class, seed=seed, normalize=normalize, data_root=data_root,
                   path=path, categories=categories, download=download, rotate=rotate)
    d = loader(**{k: v for k, v in options.items() if k in takes})
    report_source(d.source, verbose)
    return d
