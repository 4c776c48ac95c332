r"""Entropy coding of integer latents with ``constriction``'s ANS coder (``.idf`` format version 3).

Every latent dimension ``i`` has a (mixture of) discretized logistic(s). Its integers are coded in
a window ``[lo_i, lo_i + n_i)`` with an *escape* for the mass outside, in two stages, so that the
tables of the many rows are ``1 + ceil(max_bins / chunk)`` and ``chunk`` columns wide, not
``1 + max_bins`` (the table work per symbol drops ~15x at the default 1024 / 32)::

    coarse symbol   0          escape: P(z < lo) + P(z >= lo + n)
                    1 + c      chunk c = [lo + c C, lo + (c + 1) C) of the window (C = spec.chunk)
    fine symbol     j          z = lo + c C + j, with the chunk's pmf as the table

``P(coarse = 1 + c) P(fine = j | c) = P(z)``, so the two stages cost the bits of one wide table
(plus the 24-bit quantisation of two rows instead of one). One row per image and level, the
widest (the first of ties), is coded last and in one stage (escape + whole window): an ANS stack
started empty wastes bits on its first symbol unless that symbol carries many, and two-stage
symbols carry at most ``log2 chunk`` each (measured: ~9 bits per file on an untrained model).
An escaped value is sent as ``v = zigzag(z - lo)`` (``0, -1, 1, -2, ... -> 0, 1, 2, 3, ...``)
in an Elias-gamma style: its bit length ``nb`` with a uniform model over ``0..32``, then its
``nb - 1`` low bits in chunks of at most 16 bits, each with a uniform model. Table widths are
fixed by the settings or by the row itself (``1 + M`` coarse columns, ``max(2, min(C,
max_bins))`` fine columns, ``1 + n`` for a one-stage row, zeros past a row's end), never by the
other rows coded alongside: ``constriction`` rescales a row by its sum, so a row's coded
probabilities depend on that row alone.

**Where the rows come from, and why they are the same at every batch size.** A table row must be
bit-identical in the encoder and the decoder, which may run different batch sizes. The network
is (its float64 convolutions are computed image by image), but elementwise ``exp``/``sigmoid``
are not guaranteed to be: a vectorised loop and its scalar remainder use different ``exp``
implementations, and which elements fall in the remainder depends on the tensor's size. So no
row is computed from a batch-sized tensor:

* a **single logistic** (the split priors, one per image) is first put on a grid: the scale on
  levels ``s_q = exp(q / 256)``, ``q = rint(256 log_scale)`` for ``log_scale >= 0`` and ``8
  rint(32 log_scale)`` below (``log_scale`` clipped to ``[-8, 12]``), and the location on steps of
  ``h_q = 2^e`` integers, ``e = clip(floor(log2 s_q) - 5, -10, 0)`` (``h_q <= s_q / 32``, at most
  1/1024). Both are exact float operations (powers of two, ``rint``), so equal parameters give
  equal integer keys ``(q, rint(loc / h_q) mod 2^-e)`` plus an integer shift; the rows of every
  key of a level ``q`` are computed together, in one call of a shape fixed by ``q``
  (:class:`GridRows`, cached), so a row is a function of its key alone;
* a **parameter-free density** (the top prior's mixture, the same for every image) is tabulated
  once per codec from its parameters (:func:`direct_rows`): same tensor, same shape, same rows.

The grid moves a location by at most ``h_q / 2 <= s / 64`` and a scale by a factor ``exp(+-1/512)``
(``exp(+-1/64)`` below scale 1, where location steps are finer and rows many; the cost of a
scale error is first order when the data sit in the model's tails, e.g. an untrained model);
measured costs are in ``docs/performance.md``.

Decoding order of a *level* (one latent group of a run of images, see
:mod:`setflow.coding.codec`): the coarse symbols of image 0, 1, ..., then the fine symbols of
image 0, 1, ..., then the escapes of image 0, 1, ..., then the one-stage row of image 0, 1, ...
(each with its escape); the stack gets them in reverse.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import constriction
import numpy as np

from setflow.coding.format import CorruptFileError
from setflow.distributions import MIN_LOG_SCALE

__all__ = ["TableSpec", "Rows", "GridRows", "direct_rows", "coarse_probs", "fine_probs", "push_level", "pop_level",
           "open_decoder", "push_guard", "pop_guard", "guard_bits", "GUARD_SYMBOL"]

_NB_SIZE = 33  # bit lengths 0..32 of a zigzagged 32-bit offset
_CHUNK_BITS = 16
_MAX_OFFSET = 2**31 - 1
_LOC_BOUND = float(2**40)

#: the parameter grid of single logistics (part of the format: changing it needs a new FORMAT_VERSION)
SCALE_STEPS = 256  # log-scale levels per nat (q = rint(256 log_scale)) for scales >= 1 ...
COARSE_SCALE_STEPS = 32  # ... and per nat below (q = 8 rint(32 log_scale))
LOG_SCALE_RANGE = (-8.0, 12.0)  # log-scales are clipped to this range (integer units)
LOC_STEP_EXP = (-10, 0)  # location steps 2^e, e = clip(floor(log2 s) - 5, *LOC_STEP_EXP)

#: the guard under all data of a stream: symbol 1 of the table [2^-23, 1 - 2^-23], whose cumulative
#: frequency starts at 2: a coder holding it has state 2 (1 valid bit), is never empty, and every
#: state of a valid stream above it has at least that many valid bits. It costs ~2e-7 bits; a
#: heavier guard (0xA5 of a uniform 256 table, as in the set codec) measured +7 to +14 bits per
#: 28x28 file (0.15-0.2%): the ANS state it lifts spills into an extra word more often.
GUARD_SYMBOL = 1
_GUARD_TABLE = np.array([[2.0**-23, 1.0 - 2.0**-23]])

_CAT = constriction.stream.model.Categorical(perfect=False)
_UNIFORM = constriction.stream.model.Uniform()


@dataclass(frozen=True)
class TableSpec:
    """Codec settings that change the bitstream (they are part of the file's model fingerprint).

    Args:
        tail_mass: each mixture component may leave at most this much probability outside the
            window (a component of weight ``w`` spans ``loc +- log(2 w / tail_mass) * scale``;
            components lighter than ``tail_mass / 2`` do not widen it). The escape then carries
            at most K * tail_mass per symbol: ~1e-4 extra bits per symbol at 1e-6.
        max_bins: widest window in symbols; mass beyond it goes through the escape.
        chunk: values per coarse symbol (the fine table's width).
    """

    tail_mass: float = 1e-6
    max_bins: int = 1024
    chunk: int = 32

    def __post_init__(self) -> None:
        if not 0.0 < self.tail_mass < 1.0 or self.max_bins < 1 or self.chunk < 1:
            raise ValueError(f"invalid table settings {self}")

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def coarse_width(self) -> int:
        """Columns of a coarse row: the escape and ``ceil(max_bins / chunk)`` chunks."""
        return 1 + -(-self.max_bins // self.chunk)

    @property
    def fine_width(self) -> int:
        """Columns of a fine row (at least 2: constriction refuses one-entry tables)."""
        return max(2, min(self.chunk, self.max_bins))


@dataclass
class Rows:
    """The coding tables of ``R`` latent dimensions, as offsets into two pools.

    Row ``i`` covers ``[lo[i], lo[i] + width[i])``. Its coarse row ``[escape, chunk masses, 0...]``
    is ``coarse_pool[cbase[i] : cbase[i] + spec.coarse_width]``; its pmf, zero-padded to whole
    chunks, starts at ``pmf_pool[fbase[i]]``, so the fine row of chunk ``c`` is the
    ``spec.fine_width`` values from ``fbase[i] + c * chunk`` (zeros past the window's end).
    ``coarse`` optionally caches the coarse rows (``(R0, coarse_width)``) of rows that are ``tile``
    copies of ``R0`` rows.
    """

    lo: np.ndarray
    width: np.ndarray
    cbase: np.ndarray
    fbase: np.ndarray
    coarse_pool: np.ndarray
    pmf_pool: np.ndarray
    coarse: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return int(self.lo.shape[0])

    def take(self, idx) -> "Rows":
        return Rows(self.lo[idx], self.width[idx], self.cbase[idx], self.fbase[idx], self.coarse_pool, self.pmf_pool)

    def tile(self, times: int, spec: "TableSpec") -> "Rows":
        """The same rows repeated ``times`` times (a parameter-free density for a batch)."""
        if self.coarse is None:
            self.coarse = coarse_probs(self, spec)
        t = lambda a: np.tile(a, times)  # noqa: E731
        return Rows(t(self.lo), t(self.width), t(self.cbase), t(self.fbase), self.coarse_pool, self.pmf_pool,
                    self.coarse)


def _windows_of(pool: np.ndarray, width: int) -> np.ndarray:
    return np.lib.stride_tricks.sliding_window_view(pool, width)


def coarse_probs(rows: Rows, spec: TableSpec) -> np.ndarray:
    """``(R, spec.coarse_width)`` float64: escape, then the chunk masses, then zeros."""
    return _windows_of(rows.coarse_pool, spec.coarse_width)[rows.cbase]


def fine_probs(rows: Rows, chunk: np.ndarray, spec: TableSpec) -> np.ndarray:
    """``(R, spec.fine_width)`` float64: the pmf of chunk ``chunk[i]`` of each row, zeros past its end.

    A chunk whose pmf underflowed to 0 everywhere (e.g. between far-apart mixture components;
    its coarse mass is ~0 too) gets a uniform row: constriction needs a positive sum.
    """
    fine = _windows_of(rows.pmf_pool, spec.fine_width)[rows.fbase + chunk * spec.chunk]
    dead = ~fine.any(axis=1)
    if dead.any():
        fine[dead] = 1.0
    return fine


def _sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


def _tabulate(cdf: np.ndarray, upper: np.ndarray, width: np.ndarray, spec: TableSpec) -> tuple[np.ndarray, np.ndarray]:
    """From CDF values at the ``n + 1`` edges of each row (``(R, n_max + 1)``, row ``i`` valid up to
    ``width[i]``) and the mass above the window: padded coarse rows ``(R, coarse_width)`` and
    pmf rows ``(R, m_max chunk + pad)`` (zeros past each window, :class:`Rows`)."""
    chunk = spec.chunk
    n_max = cdf.shape[1] - 1
    m_max = -(-n_max // chunk)
    pmf = np.zeros((cdf.shape[0], m_max * chunk))
    pmf[:, :n_max] = np.clip(np.diff(cdf, axis=1), 0.0, None)
    valid = np.arange(m_max * chunk)[None, :] < width[:, None]
    pmf[~valid] = 0.0
    pmf = np.pad(pmf, ((0, 0), (0, max(0, spec.fine_width - chunk))))
    edges = np.minimum(np.arange(m_max + 1)[None, :] * chunk, width[:, None])
    ecdf = np.take_along_axis(cdf, edges, axis=1)
    coarse = np.zeros((cdf.shape[0], spec.coarse_width))
    coarse[:, 0] = np.clip(cdf[:, 0] + upper, 0.0, None)
    coarse[:, 1 : m_max + 1] = np.clip(np.diff(ecdf, axis=1), 0.0, None)
    return coarse, pmf


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    total = e[..., 0].copy()
    for k in range(1, e.shape[-1]):  # a fixed summation order
        total += e[..., k]
    return e / total[..., None]


def direct_rows(logits: np.ndarray, locs: np.ndarray, log_scales: np.ndarray, spec: TableSpec) -> Rows:
    """Rows of ``N`` (mixtures of) discretized logistics, ``(N, K)`` float64 parameters each.

    Deterministic for given parameters of a given shape: use it for densities whose parameters
    do not depend on the image (the top prior), tabulated once. Component ``k`` of weight ``w_k``
    spans ``loc_k +- t_k s_k``, ``t_k = log(2 w_k / tail_mass)`` (mass outside ``<= tail_mass``);
    a window wider than ``max_bins`` is centred on the heaviest component (the first of ties).
    """
    shape = np.shape(locs)
    k = shape[-1]
    logits = np.broadcast_to(np.asarray(logits, dtype=np.float64), shape).reshape(-1, k)
    locs = np.asarray(locs, dtype=np.float64).reshape(-1, k)
    log_scales = np.asarray(log_scales, dtype=np.float64).reshape(-1, k)
    w = _softmax(logits)
    s = np.exp(np.clip(log_scales, MIN_LOG_SCALE, None))
    locs = np.clip(locs, -_LOC_BOUND, _LOC_BOUND)
    live = w > 0.5 * spec.tail_mass
    t = np.log(np.maximum(2.0 * w / spec.tail_mass, 1.0))
    left = np.clip(np.where(live, locs - t * s, np.inf).min(axis=1), -_LOC_BOUND, _LOC_BOUND)
    right = np.clip(np.where(live, locs + t * s, -np.inf).max(axis=1), -_LOC_BOUND, _LOC_BOUND)
    lo = np.floor(left)
    width = np.maximum(np.ceil(right) - lo + 1, 1)
    heavy = locs[np.arange(locs.shape[0]), np.argmax(w, axis=1)]
    wide = width > spec.max_bins
    lo = np.where(wide, np.round(heavy) - spec.max_bins // 2, lo).astype(np.int64)
    width = np.where(wide, spec.max_bins, width).astype(np.int64)
    n_max = int(width.max())
    edges = (lo[:, None] + np.arange(n_max + 1)[None, :]).astype(np.float64) - 0.5  # P(z < lo + j)
    cdf = np.zeros(edges.shape)
    upper = np.zeros(lo.shape)
    top = (lo + width).astype(np.float64) - 0.5
    for k in range(w.shape[1]):
        cdf += w[:, k : k + 1] * _sigmoid((edges - locs[:, k : k + 1]) / s[:, k : k + 1])
        upper += w[:, k] * _sigmoid((locs[:, k] - top) / s[:, k])
    coarse, pmf = _tabulate(cdf, upper, width, spec)
    r = np.arange(lo.shape[0], dtype=np.int64)
    return Rows(lo, width, r * coarse.shape[1], r * pmf.shape[1], coarse.reshape(-1), pmf.reshape(-1))


@dataclass
class _Level:
    steps: int  # location steps per integer (2^-e)
    width: int
    pmf_len: int  # pool values per key (the pmf padded to whole chunks)
    lo_off: np.ndarray  # (steps,) int64 window start relative to floor(loc on the grid)
    cbase: int
    fbase: int


class GridRows:
    """Rows of single discretized logistics with parameters on the grid (see the module docstring).

    The rows of a scale level are computed once, all location steps in one call of a shape fixed
    by the level, and kept (``max_values`` bounds the cache; clearing it changes no row).
    """

    def __init__(self, spec: TableSpec, max_values: int = 1 << 25) -> None:
        self.spec = spec
        self.max_values = max_values
        self._t = math.log(2.0 / spec.tail_mass)
        self.clear()

    def clear(self) -> None:
        self._levels: dict[int, _Level] = {}
        self._coarse_parts: list[np.ndarray] = []
        self._pmf_parts: list[np.ndarray] = []
        self._coarse_len = self._pmf_len = 0
        self._pools: Optional[tuple[np.ndarray, np.ndarray]] = None

    def _build(self, q: int) -> _Level:
        spec = self.spec
        s = math.exp(q / SCALE_STEPS)
        e = min(LOC_STEP_EXP[1], max(LOC_STEP_EXP[0], math.floor(math.log2(s)) - 5))
        steps = 2 ** (-e)
        d = np.arange(steps, dtype=np.float64) / steps  # location fractions of the keys
        ts = self._t * s
        a = math.floor(-ts)
        width = math.ceil(1.0 + ts) - a + 1
        if width > spec.max_bins:  # centred on round(loc), like direct_rows
            width = spec.max_bins
            lo_off = np.floor(d + 0.5).astype(np.int64) - spec.max_bins // 2
        else:
            lo_off = np.full(steps, a, dtype=np.int64)
        edges = lo_off[:, None].astype(np.float64) + np.arange(width + 1)[None, :] - 0.5 - d[:, None]
        cdf = _sigmoid(edges / s)
        upper = _sigmoid(-edges[:, -1] / s)
        coarse, pmf = _tabulate(cdf, upper, np.full(steps, width, dtype=np.int64), spec)
        level = _Level(steps, width, pmf.shape[1], lo_off, self._coarse_len, self._pmf_len)
        self._coarse_parts.append(coarse.reshape(-1))
        self._pmf_parts.append(pmf.reshape(-1))
        self._coarse_len += coarse.size
        self._pmf_len += pmf.size
        self._pools = None
        return level

    def _level_table(self, qs: np.ndarray) -> list[_Level]:
        new = [int(q) for q in qs if int(q) not in self._levels]
        if new and self._coarse_len + self._pmf_len > self.max_values:
            self.clear()
            new = [int(q) for q in qs]
        for q in new:
            self._levels[q] = self._build(q)
        return [self._levels[int(q)] for q in qs]

    def pools(self) -> tuple[np.ndarray, np.ndarray]:
        if not self._coarse_parts:
            return np.zeros(self.spec.coarse_width), np.zeros(self.spec.fine_width)
        if self._pools is None:
            self._coarse_parts = [np.concatenate(self._coarse_parts)]
            self._pmf_parts = [np.concatenate(self._pmf_parts)]
            self._pools = (self._coarse_parts[0], self._pmf_parts[0])
        return self._pools

    @staticmethod
    def keys(loc: np.ndarray, log_scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(q, loc)``: the scale level (int64, exact float operations) and the clipped location."""
        ls = np.clip(np.nan_to_num(log_scale, nan=0.0), *LOG_SCALE_RANGE)
        step = SCALE_STEPS // COARSE_SCALE_STEPS
        q = np.where(ls >= 0.0, np.rint(ls * SCALE_STEPS), step * np.rint(ls * COARSE_SCALE_STEPS)).astype(np.int64)
        return q, np.clip(np.nan_to_num(loc, nan=0.0), -_LOC_BOUND, _LOC_BOUND)

    def rows(self, loc: np.ndarray, log_scale: np.ndarray) -> Rows:
        """Rows for ``R`` single logistics (``(R,)`` float64 locations and log-scales, integer units)."""
        q, loc = self.keys(np.asarray(loc, dtype=np.float64).reshape(-1),
                           np.asarray(log_scale, dtype=np.float64).reshape(-1))
        uq, inv = np.unique(q, return_inverse=True)
        levels = self._level_table(uq)
        steps = np.array([lv.steps for lv in levels], dtype=np.int64)[inv]
        u = np.rint(loc * steps).astype(np.int64)  # steps is a power of two: loc * steps is exact
        whole = np.floor_divide(u, steps)
        frac = u - whole * steps
        lo_off = np.concatenate([lv.lo_off for lv in levels])
        first = np.concatenate([[0], np.cumsum([lv.steps for lv in levels])[:-1]]).astype(np.int64)[inv]
        width = np.array([lv.width for lv in levels], dtype=np.int64)[inv]
        pmf_len = np.array([lv.pmf_len for lv in levels], dtype=np.int64)[inv]
        cbase = np.array([lv.cbase for lv in levels], dtype=np.int64)[inv] + frac * self.spec.coarse_width
        fbase = np.array([lv.fbase for lv in levels], dtype=np.int64)[inv] + frac * pmf_len
        cpool, fpool = self.pools()
        return Rows(whole + lo_off[first + frac], width, cbase, fbase, cpool, fpool)


# ---------------------------------------------------------------- escapes (unchanged since version 2)
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
    return [np.array([min(_CHUNK_BITS, r - j) for j in range(0, r, _CHUNK_BITS)], dtype=np.int64)
            for r in np.maximum(nb - 1, 0)]


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


def _push_escapes(coder, d: np.ndarray) -> None:
    nb, chunks, sizes = _escape_bits(d)
    if chunks.size:
        coder.encode_reverse(chunks, _UNIFORM, sizes)
    coder.encode_reverse(nb.astype(np.int32), _UNIFORM, np.full(d.size, _NB_SIZE, dtype=np.int32))


def _pop_escapes(coder, count: int) -> np.ndarray:
    nb = np.asarray(coder.decode(_UNIFORM, np.full(count, _NB_SIZE, dtype=np.int32)), dtype=np.int64)
    bits = _chunk_sizes(nb)
    sizes = np.concatenate(bits + [np.zeros(0, dtype=np.int64)])
    chunks = np.zeros(0, dtype=np.int64)
    if sizes.size:
        chunks = np.asarray(coder.decode(_UNIFORM, (1 << sizes).astype(np.int32)), dtype=np.int64)
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


# ---------------------------------------------------------------- one level of a run of images
_WHY = ": a damaged payload, or a header that claims the wrong number of images"


def _layout(rows: Rows, spec: TableSpec, b_count: int, n: int) -> tuple[np.ndarray, np.ndarray, list]:
    """``(two, one, coarse)``: the rows coded in two stages (image-major, ``n - 1`` per image),
    each image's widest row (the first of ties; coded last, in one stage), and per image the
    ``(n - 1, coarse_width)`` coarse rows of its two-stage rows (one shared array for tiled rows)."""
    single = np.argmax(rows.width.reshape(b_count, n), axis=1)
    keep = np.ones((b_count, n), dtype=bool)
    keep[np.arange(b_count), single] = False
    two = np.flatnonzero(keep.reshape(-1))
    one = np.arange(b_count, dtype=np.int64) * n + single
    if n == 1:
        coarse = [None] * b_count
    elif rows.coarse is not None and rows.coarse.shape[0] == n:  # tiled: the same rows (and widest row) per image
        coarse = [np.delete(rows.coarse, single[0], axis=0)] * b_count
    else:
        coarse = list(coarse_probs(rows.take(two), spec).reshape(b_count, n - 1, -1))
    return two, one, coarse


def _single_table(rows: Rows, i: int) -> np.ndarray:
    """``(1, 1 + width)``: row ``i``'s escape and whole window (a one-stage table)."""
    width = int(rows.width[i])
    table = np.empty((1, 1 + width))
    table[0, 0] = rows.coarse_pool[rows.cbase[i]]
    table[0, 1:] = rows.pmf_pool[rows.fbase[i] : rows.fbase[i] + width]
    if not table[0, 1:].any():  # a window whose pmf underflowed everywhere
        table[0, 1:] = 1.0
    return table


def _segments(sorted_rows: np.ndarray, b_count: int, per_image: int) -> tuple[np.ndarray, np.ndarray]:
    """Start/end positions of each image's entries in ``sorted_rows`` (indices into ``b_count``
    images of ``per_image`` two-stage rows)."""
    ends = np.searchsorted(sorted_rows, np.arange(1, b_count + 1) * per_image)
    return np.concatenate([[0], ends[:-1]]).astype(np.int64), ends


def push_level(coders: Sequence, z: np.ndarray, rows: Rows, spec: TableSpec) -> None:
    """Push ``z`` (``(B, N)`` int64; image ``b`` to ``coders[b]``, one coder may serve several images)
    so that :func:`pop_level` pops it: ``rows`` holds the ``B N`` rows, image-major.

    Decoding order: the coarse symbols of every image (all rows but its widest), then their fine
    symbols, then their escapes, then each image's widest row in one stage (and its escape).
    (The widest row comes last so that each stream's first pushed symbol carries the most
    information: an ANS stack started empty wastes bits on a low-information first symbol.)
    """
    b_count, n = z.shape
    zf = z.reshape(-1)
    off = zf - rows.lo
    inside = (off >= 0) & (off < rows.width)
    two, one, coarse = _layout(rows, spec, b_count, n)
    off2, in2 = off[two], inside[two]
    chunk = np.where(in2, off2 // spec.chunk, 0)
    coarse_sym = np.where(in2, 1 + chunk, 0).astype(np.int32).reshape(b_count, n - 1)
    fine_pos = np.flatnonzero(in2)  # positions (in the two-stage order) of the rows with a fine symbol
    fine_sym = (off2 - chunk * spec.chunk)[fine_pos].astype(np.int32)
    fine = fine_probs(rows.take(two[fine_pos]), chunk[fine_pos], spec)
    starts, ends = _segments(fine_pos, b_count, n - 1)
    in2 = in2.reshape(b_count, n - 1)
    off2 = off2.reshape(b_count, n - 1)
    for b in reversed(range(b_count)):
        i = one[b]
        if inside[i]:
            coders[b].encode_reverse(np.array([1 + off[i]], dtype=np.int32), _CAT, _single_table(rows, i))
        else:
            _push_escapes(coders[b], off[i : i + 1])
            coders[b].encode_reverse(np.zeros(1, dtype=np.int32), _CAT, _single_table(rows, i))
    for b in reversed(range(b_count)):
        if not in2[b].all():
            _push_escapes(coders[b], off2[b][~in2[b]])
    for b in reversed(range(b_count)):
        if ends[b] > starts[b]:
            coders[b].encode_reverse(fine_sym[starts[b] : ends[b]], _CAT, fine[starts[b] : ends[b]])
    if n > 1:
        for b in reversed(range(b_count)):
            coders[b].encode_reverse(coarse_sym[b], _CAT, coarse[b])


def _need(coder, floor: int, what: str) -> None:
    if coder.num_valid_bits() < floor:
        raise CorruptFileError(f"the compressed stream ran out while {what} remained to be decoded{_WHY}")


def _pop_escape_offsets(coder, floor: int, width: np.ndarray) -> np.ndarray:
    _need(coder, floor, "escaped values")
    d = _pop_escapes(coder, int(width.size))
    if np.any((d >= 0) & (d < width)):  # the encoder never escapes those
        raise CorruptFileError(f"the compressed stream is damaged (an escaped value inside its window){_WHY}")
    return d


def pop_level(coders: Sequence, rows: Rows, spec: TableSpec, floor: int) -> np.ndarray:
    """Pop what :func:`push_level` pushed: ``(B, N)`` int64, ``B = len(coders)``, ``N = len(rows) / B``.

    ``floor``: valid bits of a coder that holds only the guard (:func:`guard_bits`); a coder below
    it mid-stream has run dry (a truncated or damaged payload, or a header claiming too much).
    Symbols a valid stream never holds (a chunk or offset past the window, an escaped value
    inside it) raise :class:`CorruptFileError`.
    """
    b_count = len(coders)
    n = len(rows) // b_count
    two, one, coarse = _layout(rows, spec, b_count, n)
    off = np.zeros(b_count * n, dtype=np.int64)
    if n > 1:
        csym = np.empty((b_count, n - 1), dtype=np.int64)
        for b in range(b_count):
            _need(coders[b], floor, "latent values")
            csym[b] = coders[b].decode(_CAT, coarse[b])
        csym = csym.reshape(-1)
        width2 = rows.width[two]
        if np.any(csym > -(-width2 // spec.chunk)):
            raise CorruptFileError(f"the compressed stream is damaged (a chunk past the end of its window){_WHY}")
        fine_pos = np.flatnonzero(csym > 0)
        chunk = np.maximum(csym - 1, 0)
        fine = fine_probs(rows.take(two[fine_pos]), chunk[fine_pos], spec)
        starts, ends = _segments(fine_pos, b_count, n - 1)
        fsym = np.empty(fine_pos.shape[0], dtype=np.int64)
        for b in range(b_count):
            if ends[b] > starts[b]:
                _need(coders[b], floor, "latent values")
                fsym[starts[b] : ends[b]] = coders[b].decode(_CAT, fine[starts[b] : ends[b]])
        off2 = chunk * spec.chunk
        off2[fine_pos] += fsym
        if np.any(fsym >= spec.chunk) or np.any(off2[fine_pos] >= width2[fine_pos]):
            raise CorruptFileError(f"the compressed stream is damaged (a value past the end of its window){_WHY}")
        esc = (csym == 0).reshape(b_count, n - 1)
        off2 = off2.reshape(b_count, n - 1)
        width2 = width2.reshape(b_count, n - 1)
        for b in range(b_count):
            if esc[b].any():
                off2[b][esc[b]] = _pop_escape_offsets(coders[b], floor, width2[b][esc[b]])
        off[two] = off2.reshape(-1)
    for b in range(b_count):
        i = one[b]
        _need(coders[b], floor, "latent values")
        sym = int(coders[b].decode(_CAT, _single_table(rows, i))[0])
        if sym:
            off[i] = sym - 1
        else:
            off[i] = _pop_escape_offsets(coders[b], floor, rows.width[i : i + 1])[0]
    return (off + rows.lo).reshape(b_count, n)


# ---------------------------------------------------------------- the stream's ends
def open_decoder(words: np.ndarray):
    """An ANS decoder over a payload of ``uint32`` words; :class:`CorruptFileError` if it is malformed."""
    try:
        return constriction.stream.stack.AnsCoder(np.ascontiguousarray(words, dtype=np.uint32))
    except Exception as e:  # e.g. a zero last word
        raise CorruptFileError(f"the compressed stream is damaged ({e})") from e


def push_guard(coder) -> None:
    """The guard symbol, pushed first (under all data)."""
    coder.encode_reverse(np.array([GUARD_SYMBOL], dtype=np.int32), _CAT, _GUARD_TABLE)


def pop_guard(coder) -> None:
    """Pop the guard after the last image and check that nothing is left (:class:`CorruptFileError`)."""
    got = int(coder.decode(_CAT, _GUARD_TABLE)[0])
    if got != GUARD_SYMBOL or not coder.is_empty():
        raise CorruptFileError(f"the stream does not end where the header says (data left over){_WHY}")


_GUARD_BITS: list[int] = []


def guard_bits() -> int:
    """Valid bits of a coder that holds only the guard; every state of a valid stream above it has at least as many."""
    if not _GUARD_BITS:
        coder = constriction.stream.stack.AnsCoder()
        push_guard(coder)
        _GUARD_BITS.append(int(coder.num_valid_bits()))
    return _GUARD_BITS[0]
