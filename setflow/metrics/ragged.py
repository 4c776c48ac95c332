"""Sample metrics for sets of different sizes: Chamfer distances between padded sets with masks.

``CD(X, Y) = mean_x min_y |x - y|^2 + mean_y min_x |x - y|^2`` is defined for any two sizes, so
MMD, COV and 1-NNA under CD carry over unchanged (:func:`ragged_sample_metrics`). EMD is not
reported here: between sets of different sizes it needs an unbalanced (partial) transport,
which is a different distance from the equal-size EMD the papers report.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .distances import DEFAULT_BLOCK_ELEMS, _progress, _sq_dists, check_sets
from .eval import mmd_cov, one_nna

__all__ = ["pairwise_chamfer_masked", "ragged_sample_metrics"]


def _check(x: Tensor, mask: Optional[Tensor], name: str) -> tuple[Tensor, Tensor]:
    x = check_sets(torch.where(mask[..., None], x, torch.zeros(())) if mask is not None else x, name)
    if mask is None:
        mask = torch.ones(x.shape[:2], dtype=torch.bool)
    if mask.dtype != torch.bool or tuple(mask.shape) != tuple(x.shape[:2]):
        raise ValueError(f"{name} mask must be bool of shape {tuple(x.shape[:2])}, got {mask.dtype} {tuple(mask.shape)}")
    if bool((mask.sum(1) == 0).any()):
        raise ValueError(f"every set of {name} needs at least one real point")
    return x, mask


def pairwise_chamfer_masked(a: Tensor, a_mask: Optional[Tensor] = None, b: Optional[Tensor] = None,
                            b_mask: Optional[Tensor] = None, block_elems: int = DEFAULT_BLOCK_ELEMS,
                            progress: Optional[bool] = None) -> Tensor:
    """All-pairs Chamfer distances ``(A, B)`` between padded sets ``a`` (A, N, D) and ``b`` (B, M, D)
    with masks ``(A, N)`` / ``(B, M)`` (``None``: every point real; ``b=None``: ``b = a``).

    Blocks of ``g x r`` pairs keep ``g * r * N * M <= block_elems`` floats in memory; padding takes
    no part (``+inf`` in the nearest-point search, weight 0 in the means).
    """
    a, a_mask = _check(a, a_mask, "a")
    if b is None:
        b, b_mask = a, a_mask
    else:
        b, b_mask = _check(b, b_mask, "b")
    dtype = torch.promote_types(a.dtype, b.dtype)
    shift = b[b_mask].mean(0).to(dtype)  # centring reduces cancellation in |x|^2 + |y|^2 - 2xy
    a, b = a.to(dtype) - shift, b.to(dtype) - shift
    n, m = a.shape[1], b.shape[1]
    na, nb = a_mask.sum(1).to(dtype), b_mask.sum(1).to(dtype)
    side = max(1, int(math.sqrt(block_elems / (n * m))))
    out = torch.empty(a.shape[0], b.shape[0], dtype=dtype)
    jobs = [(i, j) for i in range(0, a.shape[0], side) for j in range(0, b.shape[0], side)]
    inf = torch.tensor(math.inf, dtype=dtype)
    for i, j in _progress(jobs, progress, "chamfer", big=a.shape[0] * b.shape[0] * n * m > 1e9):
        ma, mb = a_mask[i : i + side], b_mask[j : j + side]
        sq = _sq_dists(a[i : i + side], b[j : j + side])  # (g, N, r, M)
        sq_b = torch.where(mb[None, None], sq, inf)  # only real points of b as neighbours of a's points
        min_a = sq_b.amin(3).transpose(1, 2)  # (g, r, N)
        sq_a = torch.where(ma[:, :, None, None], sq, inf)
        min_b = sq_a.amin(1)  # (g, r, M)
        zero = torch.zeros((), dtype=dtype)
        term_a = torch.where(ma[:, None, :], min_a, zero).sum(2) / na[i : i + side, None]
        term_b = torch.where(mb[None], min_b, zero).sum(2) / nb[None, j : j + side]
        out[i : i + side, j : j + side] = term_a + term_b
    return out


def ragged_sample_metrics(gen: Tensor, gen_mask: Optional[Tensor], ref: Tensor, ref_mask: Optional[Tensor],
                          block_elems: int = DEFAULT_BLOCK_ELEMS, progress: Optional[bool] = None) -> dict:
    """MMD, COV and 1-NNA under Chamfer distance of generated vs reference sets of any sizes.

    Returns ``{"cd": {"mmd", "cov", "1nna"}, "num_gen", "num_ref", "sizes_gen", "sizes_ref"}`` (mean set
    sizes); the same keys as :func:`setflow.metrics.sample_metrics` without EMD (see the module note).
    """
    gen, gen_mask = _check(gen, gen_mask, "gen")
    ref, ref_mask = _check(ref, ref_mask, "ref")
    width = max(gen.shape[1], ref.shape[1])

    def widen(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        pad = width - x.shape[1]
        return (torch.cat([x, x.new_zeros(x.shape[0], pad, x.shape[2])], 1),
                torch.cat([mask, mask.new_zeros(mask.shape[0], pad)], 1))

    (gen, gen_mask), (ref, ref_mask) = widen(gen, gen_mask), widen(ref, ref_mask)
    g = gen.shape[0]
    union = torch.cat([gen, ref.to(gen.dtype)])
    cd = pairwise_chamfer_masked(union, torch.cat([gen_mask, ref_mask]), block_elems=block_elems, progress=progress)
    mmd, cov = mmd_cov(cd[:g, g:])
    return {"cd": {"mmd": mmd, "cov": cov, "1nna": one_nna(cd, g)}, "num_gen": g, "num_ref": ref.shape[0],
            "sizes_gen": gen_mask.sum(1).double().mean().item(), "sizes_ref": ref_mask.sum(1).double().mean().item()}
