"""Wire format of task results: plain dicts holding raw little-endian array bytes.

Results go through the result backend as msgpack (binary-safe, never pickle)::

    {"shape": [2, 300], "dtype": "float32", "data": b"...",   # the array
     "missing": [1], "oov": ["qwxz"],                         # out-of-vocabulary positions, tokens
     "model": "news", "version": 4}                           # what produced it

For a padded batch (shape ``(batch, max_len, dim)``) ``missing`` and ``oov``
hold one list per document. The Redis result backend stores *and* PUBLISHes
every result, and Redis cuts pubsub clients off past 32 MB, so the tasks
refuse, before doing any work, requests whose array would exceed
:data:`MAX_RESULT_BYTES` (8 MiB, ``VECTORSTORE_MAX_RESULT_BYTES``).

>>> r = pack(np.arange(6, dtype=np.float32).reshape(2, 3), [1], ["zz"], "m", 1)
>>> as_array(r).tolist(), r["oov"]
([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]], ['zz'])
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import ResultTooLargeError

#: Output dtypes a task can return, and their byte layout on the wire.
DTYPES = {"float32": "<f4", "float16": "<f2"}
#: Default bound of one result's array bytes: well under Redis's 32 MB pubsub cut-off.
MAX_RESULT_BYTES = 8 * 2**20
#: Serializations of task arguments and of results; workers and clients must agree,
#: since a result backend decodes with its own ``result_serializer``.
TASK_SERIALIZER = "json"
RESULT_SERIALIZER = "msgpack"
#: The only serializations workers and clients accept (no pickle).
CONTENT_TYPES = ["json", "msgpack"]


def pack(array: np.ndarray, missing: list, oov: list, model: str, version: int) -> dict[str, Any]:
    """The result dict of ``array`` (converted to little-endian bytes of its dtype)."""
    dtype = np.dtype(array.dtype).name
    wire = np.ascontiguousarray(array, dtype=DTYPES[dtype])
    return {"shape": list(wire.shape), "dtype": dtype, "data": wire.tobytes(),
            "missing": missing, "oov": oov, "model": model, "version": version}


def as_array(result: dict[str, Any]) -> np.ndarray:
    """The numpy array (a new, writable one) of a ``vectorize_document``,
    ``embed_document`` or padded ``vectorize_documents`` result.

    >>> as_array(app.send_task("tasks.vectorize_document", [["a", "b"]]).get())  # doctest: +SKIP
    array([[...], [...]], dtype=float32)
    (2, 300)
    """
    try:
        shape, dtype, data = result["shape"], result["dtype"], result["data"]
    except (TypeError, KeyError):
        raise ValueError("not a vectorize result: expected a dict with shape, dtype and data, "
                         f"got {type(result).__name__}") from None
    if dtype not in DTYPES:
        raise ValueError(f"result has unknown dtype {dtype!r}; expected one of {sorted(DTYPES)}")
    if not isinstance(data, (bytes, bytearray)) or not isinstance(shape, (list, tuple)) \
            or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise ValueError(f"result has a malformed shape {shape!r} or data of type "
                         f"{type(data).__name__}")
    expected = int(np.prod(shape)) * np.dtype(DTYPES[dtype]).itemsize
    if len(data) != expected:
        raise ValueError(f"result data has {len(data)} bytes, shape {shape} of {dtype} "
                         f"needs {expected}")
    return np.frombuffer(data, dtype=DTYPES[dtype]).astype(dtype).reshape(shape)


def as_arrays(result: dict[str, Any] | Sequence[dict[str, Any]]
              ) -> list[np.ndarray] | np.ndarray:
    """The arrays of a ``vectorize_documents`` result: a list of matrices, or with
    ``max_len`` one ``(batch, max_len, dim)`` array.

    >>> r = app.send_task("tasks.vectorize_documents", [[["a"], ["b", "c"]]])  # doctest: +SKIP
    >>> as_arrays(r.get())                                                   # doctest: +SKIP
    [array([[...]], dtype=float32), array([[...], [...]], dtype=float32)]
    """
    if isinstance(result, dict):
        return as_array(result)
    return [as_array(r) for r in result]


def result_bytes(shape: Sequence[int], dtype: str) -> int:
    """Bytes of the array a result with ``shape`` and ``dtype`` carries."""
    return int(np.prod(shape)) * np.dtype(DTYPES[dtype]).itemsize


def check_size(shape: Sequence[int], dtype: str, limit: int, what: str = "result",
               oov: Sequence[str] | Sequence[Sequence[str]] = ()) -> None:
    """Raise ResultTooLargeError if an array of ``shape``, plus the ``oov`` tokens the
    result echoes (one list, or one list per document), would exceed ``limit`` bytes.

    >>> check_size((2, 3), "float32", 100, oov=["x" * 80])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    tasks.errors.ResultTooLargeError: result would be 0.0 MiB (2 x 3 float32 + 80 bytes of OOV tokens), ...
    """
    echoed = sum(len(t.encode("utf-8")) if isinstance(t, str) else sum(len(u.encode("utf-8")) for u in t)
                 for t in oov)
    size = result_bytes(shape, dtype) + echoed
    if size > limit:
        dims = " x ".join(map(str, shape))
        extra = f" + {echoed} bytes of OOV tokens" if echoed else ""
        raise ResultTooLargeError(
            f"{what} would be {size / 2**20:.1f} MiB ({dims} {dtype}{extra}), over the "
            f"{limit / 2**20:.1f} MiB result limit (VECTORSTORE_MAX_RESULT_BYTES): pass max_len, "
            f"dtype='float16' or fewer tokens per request"
        )
