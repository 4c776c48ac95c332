r"""Entropy coding of integer latents with ``constriction``'s ANS coder.

Every latent dimension ``i`` has a (mixture of) discretized logistic(s) with float64
parameters. Its categorical row covers a window ``[lo_i, lo_i + n_i)`` of integers; column 0
is an *escape* symbol carrying the mass outside the window::

    probs[i, 0]     = P(z < lo_i) + P(z >= lo_i + n_i)          (escape)
    probs[i, 1 + j] = P(z = lo_i + j)        for j < n_i          (window)
    probs[i, 1 + j] = 0                      for n_i <= j < M     (padding to the widest row)

The window spans ``loc_k +- t_k s_k`` of every component, ``t_k`` chosen from its weight so
that it leaves at most ``tail_mass`` outside, capped at ``max_bins`` symbols around the
heaviest component. An escaped value is sent as
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

from setflow.distributions import MIN_LOG_SCALE, discretized_logistic_mixture_log_prob, logistic_cdf
from setflow.coding.format import CorruptFileError

__all__ = ["TableSpec", "Table", "make_table", "encode_group", "decode_group", "log2_prob", "open_decoder",
           "require_data"]

_NB_SIZE = 33  # bit lengths 0..32 of a zigzagged 32-bit offset
_CHUNK = 16
_MAX_OFFSET = 2**31 - 1


@dataclass(frozen=True)
class TableSpec:
    """Codec settings that change the bitstream (they are part of the file's model fingerprint).

    Args:
        tail_mass: each mixture component may leave at most this much probability outside the
            window (a component of weight ``w`` spans ``loc +- log(2 w / tail_mass) * scale``;
            components lighter than ``tail_mass / 2`` do not widen it). The escape then carries
            at most K * tail_mass per symbol: ~1e-4 extra bits per symbol at 1e-6.
        max_bins: widest window in symbols; mass beyond it goes through the escape.
        block_rows: dimensions per coded block (sorted by window width).
    """

    tail_mass: float = 1e-6
    max_bins: int = 1024
    block_rows: int = 64

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Table:
    """The categorical rows of one latent group (``N`` dimensions).

    Rows are coded in blocks of similar window width (dimensions sorted by width, stable), so a
    few wide rows do not pad every row: block ``b`` covers dimensions ``blocks[b][0]`` with a
    ``(R, 1 + M_b)`` probability array ``blocks[b][1]``.
    """

    lo: np.ndarray  # (N,) int64 first integer of each window
    width: np.ndarray  # (N,) int64 window sizes n_i
    blocks: list  # [(idx (R,) int64, probs (R, 1 + M_b) float64, column 0 = escape)]


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


def _windows(w: Tensor, locs: Tensor, log_scales: Tensor, spec: TableSpec) -> tuple[Tensor, Tensor]:
    """``(lo, width)`` int64 per row: component ``k`` contributes ``loc_k +- t_k s_k`` with
    ``t_k = log(2 w_k / tail_mass)``, so its mass outside is ``w_k 2 e^{-t_k} <= tail_mass``."""
    s = torch.exp(log_scales.clamp(min=MIN_LOG_SCALE))
    live = w > 0.5 * spec.tail_mass
    t = torch.log((2.0 * w / spec.tail_mass).clamp(min=1.0))
    inf = torch.tensor(math.inf, dtype=torch.float64)
    bound = float(2**40)
    left = torch.where(live, locs - t * s, inf).min(dim=-1).values.clamp(-bound, bound)
    right = torch.where(live, locs + t * s, -inf).max(dim=-1).values.clamp(-bound, bound)
    lo = torch.floor(left)
    width = (torch.ceil(right) - lo + 1).clamp(min=1)
    # too wide: centre a max_bins window on the heaviest component (argmax picks the first of ties)
    heavy = torch.gather(locs, 1, torch.argmax(w, dim=-1, keepdim=True)).squeeze(1).clamp(-bound, bound)
    wide = width > spec.max_bins
    lo = torch.where(wide, torch.round(heavy) - spec.max_bins // 2, lo)
    width = torch.where(wide, torch.full_like(width, spec.max_bins), width)
    return lo.to(torch.int64), width.to(torch.int64)


def _block_probs(lo: Tensor, width: Tensor, w: Tensor, locs: Tensor, log_scales: Tensor) -> Tensor:
    """``(R, 1 + M)`` rows [escape, P(lo), ..., P(lo + width - 1), 0 padding] for one block."""
    m = int(width.max())
    # CDF at the M + 1 edges lo-1, ..., lo+M-1: P(z <= e) = sum_k w_k sigma((e + 1/2 - loc_k) / s_k)
    # (discretized_logistic_mixture_cdf, with the mixture weights computed once per row)
    upper = (lo.unsqueeze(1) - 1 + torch.arange(m + 1, dtype=torch.int64)).to(torch.float64) + 0.5
    cdf = None
    for k in range(w.shape[1]):
        term = w[:, k : k + 1] * logistic_cdf(upper, locs[:, k : k + 1], log_scales[:, k : k + 1])
        cdf = term if cdf is None else cdf + term
    pmf = (cdf[:, 1:] - cdf[:, :-1]).clamp(min=0.0)
    pmf = torch.where(torch.arange(m).unsqueeze(0) < width.unsqueeze(1), pmf, torch.zeros((), dtype=torch.float64))
    above = 1.0 - torch.gather(cdf, 1, width.unsqueeze(1)).squeeze(1)
    escape = (cdf[:, 0] + above).clamp(min=0.0)  # mass below lo + mass above lo + width - 1
    return torch.cat([escape.unsqueeze(1), pmf], dim=1)


def make_table(params: tuple[Tensor, Tensor, Tensor], spec: TableSpec) -> Table:
    """Build the escape + window rows for a group from its ``(logits, locs, log_scales)``."""
    logits, locs, log_scales = _flat(params)
    w = _weights(logits)
    lo, width = _windows(w, locs, log_scales, spec)
    order = torch.from_numpy(np.argsort(width.numpy(), kind="stable"))
    blocks = []
    for start in range(0, order.shape[0], spec.block_rows):
        idx = order[start : start + spec.block_rows]
        probs = _block_probs(lo[idx], width[idx], w[idx], locs[idx], log_scales[idx])
        blocks.append((idx.numpy(), probs.numpy()))
    return Table(lo.numpy(), width.numpy(), blocks)


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


def _escape_bits(d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(nb, chunks, chunk sizes)`` of escaped offsets ``d`` in decoding order."""
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
    return nb, np.array(chunks, dtype=np.int32), np.array(sizes, dtype=np.int32)


def encode_group(coder, z: np.ndarray, table: Table) -> None:
    """Push one group's integers (``(N,)`` int64) so that :func:`decode_group` pops them in order.

    Decoding order: block 0 (its window symbols, then its escapes' bit lengths, then their bits),
    block 1, ...; the stack gets them in reverse.
    """
    z = np.asarray(z, dtype=np.int64).reshape(-1)
    if z.shape[0] != table.lo.shape[0]:
        raise ValueError(f"group has {z.shape[0]} values but the table {table.lo.shape[0]} rows")
    off = z - table.lo
    inside = (off >= 0) & (off < table.width)
    sym = np.where(inside, off + 1, 0).astype(np.int32)
    for idx, probs in reversed(table.blocks):
        esc = idx[~inside[idx]]
        if esc.size:
            nb, chunks, sizes = _escape_bits(off[esc])
            if chunks.size:
                coder.encode_reverse(chunks, constriction.stream.model.Uniform(), sizes)
            coder.encode_reverse(nb.astype(np.int32), constriction.stream.model.Uniform(),
                                 np.full(esc.size, _NB_SIZE, dtype=np.int32))
        coder.encode_reverse(sym[idx], constriction.stream.model.Categorical(perfect=False), probs)


def open_decoder(words: np.ndarray):
    """An ANS decoder over a payload of ``uint32`` words; :class:`CorruptFileError` if it is malformed."""
    try:
        return constriction.stream.stack.AnsCoder(np.ascontiguousarray(words, dtype=np.uint32))
    except Exception as e:  # e.g. a zero last word
        raise CorruptFileError(f"the compressed stream is damaged ({e})") from e


def require_data(coder, what: str = "symbols") -> None:
    """Raise :class:`CorruptFileError` if the coder is empty while ``what`` remain to be decoded.

    (``constriction``'s ``AnsCoder`` pops from an empty stack without raising: every decoder
    calls this before each batch of symbols.)
    """
    if coder.is_empty():
        raise CorruptFileError(f"the compressed stream ran out while {what} remained to be decoded")


def _decode_escapes(coder, count: int) -> np.ndarray:
    require_data(coder, "escaped values")
    nb = np.asarray(coder.decode(constriction.stream.model.Uniform(), np.full(count, _NB_SIZE, dtype=np.int32)),
                    dtype=np.int64)
    bits = _chunk_sizes(nb)
    sizes = np.concatenate(bits + [np.zeros(0, dtype=np.int64)])
    chunks = np.zeros(0, dtype=np.int64)
    if sizes.size:  # (no emptiness check here: zero-valued last chunks cost no bits, the stack may be empty)
        chunks = np.asarray(coder.decode(constriction.stream.model.Uniform(), (1 << sizes).astype(np.int32)),
                            dtype=np.int64)
    v = np.zeros(count, dtype=np.int64)
    pos = 0
    for i, b in enumerate(bits):
        shift = 0
        for nbits in b:
            v[i] |= int(chunks[pos]) << shift
            shift += int(nbits)
            pos += 1
        if nb[i] >= 1:
            v[i] |= 1 << int(nb[i] - 1)  # the implicit leading one
    return _unzigzag(v)


def decode_group(coder, table: Table) -> np.ndarray:
    """Pop one group's integers (``(N,)`` int64) pushed by :func:`encode_group` with the same table."""
    z = np.zeros(table.lo.shape[0], dtype=np.int64)
    try:
        for idx, probs in table.blocks:
            require_data(coder, "latent values")
            sym = np.asarray(coder.decode(constriction.stream.model.Categorical(perfect=False), probs), dtype=np.int64)
            z[idx] = table.lo[idx] + sym - 1
            esc = idx[sym == 0]
            if esc.size:
                off = _decode_escapes(coder, esc.size)
                if np.any((off >= 0) & (off < table.width[esc])):  # the encoder never escapes those
                    raise CorruptFileError("the compressed stream is damaged (an escaped value inside its window)")
                z[esc] = table.lo[esc] + off
    except CorruptFileError:
        raise
    except (ValueError, RuntimeError, AssertionError, OverflowError, IndexError) as e:  # constriction on a damaged stream
        raise CorruptFileError(f"the compressed stream is damaged ({e})") from e
    return z
