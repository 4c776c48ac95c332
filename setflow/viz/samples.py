"""Reading the ``.npz`` files that ``setflow sample`` writes."""

from __future__ import annotations

__all__ = ["load_samples_npz"]


def load_samples_npz(path) -> "np.ndarray":
    """The ``samples`` array of a ``setflow sample`` .npz (clear error when it has none)."""
    import numpy as np

    with np.load(path) as f:
        if "samples" not in f:
            raise ValueError(f"{path}: no 'samples' array (write it with `setflow sample`)")
        return f["samples"]
