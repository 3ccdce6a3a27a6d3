"""gensim's similarity API for RedisKeyedVectors, searched inside Redis (vector sets).

The worker never holds the model: Redis searches the version's vector set
(``VSIM``, see :mod:`vectorstore.index`) for candidates, the worker fetches
their raw float32 vectors with one MGET and scores them exactly as gensim
does (same formulas, same float32 arithmetic), so every score returned is
gensim's cosine, never the index's quantized one.

Two modes, per store (``RedisKeyedVectors(name, exact=True)``) or per call
(``exact=``):

* approximate (default): an HNSW search (``VSIM ... COUNT c EF ef``) returns
  ``c = max(2 * topn, topn + 20)`` candidates (plus the query's own keys),
  rescored exactly. ``search_ef`` trades speed for recall; by default it grows
  with the model (:func:`default_search_ef`: 100 up to 62k vectors, 400 at 1M).
* exact: Redis scans the whole set (``VSIM ... TRUTH``) for the ``C`` elements
  with the best index score ``s'``. For every element, ``|s' - s| <= err``,
  where ``s`` is the cosine gensim computes and ``err = dq + (1 + dq) * qerr +
  1e-4``: ``qerr`` is the largest distance between an indexed unit vector and
  its Q8 form (measured while building), ``dq`` the same for the query, and
  ``1e-4`` covers float32 rounding (``noquant``: ``err = 1e-4``). If fewer than
  ``C`` elements came back, every element was a candidate. Otherwise each
  element left out scores at most ``min(s' returned) + err``; when the
  ``topn``-th rescored candidate beats that, no element left out can enter the
  top ``topn``, so the result is gensim's. If not, ``C`` grows 8x (128, 1024,
  8192) and past that the worker streams all vectors in chunks of 8192 and
  ranks them itself (also what exact mode does on a ``bin`` index, whose
  error has no useful bound). ``most_similar_cosmul`` bounds its products the
  same way from one search per positive key and one per negated negative key.

A sharded index (on a Redis Cluster: one vector set per master, see
:mod:`vectorstore.index`) is searched with one VSIM per shard, all sent at
once (one round trip in time), and the replies merged by score, keeping the
best ``C``: an element left out scores at most the last one kept, so both
modes, and exact mode's guarantee, work on the merged list as on one set.
Measured, 100k x 100 q8, 200 queries on 2 shared cores: approximate recall@10
1.000 and p50 2.5 ms on one node, 1.000 and 2.3 ms in 3 shards on 3 masters;
exact p50 46 ms against 36 ms (each shard scans a third).

Equal scores rank by vocabulary index (gensim's order among exact ties is
numpy's unstable argsort). Dot products use the same BLAS kernel as gensim's
one call over the whole vocabulary, so scores are bit-identical to gensim's,
except possibly for the last ``len(vocabulary) % 4`` keys (BLAS computes the
rows left over by its 4-row blocks another way; they differ by one ulp).

Costs (N keys of dimension D; Redis's share runs in its own threads):

* approximate ``most_similar`` and its aliases: one VSIM (HNSW), one MGET of
  ~2 * topn vectors;
* exact ``most_similar``: one linear scan of the set in Redis (~10-20 ms per
  100k vectors at q8), one MGET of ~128 vectors; rarely 2-3 scans;
* ``most_similar_cosmul``: one search per key (negative keys negated: their
  opposites score highest) plus, approximate, one along 3CosAdd's direction;
* ``closer_than``/``rank`` with key2 near key1: one scan with EPSILON, one MGET
  of the keys that may be closer;
* ``closer_than``/``rank`` with key2 far, ``topn=None``, ``distances(key)``
  and exact mode on a ``bin`` index: stream every vector (N * D * 4 bytes over
  the network, 8192 vectors in memory at a time);
* ``similarity``, ``n_similarity``, ``distance``, ``distances(key, others)``,
  ``doesnt_match``, ``rank_by_centrality``, ``most_similar_to_given``,
  ``evaluate_word_pairs``: one MGET of the keys given, no index needed;
* ``evaluate_word_analogies``: one search per question (``restrict_vocab``
  becomes a FILTER on the elements' index attribute).

Methods that search the vocabulary need the version's index: before it is
ready they raise IndexNotReadyError (saying how far the build has got), and on
a Redis without vector sets VectorSetsUnsupportedError (probed once per
process); lookups and the methods comparing given keys work regardless.

>>> kv = RedisKeyedVectors("news", exact=True)                     # doctest: +SKIP
>>> kv.most_similar(positive=["king", "woman"], negative=["man"], topn=1)  # doctest: +SKIP
[('queen', 0.7118192911148071)]
"""
from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from numbers import Integral
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from gensim import matutils, utils
from scipy import stats

from .errors import IndexNotReadyError, VectorStoreError
from .index import IndexStatus, check_vector_sets, q8_error, read_status

if TYPE_CHECKING:
    from .keys import Keys
    from .topology import Deployment
    from .view import View

logger = logging.getLogger(__name__)

_KEY_TYPES = (str, int, np.integer)
FLOAT_SLOP = 1e-4      # bound on float32 rounding in a cosine, ours or Redis's
EXACT_FIRST = 128      # candidates of the first exact scan (at least 2 * topn)
EXACT_GROWTH = 8
EXACT_MAX = 8192       # past this many candidates, stream every vector instead
SCAN_CHUNK = 8192      # vectors per MGET when streaming (a multiple of PAD)
PAD = 16               # candidate matrices are padded to whole BLAS row blocks

Key = str | int | np.integer
Scorer = Callable[[np.ndarray, bool], np.ndarray]


class _Stale(Exception):
    """The version being read was replaced (and deleted) during the call."""


def _ensure_list(value: Any) -> list:
    """A single key or vector as a one-item list, a matrix as its rows (as gensim)."""
    if value is None:
        return []
    if isinstance(value, _KEY_TYPES) or (isinstance(value, np.ndarray) and value.ndim == 1):
        return [value]
    if isinstance(value, np.ndarray) and value.ndim == 2:
        return list(value)
    return value


def _dot(rows: np.ndarray, vec: np.ndarray, pad: bool) -> np.ndarray:
    """``rows @ vec`` as gensim's single BLAS call gets it for these rows.

    BLAS works in blocks of 4 rows and computes leftover rows another way; a
    candidate matrix is padded with zero rows so its rows all fall in blocks,
    like almost every row of the full vocabulary. Streamed chunks start at
    multiples of SCAN_CHUNK and are used unpadded, so they match exactly.
    """
    n = len(rows)
    if pad and n % PAD:
        rows = np.concatenate([rows, np.zeros((PAD - n % PAD, rows.shape[1]), rows.dtype)])
    return np.dot(rows, vec)[:n]


def _cosines(vec: np.ndarray, rows: np.ndarray, pad: bool) -> np.ndarray:
    """gensim's ``KeyedVectors.cosine_similarities(vec, rows)``."""
    return _dot(rows, vec, pad) / (np.linalg.norm(vec) * np.linalg.norm(rows, axis=1))


def _ranked(indexes: np.ndarray, scores: np.ndarray, exclude: set[int], topn: int) -> list[int]:
    """Positions of the ``topn`` best scores, ties by index, skipping ``exclude`` and repeats."""
    order = np.lexsort((indexes, np.where(np.isnan(scores), np.inf, -scores)))
    out: list[int] = []
    seen = set(exclude)
    for j in order.tolist():
        i = int(indexes[j])
        if i not in seen:
            seen.add(i)
            out.append(j)
            if len(out) == topn:
                break
    return out


class _Rows:
    """Candidate rows: tokens, raw float32 vectors and vocabulary indexes."""

    def __init__(self, tokens: list[str], vectors: np.ndarray, indexes: np.ndarray) -> None:
        self.tokens, self.vectors, self.indexes = tokens, vectors, indexes

    def best(self, scores: np.ndarray, exclude: set[int], topn: int) -> list[tuple[str, float]]:
        return [(self.tokens[j], float(scores[j]))
                for j in _ranked(self.indexes, scores, exclude, topn)]


def default_search_ef(count: int) -> int:
    """HNSW search breadth for a vector set of ``count`` elements: ``0.4 * sqrt(count)``
    within 100..800. Measured on 1M clustered 300-d vectors with a q8 index (200
    queries, recall@10 against gensim): EF 100 gave 0.970 at 3.2 ms p50, EF 200
    0.985 at 3.1 ms, EF 400 1.000 at 3.1 ms, EF 800 1.000 at 6.1 ms.

    >>> default_search_ef(10_000), default_search_ef(1_000_000), default_search_ef(3_000_000)
    (100, 400, 693)
    """
    return int(min(800, max(100, round(0.4 * count ** 0.5))))


class SimilarityMixin:
    """gensim's similarity API for :class:`~vectorstore.store.RedisKeyedVectors`.

    Relies on the store for its connection, its view of the served version
    and its lookups; see the module documentation for modes, guarantees and costs.
    """

    #: approximate mode's ``VSIM ... EF`` (None: :func:`default_search_ef` of the model's size).
    search_ef: int | None = None

    if TYPE_CHECKING:  # provided by RedisKeyedVectors
        name: str
        exact: bool
        refresh: float
        keys: Keys
        def _current(self) -> View: ...
        def _sync(self) -> bool: ...
        def _call(self, *args: Any) -> Any: ...
        def _fast_calls(self, commands: Sequence[Sequence[Any]]) -> list[Any]: ...
        def _values(self, names: Sequence[bytes]) -> list[bytes | None]: ...
        @property
        def deployment(self) -> Deployment: ...
        def _decode(self, view: View, tokens: Sequence[str], values: Sequence[bytes],
                    expected: np.ndarray | None = None) -> np.ndarray: ...
        def __getitem__(self, key_or_keys: Any) -> np.ndarray: ...
        def get_vector(self, key: Key, norm: bool = False) -> np.ndarray: ...
        def _subword_rows(self, view: View, keys: Sequence[Any], indexes: np.ndarray,
                          norm: bool) -> dict[int, np.ndarray]: ...
        # gensim's KeyedVectors helpers
        def cosine_similarities(self, vector_1: np.ndarray, vectors_all: np.ndarray) -> np.ndarray: ...
        def _log_evaluate_word_analogies(self, section: dict[str, Any]) -> float: ...
        def log_evaluate_word_pairs(self, pearson: Any, spearman: Any, oov: float,
                                    pairs: str) -> None: ...

    # --- search ---------------------------------------------------------------------

    def most_similar(self, positive: Any = None, negative: Any = None,
                     topn: int | None = 10, clip_start: int = 0,
                     clip_end: int | None = None, restrict_vocab: int | None = None,
                     indexer: Any = None, *, exact: bool | None = None) -> Any:
        """The ``topn`` keys most similar to the weighted mean of ``positive`` minus ``negative``.

        Keys, indexes, vectors and ``(key, weight)`` pairs work as in gensim;
        ``topn=None`` returns the similarity to every key (streams all vectors).

        >>> kv.most_similar("car", topn=2)                               # doctest: +SKIP
        [('vehicle', 0.78), ('cars', 0.74)]
        """
        if isinstance(topn, Integral) and topn < 1:
            return []
        positive, negative = _ensure_list(positive), _ensure_list(negative)
        keys: list[Any] = []
        weight = np.concatenate((np.ones(len(positive)), -1.0 * np.ones(len(negative))))
        for i, item in enumerate(positive + negative):
            if isinstance(item, (*_KEY_TYPES, np.ndarray)):
                keys.append(item)
            else:
                keys.append(item[0])
                weight[i] = item[1]

        def run(view: View) -> Any:
            lo, hi = (0, restrict_vocab) if restrict_vocab else (clip_start, clip_end)
            lo, hi = self._range(view, lo, hi)
            mean, present = self._mean(view, keys, weight, True, True, False)
            if indexer is not None and isinstance(topn, int):
                return indexer.most_similar(mean, topn)
            if not topn:
                return self._scan_all(view, self._cosine_scorer(mean), lo, hi)
            return self._nearest(view, mean, topn, set(present), lo, hi, exact)
        return self._run(run)

    def similar_by_key(self, key: Key, topn: int | None = 10,
                       restrict_vocab: int | None = None, *,
                       exact: bool | None = None) -> Any:
        """``most_similar(positive=[key], ...)``."""
        return self.most_similar(positive=[key], topn=topn, restrict_vocab=restrict_vocab,
                                 exact=exact)

    def similar_by_word(self, word: Key, topn: int | None = 10,
                        restrict_vocab: int | None = None, *,
                        exact: bool | None = None) -> Any:
        """Alias of :meth:`similar_by_key`."""
        return self.similar_by_key(word, topn, restrict_vocab, exact=exact)

    def similar_by_vector(self, vector: np.ndarray, topn: int | None = 10,
                          restrict_vocab: int | None = None, *,
                          exact: bool | None = None) -> Any:
        """The ``topn`` keys most similar to ``vector``."""
        return self.most_similar(positive=[vector], topn=topn, restrict_vocab=restrict_vocab,
                                 exact=exact)

    def most_similar_cosmul(self, positive: Any = None, negative: Any = None,
                            topn: int | None = 10, restrict_vocab: int | None = None,
                            *, exact: bool | None = None) -> Any:
        """Levy & Goldberg's 3CosMul ranking, as gensim.

        Keys (str) and vectors work; like gensim 4.4, ``restrict_vocab`` is
        accepted and ignored. Exact mode needs each vector given to have norm
        <= 1 (keys are unit-normalized) to bound its search, else it streams.
        """
        if isinstance(topn, Integral) and topn < 1:
            return []
        positive, negative = _ensure_list(positive), _ensure_list(negative)
        for item in positive + negative:
            if not isinstance(item, (str, np.ndarray)):
                raise TypeError(f"most_similar_cosmul takes keys (str) and vectors, "
                                f"got {type(item).__name__} {item!r}")
        if not positive:
            raise ValueError("cannot compute similarity with no input")

        def run(view: View) -> Any:
            words = [w for w in positive + negative if isinstance(w, str)]
            vectors, indexes, missing = self._lookup(view, words)
            if missing:
                raise KeyError(f"Key '{words[missing[0]]}' not present")
            unit = vectors / np.linalg.norm(vectors, axis=1)[:, None]
            at = iter(range(len(words)))
            terms = [unit[next(at)] if isinstance(w, str) else w for w in positive + negative]
            pos, neg = terms[:len(positive)], terms[len(positive):]

            def score(rows: np.ndarray, pad: bool) -> np.ndarray:
                norms = np.linalg.norm(rows, axis=1)
                pos_dists = [((1 + _dot(rows, t, pad) / norms) / 2) for t in pos]
                neg_dists = [((1 + _dot(rows, t, pad) / norms) / 2) for t in neg]
                return np.prod(pos_dists, axis=0) / (np.prod(neg_dists, axis=0) + 0.000001)

            if not topn:
                return self._scan_all(view, score, 0, view.meta.count)
            lengths = [float(np.linalg.norm(t)) for t in terms]
            dirs = [t / n if n else t for t, n in zip(terms, lengths)]
            dirs = dirs[:len(pos)] + [-d for d in dirs[len(pos):]]
            combined = matutils.unitvec(np.sum(terms[:len(pos)], axis=0)
                                        - np.sum(terms[len(pos):] or [0], axis=0))

            def bound(limits: list[float]) -> float:
                """Best score possible for an element no search returned."""
                up = [(1 + n * min(u, 1.0)) / 2 for n, u in zip(lengths, limits[:len(pos)])]
                down = [max(0.0, (1 - n * min(u, 1.0)) / 2)
                        for n, u in zip(lengths[len(pos):], limits[len(pos):])]
                return float(np.prod(up) / (np.prod(down) + 0.000001))

            bounded = max(lengths) <= 1 + 1e-5
            return self._search(view, score, topn, set(indexes.tolist()), 0, view.meta.count,
                                exact, exact_dirs=dirs if bounded else None, bound=bound,
                                approx_dirs=[combined, *dirs])
        return self._run(run)

    def closer_than(self, key1: Key, key2: Key) -> list[str]:
        """Keys closer to ``key1`` than ``key2`` is, in vocabulary order, as gensim.

        One exact scan in Redis when few keys are closer; streams every vector
        when ``key2`` is far (more than 8192 closer keys).
        """
        def run(view: View) -> list[str]:
            vectors, indexes, missing = self._lookup(view, [key1, key2])
            if missing:
                raise KeyError(f"Key '{(key1, key2)[missing[0]]}' not present")
            v1, e1 = vectors[0], int(indexes[0])
            limit = 1 - _cosines(v1, vectors[1:], True)[0]
            status = self._index(view)
            err = self._error(status, v1)
            eps = (float(limit) + err) / 2 if err is not None else 1.0
            for count in (EXACT_FIRST * EXACT_GROWTH, EXACT_MAX):
                if eps >= 1:  # every key may be closer: nothing to gain from the index
                    break
                names, _ = self._vsim(view, status, v1, count, truth=True, epsilon=eps)
                if len(names) < count:  # all within eps (a superset of the answer)
                    rows = self._fetch(view, names)
                    closer = (1 - _cosines(v1, rows.vectors, True) < limit) & (rows.indexes != e1)
                    found = sorted(zip(rows.indexes[closer].tolist(),
                                       itertools.compress(rows.tokens, closer)))
                    return [token for _, token in found]
            out: list[str] = []
            for start, tokens, chunk in self._chunks(view, 0, view.meta.count):
                closer = 1 - _cosines(v1, chunk, False) < limit
                out += [t for j, t in zip(np.flatnonzero(closer).tolist(),
                                          itertools.compress(tokens, closer)) if start + j != e1]
            return out
        return self._run(run)

    def distances(self, word_or_vector: Key | np.ndarray,
                  other_words: Sequence[Key] = ()) -> np.ndarray:
        """Cosine distances from ``word_or_vector`` to ``other_words``, or to every key."""
        if isinstance(word_or_vector, _KEY_TYPES):
            vector = self.get_vector(word_or_vector)
        else:
            vector = word_or_vector
        if other_words:
            return 1 - self.cosine_similarities(vector, self[list(other_words)])

        def run(view: View) -> np.ndarray:
            return 1 - self._scan_all(view, lambda rows, pad: _cosines(vector, rows, pad),
                                      0, view.meta.count)
        return self._run(run)

    def relative_cosine_similarity(self, wa: str, wb: str, topn: int = 10, *,
                                   exact: bool | None = None) -> float:
        """similarity(wa, wb) over the sum of wa's ``topn`` best similarities."""
        sims = self.similar_by_word(wa, topn, exact=exact)
        if not sims:
            raise ValueError(
                "Cannot calculate relative cosine similarity without any similar words.")
        return float(self.similarity(wa, wb)) / (sum(sim for _, sim in sims))

    # --- comparisons of given keys (no index needed) -----------------------------------

    def similarity(self, w1: Key, w2: Key) -> np.floating:
        """Cosine similarity of two keys (one MGET)."""
        v = self[[w1, w2]]
        return np.dot(matutils.unitvec(v[0]), matutils.unitvec(v[1]))

    def n_similarity(self, ws1: Sequence[Any], ws2: Sequence[Any]) -> np.floating:
        """Cosine similarity of the means of two lists of keys (missing keys are ignored)."""
        if not (len(ws1) and len(ws2)):
            raise ZeroDivisionError('At least one of the passed list is empty.')

        def run(view: View) -> np.floating:
            mean1, _ = self._mean(view, ws1, None, False, False, True)
            mean2, _ = self._mean(view, ws2, None, False, False, True)
            return np.dot(matutils.unitvec(mean1), matutils.unitvec(mean2))
        return self._run(run)

    def most_similar_to_given(self, key1: Key, keys_list: Sequence[Key]) -> Key:
        """The key of ``keys_list`` most similar to ``key1`` (one MGET)."""
        v = self[[key1, *keys_list]]
        first = matutils.unitvec(v[0])
        return keys_list[int(np.argmax([np.dot(first, matutils.unitvec(x)) for x in v[1:]]))]

    def rank_by_centrality(self, words: Sequence[Key], use_norm: bool = True) -> list:
        """``(similarity to the centroid, word)`` pairs, best first; missing words are ignored."""
        def run(view: View) -> list:
            vectors, _, missing = self._lookup(view, list(words))
            used = [w for i, w in enumerate(words) if i not in missing]
            if len(used) != len(words):
                logger.warning("vectors for words %s are not present in the model, "
                               "ignoring these words", set(words) - set(used))
            if not used:
                raise ValueError("cannot select a word from an empty list")
            vectors = np.delete(vectors, missing, axis=0)
            if use_norm:
                vectors = vectors / np.linalg.norm(vectors, axis=1)[:, None]
            mean = np.zeros(vectors.shape[1], dtype=np.float32)
            for row in vectors:
                mean += np.float32(1.0) * row
            mean = matutils.unitvec(mean / np.float32(len(vectors))).astype(np.float32)
            return sorted(zip(np.dot(vectors, mean), used), reverse=True)
        return self._run(run)

    # --- evaluations ----------------------------------------------------------------

    def evaluate_word_analogies(self, analogies: str, restrict_vocab: int = 300000,
                                case_insensitive: bool = True, dummy4unknown: bool = False,
                                similarity_function: str = "most_similar", *,
                                exact: bool | None = None) -> tuple[float, list[dict]]:
        """gensim's analogy evaluation (3CosAdd, top 5), one index search per question.

        Exact mode scans the whole vector set once per question (with a FILTER
        when ``restrict_vocab`` is below the vocabulary size): ~1 s a question on
        a 3M-vector set, hours for all 19,544 of questions-words.txt, where
        approximate mode takes a few ms a question.
        """
        def run(view: View) -> tuple[float, list[dict]]:
            ok_keys, ok_vocab = self._ok_vocab(view, restrict_vocab, case_insensitive)
            events: list[tuple[dict, tuple[str, ...], bool]] = []  # (section, words, asked)
            sections: list[dict] = []
            oov = quadruplets = 0
            with utils.open(analogies, "rb") as fin:
                for line_no, line in enumerate(fin):
                    line = utils.to_unicode(line)
                    if line.startswith(": "):
                        sections.append({"section": line.lstrip(": ").strip(), "correct": [],
                                         "incorrect": []})
                        continue
                    if not sections:
                        raise ValueError(f"Missing section header before line #{line_no} "
                                         f"in {analogies}")
                    words = tuple(w.upper() if case_insensitive else w for w in line.split())
                    if len(words) != 4:
                        logger.info("Skipping invalid line #%i in %s", line_no, analogies)
                        continue
                    quadruplets += 1
                    asked = all(w in ok_vocab for w in words)
                    oov += not asked
                    if asked or dummy4unknown:
                        events.append((sections[-1], words, asked))
            needed = sorted({ok_vocab[w] for _, words, asked in events if asked
                             for w in words[:3]})
            vectors, _, _ = self._lookup(view, [ok_keys[i] for i in needed])
            unit = dict(zip(needed, vectors / np.linalg.norm(vectors, axis=1)[:, None]))
            weight = np.concatenate((np.ones(2), -1.0 * np.ones(1)))
            hi = min(restrict_vocab, view.meta.count)
            for section, (a, b, c, expected), asked in events:
                predicted = None
                if asked:
                    ids = [ok_vocab[b], ok_vocab[c], ok_vocab[a]]
                    mean = weighted_mean([unit[i] for i in ids], weight, True)
                    for token, _ in self._nearest(view, mean, 5, set(ids), 0, hi, exact):
                        predicted = token.upper() if case_insensitive else token
                        if predicted in ok_vocab and predicted not in {a, b, c}:
                            break
                outcome = "correct" if asked and predicted == expected else "incorrect"
                section[outcome].append((a, b, c, expected))
            for section in sections:
                self._log_evaluate_word_analogies(section)
            total = {"section": "Total accuracy",
                     "correct": list(itertools.chain.from_iterable(s["correct"] for s in sections)),
                     "incorrect": list(itertools.chain.from_iterable(s["incorrect"]
                                                                     for s in sections))}
            logger.info("Quadruplets with out-of-vocabulary words: %.1f%%",
                        float(oov) / quadruplets * 100)
            score = self._log_evaluate_word_analogies(total)
            sections.append(total)
            return score, sections
        return self._run(run)

    def evaluate_word_pairs(self, pairs: str, delimiter: str = "\t", encoding: str = "utf8",
                            restrict_vocab: int = 300000, case_insensitive: bool = True,
                            dummy4unknown: bool = False) -> tuple:
        """gensim's word-pair evaluation: Pearson and Spearman against human judgments."""
        def run(view: View) -> tuple:
            ok_keys, ok_vocab = self._ok_vocab(view, restrict_vocab, case_insensitive)
            gold: list[float] = []
            wanted: list[tuple[int, int] | None] = []
            oov = 0
            with utils.open(pairs, encoding=encoding) as fin:
                for line_no, line in enumerate(fin):
                    if not line or line.startswith("#"):
                        continue
                    try:
                        a, b, sim = [w.upper() if case_insensitive else w
                                     for w in line.split(delimiter)]
                        sim = float(sim)
                    except (ValueError, TypeError):
                        logger.info("Skipping invalid line #%d in %s", line_no, pairs)
                        continue
                    if a not in ok_vocab or b not in ok_vocab:
                        oov += 1
                        if dummy4unknown:
                            gold.append(sim)
                            wanted.append(None)
                        else:
                            logger.info("Skipping line #%d with OOV words: %s", line_no,
                                        line.strip())
                        continue
                    gold.append(sim)
                    wanted.append((ok_vocab[a], ok_vocab[b]))
            if not gold:
                raise ValueError(f"No valid similarity judgements found in {pairs}: either "
                                 f"invalid format or all are out-of-vocabulary in {self}")
            needed = sorted({i for p in wanted if p for i in p})
            vectors, _, _ = self._lookup(view, [ok_keys[i] for i in needed])
            row = dict(zip(needed, vectors))
            model = [0.0 if p is None else
                     np.dot(matutils.unitvec(row[p[0]]), matutils.unitvec(row[p[1]]))
                     for p in wanted]
            spearman = stats.spearmanr(gold, model)
            pearson = stats.pearsonr(gold, model)
            oov_ratio = float(oov) / (len(gold) + (0 if dummy4unknown else oov)) * 100
            self.log_evaluate_word_pairs(pearson, spearman, oov_ratio, pairs)
            return pearson, spearman, oov_ratio
        return self._run(run)

    def _ok_vocab(self, view: View, restrict_vocab: int,
                  case_insensitive: bool) -> tuple[list[str], dict[str, int]]:
        """The first ``restrict_vocab`` tokens, and gensim's evaluation map word -> index
        (upper-cased words map to their most frequent, i.e. first, variant)."""
        ok_keys = view.index_to_key[:restrict_vocab]
        fold = str.upper if case_insensitive else str
        return ok_keys, {fold(k): i for i, k in reversed(list(enumerate(ok_keys)))}

    # --- search engine --------------------------------------------------------------

    def _nearest(self, view: View, query: np.ndarray, topn: int, exclude: set[int],
                 lo: int, hi: int, exact: bool | None) -> list[tuple[str, float]]:
        """gensim's ``most_similar`` ranking around the unit vector ``query``."""
        return self._search(view, self._cosine_scorer(query), topn, exclude, lo, hi, exact,
                            exact_dirs=[query], bound=lambda limits: limits[0],
                            approx_dirs=[query])

    @staticmethod
    def _cosine_scorer(query: np.ndarray) -> Scorer:
        """gensim's ``dot(vectors, mean) / norms``."""
        return lambda rows, pad: _dot(rows, query, pad) / np.linalg.norm(rows, axis=1)

    def _search(self, view: View, score: Scorer, topn: int, exclude: set[int], lo: int,
                hi: int, exact: bool | None, *, exact_dirs: list[np.ndarray] | None,
                bound: Callable[[list[float]], float],
                approx_dirs: list[np.ndarray]) -> list[tuple[str, float]]:
        """The ``topn`` best keys by ``score`` among indexes [lo, hi), without ``exclude``.

        Candidates come from one index search per direction. Exact mode
        stops when ``bound`` (given, per direction, the best cosine an element
        left out can have) is below the ``topn``-th best score found.
        """
        status = self._index(view)
        wanted = topn + len(exclude)
        if not (self.exact if exact is None else exact):
            count = max(2 * topn, topn + 20) + len(exclude)
            names = [n for d in approx_dirs
                     for n in self._vsim(view, status, d, count, lo=lo, hi=hi)[0]]
            rows = self._fetch(view, list(dict.fromkeys(names)))
            return rows.best(score(rows.vectors, True), exclude, topn)
        errors = [self._error(status, d) for d in exact_dirs or []]
        count = max(EXACT_FIRST, 2 * wanted)
        while exact_dirs and None not in errors and count <= EXACT_MAX:
            found = [self._vsim(view, status, d, count, truth=True, lo=lo, hi=hi)
                     for d in exact_dirs]
            rows = self._fetch(view, list(dict.fromkeys(n for names, _ in found for n in names)))
            scores = score(rows.vectors, True)
            best = _ranked(rows.indexes, scores, exclude, topn)
            if any(len(names) < count for names, _ in found):
                return rows.best(scores, exclude, topn)  # one search saw every element
            limit = bound([float(cos.min()) + (e or 0.0) for (_, cos), e in zip(found, errors)])
            if len(best) == topn and scores[best[-1]] > limit:
                return rows.best(scores, exclude, topn)
            count *= EXACT_GROWTH
        return self._scan_top(view, score, topn, exclude, lo, hi)

    def _vsim(self, view: View, status: IndexStatus, query: np.ndarray, count: int, *,
              truth: bool = False, lo: int = 0, hi: int | None = None,
              epsilon: float | None = None) -> tuple[list[bytes], np.ndarray]:
        """Element names and index cosines (``2 * score - 1``) of the ``count`` best elements
        of the index ``status`` describes, best first.

        One VSIM per shard, all at once (one round trip), merged by score: an element
        left out scores at most the last one kept (a shard that returned ``count``
        has its own ``count`` best in front of it), and fewer than ``count`` means
        every shard returned all it had. Each VSIM is followed by an EXISTS of its
        key, so a shard deleted meanwhile (a rebuild replaced it) is never read as
        an empty one.
        """
        hi = view.meta.count if hi is None else hi
        args: list[Any] = ["FP32", np.asarray(query, dtype="<f4").tobytes(),
                           "WITHSCORES", "COUNT", count]
        if truth:
            args.append("TRUTH")
        else:
            args += ["EF", self.search_ef or default_search_ef(view.meta.count)]
        if epsilon is not None:
            args += ["EPSILON", repr(epsilon)]
        if lo > 0 or hi < view.meta.count:
            args += ["FILTER", f".i >= {lo} and .i < {hi}"]
        replies = self._fast_calls([c for key in status.keys
                                    for c in (("VSIM", key, *args), ("EXISTS", key))])
        missing = [key for key, there in zip(status.keys, replies[1::2]) if not there]
        if missing:
            self.__dict__.pop("_index_seen", None)
            if self._index(view).keys != status.keys:  # raises if the metadata says why
                raise _Stale()  # a rebuild replaced the index: search the new one
            raise IndexNotReadyError(
                f"model {self.name!r} version {view.meta.version}: index key "
                f"{' '.join(missing)} is missing; rebuild it with "
                f"`vectorstore index {self.name} --force`")
        names: list[bytes] = []
        parts: list[np.ndarray] = []
        for reply in replies[0::2]:
            if isinstance(reply, dict):  # RESP3
                names += list(reply)
                parts.append(np.fromiter(reply.values(), float, len(reply)))
            else:
                names += reply[0::2]
                parts.append(np.array(reply[1::2], dtype=float))
        scores = np.concatenate(parts)
        if len(parts) > 1:
            best = np.argsort(-scores, kind="stable")[:count]
            names, scores = [names[j] for j in best], scores[best]
        return names, 2 * scores - 1

    def _scan_top(self, view: View, score: Scorer, topn: int, exclude: set[int],
                  lo: int, hi: int) -> list[tuple[str, float]]:
        """The ``topn`` best by ``score``, streaming every vector in [lo, hi)."""
        tokens: list[str] = []
        indexes = np.empty(0, dtype=np.int64)
        scores = np.empty(0)
        for start, chunk_tokens, chunk in self._chunks(view, lo, hi):
            scores = np.concatenate([scores, score(chunk, False)])
            indexes = np.concatenate([indexes, np.arange(start, start + len(chunk))])
            tokens += chunk_tokens
            best = _ranked(indexes, scores, exclude, topn)
            tokens, indexes, scores = [tokens[j] for j in best], indexes[best], scores[best]
        return [(t, float(x)) for t, x in zip(tokens, scores)]

    def _scan_all(self, view: View, score: Scorer, lo: int, hi: int) -> np.ndarray:
        """``score`` of every key in [lo, hi), streaming (gensim's ``topn=None``)."""
        parts = [score(chunk, False) for _, _, chunk in self._chunks(view, lo, hi)]
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.float32)

    def _chunks(self, view: View, lo: int,
                hi: int) -> Iterator[tuple[int, list[str], np.ndarray]]:
        """``(first index, tokens, vectors)`` for [lo, hi) in chunks of SCAN_CHUNK."""
        for start in range(lo, hi, SCAN_CHUNK):
            tokens = view.index_to_key[start:min(hi, start + SCAN_CHUNK)]
            values = self._present(self._values(view.names(tokens)))
            yield start, tokens, self._decode(view, tokens, values,
                                              np.arange(start, start + len(tokens), dtype=np.uint32))

    # --- plumbing -------------------------------------------------------------------

    def _run(self, fn: Callable[[View], Any]) -> Any:
        """``fn(view)``, again on the new version if the one read was replaced meanwhile."""
        try:
            return fn(self._current())
        except _Stale:
            self._sync()
        try:
            return fn(self._current())
        except _Stale:
            raise VectorStoreError(
                f"model {self.name!r}: vectors vanished while reading them (the version was "
                f"replaced twice, or is being deleted); try again") from None

    def _index(self, view: View) -> IndexStatus:
        """The status of the served version's index; raise unless it is usable.

        Checked again every ``refresh`` seconds (one HMGET), like the alias.
        """
        version = view.meta.version
        seen = self.__dict__.get("_index_seen")
        if seen and seen[0] == version and time.monotonic() - seen[1] < self.refresh:
            return seen[2]
        check_vector_sets(self._call, self.deployment.node_name(self.keys.vset(version)),
                          self.keys.vset(version))
        status = read_status(self._call, self.keys, version)
        if not status.ready:
            raise status.not_ready(self.name)
        self.__dict__["_index_seen"] = (version, time.monotonic(), status)
        return status

    @staticmethod
    def _error(status: IndexStatus, query: np.ndarray) -> float | None:
        """Bound on |index cosine - gensim cosine| for ``query``; None if there is none."""
        if status.quantization == "noquant":
            return FLOAT_SLOP
        if status.quantization == "q8":
            dq = q8_error(query)
            return dq + (1 + dq) * status.qerr + FLOAT_SLOP
        return None

    def _range(self, view: View, lo: int, hi: int | None) -> tuple[int, int]:
        count = view.meta.count
        if lo < 0 or (hi is not None and hi < 0):
            raise ValueError(f"clip_start and clip_end must be >= 0, got {lo} and {hi}")
        return lo, min(hi or count, count)

    def _fetch(self, view: View, names: Sequence[bytes]) -> _Rows:
        """Raw vectors and indexes of elements named by the index (one MGET)."""
        values = self._present(self._values(view.names.raw(names)))
        tokens = [n.decode("utf-8") for n in names]
        return _Rows(tokens, self._decode(view, tokens, values), view.codec.decode_indexes(values))

    @staticmethod
    def _present(values: list[bytes | None]) -> list[bytes]:
        """``values`` of keys the index names: a nil means the version is being deleted."""
        if None in values:
            raise _Stale()
        return cast("list[bytes]", values)

    def _lookup(self, view: View,
                keys: Sequence[Any]) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """Vectors (zero rows when missing), indexes (-1) and missing positions of keys
        (tokens or indexes), in one MGET."""
        count = view.meta.count
        tokens: list[str | None] = []
        for k in keys:
            if isinstance(k, str):
                tokens.append(k)
            elif isinstance(k, (int, np.integer)):
                tokens.append(view.index_to_key[int(k)] if 0 <= k < count else None)
            else:
                raise TypeError(f"keys must be str or int, got {type(k).__name__} {k!r}")
        names = view.names([t for t in tokens if t is not None])
        it = iter(self._values(names))
        values = [next(it) if t is not None else None for t in tokens]
        missing = [i for i, v in enumerate(values) if v is None]
        if missing and self._sync():
            raise _Stale()
        vectors = np.zeros((len(keys), view.meta.dim), dtype=np.float32)
        indexes = np.full(len(keys), -1, dtype=np.int64)
        found = [i for i, v in enumerate(values) if v is not None]
        if found:
            present = [v for v in values if v is not None]
            vectors[found] = self._decode(view, [t for t, v in zip(tokens, values)
                                                 if t is not None and v is not None], present)
            indexes[found] = view.codec.decode_indexes(present)
        return vectors, indexes, missing

    def _mean(self, view: View, keys: Sequence[Any], weights: Any, pre_normalize: bool,
              post_normalize: bool, ignore_missing: bool) -> tuple[np.ndarray, list[int]]:
        """gensim's ``get_mean_vector``, step for step (so rounding matches), plus the
        indexes of the keys found."""
        if len(keys) == 0:
            raise ValueError("cannot compute mean with no input")
        if isinstance(weights, list):
            weights = np.array(weights, dtype=np.float32)
        if weights is None:
            weights = np.ones(len(keys), dtype=np.float32)
        if len(keys) != weights.shape[0]:
            raise ValueError("keys and weights array must have same number of elements")
        named = [k for k in keys if not isinstance(k, np.ndarray)]
        vectors, indexes, _ = self._lookup(view, named)
        subword = self._subword_rows(view, named, indexes, pre_normalize)  # fastText OOV keys
        norms = np.linalg.norm(vectors, axis=1)
        rows: list[np.ndarray] = []
        used: list[int] = []
        named_at = iter(range(len(named)))
        for i, key in enumerate(keys):
            if isinstance(key, np.ndarray):
                rows.append(key)
                used.append(i)
                continue
            j = next(named_at)
            if indexes[j] >= 0:
                rows.append(vectors[j] / norms[j] if pre_normalize else vectors[j])
                used.append(i)
            elif j in subword:
                rows.append(subword[j])
                used.append(i)
            elif not ignore_missing:
                raise KeyError(f"Key '{key}' not present in vocabulary")
        mean = weighted_mean(rows, weights[used], post_normalize, view.meta.dim)
        return mean, [int(i) for i in indexes if i >= 0]


def weighted_mean(rows: Sequence[np.ndarray] | np.ndarray, weights: np.ndarray, post_normalize: bool,
                  dim: int | None = None) -> np.ndarray:
    """gensim's ``get_mean_vector`` sum: in order, float32 accumulator, weights as given,
    divided by the sum of their absolute values; ``dim`` sizes an empty ``rows``' mean.

    >>> weighted_mean([np.array([1, 2], np.float32), np.array([3, 4], np.float32)],
    ...               np.array([1, -1], np.float32), False)
    array([-1., -1.], dtype=float32)
    """
    mean = np.zeros(dim if dim is not None else len(rows[0]), dtype=np.float32)
    total: Any = 0
    for w, row in zip(weights, rows):
        mean += w * row
        total += abs(w)
    if total > 0:
        mean = mean / total
    if post_normalize:
        mean = matutils.unitvec(mean).astype(np.float32)
    return mean
