"""The one interface of setflow's lossless codecs (images: :class:`~setflow.coding.codec.IDFCodec`,
pixel sets: :class:`~setflow.coding.sets.SetCodec`).

A codec is bound to one model and its coding settings and has:

- ``compress(x) -> bytes``: one self-describing file (header, model fingerprint, checksum of ``x``);
- ``decompress(data) -> x``: ``x`` back bit for bit, or a :class:`~setflow.coding.format.CodecError`
  (a damaged file, another model, a decoder that disagrees): never a wrong result;
- ``bits(x) -> (B,)``: the ideal code length of each item under the model, in bits;
- ``header(data)``: the container parsed and checked without decoding;
- ``fingerprint``: 8 bytes naming the weights, config and settings; every file carries it and
  :meth:`Codec.check_fingerprint` refuses a file of another model in one way for both codecs.

Written once here: :func:`weights_fingerprint` (SHA-256 over a tag, the format version, settings and
the float64 weights), :meth:`Codec.check_fingerprint` and :meth:`Codec.verify` (decode a fresh file
and compare it with its input, so ``compress`` can check its own output).

Example::

    >>> from setflow.coding import IDFCodec, SetCodec
    >>> issubclass(IDFCodec, Codec) and issubclass(SetCodec, Codec)
    True
"""

from __future__ import annotations

import abc
import hashlib
import json
from typing import Any

import numpy as np
import torch
from torch import nn

from setflow.coding.format import DecodeMismatchError, ModelMismatchError

__all__ = ["Codec", "weights_fingerprint"]


def weights_fingerprint(tag: str, version: int, model: nn.Module, *settings: Any, weight_dtypes: bool = True) -> bytes:
    """8 bytes of SHA-256 over ``tag``, the format ``version``, each of ``settings`` (as sorted JSON)
    and the weights of ``model`` (floating tensors as float64, so the model's dtype does not matter).

    ``weight_dtypes``: hash each tensor's dtype name beside its name and shape (the image codec's
    files do; the set codec's version-2 files do not, and keep doing so, so old files still decode).
    """
    h = hashlib.sha256(tag.encode() + b"\0" + bytes([version]))
    for s in settings:
        h.update(json.dumps(s, sort_keys=True, default=str).encode())
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().to("cpu")
        if t.is_floating_point():
            t = t.to(torch.float64)
        h.update(name.encode() + b"\0" + (str(t.dtype).encode() if weight_dtypes else b"") + str(tuple(t.shape)).encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.digest()[:8]


class Codec(abc.ABC):
    """Base of setflow's codecs: the contract in the module docstring.

    A subclass sets :attr:`fingerprint` when it is built and writes the four coding methods; it may
    override :meth:`same` where two inputs code the same (a set codec ignores the order of points).
    """

    #: 8 bytes over the weights, the model config and the codec settings
    fingerprint: bytes

    @abc.abstractmethod
    def compress(self, x: Any) -> bytes:
        """One file holding ``x``."""

    @abc.abstractmethod
    def decompress(self, data: bytes) -> Any:
        """``x`` from the bytes of :meth:`compress`, bit for bit, or a ``CodecError``."""

    @abc.abstractmethod
    def bits(self, x: Any) -> np.ndarray:
        """Ideal code length in bits of each item of ``x`` under the model, ``(B,)`` float64."""

    @abc.abstractmethod
    def header(self, data: bytes) -> Any:
        """The file's header, parsed and checked (checksum included) without decoding."""

    def check_fingerprint(self, found: bytes) -> None:
        """Raise :class:`ModelMismatchError` unless a file's fingerprint ``found`` is this codec's."""
        if bytes(found) != self.fingerprint:
            raise ModelMismatchError(
                "this file was compressed with a different model or codec settings "
                f"(file fingerprint {bytes(found).hex()}, model {self.fingerprint.hex()})")

    def same(self, x: Any, back: Any) -> bool:
        """Whether ``back`` (decoded) is the input ``x``: equal values, shape and dtype."""
        x, back = (np.asarray(a.detach().cpu() if isinstance(a, torch.Tensor) else a) for a in (x, back))
        return x.dtype == back.dtype and x.shape == back.shape and np.array_equal(x, back)

    def verify(self, x: Any, data: bytes) -> None:
        """Decode ``data`` and raise :class:`DecodeMismatchError` unless it gives ``x`` back (a
        ``CodecError`` of the decoder is raised as it is)."""
        if not self.same(x, self.decompress(data)):
            raise DecodeMismatchError("the compressed file does not decode back to its input")
