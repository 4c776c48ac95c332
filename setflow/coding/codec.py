r"""``IDFCodec``: lossless image compression with an integer discrete flow and ANS coding.

Encoding one image ``x``:

1. run the flow data -> latent and collect every latent group with the parameters of its
   density: ``[y_0 | kept_0, ..., y_{L-2} | kept_{L-2}, z_top]``;
2. push the groups on one ANS stack in that order (:mod:`setflow.coding.tables`), so the
   decoder pops ``z_top`` first, then ``y_{L-2}`` (its density needs only ``z_top``), ... ``y_0``.

Decoding pops ``z_top``, inverts the top level, computes the split prior from the now known
kept channels, pops ``y``, concatenates, inverts the next level, and so on.

Determinism. Encoder and decoder must agree bit for bit on every rounded coupling shift
``round(t(x_a))`` and on every probability table. A float network's last bits can depend on
the batch size, the number of threads (which decides how reductions and vectorised loops are
split) and the dtype, and a flipped bit near ``.5`` flips a rounding. So both directions run
the *same* path: a private float64 CPU copy of the model, one image at a time, with
``torch.set_num_threads(1)`` inside the coder (restored afterwards) and autograd off. The
file carries a fingerprint of the weights, the model config and the codec settings, and a
CRC-32 of the image, so a different model, a damaged file or a decoder that disagrees (e.g.
another CPU's maths library) raises a :class:`~setflow.coding.format.CodecError` instead of
returning a wrong image.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
from typing import Iterator, Optional, Union

import constriction
import numpy as np
import torch
from torch import Tensor, nn

from setflow.coding.format import (
    FORMAT_VERSION,
    LAYOUT_CHANNELS_LAST,
    LAYOUT_PLAIN,
    MAX_ELEMENTS,
    SOURCE_ARRAY,
    CorruptFileError,
    DecodeMismatchError,
    FormatError,
    Header,
    ModelMismatchError,
    check_payload_bits,
    checked_product,
    codec_errors,
    dtype_code,
    image_crc,
    pack,
    unpack,
)
from setflow.coding.tables import TableSpec, decode_group, encode_group, log2_prob, make_table, open_decoder

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
    h = hashlib.sha256()
    h.update(b"setflow-idf-codec\0")
    h.update(bytes([FORMAT_VERSION]))
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    h.update(json.dumps(spec.as_dict(), sort_keys=True).encode())
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().to("cpu")
        if t.is_floating_point():
            t = t.to(torch.float64)
        h.update(name.encode() + b"\0" + str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.digest()[:8]


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


class IDFCodec:
    """Lossless codec for 8-bit images on top of a trained :class:`~setflow.models.idf.IDF`.

    Args:
        model: an IDF (any device/dtype; the codec keeps its own float64 CPU copy, so later
            changes to ``model`` do not affect the codec).
        spec: window/escape settings (:class:`~setflow.coding.tables.TableSpec`).

    Example:
        >>> from setflow.models.idf import IDF
        >>> model = IDF((1, 8, 8), num_levels=2, num_flows=1, hidden_channels=8, depth=1,
        ...             coupling="shallow", split_prior="shallow")
        >>> codec = IDFCodec(model)
        >>> x = np.random.default_rng(0).integers(0, 256, (1, 8, 8), dtype=np.uint8)
        >>> data = codec.compress(x)
        >>> np.array_equal(codec.decompress(data), x)
        True
    """

    def __init__(self, model: nn.Module, spec: Optional[TableSpec] = None) -> None:
        self.spec = spec or TableSpec()
        self.config = dict(getattr(model, "config", {}))
        net = copy.deepcopy(model).to(device="cpu", dtype=torch.float64).eval()
        for p in net.parameters():
            p.requires_grad_(False)
        self.net = net
        self.input_shape = tuple(int(s) for s in net.input_shape)
        self.fingerprint = model_fingerprint(net, self.config, self.spec)

    @classmethod
    def from_checkpoint(cls, path: str, spec: Optional[TableSpec] = None) -> "IDFCodec":
        """The codec of an IDF checkpoint written by the trainer (``setflow train``)."""
        return cls(load_idf(path)[0], spec)

    # ------------------------------------------------------------------ per image (the coding path)
    def _groups(self, x: np.ndarray) -> list:
        """Forward order ``[(latent, params), ...]`` of one ``(C, H, W)`` int64 image."""
        xt = torch.from_numpy(np.ascontiguousarray(x)).to(torch.float64).unsqueeze(0)
        return self.net.split_latents(xt, with_params=True)

    def _encode_image(self, coder, x: np.ndarray) -> None:
        for z, params in self._groups(x):  # forward order == reverse decode order
            encode_group(coder, z.reshape(-1).to(torch.int64).numpy(), make_table(params, self.spec))

    def _decode_image(self, coder) -> np.ndarray:
        shapes = self.net.latent_shapes()

        def pop(params, shape) -> Tensor:
            z = decode_group(coder, make_table(params, self.spec))
            return torch.from_numpy(z).to(torch.float64).reshape(1, *shape)

        z_top = pop(self.net.base.params(), shapes[-1])
        x = self.net.decode_top_down(z_top, lambda i, layer, kept: pop(layer.density.params(kept), shapes[i]))
        x = x[0].to(torch.int64).numpy()
        if x.min() < 0 or x.max() > 255:
            raise DecodeMismatchError("decoded values leave [0, 255]: the stream does not fit this model")
        return x

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
        """Compress one image or a batch (see :func:`to_model_layout` for the shapes) into bytes."""
        a, xb, layout = self._prepare(x)
        with deterministic_cpu():
            coder = constriction.stream.stack.AnsCoder()
            for i in reversed(range(xb.shape[0])):  # the stack pops image 0 first
                self._encode_image(coder, xb[i])
            words = coder.get_compressed()
        header = Header(a.dtype, tuple(a.shape), layout, source, self.fingerprint, image_crc(a))
        return pack(header, words)

    def decompress(self, data: bytes, as_tensor: bool = False) -> ArrayLike:
        """Decode bytes from :meth:`compress` to the original array (same shape and dtype).

        Raises:
            FormatError, CorruptFileError, ModelMismatchError, DecodeMismatchError: never
            returns an image that differs from the one compressed.
        """
        header, words = unpack(data)
        if header.fingerprint != self.fingerprint:
            raise ModelMismatchError(
                "this file was compressed with a different model or codec settings "
                f"(file fingerprint {header.fingerprint.hex()}, model {self.fingerprint.hex()})"
            )
        total = checked_product(header.shape, MAX_ELEMENTS)  # Python ints: no wrap-around
        per_image = math.prod(self.input_shape)
        if total % per_image:
            raise CorruptFileError(f"header shape {header.shape} does not fit the model input {self.input_shape}")
        n = total // per_image
        check_payload_bits(total, 32 * int(words.size), "latent values")  # e.g. 10^9 images in 200 bytes
        with deterministic_cpu(), codec_errors():
            coder = open_decoder(words)
            xs = []
            for i in range(n):
                if coder.is_empty():
                    raise CorruptFileError(f"the compressed stream ends after {i} of the {n} images in the header")
                xs.append(self._decode_image(coder))
            if not coder.is_empty():
                raise CorruptFileError("data left over after decoding: the stream does not fit this model")
            out = from_model_layout(np.stack(xs), header.shape, header.layout)
        if image_crc(out, header.dtype) != header.image_crc:
            raise DecodeMismatchError("decoded image fails its checksum (encoder/decoder disagree); refusing it")
        out = out.astype(header.dtype)
        return torch.from_numpy(out) if as_tensor else out

    def bits(self, x: ArrayLike) -> np.ndarray:
        """Analytic ``-log2 P(x)`` per image (``(B,)``) along the coding path (float64)."""
        _, xb, _ = self._prepare(x)
        out = []
        with deterministic_cpu():
            for img in xb:
                out.append(-sum(log2_prob(z, params) for z, params in self._groups(img)))
        return np.array(out)

    @staticmethod
    def header(data: bytes) -> Header:
        """Parse and verify a file's header (checksum included) without decoding."""
        return unpack(data)[0]
