"""Evaluation: average log-likelihood in the data set's unit (nats/point, bits/dim, nats), exact or IWBO."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["evaluate", "format_metrics", "loss_scale", "draw_samples", "sample_quality", "format_sample_quality",
           "split_masks", "bbox_normalize"]


def loss_scale(unit: str, event_shape: tuple[int, ...]) -> float:
    """Divide a per-datum log-likelihood (nats) by this to get the unit's per-point / per-dim value."""
    if unit == "nats_per_point":
        return float(event_shape[0])
    if unit == "bits_per_dim":
        return float(math.prod(event_shape)) * math.log(2.0)
    if unit == "nats":
        return 1.0
    raise ValueError(f"unknown unit {unit!r}; expected nats_per_point, bits_per_dim or nats")


def _bare(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def split_masks(model: nn.Module, data, split: str) -> Optional[Tensor]:
    """The ``(M, N_max)`` masks of ``data``'s ``split`` (an :class:`~setflow.train.data.ExperimentData`) for
    sets of different sizes; all True for a variable-size model on equal-size data; else ``None``."""
    masks = data.split_mask(split)
    if masks is None and getattr(_bare(model), "variable_size", False):
        masks = torch.ones(data.split(split).shape[:2], dtype=torch.bool)
    return masks


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Tensor,
    unit: str,
    batch_size: int = 256,
    iwbo_k: int = 10,
    iwbo_chunk: Optional[int] = 10,
    device: str = "cpu",
    max_examples: Optional[int] = None,
    labels: Optional[Tensor] = None,
    masks: Optional[Tensor] = None,
) -> dict:
    """Average log-likelihood of ``data`` under ``model``.

    ``masks`` ``(N, N_max)`` bool: sets of different sizes, padded (see :mod:`setflow.sets`); the
    per-point figures are then total nats over total real points, and ``size_ll`` is the mean
    ``log p(N)`` per set of a model with a size density (part of ``ll``).

    Exact models use ``log_prob``; models with a stochastic forward layer use the
    importance-weighted bound with ``iwbo_k`` samples (``iwbo_chunk`` at a time) and also report
    the ELBO. ``labels`` ``(N,)`` are the contexts of a conditional model (the conditional
    likelihood ``log p(x | label)``). Under ``torch.distributed`` each rank evaluates its shard and the sums are reduced.

    Returns a dict with ``ll`` (mean nats per datum), ``metric`` (in ``unit``; for
    ``nats_per_point`` the PPLL, higher is better; for ``bits_per_dim`` lower is better),
    ``bits_per_point`` for sets, ``exact``, ``k`` and ``count``. For sets also ``set_metric``: the
    per-point log-likelihood of the unordered set, ``(ll + log N!) / N`` (the PPLL is per point
    of the ordered sequence, as the papers report it).
    """
    m = _bare(model)
    was_training = m.training
    m.eval()
    if masks is not None:
        return _evaluate_masked(m, was_training, data, masks, unit, batch_size, iwbo_k, iwbo_chunk, device,
                                max_examples, labels)
    if max_examples is not None:
        data = data[:max_examples]
        labels = None if labels is None else labels[:max_examples]
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)
    shard = data[rank::world]
    shard_labels = None if labels is None else labels[rank::world]
    exact = bool(getattr(m, "is_exact", True))
    dtype = next((p.dtype for p in m.parameters() if p.is_floating_point()), torch.float32)
    sums = torch.zeros(3, dtype=torch.float64)  # [sum ll (iwbo or exact), sum elbo, count]
    for i in range(0, shard.shape[0], batch_size):
        x = shard[i : i + batch_size].to(device)
        if x.is_floating_point():
            x = x.to(dtype)
        ctx = None if shard_labels is None else shard_labels[i : i + batch_size].to(device)
        elbo = m.log_prob(x, ctx)
        ll = elbo if exact else m.iwbo(x, k=iwbo_k, chunk=iwbo_chunk, context=ctx)
        sums += torch.stack([ll.double().sum().cpu(), elbo.double().sum().cpu(), torch.tensor(float(x.shape[0]))])
    if world > 1:
        dist.all_reduce(sums)
    m.train(was_training)
    count = sums[2].item()
    if count == 0:
        raise ValueError("no examples to evaluate")
    ll, elbo = sums[0].item() / count, sums[1].item() / count
    scale = loss_scale(unit, tuple(data.shape[1:]))
    sign = -1.0 if unit == "bits_per_dim" else 1.0
    out = {"ll": ll, "metric": sign * ll / scale, "elbo_metric": sign * elbo / scale, "exact": exact,
           "k": 1 if exact else iwbo_k, "count": int(count), "unit": unit}
    if unit == "nats_per_point":
        out["bits_per_point"] = -ll / scale / math.log(2.0)
        if getattr(_bare(model), "scores_sets", False):  # log_prob is already of the (multi)set
            out["of_set"] = True
        else:
            n = int(data.shape[1])  # the set convention drops the -log N! of ordering the points
            out["set_metric"] = (ll + math.lgamma(n + 1)) / scale
    return out


def _evaluate_masked(m: nn.Module, was_training: bool, data: Tensor, masks: Tensor, unit: str, batch_size: int,
                     iwbo_k: int, iwbo_chunk: Optional[int], device: str, max_examples: Optional[int],
                     labels: Optional[Tensor]) -> dict:
    """:func:`evaluate` for padded sets of different sizes (nats per real point)."""
    if unit != "nats_per_point":
        raise ValueError(f"masks are for point sets (unit nats_per_point), got unit {unit!r}")
    if max_examples is not None:
        data, masks = data[:max_examples], masks[:max_examples]
        labels = None if labels is None else labels[:max_examples]
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)
    shard, shard_masks = data[rank::world], masks[rank::world]
    shard_labels = None if labels is None else labels[rank::world]
    exact = bool(getattr(m, "is_exact", True))
    dtype = next((p.dtype for p in m.parameters() if p.is_floating_point()), torch.float32)
    size_dist = getattr(m, "size_dist", None)
    # [sum ll, sum elbo, sets, real points, sum log N_i!, sum log p(N_i)]
    sums = torch.zeros(6, dtype=torch.float64)
    for i in range(0, shard.shape[0], batch_size):
        x = shard[i : i + batch_size].to(device)
        mask = shard_masks[i : i + batch_size].to(device)
        if x.is_floating_point():
            x = x.to(dtype)
        ctx = None if shard_labels is None else shard_labels[i : i + batch_size].to(device)
        elbo = m.log_prob(x, ctx, mask)
        ll = elbo if exact else m.iwbo(x, k=iwbo_k, chunk=iwbo_chunk, context=ctx, mask=mask)
        sizes = mask.sum(1)
        size_ll = size_dist.log_prob(sizes).double().sum().cpu() if size_dist is not None else torch.tensor(0.0)
        sums += torch.stack([ll.double().sum().cpu(), elbo.double().sum().cpu(), torch.tensor(float(x.shape[0])),
                             sizes.double().sum().cpu(), torch.lgamma(sizes.double() + 1).sum().cpu(),
                             size_ll.to(torch.float64)])
    if world > 1:
        dist.all_reduce(sums)
    m.train(was_training)
    count, points = sums[2].item(), sums[3].item()
    if count == 0:
        raise ValueError("no examples to evaluate")
    sizes = masks.sum(1)
    out = {"ll": sums[0].item() / count, "metric": sums[0].item() / points, "elbo_metric": sums[1].item() / points,
           "exact": exact, "k": 1 if exact else iwbo_k, "count": int(count), "unit": unit,
           "bits_per_point": -sums[0].item() / points / math.log(2.0),
           "set_metric": (sums[0].item() + sums[4].item()) / points, "points": int(points),
           "sizes": (int(sizes.min()), int(sizes.max())), "mean_size": points / count}
    if size_dist is not None:
        out["size_ll"] = sums[5].item() / count
    return out


def format_metrics(res: dict, split: str = "test") -> str:
    unit = res["unit"]
    how = "exact" if res["exact"] else f"IWBO k={res['k']}"
    if unit == "nats_per_point":
        if res.get("of_set"):
            s = f"{split} set log-likelihood {res['metric']:.4f} nats/point [of the set: no ordering term]"
        else:
            s = f"{split} PPLL {res['metric']:.4f} nats/point [papers: ordered sequence, incl. -log N!/N]"
        if "set_metric" in res:
            s += f"; set {res['set_metric']:.4f} nats/point [without it]"
        s += f" ({res['bits_per_point']:.4f} bits/point, {how}"
    elif unit == "bits_per_dim":
        s = f"{split} {res['metric']:.4f} bits/dim ({how}"
    else:
        s = f"{split} log-likelihood {res['metric']:.4f} nats (NLL {-res['metric']:.4f}, {how}"
    if not res["exact"]:
        s += f"; ELBO {res['elbo_metric']:.4f}"
    if "sizes" in res:
        lo, hi = res["sizes"]
        s += f"; sets of {lo}..{hi} points, mean {res['mean_size']:.2f}, per real point"
        if "size_ll" in res:
            s += f"; incl. log p(N) {res['size_ll']:.4f} nats/set"
    return s + f", {res['count']} examples)"


@torch.no_grad()
def draw_samples(model: nn.Module, num: int, batch_size: int = 500, labels: Optional[Tensor] = None,
                 device: str = "cpu", num_points: Optional[int] = None):
    """``num`` samples from ``model`` in batches, on CPU; ``labels`` (num,) int64 conditions a conditional model;
    ``num_points`` points per set instead of the model's own (models that draw any size, e.g. a latent
    set flow's i.i.d. ``points`` decoder).

    A variable-size model gives ``(x, mask)``: the sets zero-padded to the largest drawn size.
    """
    m = _bare(model)
    was_training = m.training
    m.eval()
    out = []
    size = {} if num_points is None else {"num_points": int(num_points)}
    for i in range(0, num, batch_size):
        b = min(batch_size, num - i)
        if labels is None:
            out.append(m.sample(b, **size))
        else:
            out.append(m.sample(b, context=labels[i:i + b].to(device), **size))
    m.train(was_training)
    if not isinstance(out[0], tuple):
        return torch.cat([o.cpu() for o in out])
    from setflow.sets import pad_sets, unpad_sets

    sets = [s.cpu() for x, mask in out for s in unpad_sets(x, mask)]
    return pad_sets(sets)


def bbox_normalize(x: Tensor) -> Tensor:
    """Each set of ``x`` ``(B, N, D)`` in its own bounding box ``[-1, 1]``: the box centre at 0, its longest
    side 2 (DPM's ``shape_bbox``, as :func:`setflow.data.pointclouds.normalize_clouds` ``"bbox"``)."""
    from setflow.data.pointclouds import normalize_clouds

    return torch.as_tensor(normalize_clouds(x.detach().cpu().numpy(), "bbox")[0], dtype=x.dtype)


def _subset(x: Tensor, n: int, seed: int) -> Tensor:
    idx = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
    return idx.sort().values


def sample_quality(model: nn.Module, ref: Tensor, other: Tensor, num: int, seed: int = 0, batch_size: int = 500,
                   device: str = "cpu", progress: Optional[bool] = None, ref_labels: Optional[Tensor] = None,
                   other_labels: Optional[Tensor] = None, ref_masks: Optional[Tensor] = None,
                   other_masks: Optional[Tensor] = None, num_points: Optional[int] = None,
                   renormalize: Optional[str] = None, metrics: Optional[tuple] = None) -> dict:
    """Sample metrics (:func:`setflow.metrics.sample_metrics`) of ``model`` and of real sets.

    ``n = min(num, len(ref), len(other))`` reference sets are a seeded subset of ``ref``; the
    model draws ``n`` samples; the real-vs-real line compares ``n`` sets of ``other`` (another
    split) with the same reference sets. With ``ref_labels`` (conditional model) the samples
    carry the reference sets' labels and the metrics are also reported per class, against the
    ``other`` sets of the same class (``other_labels``).

    Sets of different sizes (``ref_masks`` / ``other_masks``, or a variable-size model) are compared
    under the Chamfer distance only (:func:`setflow.metrics.ragged.ragged_sample_metrics`: EMD between
    sets of unequal sizes is not the papers' EMD), without the per-class lines.

    ``num_points``: the model draws sets of that size (see :func:`draw_samples`). ``renormalize="bbox"``:
    DPM's protocol: every set (samples, references, real sets) is put in its own bounding box
    ``[-1, 1]`` (centre 0, longest side 2) before the distances, so only shape counts, not size or place.
    ``metrics``: the distances (default ``("cd", "emd")``; ``("cd",)`` skips the exact EMD, which
    dominates the cost at thousands of points).

    Returns ``{"num", "model": metrics, "real": metrics, "per_class": {label: {"model", "real"}}}``.
    """
    from setflow.metrics import sample_metrics

    if renormalize not in (None, "none", "bbox"):
        raise ValueError(f"renormalize must be 'none' or 'bbox', got {renormalize!r}")
    n = min(num, ref.shape[0], other.shape[0])
    ir, io = _subset(ref, n, seed), _subset(other, n, seed + 1)
    r, o = ref[ir], other[io]
    labels = None if ref_labels is None else ref_labels[ir]
    torch.manual_seed(seed)
    gen = draw_samples(model, n, batch_size, labels=labels, device=device, num_points=num_points)
    if renormalize == "bbox":
        if isinstance(gen, tuple) or ref_masks is not None or other_masks is not None:
            raise ValueError("renormalize='bbox' needs sets of one size (no masks)")
        gen, r, o = (bbox_normalize(t) for t in (gen, r, o))
    if isinstance(gen, tuple) or ref_masks is not None:
        from setflow.metrics.ragged import ragged_sample_metrics

        gen, gen_mask = gen if isinstance(gen, tuple) else (gen, None)
        rm = None if ref_masks is None else ref_masks[ir]
        om = None if other_masks is None else other_masks[io]
        return {"num": n, "model": ragged_sample_metrics(gen.to(r.dtype), gen_mask, r, rm, progress=progress),
                "real": ragged_sample_metrics(o, om, r, rm, progress=progress)}
    gen = gen.to(r.dtype)
    which = {} if metrics is None else {"metrics": tuple(metrics)}
    out = {"num": n, "model": sample_metrics(gen, r, progress=progress, **which),
           "real": sample_metrics(o, r, progress=progress, **which)}
    if labels is not None:
        if other_labels is None:
            raise ValueError("per-class metrics need other_labels beside ref_labels")
        ol = other_labels[io]
        out["per_class"] = {}
        for c in labels.unique().tolist():
            sel, osel = labels == c, ol == c
            if int(sel.sum()) < 2 or int(osel.sum()) < 2:
                continue
            out["per_class"][int(c)] = {"model": sample_metrics(gen[sel], r[sel], progress=False, **which),
                                        "real": sample_metrics(o[osel], r[sel], progress=False, **which)}
    return out


def format_sample_quality(res: dict, split: str = "test", other: str = "train") -> str:
    """Lines: the model's samples vs ``split`` and the real-vs-real reference (``other`` vs ``split``)."""
    from setflow.metrics import format_sample_metrics

    lines = [format_sample_metrics(res["model"], f"{split} samples vs {split}"),
             format_sample_metrics(res["real"], f"{split} reference: real {other} sets vs {split}")]
    if res.get("per_class"):
        lines.append("per class (CD 1-NNA / COV, EMD 1-NNA / COV): samples vs real " + other)

    def short(m: dict) -> str:
        return ", ".join(f"{100 * m[d]['1nna']:.0f}% / {100 * m[d]['cov']:.0f}%" for d in ("cd", "emd") if d in m)

    for c, v in res.get("per_class", {}).items():
        lines.append(f"  class {c} ({v['model']['num_ref']} sets): {short(v['model'])}   real: {short(v['real'])}")
    return "\n".join(lines)
