"""Evaluation: average log-likelihood in the data set's unit (nats/point, bits/dim, nats), exact or IWBO."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["evaluate", "format_metrics", "loss_scale"]


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
) -> dict:
    """Average log-likelihood of ``data`` under ``model``.

    Exact models use ``log_prob``; models with a stochastic forward layer use the
    importance-weighted bound with ``iwbo_k`` samples (``iwbo_chunk`` at a time) and also report
    the ELBO. Under ``torch.distributed`` each rank evaluates its shard and the sums are reduced.

    Returns a dict with ``ll`` (mean nats per datum), ``metric`` (in ``unit``; for
    ``nats_per_point`` the PPLL, higher is better; for ``bits_per_dim`` lower is better),
    ``bits_per_point`` for sets, ``exact``, ``k`` and ``count``.
    """
    m = _bare(model)
    was_training = m.training
    m.eval()
    if max_examples is not None:
        data = data[:max_examples]
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)
    shard = data[rank::world]
    exact = bool(getattr(m, "is_exact", True))
    dtype = next((p.dtype for p in m.parameters() if p.is_floating_point()), torch.float32)
    sums = torch.zeros(3, dtype=torch.float64)  # [sum ll (iwbo or exact), sum elbo, count]
    for i in range(0, shard.shape[0], batch_size):
        x = shard[i : i + batch_size].to(device)
        if x.is_floating_point():
            x = x.to(dtype)
        elbo = m.log_prob(x)
        ll = elbo if exact else m.iwbo(x, k=iwbo_k, chunk=iwbo_chunk)
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
    return out


def format_metrics(res: dict, split: str = "test") -> str:
    unit = res["unit"]
    how = "exact" if res["exact"] else f"IWBO k={res['k']}"
    if unit == "nats_per_point":
        s = f"{split} PPLL {res['metric']:.4f} nats/point ({res['bits_per_point']:.4f} bits/point, {how}"
    elif unit == "bits_per_dim":
        s = f"{split} {res['metric']:.4f} bits/dim ({how}"
    else:
        s = f"{split} log-likelihood {res['metric']:.4f} nats (NLL {-res['metric']:.4f}, {how}"
    if not res["exact"]:
        s += f"; ELBO {res['elbo_metric']:.4f}"
    return s + f", {res['count']} examples)"
