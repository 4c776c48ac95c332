"""Evaluation: average log-likelihood in the data set's unit (nats/point, bits/dim, nats), exact or IWBO."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn

from setflow.sets import SetBatch, as_set_batch

__all__ = ["evaluate", "format_metrics", "loss_scale", "draw_samples", "sample_quality", "format_sample_quality",
           "split_sets", "bbox_normalize"]


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


def split_sets(data, split: str):
    """What the evaluator scores of ``data``'s ``split`` (an :class:`~setflow.data.experiments.ExperimentData`): a
    :class:`~setflow.sets.SetBatch` for point sets (padded with its mask for sets of different sizes; with
    the class labels where the data has them), the tensor otherwise (images, 2-D toy points, pixel sets)."""
    return data.sets(split) if data.kind in ("sets", "pointclouds") else data.split(split)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Tensor | SetBatch,
    unit: str,
    batch_size: int = 256,
    iwbo_k: int = 10,
    iwbo_chunk: Optional[int] = 10,
    device: str = "cpu",
    max_examples: Optional[int] = None,
    labels: Optional[Tensor] = None,
) -> dict:
    """Average log-likelihood of ``data`` under ``model``.

    ``data`` is a :class:`~setflow.sets.SetBatch` of sets (its labels are the contexts of a
    class-conditional model; a PyG ``Batch`` is turned into one) or a tensor (images, 2-D points, sets of one size; ``labels`` ``(N,)``
    are then the contexts of a conditional model). For sets of different sizes (a padded ``SetBatch``,
    or any ``SetBatch`` under a model with a size density) the per-point figures are total nats over
    total real points, and ``size_ll`` is the mean ``log p(N)`` per set of a model with a size
    density (part of ``ll``).

    Exact models use ``log_prob``; models with a stochastic forward layer use the
    importance-weighted bound with ``iwbo_k`` samples (``iwbo_chunk`` at a time) and also report
    the ELBO. Under ``torch.distributed`` each rank evaluates its shard and the sums are reduced.

    Returns a dict with ``ll`` (mean nats per datum), ``metric`` (in ``unit``; for
    ``nats_per_point`` the PPLL, higher is better; for ``bits_per_dim`` lower is better),
    ``bits_per_point`` for sets, ``exact``, ``k`` and ``count``. For sets also ``set_metric``: the
    per-point log-likelihood of the unordered set, ``(ll + log N!) / N`` (the PPLL is per point
    of the ordered sequence, as the papers report it); for sets of different sizes also ``points``,
    ``sizes`` (smallest, largest) and ``mean_size``.
    """
    if not isinstance(data, (Tensor, SetBatch)):  # a PyG Batch of sets (or an array)
        data = as_set_batch(data)
    m = _bare(model)
    was_training = m.training
    m.eval()
    if isinstance(data, SetBatch) and labels is not None:
        data = data.with_labels(labels)
        labels = None
    if max_examples is not None:
        data = data[:max_examples]
        labels = None if labels is None else labels[:max_examples]
    size_dist = getattr(m, "size_dist", None)
    # per real point: sets of different sizes, or a model that scores the size too
    ragged = isinstance(data, SetBatch) and (not data.is_fixed or size_dist is not None)
    if ragged and unit != "nats_per_point":
        raise ValueError(f"sets of different sizes are point sets (unit nats_per_point), got unit {unit!r}")
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)
    shard = data[rank::world]
    shard_labels = None if labels is None else labels[rank::world]
    exact = bool(getattr(m, "is_exact", True))
    dtype = next((p.dtype for p in m.parameters() if p.is_floating_point()), torch.float32)
    # [sum ll (iwbo or exact), sum elbo, sets, real points, sum log N_i!, sum log p(N_i)]
    sums = torch.zeros(6, dtype=torch.float64)
    for i in range(0, len(shard), batch_size):
        x = shard[i : i + batch_size].to(device)
        if x.dtype.is_floating_point:
            x = x.to(dtype)
        ctx = None if shard_labels is None else shard_labels[i : i + batch_size].to(device)
        elbo = m.log_prob(x, ctx)
        ll = elbo if exact else m.iwbo(x, k=iwbo_k, chunk=iwbo_chunk, context=ctx)
        row = [ll.double().sum().cpu(), elbo.double().sum().cpu(), torch.tensor(float(len(x)))]
        if ragged:
            sizes = x.sizes
            size_ll = size_dist.log_prob(sizes).double().sum().cpu() if size_dist is not None else torch.tensor(0.0)
            row += [sizes.double().sum().cpu(), torch.lgamma(sizes.double() + 1).sum().cpu(), size_ll.double()]
        else:
            row += [torch.tensor(0.0, dtype=torch.float64)] * 3
        sums += torch.stack(row)
    if world > 1:
        dist.all_reduce(sums)
    m.train(was_training)
    count, points = sums[2].item(), sums[3].item()
    if count == 0:
        raise ValueError("no examples to evaluate")
    ll, elbo = sums[0].item() / count, sums[1].item() / count
    if ragged:
        out = {"ll": ll, "metric": sums[0].item() / points, "elbo_metric": sums[1].item() / points, "exact": exact,
               "k": 1 if exact else iwbo_k, "count": int(count), "unit": unit,
               "bits_per_point": -sums[0].item() / points / math.log(2.0),
               "set_metric": (sums[0].item() + sums[4].item()) / points, "points": int(points),
               "sizes": (int(data.sizes.min()), int(data.sizes.max())), "mean_size": points / count}
        if size_dist is not None:
            out["size_ll"] = sums[5].item() / count
        return out
    scale = loss_scale(unit, tuple(data.shape[1:]))
    sign = -1.0 if unit == "bits_per_dim" else 1.0
    out = {"ll": ll, "metric": sign * ll / scale, "elbo_metric": sign * elbo / scale, "exact": exact,
           "k": 1 if exact else iwbo_k, "count": int(count), "unit": unit}
    if unit == "nats_per_point":
        out["bits_per_point"] = -ll / scale / math.log(2.0)
        if getattr(m, "scores_sets", False):  # log_prob is already of the (multi)set
            out["of_set"] = True
        else:
            n = int(data.shape[1])  # the set convention drops the -log N! of ordering the points
            out["set_metric"] = (ll + math.lgamma(n + 1)) / scale
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

    What the model's ``sample`` returns, joined: a :class:`~setflow.sets.SetBatch` for a set model (sets
    of different sizes padded to the largest drawn), the tensor for image and 2-D models.
    """
    m = _bare(model)
    was_training = m.training
    m.eval()
    out = []
    size = {} if num_points is None else {"num_points": int(num_points)}
    for i in range(0, num, batch_size):
        b = min(batch_size, num - i)
        if labels is None:
            out.append(m.sample(b, **size).cpu())
        else:
            out.append(m.sample(b, context=labels[i:i + b].to(device), **size).cpu())
    m.train(was_training)
    return SetBatch.cat(out) if isinstance(out[0], SetBatch) else torch.cat(out)


def bbox_normalize(x: Tensor) -> Tensor:
    """Each set of ``x`` ``(B, N, D)`` in its own bounding box ``[-1, 1]``: the box centre at 0, its longest
    side 2 (DPM's ``shape_bbox``, as :func:`setflow.data.pointclouds.normalize_clouds` ``"bbox"``)."""
    from setflow.data.pointclouds import normalize_clouds

    return torch.as_tensor(normalize_clouds(x.detach().cpu().numpy(), "bbox")[0], dtype=x.dtype)


def _subset(x: Tensor | SetBatch, n: int, seed: int) -> Tensor:
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]
    return idx.sort().values


def sample_quality(model: nn.Module, ref: SetBatch, other: SetBatch, num: int, seed: int = 0, batch_size: int = 500,
                   device: str = "cpu", progress: Optional[bool] = None, num_points: Optional[int] = None,
                   renormalize: Optional[str] = None, metrics: Optional[tuple] = None) -> dict:
    """Sample metrics (:func:`setflow.metrics.sample_metrics`) of ``model`` and of real sets.

    ``ref`` and ``other`` are :class:`~setflow.sets.SetBatch` values (or tensors of sets of one size) of
    two splits. ``n = min(num, len(ref), len(other))`` reference sets are a seeded subset of ``ref``;
    the model draws ``n`` samples; the real-vs-real line compares ``n`` sets of ``other`` with the same
    reference sets. For a class-conditional model the samples carry the reference sets' labels and the
    metrics are also reported per class, against the ``other`` sets of the same class.

    Sets of different sizes (padded batches, or a variable-size model) are compared under the Chamfer
    distance only (EMD between sets of unequal sizes is not the papers' EMD), without the per-class lines.

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
    ref, other = as_set_batch(ref), as_set_batch(other)
    n = min(num, len(ref), len(other))
    r, o = ref[_subset(ref, n, seed)], other[_subset(other, n, seed + 1)]
    conditional = getattr(_bare(model), "conditional", False)
    labels = r.labels if conditional else None
    if conditional and labels is None:
        raise ValueError("the samples of a conditional model need the reference sets' labels (SetBatch labels)")
    torch.manual_seed(seed)
    gen = draw_samples(model, n, batch_size, labels=labels, device=device, num_points=num_points).to(r.dtype)
    ragged = not (gen.is_fixed and r.is_fixed and o.is_fixed)
    if renormalize == "bbox":
        if ragged:
            raise ValueError("renormalize='bbox' needs sets of one size (no padding)")
        gen, r, o = (SetBatch(bbox_normalize(t.points), labels=t.labels) for t in (gen, r, o))
    # EMD of padded sets is refused by the metric itself, in one line
    metrics = (("cd",) if ragged else ("cd", "emd")) if metrics is None else tuple(metrics)
    out = {"num": n, "model": sample_metrics(gen, r, progress=progress, metrics=metrics),
           "real": sample_metrics(o, r, progress=progress, metrics=metrics)}
    if labels is not None and not ragged:
        if o.labels is None:
            raise ValueError("per-class metrics need the labels of the other split's sets too")
        out["per_class"] = {}
        for c in labels.unique().tolist():
            sel, osel = labels == c, o.labels == c
            if int(sel.sum()) < 2 or int(osel.sum()) < 2:
                continue
            out["per_class"][int(c)] = {"model": sample_metrics(gen[sel], r[sel], progress=False, metrics=metrics),
                                        "real": sample_metrics(o[osel], r[sel], progress=False, metrics=metrics)}
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
