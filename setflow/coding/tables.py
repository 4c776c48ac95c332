r"""Entropy coding of integer latents with ``constriction``'s ANS coder.

Every latent dimension ``i`` has a (mixture of) discretized logistic(s) with float64
parameters. Its categorical row covers a window ``[lo_i, lo_i + n_i)`` of integers; column 0
is an *escape* symbol carrying the mass outside the window::

    probs[i, 0]     = P(z < lo_i) + P(z >= lo_i + n_i)          (escape)
    probs[i, 1 + j] = P(z = lo_i + j)        for j < n_i          (window)
    probs[i, 1 + j] = 0                      for n_i <= j < M     (padding to the widest row)

The window spans ``loc_k +- tail * s_k`` of every component with non-negligible weight,
capped at ``max_bins`` symbols around the heaviest component. An escaped value is sent as
``v = zigzag(z - lo_i)`` (``0, -1, 1, -2, ... -> 0, 1, 2, 3, ...``) in an Elias-gamma style:
its bit length ``nb`` with a uniform model over ``0..32``, then its ``nb - 1`` low bits in
chunks of at most 16 bits, each with a uniform model.

All rows of a group go to the coder in one batched call
(``Categorical(perfect=False)`` with a 2-D probability array), so there is no Python loop
per symbol. Decoding order inside a group: window symbols, then the escape bit lengths, then
the escape bits; the ANS coder is a stack, so the encoder pushes them in the opposite order.

The tables are pure functions of the float64 parameters computed with elementwise torch ops
(and exact ``min``/``max``), so encoder and decoder build bit-identical tables as long as they
run the same code path (see :mod:`setflow.coding.codec`: CPU, float64, one thread).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import constriction
import numpy as np
import torch
from torch import Tensor

from setflow.distributions import (
    MIN_LOG_SCALE,
    discretized_logistic_mixture_cdf,
    discretized_logistic_mixture_log_prob,
)
from setflow.coding.format import CorruptFileError

__all__ = ["TableSpec", "Table", "make_table", "encode_group", "decode_group", "log2_prob"]

_NB_SIZE = 33  # bit lengths 0..32 of a zigzagged 32-bit offset
_CHUNK = 16
_MAX_OFFSET = 2**31 - 1


@dataclass(frozen=True)
class TableSpec:
    """Codec settings that change the bitstream (they are part of the file's model fingerprint).

    Args:
        tail: half-width of the window in units of each component's logistic scale
            (25 leaves a tail mass of about ``2 e^-25 ~ 3e-11`` per component).
        max_bins: widest window in symbols; mass beyond it goes through the escape.
        min_weight: mixture components lighter than this do not widen the window.
    """

    tail: float = 25.0
    max_bins: int = 1024
    min_weight: float = 1e-9

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Table:
    """The categorical rows of one latent group (``N`` dimensions)."""

    lo: np.ndarray  # (N,) int64 first integer of each window
    width: np.ndarray  # (N,) int64 window sizes n_i
    probs: np.ndarray  # (N, 1 + M) float64, column 0 = escape


def _weights(logits: Tensor) -> Tensor:
    """Softmax over the last dim with elementwise float64 ops (thread-count independent)."""
    m = logits.max(dim=-1, keepdim=True).values
    e = torch.exp(logits - m)
    total = e[..., 0]
    for k in range(1, e.shape[-1]):
        total = total + e[..., k]
    return e / total.unsqueeze(-1)


def _flat(params: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """``(1, *shape, K)`` parameters -> ``(N, K)`` float64 (one image at a time)."""
    logits, locs, log_scales = params
    if locs.shape[0] != 1:
        raise ValueError("tables are built for one image at a time (batch dimension 1)")
    k = locs.shape[-1]
    logits = logits.expand_as(locs)
    return tuple(t.detach().to("cpu", torch.float64).reshape(-1, k) for t in (logits, locs, log_scales))


def make_table(params: tuple[Tensor, Tensor, Tensor], spec: TableSpec) -> Table:
    """Build the escape + window rows for a group from its ``(logits, locs, log_scales)``."""
    logits, locs, log_scales = _flat(params)
    w = _weights(logits)
    s = torch.exp(log_scales.clamp(min=MIN_LOG_SCALE))
    live = w > spec.min_weight
    inf = torch.tensor(math.inf, dtype=torch.float64)
    left = torch.where(live, locs - spec.tail * s, inf).min(dim=-1).values
    right = torch.where(live, locs + spec.tail * s, -inf).max(dim=-1).values
    bound = float(2**40)
    lo = torch.floor(left.clamp(-bound, bound))
    hi = torch.ceil(right.clamp(-bound, bound))
    width = (hi - lo + 1).clamp(min=1)
    # too wide: centre a max_bins window on the heaviest component (argmax picks the first of ties)
    heavy = torch.gather(locs, 1, torch.argmax(w, dim=-1, keepdim=True)).squeeze(1).clamp(-bound, bound)
    wide = width > spec.max_bins
    lo = torch.where(wide, torch.round(heavy) - spec.max_bins // 2, lo)
    width = torch.where(wide, torch.full_like(width, spec.max_bins), width)
    lo_i = lo.to(torch.int64)
    width_i = width.to(torch.int64)
    m = int(width_i.max())
    # CDF at the M + 1 bin edges below, inside and above each window: pmf = differences,
    # escape = mass below lo + mass above lo + width - 1 (one sigmoid per edge and component)
    edges = lo_i.unsqueeze(1) - 1 + torch.arange(m + 1, dtype=torch.int64).unsqueeze(0)  # (N, M+1)
    cdf = discretized_logistic_mixture_cdf(edges, logits.unsqueeze(1), locs.unsqueeze(1), log_scales.unsqueeze(1))
    pmf = (cdf[:, 1:] - cdf[:, :-1]).clamp(min=0.0)
    pmf = torch.where(torch.arange(m).unsqueeze(0) < width_i.unsqueeze(1), pmf, torch.zeros((), dtype=torch.float64))
    above = 1.0 - torch.gather(cdf, 1, width_i.unsqueeze(1)).squeeze(1)
    escape = (cdf[:, 0] + above).clamp(min=0.0)
    probs = torch.cat([escape.unsqueeze(1), pmf], dim=1)
    return Table(lo_i.numpy(), width_i.numpy(), np.ascontiguousarray(probs.numpy()))


def log2_prob(z: Tensor, params: tuple[Tensor, Tensor, Tensor]) -> float:
    """Analytic ``log2 P(z)`` of a whole group (one image) under its float64 parameters."""
    logits, locs, log_scales = _flat(params)
    zf = z.detach().to("cpu", torch.float64).reshape(-1)
    lp = discretized_logistic_mixture_log_prob(zf, logits, locs, log_scales)
    return float(lp.sum()) / math.log(2.0)


def _zigzag(d: np.ndarray) -> np.ndarray:
    return np.where(d >= 0, 2 * d, -2 * d - 1).astype(np.int64)


def _unzigzag(v: np.ndarray) -> np.ndarray:
    return np.where(v % 2 == 0, v // 2, -(v + 1) // 2).astype(np.int64)


def _bit_lengths(v: np.ndarray) -> np.ndarray:
    nb = np.zeros(v.shape, dtype=np.int64)
    rest = v.copy()
    while np.any(rest > 0):
        live = rest > 0
        nb[live] += 1
        rest[live] >>= 1
    return nb


def _chunk_sizes(nb: np.ndarray) -> list[np.ndarray]:
    """Per escape, the bit counts of its chunks (low bits first) for ``nb - 1`` payload bits."""
    return [np.array([min(_CHUNK, r - j) for j in range(0, r, _CHUNK)], dtype=np.int64) for r in np.maximum(nb - 1, 0)]


def encode_group(coder, z: np.ndarray, table: Table) -> None:
    """Push one group's integers (``(N,)`` int64) so that :func:`decode_group` pops them in order."""
    z = np.asarray(z, dtype=np.int64).reshape(-1)
    if z.shape[0] != table.lo.shape[0]:
        raise ValueError(f"group has {z.shape[0]} values but the table {table.lo.shape[0]} rows")
    off = z - table.lo
    inside = (off >= 0) & (off < table.width)
    sym = np.where(inside, off + 1, 0).astype(np.int32)
    esc = np.flatnonzero(~inside)
    if esc.size:
        d = off[esc]
        if np.any(np.abs(d) > _MAX_OFFSET):
            raise ValueError("a latent value is out of the codable range (|z| > 2^31); is the input an 8-bit image?")
        v = _zigzag(d)
        nb = _bit_lengths(v)
        chunks, sizes = [], []
        for val, bits in zip(v, _chunk_sizes(nb)):
            shift = 0
            for b in bits:
                chunks.append((int(val) >> shift) & ((1 << int(b)) - 1))
                sizes.append(1 << int(b))
                shift += int(b)
        if chunks:
            coder.encode_reverse(np.array(chunks, dtype=np.int32), constriction.stream.model.Uniform(),
                                 np.array(sizes, dtype=np.int32))
        coder.encode_reverse(nb.astype(np.int32), constriction.stream.model.Uniform(),
                             np.full(esc.size, _NB_SIZE, dtype=np.int32))
    coder.encode_reverse(sym, constriction.stream.model.Categorical(perfect=False), table.probs)


def decode_group(coder, table: Table) -> np.ndarray:
    """Pop one group's integers (``(N,)`` int64) pushed by :func:`encode_group` with the same table."""
    try:
        sym = np.asarray(coder.decode(constriction.stream.model.Categorical(perfect=False), table.probs), dtype=np.int64)
        z = table.lo + sym - 1
        esc = np.flatnonzero(sym == 0)
        if esc.size:
            nb = np.asarray(coder.decode(constriction.stream.model.Uniform(), np.full(esc.size, _NB_SIZE, dtype=np.int32)),
                            dtype=np.int64)
            bits = _chunk_sizes(nb)
            sizes = np.concatenate([b for b in bits] + [np.zeros(0, dtype=np.int64)])
            chunks = np.zeros(0, dtype=np.int64)
            if sizes.size:
                chunks = np.asarray(coder.decode(constriction.stream.model.Uniform(), (1 << sizes).astype(np.int32)),
                                    dtype=np.int64)
            v = np.zeros(esc.size, dtype=np.int64)
            pos = 0
            for i, b in enumerate(bits):
                shift = 0
                for nbits in b:
                    v[i] |= int(chunks[pos]) << shift
                    shift += int(nbits)
                    pos += 1
                if nb[i] >= 1:
                    v[i] |= 1 << int(nb[i] - 1)  # the implicit leading one
            z[esc] = table.lo[esc] + _unzigzag(v)
    except (ValueError, RuntimeError, AssertionError) as e:  # constriction on a damaged stream
        raise CorruptFileError(f"the compressed stream is damaged ({e})") from e
    return z
