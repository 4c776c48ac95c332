"""Lossless compression: images with integer discrete flows (``IDFCodec(model).compress(x) -> bytes``)
and pixel sets with a sorted-set model (``SetCodec(model).compress(sets)``), one interface
(:class:`~setflow.coding.base.Codec`: compress / decompress / bits / header / fingerprint).

See :mod:`setflow.coding.codec` (the image coding path and its determinism), :mod:`setflow.coding.sets`
(the set coding path and ``.sfs``), :mod:`setflow.coding.tables` (categorical rows with an escape,
``constriction`` ANS), :mod:`setflow.coding.format` (the ``.idf`` file) and :mod:`setflow.coding.cli`
(``setflow compress | decompress | progressive``).
"""

from setflow.coding.base import Codec, weights_fingerprint
from setflow.coding.codec import IDFCodec, deterministic_cpu, load_idf, model_fingerprint
from setflow.coding.format import (
    CodecError,
    CorruptFileError,
    DecodeMismatchError,
    FormatError,
    Header,
    ModelMismatchError,
)
from setflow.coding.sets import SetCodec
from setflow.coding.tables import TableSpec

__all__ = [
    "Codec",
    "IDFCodec",
    "SetCodec",
    "weights_fingerprint",
    "TableSpec",
    "Header",
    "deterministic_cpu",
    "model_fingerprint",
    "load_idf",
    "CodecError",
    "FormatError",
    "CorruptFileError",
    "ModelMismatchError",
    "DecodeMismatchError",
]
