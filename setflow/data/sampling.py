"""Uniform surface sampling of triangle meshes (area-weighted faces, uniform barycentric points).

Shared by every 3-D source (:mod:`setflow.data.pointclouds`, :mod:`setflow.data.airplanes`);
re-exported as ``setflow.data.pointclouds.sample_surface``.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from .common import DataError

__all__ = ["sample_surface"]


def _triangle_areas(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    return 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)


def sample_surface(vertices: np.ndarray, faces: np.ndarray, num_points: int,
                   rng: np.random.Generator | int = 0, num_clouds: Optional[int] = None) -> np.ndarray:
    """Points drawn uniformly on a triangle mesh's surface (area-weighted faces, barycentric).

    Shapes: ``vertices (V, 3)``, ``faces (F, 3)`` int -> ``(num_points, 3)``, or
    ``(num_clouds, num_points, 3)`` when ``num_clouds`` is given (independent draws).
    """
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces)
    if v.ndim != 2 or v.shape[1] != 3 or f.ndim != 2 or f.shape[1] != 3:
        raise DataError(f"expected vertices (V, 3) and triangle faces (F, 3); got {v.shape} and {f.shape}")
    if len(f) == 0 or f.min() < 0 or f.max() >= len(v):
        raise DataError(f"faces must index the {len(v)} vertices; got {len(f)} faces")
    area = _triangle_areas(v, f)
    total = area.sum()
    if not np.isfinite(total) or total <= 0:
        raise DataError("mesh has zero surface area")
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    m = 1 if num_clouds is None else num_clouds
    idx = rng.choice(len(f), size=m * num_points, p=area / total)
    r1, r2 = rng.random((2, m * num_points, 1))
    s = np.sqrt(r1)
    tri = v[f[idx]]  # (M*N, 3 corners, 3)
    pts = (1 - s) * tri[:, 0] + s * (1 - r2) * tri[:, 1] + s * r2 * tri[:, 2]
    pts = pts.reshape(m, num_points, 3).astype(np.float32)
    return pts[0] if num_clouds is None else pts
