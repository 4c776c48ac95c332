"""Lossless image compression with integer discrete flows: ``IDFCodec(model).compress(x) -> bytes``.

See :mod:`setflow.coding.codec` (the coding path and its determinism), :mod:`setflow.coding.tables`
(categorical rows with an escape, ``constriction`` ANS) and :mod:`setflow.coding.format` (the file).
"""

from setflow.coding.codec import IDFCodec, deterministic_cpu, load_idf, model_fingerprint
from setflow.coding.format import (
    CodecError,
    CorruptFileError,
    DecodeMismatchError,
    FormatError,
    Header,
    ModelMismatchError,
)
from setflow.coding.tables import TableSpec

__all__ = [
    "IDFCodec",
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
