"""Checks of a task's arguments, made before any work, with messages naming what is wrong.

Arguments arrive as JSON, so a document must be a list of strings; anything
else is rejected with a :class:`~tasks.errors.TaskInputError` subclass.

>>> check_document(["fast", "car"], max_tokens=10)
['fast', 'car']
>>> check_document("fast car", max_tokens=10)
Traceback (most recent call last):
...
tasks.errors.InvalidDocumentError: document must be a list of str tokens, got str 'fast car'
>>> check_options(max_len=None, oov="drop", dtype="float32", normalize=False, max_tokens=10)
Traceback (most recent call last):
...
tasks.errors.InvalidOptionError: oov must be one of 'zero', 'skip', 'error', 'subword'; got 'drop'
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from vectorstore.keys import check_name

from .errors import (DocumentTooLongError, InvalidDocumentError, InvalidOptionError,
                     UnknownModelError)
from .results import DTYPES

OOV_POLICIES = ("zero", "skip", "error", "subword")  # subword: fastText .bin models only


@dataclass(frozen=True)
class Options:
    """Validated options of ``vectorize_document(s)``."""

    max_len: Optional[int]
    oov: str
    dtype: str
    normalize: bool


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_document(tokens: Any, max_tokens: int, where: str = "document") -> list[str]:
    """``tokens`` if it is a non-empty list of at most ``max_tokens`` strings."""
    if not isinstance(tokens, list):
        raise InvalidDocumentError(
            f"{where} must be a list of str tokens, got {type(tokens).__name__} {_short(tokens)}")
    if not tokens:
        raise InvalidDocumentError(f"{where} is empty: give at least one token")
    if len(tokens) > max_tokens:
        raise DocumentTooLongError(
            f"{where} has {len(tokens)} tokens, the limit is {max_tokens} "
            f"(VECTORSTORE_MAX_TOKENS): split it")
    for i, token in enumerate(tokens):
        if not isinstance(token, str):
            raise InvalidDocumentError(
                f"token {i} of {where} is {type(token).__name__} {_short(token)}, expected str")
    return tokens


def check_documents(docs: Any, max_tokens: int) -> list[list[str]]:
    """``docs`` if it is a non-empty list of valid documents with at most ``max_tokens``
    tokens in all; errors name the document."""
    if not isinstance(docs, list):
        raise InvalidDocumentError(
            f"docs must be a list of documents (lists of str), got {type(docs).__name__} "
            f"{_short(docs)}")
    if not docs:
        raise InvalidDocumentError("docs is empty: give at least one document")
    total = sum(len(d) for d in docs if isinstance(d, list))
    if total > max_tokens:
        raise DocumentTooLongError(
            f"docs have {total} tokens in all, the limit per request is {max_tokens} "
            f"(VECTORSTORE_MAX_TOKENS): send fewer documents per task")
    return [check_document(d, max_tokens, f"document {i}") for i, d in enumerate(docs)]


def check_options(max_len: Any, oov: Any, dtype: Any, normalize: Any,
                  max_tokens: int) -> Options:
    """Validated :class:`Options`."""
    if max_len is not None and (not isinstance(max_len, int) or isinstance(max_len, bool)
                                or not 1 <= max_len <= max_tokens):
        raise InvalidOptionError(
            f"max_len must be null or an integer from 1 to {max_tokens}; got {_short(max_len)}")
    if oov not in OOV_POLICIES:
        raise InvalidOptionError(
            f"oov must be one of {', '.join(map(repr, OOV_POLICIES))}; got {_short(oov)}")
    if dtype not in DTYPES:
        raise InvalidOptionError(
            f"dtype must be one of {', '.join(map(repr, DTYPES))}; got {_short(dtype)}")
    if not isinstance(normalize, bool):
        raise InvalidOptionError(f"normalize must be true or false; got {_short(normalize)}")
    return Options(max_len, oov, dtype, normalize)


def check_flag(name: str, value: Any) -> bool:
    """``value`` if it is a bool."""
    if not isinstance(value, bool):
        raise InvalidOptionError(f"{name} must be true or false; got {_short(value)}")
    return value


def check_weights(weights: Any, count: int) -> np.ndarray:
    """Float32 weights: ones if ``weights`` is None, else its ``count`` finite numbers."""
    if weights is None:
        return np.ones(count, dtype=np.float32)
    if not isinstance(weights, list) or len(weights) != count or not all(
            isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights):
        raise InvalidOptionError(
            f"weights must be null or a list of {count} numbers (one per token); "
            f"got {_short(weights)}")
    out = np.asarray(weights, dtype=np.float32)
    if not np.isfinite(out).all():
        raise InvalidOptionError("weights must be finite numbers")
    return out


def check_model(model: Any, default: Optional[str]) -> str:
    """The model name to use: ``model``, else the workers' ``VECTORSTORE_MODEL``."""
    if model is None:
        if default is None:
            raise UnknownModelError(
                "no model named: pass model=NAME or set VECTORSTORE_MODEL on the workers")
        return default
    try:
        return check_name(model)
    except ValueError as exc:
        raise InvalidOptionError(str(exc)) from None
