"""fastText subword vectors: the n-gram buckets of tokens and how their rows combine.

A fastText model hashes every character n-gram of ``"<" + token + ">"`` (from
``minn`` to ``maxn`` characters) into one of ``bucket`` rows. Exactly as
gensim's ``FastTextKeyedVectors``:

* a token outside the vocabulary gets the mean of its n-grams' rows (a bucket
  hit twice counts twice), or a zero vector if it has no n-gram;
* a vocabulary word's vector is its own row plus its n-grams' rows, divided by
  the number of n-grams + 1 (computed once, by the loader).

Rows are summed in the order of the n-grams, in float32, like gensim, so the
results are bit-identical to gensim's. Hashing is gensim's compiled
``ft_ngram_hashes`` (fastText's FNV-1a over the UTF-8 bytes).

>>> params = SubwordParams(minn=3, maxn=4, bucket=10)
>>> plan = NgramPlan(["ab", "b"], params)
>>> plan.counts.tolist()                    # <ab ab> <ab> and <b>
[3, 1]
>>> rows = np.ones((len(plan.buckets), 2), dtype=np.float32)
>>> plan.means(rows).tolist()
[[1.0, 1.0], [1.0, 1.0]]
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import chain

import numpy as np
from gensim.models.fasttext import ft_ngram_hashes

from .errors import CorruptValueError

HASH = "fasttext"  # the only n-gram hashing there is: fastText's (gensim's compatible_hash)
_FIELDS = ("subword_minn", "subword_maxn", "subword_buckets")
_BLOCK = 8  # n-gram positions gathered at once by NgramPlan.sums


@dataclass(frozen=True)
class SubwordParams:
    """The n-gram parameters of a fastText model: lengths ``minn``..``maxn``, ``bucket`` rows."""

    minn: int
    maxn: int
    bucket: int

    def to_extra(self) -> dict[str, str]:
        """Fields of the version's metadata (:attr:`vectorstore.codec.Meta.extra`)."""
        return {"subword_hash": HASH, "subword_minn": str(self.minn),
                "subword_maxn": str(self.maxn), "subword_buckets": str(self.bucket)}

    @classmethod
    def from_extra(cls, extra: Mapping[str, str]) -> SubwordParams | None:
        """The parameters stored by :meth:`to_extra`, or None for a model without subwords.

        >>> SubwordParams.from_extra(SubwordParams(3, 6, 2_000_000).to_extra())
        SubwordParams(minn=3, maxn=6, bucket=2000000)
        >>> SubwordParams.from_extra({"format": "glove"}) is None
        True
        """
        if "subword_hash" not in extra:
            return None
        if extra["subword_hash"] != HASH:
            raise CorruptValueError(f"model's n-grams are hashed with {extra['subword_hash']!r}, "
                                    f"this vectorstore knows only {HASH!r}: reload the model")
        try:
            minn, maxn, bucket = (int(extra[k]) for k in _FIELDS)
        except (KeyError, ValueError) as exc:
            raise CorruptValueError(f"model's subword metadata is incomplete or invalid: "
                                    f"{exc}") from None
        if bucket < 1 or minn < 0 or maxn < 0:
            raise CorruptValueError(f"model's subword metadata is invalid: minn={minn}, "
                                    f"maxn={maxn}, buckets={bucket}")
        return cls(minn, maxn, bucket)

    def buckets(self, token: str) -> list[int]:
        """The bucket of each n-gram of ``token``, in order (repeats kept).

        >>> SubwordParams(3, 6, 2_000_000).buckets("é😀")
        [460090, 1939148, 1029238]
        """
        return ft_ngram_hashes(token, self.minn, self.maxn, self.bucket)


class NgramPlan:
    """The n-gram buckets of some tokens, deduplicated across them.

    ``hashes`` may give tokens' buckets already computed (:meth:`SubwordParams.buckets`).

    Attributes:
        buckets: each bucket needed, once (ascending); the rows given to
            :meth:`sums` and friends follow this order.
        counts: number of n-grams of each token.
    """

    def __init__(self, tokens: Sequence[str], params: SubwordParams,
                 hashes: Mapping[str, list[int]] | None = None) -> None:
        known = hashes or {}
        per_token = [known[t] if t in known else params.buckets(t) for t in tokens]
        self.counts = np.fromiter(map(len, per_token), dtype=np.intp, count=len(per_token))
        total = int(self.counts.sum())
        flat = np.fromiter(chain.from_iterable(per_token), dtype=np.int64, count=total)
        unique, inverse = np.unique(flat, return_inverse=True)
        self.buckets: list[int] = unique.tolist()
        # row k of a token's n-grams, or len(buckets): a zero row, after its last n-gram
        self._at = np.full((len(per_token), int(self.counts.max(initial=0))), len(unique),
                           dtype=np.intp)
        starts = np.cumsum(self.counts) - self.counts
        row = np.repeat(np.arange(len(per_token)), self.counts)
        self._at[row, np.arange(total) - starts[row]] = inverse

    def __len__(self) -> int:
        return len(self.counts)

    def sums(self, rows: np.ndarray, start: np.ndarray | None = None) -> np.ndarray:
        """Per token, ``start`` (zeros by default) plus its n-grams' rows, added in order."""
        acc = (np.zeros((len(self), rows.shape[1]), dtype=np.float32) if start is None
               else np.array(start, dtype=np.float32))
        # gather a block of positions at once, then add position by position: adding the
        # zero row after a token's last n-gram leaves its sum unchanged, so each sum is
        # gensim's, in gensim's order (blocks bound the memory: one word may have 100s)
        padded = np.concatenate([rows, np.zeros((1, rows.shape[1]), dtype=np.float32)])
        for first in range(0, self._at.shape[1], _BLOCK):
            gathered = padded[self._at[:, first:first + _BLOCK]]
            for k in range(gathered.shape[1]):
                acc += gathered[:, k]
        return acc

    def means(self, rows: np.ndarray) -> np.ndarray:
        """gensim's vector of out-of-vocabulary tokens: the mean of their n-gram rows.

        A token without n-grams gets a zero row.
        """
        acc = self.sums(rows)
        np.divide(acc, self.counts[:, None].astype(np.float32), out=acc,
                  where=self.counts[:, None] > 0)
        return acc

    def units(self, rows: np.ndarray) -> np.ndarray:
        """gensim's ``get_vector(token, norm=True)`` of out-of-vocabulary tokens.

        The sum of the rows divided by its norm (a zero row for no n-gram),
        computed as gensim does, row by row.
        """
        acc = self.sums(rows)
        for i in np.flatnonzero(self.counts):
            acc[i] = acc[i] / np.linalg.norm(acc[i])
        return acc

    def words(self, rows: np.ndarray, own: np.ndarray) -> np.ndarray:
        """Vocabulary words' vectors: own row plus n-gram rows, over (n-grams + 1).

        ``own`` holds the words' rows of the input matrix; gensim's ``adjust_vectors``.
        """
        acc = self.sums(rows, start=own)
        acc /= (self.counts + 1)[:, None].astype(np.float32)
        return acc
