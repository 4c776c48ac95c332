"""Reading the ``.npz`` files that ``setflow sample`` writes, checked before anything is drawn."""

from __future__ import annotations

__all__ = ["load_samples_npz"]

_EXPECTED = "a samples .npz from `setflow sample`"


def load_samples_npz(path) -> "np.ndarray":
    """The ``samples`` of a ``setflow sample`` .npz: point sets ``(n, N, 2|3)`` or images ``(n, C, H, W)``.

    Variable-size sets come zero-padded with a boolean ``mask`` ``(n, N)`` (True = a real point);
    their padded points are returned as NaN, which the plots skip. Raises a one-line
    ``ValueError`` naming the file for an unreadable archive, a missing ``samples`` array, any
    other shape, an empty file, or NaN/inf values that are not padding (saying how many sets hold them).
    """
    import numpy as np

    from setflow.data.common import read_npz

    arrays = read_npz(path, _EXPECTED)
    if "samples" not in arrays:
        raise ValueError(f"{path}: no 'samples' array (write it with `setflow sample`)")
    x = arrays["samples"]
    sets = x.ndim == 3 and x.shape[-1] in (2, 3)
    if x.dtype.kind not in "biuf" or not (sets or x.ndim == 4) or len(x) == 0:
        raise ValueError(f"{path}: samples of shape {x.shape} and dtype {x.dtype}; expected point sets (n, N, 2) "
                         "or (n, N, 3), or images (n, C, H, W), of numbers, n >= 1")
    mask = arrays.get("mask") if sets else None
    if mask is not None and (mask.shape != x.shape[:2] or mask.dtype != bool):
        raise ValueError(f"{path}: 'mask' of shape {mask.shape} and dtype {mask.dtype}; expected booleans of "
                         f"shape {x.shape[:2]} (one per point of 'samples')")
    # per point (n, N) for sets, per image (n, 1) for images; only real points count
    bad = ~np.isfinite(x).reshape(len(x), -1, x.shape[-1] if sets else x[0].size).all(-1)
    if mask is not None:
        bad &= mask
    if bad.any():
        padding = "outside its mask" if mask is not None else "and no 'mask' marks them as padding"
        raise ValueError(f"{path}: {int(bad.any(1).sum())} of {len(x)} {'sets' if sets else 'images'} contain NaN "
                         f"or inf values ({padding}); expected finite samples")
    if mask is not None and not mask.all():
        x = x.astype(np.float64)
        x[~mask] = np.nan  # padding: the plots skip NaN points
    return x
