"""Plots: point-set grids, image grids, 3-D renders and toy-density figures.

Each plotting module registers its ``plot_checkpoint(model, config, data, out_path, n)`` for its
data kind in :data:`setflow.registry.PLOTTERS`; :func:`plot_source` (``setflow plot``) lives in
:mod:`setflow.viz.plot`.
"""

from __future__ import annotations

from setflow.registry import PLOTTERS
from setflow.viz import images, pointclouds, sets, toy  # noqa: F401  (each registers its plotter)
from setflow.viz.plot import get_plotter, plot_source
from setflow.viz.samples import load_samples_npz

__all__ = ["PLOTTERS", "plot_source", "get_plotter", "load_samples_npz"]
