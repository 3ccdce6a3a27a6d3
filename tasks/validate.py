"""Checks of a task's arguments, made before any work, with messages naming what is wrong.

Arguments arrive as JSON, so a document must be a list of strings; anything
else is rejected with a :class:`~tasks.errors.TaskInputError` subclass.

>>> check_document(["fast", "car"], max_tokens=10)
['fast', 'car']
>>> check_document("fast car", max_tokens=10)
Traceback (most recent call last):
...
tasks.errors.InvalidDocumentError: document must be a list of str tokens, got str 'fast car'
>>> check_options(max_len=None, oov="drop", dtype="float32", normalize=False,
...               max_tokens=10)  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
tasks.errors.InvalidOptionError: oov must be one of 'zero', 'skip', 'error', 'subword' or null ...; got 'drop'
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from vectorstore.keys import check_name

from .errors import DocumentTooLongError, InvalidDocumentError, InvalidOptionError, UnknownModelError
from .results import DTYPES

OOV_POLICIES = ("zero", "skip", "error", "subword")  # subword: fastText .bin models only
#: Default bound of one token's length (``VECTORSTORE_MAX_TOKEN_CHARS``): OOV tokens are
#: echoed in results, and no word model has tokens anywhere near this long.
MAX_TOKEN_CHARS = 1000
_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class Options:
    """Validated options of ``vectorize_document(s)``."""

    max_len: int | None
    oov: str | None  # None: the model's default, see default_oov
    dtype: str
    normalize: bool


def _short(value: Any) -> str:
    try:
        text = repr(value)
    except ValueError:  # an int past Python's 4300-digit conversion limit
        text = f"<{type(value).__name__} too large to show>"
    return text if len(text) <= 60 else text[:57] + "..."


def check_document(tokens: Any, max_tokens: int, where: str = "document",
                   max_chars: int = MAX_TOKEN_CHARS) -> list[str]:
    """``tokens`` if it is a non-empty list of at most ``max_tokens`` strings of valid
    Unicode (UTF-8 encodable) of at most ``max_chars`` characters each.

    >>> check_document(["ok", "\\udcff"], max_tokens=10)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    tasks.errors.InvalidDocumentError: token 1 of document '\\udcff' is not valid Unicode ...
    """
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
        if len(token) > max_chars:
            raise InvalidDocumentError(
                f"token {i} of {where} has {len(token)} characters, the limit is {max_chars} "
                f"(VECTORSTORE_MAX_TOKEN_CHARS): {_short(token)}")
    try:
        "".join(tokens).encode("utf-8")
    except UnicodeEncodeError:
        i, token, exc = next((i, t, e) for i, t in enumerate(tokens) for e in _encode_error(t))
        raise InvalidDocumentError(
            f"token {i} of {where} {_short(token)} is not valid Unicode (lone surrogate at "
            f"character {exc.start}): tokens must be UTF-8 text") from None
    return tokens


def _encode_error(token: str) -> list[UnicodeEncodeError]:
    try:
        token.encode("utf-8")
    except UnicodeEncodeError as exc:
        return [exc]
    return []


def check_documents(docs: Any, max_tokens: int,
                    max_chars: int = MAX_TOKEN_CHARS) -> list[list[str]]:
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
    return [check_document(d, max_tokens, f"document {i}", max_chars) for i, d in enumerate(docs)]


def check_options(max_len: Any, oov: Any, dtype: Any, normalize: Any,
                  max_tokens: int) -> Options:
    """Validated :class:`Options`."""
    if max_len is not None and (not isinstance(max_len, int) or isinstance(max_len, bool)
                                or not 1 <= max_len <= max_tokens):
        raise InvalidOptionError(
            f"max_len must be null or an integer from 1 to {max_tokens}; got {_short(max_len)}")
    if oov is not None and (not isinstance(oov, str) or oov not in OOV_POLICIES):
        raise InvalidOptionError(
            f"oov must be one of {', '.join(map(repr, OOV_POLICIES))} or null (the "
            f"model's default: 'subword' for a fastText .bin model, else 'zero'); "
            f"got {_short(oov)}")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise InvalidOptionError(
            f"dtype must be one of {', '.join(map(repr, DTYPES))}; got {_short(dtype)}")
    if not isinstance(normalize, bool):
        raise InvalidOptionError(f"normalize must be true or false; got {_short(normalize)}")
    return Options(max_len, oov, dtype, normalize)


def default_oov(opts: Options, subwords: bool) -> Options:
    """``opts`` with the model's default for ``oov`` None: ``"subword"`` for a fastText
    model loaded from its ``.bin`` (``subwords``: it has n-grams), as gensim's
    ``FastTextKeyedVectors`` gives every word a vector; ``"zero"`` for any other.

    >>> default_oov(Options(None, None, "float32", False), subwords=True).oov
    'subword'
    >>> default_oov(Options(None, "zero", "float32", False), subwords=True).oov
    'zero'
    """
    if opts.oov is not None:
        return opts
    return replace(opts, oov="subword" if subwords else "zero")


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
    try:
        wide = np.asarray(weights, dtype=np.float64)
    except OverflowError:
        wide = np.array([np.inf])
    if not (np.isfinite(wide).all() and (np.abs(wide) <= _FLOAT32_MAX).all()):
        raise InvalidOptionError(
            f"weights must be finite numbers within float32's range (|w| <= 3.4e38); "
            f"got {_short(weights)}")
    return wide.astype(np.float32)


def check_model(model: Any, default: str | None) -> str:
    """The model name to use: ``model``, else the workers' ``VECTORSTORE_MODEL``."""
    if model is None:
        if default is None:
            raise UnknownModelError(
                "no model named: pass model=NAME or set VECTORSTORE_MODEL on the workers")
        return default
    if not isinstance(model, str) or len(model) > 128:
        raise InvalidOptionError(f"model must be null or a model name (1-128 characters from "
                                 f"A-Z a-z 0-9 _ . -); got {_short(model)}")
    try:
        return check_name(model)
    except ValueError as exc:
        raise InvalidOptionError(str(exc)) from None
