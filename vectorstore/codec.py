"""Byte format of stored vectors and model metadata.

A stored value is the vector as raw little-endian floats (``<f4`` or ``<f2``)
followed by the token's index as a little-endian uint32. Nothing here can run
code: values are decoded with :func:`numpy.frombuffer` after a length check.

>>> c = Codec(dim=3, dtype="float16")
>>> vals = c.encode(np.array([[1, 2, 3], [4, 5, 6]], dtype=np.float32), start=7)
>>> [len(v) for v in vals]
[10, 10]
>>> c.decode(vals).tolist(), c.decode_indexes(vals).tolist()
([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], [7, 8])
"""
from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import CorruptValueError

LAYOUT_VERSION = 1
DTYPES = {"float32": "<f4", "float16": "<f2"}


def check_dtype(dtype: str) -> str:
    """Return ``dtype`` if it is a supported stored dtype, else raise ValueError."""
    if dtype not in DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}: choose one of {sorted(DTYPES)}")
    return dtype


class Codec:
    """Encode and decode the vectors of one model (``dim`` floats of ``dtype``)."""

    def __init__(self, dim: int, dtype: str = "float32") -> None:
        if not isinstance(dim, int) or dim <= 0:
            raise ValueError(f"vector dimension must be a positive integer, got {dim!r}")
        self.dim = dim
        self.dtype = check_dtype(dtype)
        self.payload = dim * np.dtype(DTYPES[dtype]).itemsize
        self.size = self.payload + 4
        self._record = np.dtype([("v", DTYPES[dtype], (dim,)), ("i", "<u4")])

    def encode(self, vectors: np.ndarray, start: int) -> list[bytes]:
        """Values for ``vectors`` (n x dim) whose indexes run from ``start``."""
        n = len(vectors)
        rec = np.empty(n, dtype=self._record)
        rec["v"] = vectors
        rec["i"] = np.arange(start, start + n, dtype=np.uint32)
        blob, size = rec.tobytes(), self.size
        return [blob[i * size:(i + 1) * size] for i in range(n)]

    def frame(self, vectors: np.ndarray, start: int, head: bytes = b"",
              tail: bytes = b"") -> np.ndarray:
        """The values of :meth:`encode`, each between ``head`` and ``tail``, in one
        ``n x (len(head) + size + len(tail))`` uint8 array: the loader frames them as
        the bulk strings of its ``MSETNX`` without a Python step per value.

        >>> Codec(dim=1).frame(np.array([[1.0]], dtype=np.float32), 5, b"<", b">").tobytes()
        b'<\\x00\\x00\\x80?\\x05\\x00\\x00\\x00>'
        """
        n, h = len(vectors), len(head)
        width = h + self.size + len(tail)
        layout = np.dtype({"names": ["v", "i"], "formats": [self._record["v"], "<u4"],
                           "offsets": [h, h + self.payload], "itemsize": width})
        rec = np.empty(n, dtype=layout)
        rec["v"] = vectors
        rec["i"] = np.arange(start, start + n, dtype=np.uint32)
        out = rec.view(np.uint8).reshape(n, width)
        out[:, :h] = np.frombuffer(head, dtype=np.uint8)
        out[:, h + self.size:] = np.frombuffer(tail, dtype=np.uint8)
        return out

    def bad_lengths(self, values: Sequence[bytes]) -> list[int]:
        """Positions of the values whose length is not :attr:`size`."""
        return [i for i, v in enumerate(values) if len(v) != self.size]

    def records(self, values: Sequence[bytes]) -> np.ndarray:
        """Stored values as a structured array (fields ``v``: vector, ``i``: index)."""
        if values and set(map(len, values)) != {self.size}:
            bad = len(values[self.bad_lengths(values)[0]])
            raise CorruptValueError(
                f"stored vector has {bad} bytes, expected {self.size} "
                f"({self.dim} x {self.dtype} + 4-byte index)"
            )
        return np.frombuffer(b"".join(values), dtype=self._record)

    def decode(self, values: Sequence[bytes]) -> np.ndarray:
        """A float32 matrix (len(values) x dim) from stored values."""
        return self.records(values)["v"].astype(np.float32).reshape(len(values), self.dim)

    def decode_indexes(self, values: Sequence[bytes]) -> np.ndarray:
        """The token indexes stored with ``values``."""
        return self.records(values)["i"].astype(np.int64)


def checksum_digest(stored: str = "") -> Any:
    """A new hash for a model's checksum (tokens and stored vector bytes, see the loader).

    SHA-256 (~1.7 GB/s on this project's machine, with SHA-NI instructions), or blake2b
    (~0.75 GB/s, what loads wrote before) to check a ``stored`` checksum of 128 hex
    digits, so that older models still verify.

    >>> checksum_digest().name, checksum_digest("ab" * 64).name
    ('sha256', 'blake2b')
    """
    return hashlib.blake2b() if len(stored) == 128 else hashlib.sha256()


def alias_version(raw: bytes | str | None, key: str) -> int | None:
    """The version number a model's alias (``key``) holds, None if it holds nothing.

    >>> alias_version(b"12", "vs:news#current")
    12
    >>> alias_version(b"abc", "vs:news#current")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    vectorstore.errors.CorruptValueError: the alias vs:news#current holds 'abc', not a ...
    """
    if raw is None:
        return None
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    if not (text.isascii() and text.isdigit() and int(text) >= 1):
        raise CorruptValueError(f"the alias {key} holds {text[:40]!r}, not a version number: "
                                f"reload or drop the model")
    return int(text)


@dataclass
class Meta:
    """Metadata of one model version, stored as a Redis hash."""

    version: int
    dim: int
    dtype: str
    count: int
    source: str = ""
    checksum: str = ""
    created_at: float = field(default_factory=time.time)
    layout: int = LAYOUT_VERSION
    state: str = "loading"
    extra: dict[str, str] = field(default_factory=dict)

    _INTS = ("version", "dim", "count", "layout")

    def to_hash(self) -> dict[str, str]:
        out = {k: str(getattr(self, k)) for k in
               ("version", "dim", "dtype", "count", "source", "checksum",
                "created_at", "layout", "state")}
        out.update(self.extra)
        return out

    @classmethod
    def from_hash(cls, raw: Mapping[bytes | str, bytes | str]) -> Meta:
        d = {(k.decode() if isinstance(k, bytes) else k):
             (v.decode() if isinstance(v, bytes) else v) for k, v in raw.items()}
        try:
            known: dict[str, Any] = {k: d.pop(k) for k in
                     ("version", "dim", "dtype", "count", "source", "checksum",
                      "created_at", "layout", "state") if k in d}
            for k in cls._INTS:
                known[k] = int(known[k])
            known["created_at"] = float(known.get("created_at", 0))
            check_dtype(known["dtype"])
        except (KeyError, ValueError) as exc:
            raise CorruptValueError(f"model metadata is incomplete or invalid: {exc}") from None
        if known["layout"] != LAYOUT_VERSION:
            raise CorruptValueError(
                f"model was stored with layout {known['layout']}, this vectorstore "
                f"reads layout {LAYOUT_VERSION}: reload the model"
            )
        return cls(extra=d, **known)

    def codec(self) -> Codec:
        return Codec(self.dim, self.dtype)
