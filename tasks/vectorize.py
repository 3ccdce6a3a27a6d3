"""Documents to arrays with one store lookup per request (no Celery here).

Every request looks up the unique tokens of all its documents with ONE
:meth:`RedisKeyedVectors.lookup` (one MGET for the tokens not in the
process's cache), then gathers each document's rows from that.

>>> kv = RedisKeyedVectors("news")                                           # doctest: +SKIP
>>> opts = Options(max_len=None, oov="zero", dtype="float32", normalize=False)
>>> [m.shape for m, missing in vectorize(kv, [["fast", "car"], ["qwxz"]], opts)]  # doctest: +SKIP
[(2, 300), (1, 300)]
"""
from __future__ import annotations

import numpy as np

from vectorstore import RedisKeyedVectors
from vectorstore.similarity import weighted_mean

from .errors import InvalidOptionError, OutOfVocabularyError
from .validate import Options


def unit_rows(rows: np.ndarray) -> np.ndarray:
    """Each row divided by its norm as gensim's ``get_vector(norm=True)``; zero rows stay zero."""
    norms = np.linalg.norm(rows, axis=1)
    out = np.zeros_like(rows)
    np.divide(rows, norms[:, None], out=out, where=norms[:, None] > 0)
    return out


def _oov_error(kv: RedisKeyedVectors, docs: list[list[str]], d: int,
               pos: int) -> OutOfVocabularyError:
    where = f"document {d}, " if len(docs) > 1 else ""
    return OutOfVocabularyError(
        f"{where}token {pos} {docs[d][pos]!r} is not in model {kv.name!r} (oov='error'); "
        f"use oov='zero' or 'skip' to accept unknown tokens")


def vectorize(kv: RedisKeyedVectors, docs: list[list[str]], opts: Options
              ) -> list[tuple[np.ndarray, list[int]]]:
    """For each document: its matrix (rows x dim, float32) and its OOV positions.

    With ``oov="skip"`` OOV rows are left out; with ``max_len`` each matrix is
    then cut or zero-padded to ``max_len`` rows. Other policies only look up
    the first ``max_len`` tokens, so OOV positions are below ``max_len``.
    With ``oov="subword"`` (fastText models loaded from their ``.bin``) OOV rows
    are the mean of their n-gram vectors, as gensim's ``FastTextKeyedVectors``.
    """
    if opts.max_len is not None and opts.oov != "skip":
        docs = [d[:opts.max_len] for d in docs]
    vocab = list(dict.fromkeys(t for d in docs for t in d))
    if opts.oov == "subword" and kv.subwords is None:
        raise InvalidOptionError(f"oov='subword' needs a fastText model loaded from its .bin "
                                 f"file (n-gram buckets); model {kv.name!r} has none")
    found = kv.lookup(vocab, oov="subword" if opts.oov == "subword" else "zero")
    vectors = unit_rows(found.vectors) if opts.normalize else found.vectors
    absent = np.zeros(len(vocab), dtype=bool)
    absent[found.missing] = True
    row_of = {t: i for i, t in enumerate(vocab)}
    out = []
    for d, doc in enumerate(docs):
        rows = np.fromiter((row_of[t] for t in doc), dtype=np.intp, count=len(doc))
        missing = np.flatnonzero(absent[rows]).tolist()
        if missing and opts.oov == "error":
            raise _oov_error(kv, docs, d, missing[0])
        if missing and opts.oov == "skip":
            rows = rows[~absent[rows]]
        matrix = vectors[rows]
        if opts.max_len is not None:
            matrix = fit(matrix, opts.max_len)
        out.append((matrix, missing))
    return out


def fit(matrix: np.ndarray, length: int) -> np.ndarray:
    """``matrix`` cut or zero-padded to ``length`` rows."""
    if len(matrix) >= length:
        return matrix[:length]
    out = np.zeros((length, matrix.shape[1]), dtype=matrix.dtype)
    out[:len(matrix)] = matrix
    return out


def mean_vector(kv: RedisKeyedVectors, tokens: list[str], weights: np.ndarray,
                pre_normalize: bool, post_normalize: bool, ignore_missing: bool
                ) -> tuple[np.ndarray, list[int]]:
    """The weighted mean vector of ``tokens`` and their OOV positions.

    Same semantics as gensim's ``KeyedVectors.get_mean_vector``: OOV tokens are
    left out (or raise if not ``ignore_missing``), each vector is unit-normed
    first if ``pre_normalize``, the sum is divided by the sum of ``|weights|``
    of the tokens used, and all tokens OOV gives a zero vector. A fastText model
    loaded from its ``.bin`` uses every token, OOV ones by their n-gram vectors
    (gensim's ``FastTextKeyedVectors``); their positions are still returned.
    """
    if kv.subwords is not None:
        found = kv.lookup(tokens, oov="subword")
        rows = unit_rows(found.vectors) if pre_normalize else found.vectors
        return weighted_mean(rows, weights, post_normalize, kv.vector_size), found.missing
    found = kv.lookup(tokens, oov="zero")
    if found.missing and not ignore_missing:
        raise _oov_error(kv, [tokens], 0, found.missing[0])
    keep = np.ones(len(tokens), dtype=bool)
    keep[found.missing] = False
    rows = found.vectors[keep]
    if pre_normalize:
        rows = unit_rows(rows)
    return weighted_mean(rows, weights[keep], post_normalize, kv.vector_size), found.missing
