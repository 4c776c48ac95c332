r"""``IDFCodec``: lossless image compression with an integer discrete flow and ANS coding.

Encoding a run of images ``x`` (up to ``IMAGES_PER_RUN``, one forward pass):

1. run the flow data -> latent on the run and collect every latent group with the parameters of
   its density: ``[y_0 | kept_0, ..., y_{L-2} | kept_{L-2}, z_top]``;
2. push the groups level by level, ``y_0`` of every image of the run first, ``z_top`` last
   (:func:`setflow.coding.tables.push_level`), so the decoder pops ``z_top`` of the whole run,
   inverts the top level on the run, computes the split priors from the now known kept
   channels, pops ``y_{L-2}`` of the run, and so on down to the images.

One file (:meth:`IDFCodec.compress`) holds any number of images in runs on one ANS stack over a
guard symbol; :meth:`IDFCodec.compress_many` writes one file per array and codes the images of
many files in one forward pass (each file on its own stack); :meth:`IDFCodec.decompress_many`
decodes many files with one inverse pass per level.

Determinism. Encoder and decoder must agree bit for bit on every rounded coupling shift
``round(t(x_a))`` and on every probability table, whatever batch sizes they run. Both run a
private float64 CPU copy of the model with ``torch.set_num_threads(1)`` inside the coder
(restored afterwards) and autograd off. Its convolutions compute each image on its own
(per-image im2col and matrix product) and the rest of the network is exactly rounded
elementwise arithmetic (add, multiply, divide, ReLU, rounding), so an image's latents and
density parameters do not depend on the batch around it (tested bit for bit at batch sizes
1 to 64). The tables are functions of integer keys of those parameters, never of a batch-sized
tensor of ``exp``/``sigmoid`` values (:mod:`setflow.coding.tables`). The file carries a
fingerprint of the weights, the model config and the codec settings, and a CRC-32 of the image,
so a different model, a damaged file or a decoder that disagrees (e.g. another CPU's maths
library) raises a :class:`~setflow.coding.format.CodecError` instead of returning a wrong image.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections import deque
from typing import Iterator, Optional, Sequence, Union

import constriction
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from setflow.coding.base import Codec, weights_fingerprint
from setflow.coding.format import (
    FORMAT_VERSION,
    IMAGES_PER_RUN,
    LAYOUT_CHANNELS_LAST,
    LAYOUT_PLAIN,
    MAX_ELEMENTS,
    SOURCE_ARRAY,
    CorruptFileError,
    DecodeMismatchError,
    FormatError,
    Header,
    CodecError,
    check_payload_bits,
    checked_product,
    codec_errors,
    dtype_code,
    image_crc,
    pack,
    unpack,
)
from setflow.coding.tables import (
    GridRows,
    Rows,
    TableSpec,
    direct_rows,
    guard_bits,
    open_decoder,
    pop_guard,
    pop_level,
    push_guard,
    push_level,
)
from setflow.distributions import discretized_logistic_mixture_log_prob

__all__ = ["IDFCodec", "deterministic_cpu", "model_fingerprint", "check_pixels", "to_model_layout", "from_model_layout",
           "load_idf"]

ArrayLike = Union[np.ndarray, Tensor]


def load_idf(ckpt: str):
    """``(model, config)`` from a checkpoint; raises ``ValueError`` unless it holds an IDF."""
    from setflow.train.checkpoint import load_model

    model, cfg = load_model(ckpt, device="cpu")
    if not hasattr(model, "split_latents"):
        raise ValueError(f"{ckpt} holds a {cfg.get('model')!r} model; compression needs an 'idf' checkpoint")
    return model, cfg


@contextlib.contextmanager
def deterministic_cpu() -> Iterator[None]:
    """One intra-op thread and no autograd: the same arithmetic on every call.

    (float64 convolutions never go through oneDNN, which only serves float32/bfloat16.)
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            yield
    finally:
        torch.set_num_threads(threads)


def model_fingerprint(model: nn.Module, config: dict, spec: TableSpec) -> bytes:
    """8 bytes of SHA-256 over the format version, model config, codec settings and float64 weights."""
    return weights_fingerprint("setflow-idf-codec", FORMAT_VERSION, model, config, spec.as_dict())


def check_pixels(arr: ArrayLike) -> np.ndarray:
    """``arr`` as an array if it holds 8-bit pixel values: an integer dtype and every value in
    ``[0, 255]``, whatever the dtype's own range (a uint16 300 is refused, not wrapped); else a
    one-line :class:`FormatError` naming the range and what was found."""
    a = np.asarray(arr)
    if a.dtype.kind not in "iu":
        raise FormatError(f"images must have an integer dtype (uint8), got {a.dtype}")
    if a.size and (a.min() < 0 or a.max() > 255):
        raise FormatError(f"image values must lie in [0, 255] (8-bit images), got values {a.min()}..{a.max()}")
    return a


def to_model_layout(arr: np.ndarray, shape: tuple[int, int, int]) -> tuple[np.ndarray, int]:
    """``arr`` -> ``((B, C, H, W) int64, layout)``.

    Accepted: ``(C, H, W)``, ``(B, C, H, W)``, channels-last ``(H, W, C)`` / ``(B, H, W, C)``,
    and for ``C == 1`` also ``(H, W)`` and ``(B, H, W)``.
    """
    c, h, w = shape
    a = np.asarray(arr)
    if a.ndim >= 2 and a.shape[-2:] == (h, w) and (
        (a.ndim == 2 and c == 1) or (a.ndim >= 3 and (a.shape[-3] == c or c == 1))
    ):
        return a.reshape(-1, c, h, w).astype(np.int64), LAYOUT_PLAIN
    if c > 1 and a.ndim >= 3 and a.shape[-3:] == (h, w, c):
        return np.moveaxis(a.reshape(-1, h, w, c), -1, 1).astype(np.int64), LAYOUT_CHANNELS_LAST
    want = f"({c}, {h}, {w}), (B, {c}, {h}, {w}), ({h}, {w}, {c})" + (f", ({h}, {w})" if c == 1 else "")
    raise ValueError(f"image of shape {a.shape} does not fit the model; expected one of {want}")


def from_model_layout(x: np.ndarray, shape: tuple[int, ...], layout: int) -> np.ndarray:
    """Inverse of :func:`to_model_layout` given the original shape and layout code."""
    if layout == LAYOUT_CHANNELS_LAST:
        x = np.moveaxis(x, 1, -1)
    elif layout != LAYOUT_PLAIN:
        raise CorruptFileError(f"unknown layout code {layout}")
    if x.size != checked_product(shape, MAX_ELEMENTS):
        raise CorruptFileError("decoded size does not match the header shape")
    return x.reshape(shape)


class _TapConv(nn.Module):
    """A 3x3 "same" convolution with few output channels, as the codec computes it: one 1x1
    convolution to ``9 O`` channels (a matrix product per image, like every convolution of the
    float64 path) and the nine shifted planes added in a fixed order. The same function as the
    convolution up to rounding, ~5-15x faster at ``O <= 4`` (the conditioners' output layers,
    where the direct float64 convolution is a matrix-vector product per image). Keeps the
    convolution's ``weight`` and ``bias`` (same state dict, same fingerprint)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.weight = conv.weight
        self.bias = conv.bias

    @staticmethod
    def fits(m: nn.Module) -> bool:
        return (type(m) is nn.Conv2d and m.kernel_size == (3, 3) and m.stride == (1, 1) and m.padding == (1, 1)
                and m.dilation == (1, 1) and m.groups == 1 and m.padding_mode == "zeros" and m.out_channels <= 4)

    def forward(self, x: Tensor) -> Tensor:
        o, c = self.weight.shape[:2]
        h, w = x.shape[-2:]
        taps = self.weight.permute(2, 3, 0, 1).reshape(9 * o, c, 1, 1)
        p = F.pad(F.conv2d(x, taps), (1, 1, 1, 1))  # plane k = 3 dy + dx: tap (dy, dx) at every input pixel
        out = p[:, :o, :h, :w]
        for k in range(1, 9):
            dy, dx = divmod(k, 3)
            out = out + p[:, k * o : (k + 1) * o, dy : dy + h, dx : dx + w]
        if self.bias is not None:
            out = out + self.bias.view(1, o, 1, 1)
        return out.contiguous()


def _coding_copy(model: nn.Module) -> nn.Module:
    """The codec's private float64 CPU copy: frozen, eval mode, plain (NCHW) memory layout, and
    :class:`_TapConv` for the 3x3 convolutions with few outputs."""
    from setflow.nn import DenseNet

    net = copy.deepcopy(model).to(device="cpu", dtype=torch.float64).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    for m in net.modules():
        if isinstance(m, DenseNet):
            m.channels_last = False
        for name, child in list(m.named_children()):
            if _TapConv.fits(child):
                setattr(m, name, _TapConv(child))
    return net.to(memory_format=torch.contiguous_format)


def _log2_prob(z: Tensor, params: tuple[Tensor, Tensor, Tensor]) -> float:
    """Analytic ``log2 P(z)`` of a whole group (one image) under its float64 parameters."""
    logits, locs, log_scales = params
    k = locs.shape[-1]
    logits = logits.expand_as(locs)
    flat = [t.detach().to("cpu", torch.float64).reshape(-1, k) for t in (logits, locs, log_scales)]
    lp = discretized_logistic_mixture_log_prob(z.detach().to("cpu", torch.float64).reshape(-1), *flat)
    return float(lp.sum()) / math.log(2.0)


class IDFCodec(Codec):
    """Lossless codec for 8-bit images on top of a trained :class:`~setflow.models.idf.IDF`
    (the :class:`~setflow.coding.base.Codec` contract).

    Args:
        model: an IDF (any device/dtype; the codec keeps its own float64 CPU copy, so later
            changes to ``model`` do not affect the codec).
        spec: window/escape settings (:class:`~setflow.coding.tables.TableSpec`).
        batch_size: images per forward/inverse pass of :meth:`compress_many` and
            :meth:`decompress_many` (speed and memory only: the files do not depend on it).

    Example:
        >>> from setflow.models.idf import IDF
        >>> model = IDF((1, 8, 8), num_levels=2, num_flows=1, hidden_channels=8, depth=1,
        ...             coupling="shallow", split_prior="shallow")
        >>> codec = IDFCodec(model)
        >>> x = np.random.default_rng(0).integers(0, 256, (1, 8, 8), dtype=np.uint8)
        >>> data = codec.compress(x)
        >>> np.array_equal(codec.decompress(data), x)
        True
        >>> files = codec.compress_many([x, x[:, ::-1]])  # one file per image, one forward pass
        >>> all(np.array_equal(a, b) for a, b in zip(codec.decompress_many(files), [x, x[:, ::-1]]))
        True
    """

    def __init__(self, model: nn.Module, spec: Optional[TableSpec] = None, batch_size: int = 32) -> None:
        self.spec = spec or TableSpec()
        self.config = dict(getattr(model, "config", {}))
        net = _coding_copy(model)
        self.net = net
        self.input_shape = tuple(int(s) for s in net.input_shape)
        self.fingerprint = model_fingerprint(net, self.config, self.spec)
        self.batch_size = max(1, int(batch_size))
        self._shapes = [tuple(s) for s in net.latent_shapes()]
        self._grid = GridRows(self.spec)
        self._top: Optional[Rows] = None
        self._floor = guard_bits()

    @classmethod
    def from_checkpoint(cls, path: str, spec: Optional[TableSpec] = None, batch_size: int = 32) -> "IDFCodec":
        """The codec of an IDF checkpoint written by the trainer (``setflow train``)."""
        return cls(load_idf(path)[0], spec, batch_size)

    # ------------------------------------------------------------------ tables
    def _top_rows(self) -> Rows:
        """Rows of the top prior (the same for every image): tabulated once."""
        if self._top is None:
            with deterministic_cpu():
                logits, locs, log_scales = (t.detach().numpy() for t in self.net.base.params())
            self._top = direct_rows(logits, locs, log_scales, self.spec)
        return self._top

    def _split_rows(self, params: tuple[Tensor, Tensor, Tensor]) -> Rows:
        """Rows of a split prior (one logistic per dimension) for a batch, from the parameter grid."""
        _, locs, log_scales = params
        if locs.shape[-1] != 1:
            raise NotImplementedError("the codec codes factor-out densities with one logistic per dimension")
        return self._grid.rows(locs.detach().numpy().reshape(-1), log_scales.detach().numpy().reshape(-1))

    # ------------------------------------------------------------------ one batch of runs (the coding path)
    def _push_batch(self, coders: Sequence, x: np.ndarray) -> None:
        """Push ``x`` (``(B, C, H, W)`` int64; image ``b`` on ``coders[b]``): the images that share a
        coder form one run and sit next to each other, in order."""
        b = x.shape[0]
        xt = torch.from_numpy(np.ascontiguousarray(x)).to(torch.float64)
        groups = self.net.split_latents(xt, with_params=True)
        for i, (z, params) in enumerate(groups):  # forward order == reverse decode order
            rows = self._top_rows().tile(b, self.spec) if i == len(groups) - 1 else self._split_rows(params)
            push_level(coders, z.reshape(b, -1).to(torch.int64).numpy(), rows, self.spec)

    def _pop_batch(self, coders: Sequence) -> np.ndarray:
        """Pop one image per entry of ``coders`` (runs as in :meth:`_push_batch`): ``(B, C, H, W)`` int64."""
        b = len(coders)
        shapes = self._shapes

        def pop(rows: Rows, shape) -> Tensor:
            z = pop_level(coders, rows, self.spec, self._floor)
            return torch.from_numpy(z).to(torch.float64).reshape(b, *shape)

        z_top = pop(self._top_rows().tile(b, self.spec), shapes[-1])
        x = self.net.decode_top_down(
            z_top, lambda i, layer, kept: pop(self._split_rows(layer.density.params(kept)), shapes[i]))
        x = x.to(torch.int64).numpy()
        if x.min() < 0 or x.max() > 255:
            raise CorruptFileError("decoded values leave [0, 255]: a damaged payload, a header that claims the "
                                   "wrong number of images, or a stream that does not fit this model")
        return x

    # ------------------------------------------------------------------ many files
    @staticmethod
    def _runs(n: int) -> list[int]:
        return [min(IMAGES_PER_RUN, n - start) for start in range(0, n, IMAGES_PER_RUN)]

    def _encode(self, batches: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The payload words of one file per ``(n_i, C, H, W)`` int64 array."""
        coders = [constriction.stream.stack.AnsCoder() for _ in batches]
        for c in coders:
            push_guard(c)
        # the stack pops run 0 first: push every file's runs last to first; no file twice in a pass
        runs = [(f, start, size) for f, xb in enumerate(batches)
                for start, size in zip(range(0, xb.shape[0], IMAGES_PER_RUN), self._runs(xb.shape[0]))]
        with deterministic_cpu():
            pending: list = []
            files: set = set()
            count = 0
            for run in reversed(runs):
                if pending and (run[0] in files or count + run[2] > self.batch_size):
                    self._push_runs(coders, batches, pending)
                    pending, files, count = [], set(), 0
                pending.append(run)
                files.add(run[0])
                count += run[2]
            if pending:
                self._push_runs(coders, batches, pending)
        return [c.get_compressed() for c in coders]

    def _push_runs(self, coders, batches, runs) -> None:
        x = np.concatenate([batches[f][start : start + size] for f, start, size in runs])
        self._push_batch([coders[f] for f, _, size in runs for _ in range(size)], x)

    def _decode(self, items: Sequence[tuple[object, np.ndarray, int]]) -> list:
        """Decode ``(coder, words, n_images)`` items: per item an ``(n, C, H, W)`` int64 array or the
        :class:`CodecError` that stopped it. At most one run per file in each inverse pass."""
        results: list = [None] * len(items)
        images: list[list[np.ndarray]] = [[] for _ in items]
        runs_left = {f: self._runs(n) for f, (_, _, n) in enumerate(items)}
        queue = deque(f for f in range(len(items)) if runs_left[f])
        while queue:
            wave, again, count = [], [], 0
            while queue and (not wave or count + runs_left[queue[0]][0] <= self.batch_size):
                f = queue.popleft()
                size = runs_left[f].pop(0)
                wave.append((f, size))
                count += size
                if runs_left[f]:
                    again.append(f)
            try:
                with codec_errors():
                    x = self._pop_batch([items[f][0] for f, size in wave for _ in range(size)])
            except CodecError as e:
                if len(wave) == 1:
                    results[wave[0][0]] = e
                else:  # which file? decode each of them again on its own, from its first image
                    for f, _ in wave:
                        coder = open_decoder(items[f][1])
                        results[f] = self._decode([(coder, items[f][1], items[f][2])])[0]
                failed = {f for f, _ in wave}
                queue = deque(f for f in queue if f not in failed)
                again = [f for f in again if f not in failed]
                continue
            pos = 0
            for f, size in wave:
                images[f].append(x[pos : pos + size])
                pos += size
            queue.extend(again)
        for f, (coder, _, _) in enumerate(items):
            if results[f] is None:
                try:
                    with codec_errors():
                        pop_guard(coder)
                    results[f] = np.concatenate(images[f])
                except CodecError as e:
                    results[f] = e
        return results

    # ------------------------------------------------------------------ public API
    def _prepare(self, x: ArrayLike) -> tuple[np.ndarray, np.ndarray, int]:
        if isinstance(x, Tensor):
            x = x.detach().cpu().numpy()
        a = check_pixels(x)
        dtype_code(a.dtype)  # raises for unsupported dtypes
        xb, layout = to_model_layout(a, self.input_shape)
        if xb.shape[0] == 0:
            raise ValueError("nothing to compress: the batch is empty")
        return a, xb, layout

    def check_image(self, x: ArrayLike) -> None:
        """Raise ``ValueError`` (naming what was expected) unless :meth:`compress` accepts ``x``."""
        self._prepare(x)

    def compress(self, x: ArrayLike, source: int = SOURCE_ARRAY) -> bytes:
        """Compress one image or a batch (see :func:`to_model_layout` for the shapes) into one file's bytes."""
        return self.compress_many([x], [source])[0]

    def compress_many(self, images: Sequence[ArrayLike], sources: Optional[Sequence[int]] = None) -> list[bytes]:
        """One file per entry of ``images`` (each one image or a batch, as for :meth:`compress`),
        coded ``batch_size`` images per forward pass. Equal to ``[compress(x) for x in images]``."""
        sources = [SOURCE_ARRAY] * len(images) if sources is None else list(sources)
        if len(sources) != len(images):
            raise ValueError(f"{len(images)} images but {len(sources)} sources")
        prepared = [self._prepare(x) for x in images]
        words = self._encode([xb for _, xb, _ in prepared])
        return [pack(Header(a.dtype, tuple(a.shape), layout, source, self.fingerprint, image_crc(a)), w)
                for (a, _, layout), source, w in zip(prepared, sources, words)]

    def _open(self, data: bytes) -> tuple[Header, np.ndarray, int]:
        header, words = unpack(data)
        self.check_fingerprint(header.fingerprint)
        total = checked_product(header.shape, MAX_ELEMENTS)  # Python ints: no wrap-around
        per_image = math.prod(self.input_shape)
        if total % per_image:
            raise CorruptFileError(f"header shape {header.shape} does not fit the model input {self.input_shape}")
        check_payload_bits(total, 32 * int(words.size), "latent values")  # e.g. 10^9 images in 200 bytes
        return header, words, total // per_image

    def decompress(self, data: bytes, as_tensor: bool = False) -> ArrayLike:
        """Decode bytes from :meth:`compress` to the original array (same shape and dtype).

        Raises:
            FormatError, CorruptFileError, ModelMismatchError, DecodeMismatchError: never
            returns an image that differs from the one compressed.
        """
        out = self.decompress_many([data], as_tensor=as_tensor, errors="return")[0]
        if isinstance(out, Exception):
            raise out
        return out

    def decompress_many(self, files: Sequence[bytes], as_tensor: bool = False, errors: str = "raise") -> list:
        """Decode many files (``batch_size`` images per inverse pass); one array per file.

        ``errors="raise"`` raises the first file's error (in order); ``"return"`` puts the
        :class:`~setflow.coding.format.CodecError` in that file's place and decodes the others.
        """
        if errors not in ("raise", "return"):
            raise ValueError(f"errors must be 'raise' or 'return', got {errors!r}")
        out: list = [None] * len(files)
        todo = []
        for i, data in enumerate(files):
            try:
                header, words, n = self._open(data)
                todo.append((i, header, open_decoder(words), words, n))
            except CodecError as e:
                out[i] = e
        with deterministic_cpu():
            decoded = self._decode([(coder, words, n) for _, _, coder, words, n in todo])
        for (i, header, _, _, _), x in zip(todo, decoded):
            if not isinstance(x, Exception):
                try:
                    with codec_errors():
                        x = from_model_layout(x, header.shape, header.layout)
                    if image_crc(x, header.dtype) != header.image_crc:
                        raise DecodeMismatchError(
                            "decoded image fails its checksum (encoder/decoder disagree); refusing it")
                    x = x.astype(header.dtype)
                    x = torch.from_numpy(x) if as_tensor else x
                except CodecError as e:
                    x = e
            out[i] = x
        if errors == "raise":
            for x in out:
                if isinstance(x, Exception):
                    raise x
        return out

    def bits(self, x: ArrayLike) -> np.ndarray:
        """Analytic ``-log2 P(x)`` per image (``(B,)``) under the float64 model (before the
        parameter grid of the split priors' tables)."""
        _, xb, _ = self._prepare(x)
        out = []
        with deterministic_cpu():
            for img in xb:
                xt = torch.from_numpy(np.ascontiguousarray(img)).to(torch.float64).unsqueeze(0)
                out.append(-sum(_log2_prob(z, params) for z, params in self.net.split_latents(xt, with_params=True)))
        return np.array(out)

    @staticmethod
    def header(data: bytes) -> Header:
        """Parse and verify a file's header (checksum included) without decoding."""
        return unpack(data)[0]
