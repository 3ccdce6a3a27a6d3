"""``RedisKeyedVectors``: gensim's KeyedVectors, read from Redis.

The model stays in Redis; a process holds only a connection, the model's
metadata and a bounded cache of hot vectors. A batch of tokens is one MGET.

>>> kv = RedisKeyedVectors("news", url="redis://localhost:6379/0")  # doctest: +SKIP
>>> kv["car"].shape                                                  # doctest: +SKIP
(300,)
>>> kv[["fast", "car"]].shape                                        # doctest: +SKIP
(2, 300)
>>> kv.lookup(["fast", "qwxz"], oov="zero").missing                  # doctest: +SKIP
[1]
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import (Any, Callable, Iterable, Iterator, Mapping, NamedTuple, Optional, Sequence,
                    TypeVar, Union)

import hiredis
import numpy as np
import redis
from gensim.models import KeyedVectors

from .cache import MISSING, UNKNOWN, VectorCache
from .codec import Codec, Meta
from .connection import connect, redact, resolve_url
from .errors import (CorruptValueError, ModelNotFoundError, ReadOnlyError, StoreUnavailableError,
                     VectorStoreError)
from .keys import DEFAULT_PREFIX, I2K_CHUNK, Keys
from .similarity import SimilarityMixin, _Stale, weighted_mean
from .subword import NgramPlan, SubwordParams

T = TypeVar("T")
DEFAULT_CACHE_BYTES = 32 * 2**20
OOV_POLICIES = ("error", "zero", "skip", "subword")  # subword: fastText models, _fill_subwords
_READ_ONLY = (
    "RedisKeyedVectors is read-only: load models into Redis with "
    "`vectorstore load PATH --name NAME` or vectorstore.loader.load(...)"
)


def default_cache_bytes() -> int:
    """Cache size from ``VECTORSTORE_CACHE_BYTES`` (0 turns the cache off), else 32 MiB."""
    raw = os.environ.get("VECTORSTORE_CACHE_BYTES")
    try:
        return DEFAULT_CACHE_BYTES if raw is None else int(raw)
    except ValueError:
        raise ValueError(f"VECTORSTORE_CACHE_BYTES must be an integer, got {raw!r}") from None


class Lookup(NamedTuple):
    """Result of :meth:`RedisKeyedVectors.lookup`: the matrix and the OOV positions."""

    vectors: np.ndarray
    missing: list[int]


@dataclass
class _Version:
    """What a process knows about the version the alias points to."""

    meta: Meta
    codec: Codec
    prefix: bytes
    cache: VectorCache
    index_to_key: "IndexToKey"


def _unit(vec: np.ndarray) -> np.ndarray:
    """``vec`` / its norm, computed as gensim's ``fill_norms`` does (bit-identical)."""
    return vec / np.linalg.norm(vec[None, :], axis=1)[0]


class _Moved(Exception):
    """The model's alias moved to another version during a read."""


class RedisKeyedVectors(SimilarityMixin, KeyedVectors):
    """A read-only, Redis-backed ``KeyedVectors``.

    Args:
        name: model name given to ``vectorstore load``.
        url: Redis URL; default ``VECTORSTORE_URL``, ``REDIS_URL``, then localhost.
        client: a ready redis-py client instead of ``url``.
        prefix: key namespace the model was loaded under.
        cache_bytes: bound of the per-process hot-vector cache; 0 turns it off.
        refresh: seconds between checks of the model's alias for a new version.
        exact: default mode of similarity methods (exact, or HNSW approximate).

    Nothing is fetched until first use, and each process opens its own
    connection, so an instance created before a fork (Celery prefork) is safe.
    """

    def __init__(self, name: str, url: Optional[str] = None, client: Optional[redis.Redis] = None,
                 *, prefix: str = DEFAULT_PREFIX, cache_bytes: Optional[int] = None,
                 refresh: float = 1.0, exact: bool = False) -> None:
        self.keys = Keys(name, prefix)
        self.name = name
        self.url = None if client is not None else resolve_url(url)
        self.cache_bytes = default_cache_bytes() if cache_bytes is None else int(cache_bytes)
        self.refresh = refresh
        self.exact = exact
        self._given_client = client
        self._client: Optional[redis.Redis] = client
        self._pid = os.getpid()
        self._local = threading.local()
        self._view: Optional[_Version] = None
        self._checked = -float("inf")

    def __repr__(self) -> str:
        where = redact(self.url) if self.url else repr(self._given_client)
        return f"<RedisKeyedVectors {self.name!r} at {where}>"

    # --- connection and version -------------------------------------------------

    @property
    def redis(self) -> redis.Redis:
        """This process's client (re-created after a fork when built from a URL)."""
        if self._client is None or (self._pid != os.getpid() and self._given_client is None):
            self._client = connect(self.url)
            self._pid = os.getpid()
        return self._client

    def _unavailable(self, exc: Exception) -> StoreUnavailableError:
        where = redact(self.url) if self.url else "the given client"
        return StoreUnavailableError(
            f"Redis at {where} unreachable after retries ({type(exc).__name__}: {exc})")

    def _call(self, *args: Any) -> Any:
        try:
            return self.redis.execute_command(*args)
        except redis.AuthenticationError:
            raise
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise self._unavailable(exc) from exc

    def _fast_call(self, *args: Any) -> Any:
        """``_call`` on a connection of this thread's own, skipping the pool (~40 us less)."""
        local = self._local
        conn = getattr(local, "conn", None)
        if conn is None or local.pid != os.getpid():
            conn = local.conn = self.redis.connection_pool.make_connection()
            local.pid = os.getpid()
        packed = [hiredis.pack_command(args)]

        def send() -> Any:
            conn.send_packed_command(packed, check_health=False)
            return conn.read_response()

        try:
            return conn.retry.call_with_retry(send, lambda _: conn.disconnect())
        except redis.AuthenticationError:
            raise
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise self._unavailable(exc) from exc

    def _current(self) -> _Version:
        if time.monotonic() - self._checked >= self.refresh or self._view is None:
            self._sync()
        assert self._view is not None
        return self._view

    def _sync(self) -> None:
        """Re-read the alias; switch to a new version if it moved."""
        for _ in range(3):
            version = self._call("GET", self.keys.current)
            if version is None:
                raise ModelNotFoundError(
                    f"no model named {self.name!r} under prefix {self.keys.prefix!r}: "
                    f"load it with `vectorstore load PATH --name {self.name}`"
                )
            version = int(version)
            self._checked = time.monotonic()
            if self._view is not None and self._view.meta.version == version:
                return
            raw = self._call("HGETALL", self.keys.meta(version))
            if raw:
                meta = Meta.from_hash(dict(zip(raw[::2], raw[1::2])) if isinstance(raw, list) else raw)
                self._view = _Version(
                    meta=meta, codec=meta.codec(), prefix=self.keys.token_prefix(version),
                    cache=VectorCache(meta.dim, self.cache_bytes),
                    index_to_key=IndexToKey(self, version, meta.count))
                return
        raise VectorStoreError(f"model {self.name!r}: version metadata vanished while reading it")

    @property
    def meta(self) -> Meta:
        """Metadata of the version being served."""
        return self._current().meta

    @property
    def version(self) -> int:
        return self._current().meta.version

    @property
    def vector_size(self) -> int:  # type: ignore[override]
        return self._current().meta.dim

    def __len__(self) -> int:
        return self._current().meta.count

    @property
    def index_to_key(self) -> "IndexToKey":  # type: ignore[override]
        """Lazy sequence of tokens in index order; fetches 1024-token chunks on demand."""
        return self._current().index_to_key

    @property
    def key_to_index(self) -> "KeyToIndex":  # type: ignore[override]
        """Lazy mapping token -> index, like gensim's dict."""
        return KeyToIndex(self)

    # --- lookups ----------------------------------------------------------------

    def _mget(self, view: _Version, tokens: Sequence[str]) -> list[Optional[bytes]]:
        """Values of ``tokens`` in ``view``'s version, read with the alias in one MGET.

        Raises _Moved if the alias no longer points to ``view``: then the values
        may belong to another version, and the caller re-syncs and retries.
        """
        prefix = view.prefix
        try:
            names = [prefix + t.encode() for t in tokens]
        except AttributeError:
            bad = next(t for t in tokens if not isinstance(t, str))
            raise TypeError(f"tokens must be str, got {type(bad).__name__} {bad!r}") from None
        version, *values = self._fast_call("MGET", self.keys.current, *names)
        if version is None or int(version) != view.meta.version:
            raise _Moved
        return values

    def _on_current(self, read: Callable[[_Version], T]) -> T:
        """``read(view)`` on the version the alias points to, following flips."""
        for _ in range(3):
            try:
                return read(self._current())
            except _Moved:
                self._sync()
        raise VectorStoreError(f"model {self.name!r} changed version three times during one read")

    def lookup(self, keys: Iterable[str], oov: str = "error") -> Lookup:
        """Vectors of ``keys`` stacked (len x dim float32), in one Redis round trip.

        ``oov`` says what to do with tokens not in the model: ``"error"`` raises
        KeyError, ``"zero"`` puts a zero row, ``"skip"`` leaves the row out.
        ``missing`` lists the positions of those tokens in ``keys``.
        """
        if oov not in OOV_POLICIES:
            raise ValueError(f"oov must be one of {OOV_POLICIES}, got {oov!r}")
        if isinstance(keys, str):
            raise TypeError("lookup() takes a list of tokens, not a str")
        keys = list(keys)
        if oov == "subword":  # fastText: OOV rows from their n-grams (see _subword_lookup)
            return self._subword_lookup(keys)
        out, missing = self._on_current(
            lambda view: (self._lookup_cached if view.cache.enabled else self._lookup_direct)(view, keys))
        if missing and oov == "error":
            raise KeyError(f"Key '{keys[missing[0]]}' not present")
        if missing and oov == "skip":
            out = np.delete(out, missing, axis=0)
        return Lookup(out, missing)

    def _lookup_direct(self, view: _Version, keys: list[str]) -> tuple[np.ndarray, list[int]]:
        values = self._mget(view, keys)
        if None not in values:
            return view.codec.decode(values), []
        missing = [i for i, v in enumerate(values) if v is None]
        out = np.zeros((len(keys), view.codec.dim), dtype=np.float32)
        found = [i for i, v in enumerate(values) if v is not None]
        if found:
            out[found] = view.codec.decode([values[i] for i in found])
        return out, missing

    def _lookup_cached(self, view: _Version, keys: list[str]) -> tuple[np.ndarray, list[int]]:
        cache = view.cache
        with cache.lock:
            rows = np.array(cache.rows(keys), dtype=np.intp)
            hit = rows >= 0
            if hit.all():
                return cache.gather(rows), []
            out = np.zeros((len(keys), view.codec.dim), dtype=np.float32)
            out[hit] = cache.gather(rows[hit])
        unknown = np.flatnonzero(rows == UNKNOWN).tolist()  # Python work per miss only
        wanted = list(dict.fromkeys(keys[i] for i in unknown))
        values = self._mget(view, wanted) if wanted else []
        found = [t for t, v in zip(wanted, values) if v is not None]
        fetched = view.codec.decode([v for v in values if v is not None])
        at = {t: j for j, t in enumerate(found)}
        missing = np.flatnonzero(rows == MISSING).tolist()
        pos, src = [], []
        for i in unknown:
            j = at.get(keys[i])
            if j is None:
                missing.append(i)
            else:
                pos.append(i)
                src.append(j)
        if pos:
            out[pos] = fetched[src]
        with cache.lock:
            cache.put(found, fetched)
            if len(found) < len(wanted):
                cache.put_missing([t for t, v in zip(wanted, values) if v is None])
        return out, sorted(missing)

    def get_vectors(self, keys: Iterable[str], oov: str = "error") -> np.ndarray:
        """Stacked vectors of ``keys``; see :meth:`lookup` for ``oov``."""
        return self.lookup(keys, oov).vectors

    def _as_token(self, key: Union[str, int, np.integer]) -> str:
        if isinstance(key, str):
            return key
        if isinstance(key, (int, np.integer)):
            return self.index_to_key[int(key)]
        raise TypeError(f"keys must be str or int, got {type(key).__name__} {key!r}")

    def get_vector(self, key: Union[str, int], norm: bool = False) -> np.ndarray:
        """The vector of ``key`` (a token or an index), unit-length if ``norm``."""
        if isinstance(key, str) and self.subwords is not None:  # fastText: as gensim's
            found = self._subword_lookup([key], norm=norm)
            return found.vectors[0] if found.missing or not norm else _unit(found.vectors[0])
        vec = self.lookup([self._as_token(key)]).vectors[0]
        return _unit(vec) if norm else vec

    def __getitem__(self, key_or_keys: Any) -> np.ndarray:
        if isinstance(key_or_keys, (str, int, np.integer)):
            return self.get_vector(key_or_keys)
        keys = list(key_or_keys)
        if set(map(type, keys)) - {str}:  # indexes among the tokens (rare, so not per token)
            keys = [self._as_token(k) for k in keys]
        if self.subwords is not None:  # fastText: OOV keys from their n-grams, as gensim
            return self._subword_lookup(keys).vectors
        return self.lookup(keys).vectors

    def get_index(self, key: Union[str, int], default: Optional[int] = None) -> int:
        """Index of ``key``; ``default`` (or KeyError) if absent, like gensim."""
        if isinstance(key, (int, np.integer)) and 0 <= key < len(self):
            return int(key)
        if isinstance(key, str):
            index = self._on_current(lambda view: self._index_of(view, key))
            if index is not None:
                return index
        if default is not None:
            return default
        raise KeyError(f"Key '{key}' not present")

    def _index_of(self, view: _Version, key: str) -> Optional[int]:
        value = self._mget(view, [key])[0]
        return None if value is None else int(view.codec.decode_indexes([value])[0])

    def has_index_for(self, key: Union[str, int]) -> bool:
        return self.get_index(key, -1) >= 0

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str) and self.subwords is not None:
            return True  # fastText: every word has a vector (gensim's FastTextKeyedVectors)
        return isinstance(key, (str, int, np.integer)) and self.has_index_for(key)  # type: ignore[arg-type]

    def get_mean_vector(self, keys: Sequence[Any], weights: Optional[Sequence[float]] = None,
                        pre_normalize: bool = True, post_normalize: bool = False,
                        ignore_missing: bool = True) -> np.ndarray:
        """Weighted mean of the vectors of ``keys`` (tokens, indexes or arrays), as gensim."""
        if len(keys) == 0:
            raise ValueError("cannot compute mean with no input")
        w = np.ones(len(keys), dtype=np.float32) if weights is None else np.asarray(weights, dtype=np.float32)
        if len(keys) != w.shape[0]:
            raise ValueError("keys and weights array must have same number of elements")
        if self.subwords is not None:  # fastText: OOV keys count too, as gensim
            return self._subword_mean(keys, w, pre_normalize, post_normalize)
        named = [i for i, k in enumerate(keys) if not isinstance(k, np.ndarray)]
        found = self.lookup([self._as_token(keys[i]) for i in named], oov="zero")
        if found.missing and not ignore_missing:
            raise KeyError(f"Key '{keys[named[found.missing[0]]]}' not present in vocabulary")
        vectors = dict(zip(named, found.vectors))
        for m in found.missing:
            del vectors[named[m]]
        rows: list[np.ndarray] = []
        used: list[int] = []
        for i, key in enumerate(keys):
            vec = key if isinstance(key, np.ndarray) else vectors.get(i)
            if vec is not None:
                rows.append(_unit(vec) if pre_normalize and not isinstance(key, np.ndarray)
                            else vec)
                used.append(i)
        return weighted_mean(rows, w[used], post_normalize, self.vector_size)

    # --- fastText subword vectors (vectorstore.subword) ---------------------------------

    @property
    def subwords(self) -> SubwordParams | None:
        """The n-gram parameters of a fastText model loaded from its ``.bin``, else None.

        Such a model follows gensim's ``FastTextKeyedVectors``: ``kv[word]``,
        ``get_vector``, ``get_mean_vector`` and the similarity methods give a word
        outside the vocabulary the mean of its n-gram bucket rows, and
        ``word in kv`` is True for every str (``kv.has_index_for(word)`` and
        ``kv.key_to_index`` tell the vocabulary).
        """
        return self._subwords(self._current())

    def _subwords(self, view: _Version) -> SubwordParams | None:
        seen = self.__dict__.get("_subwords_seen")
        if seen is None or seen[0] is not view:
            seen = self.__dict__["_subwords_seen"] = (view, SubwordParams.from_extra(view.meta.extra))
        return seen[1]

    def _subword_lookup(self, keys: list[str], norm: bool = False) -> Lookup:
        """``lookup(keys, oov="subword")``: OOV rows from their n-grams, one more MGET at most.

        ``missing`` lists the OOV positions (filled, not left out). With ``norm``
        the OOV rows are gensim's ``get_vector(key, norm=True)`` (the n-gram sum
        over its norm), the others are left raw.
        """
        def read(view: _Version) -> tuple[np.ndarray, list[int]]:
            params = self._subwords(view)
            if params is None:
                raise ValueError(
                    f"oov='subword' needs a fastText model loaded from its .bin file (with "
                    f"n-gram buckets); model {self.name!r} has none: use oov='zero', 'skip' "
                    f"or 'error'")
            out, missing = (self._lookup_cached if view.cache.enabled
                            else self._lookup_direct)(view, keys)
            self._fill_subwords(view, params, keys, out, missing, norm)
            return out, missing
        return Lookup(*self._on_current(read))

    def _fill_subwords(self, view: _Version, params: SubwordParams, keys: Sequence[str],
                       out: np.ndarray, missing: list[int], norm: bool = False) -> None:
        """Set the rows ``missing`` of ``out`` from their tokens' n-gram rows (one MGET of
        the buckets of all of them, deduplicated); zero rows for tokens without n-grams."""
        if not missing:
            return
        tokens = list(dict.fromkeys(keys[i] for i in missing))
        plan = NgramPlan(tokens, params)
        rows = self._ngram_rows(view, plan.buckets)
        vectors = plan.units(rows) if norm else plan.means(rows)
        at = {t: j for j, t in enumerate(tokens)}
        out[missing] = vectors[[at[keys[i]] for i in missing]]

    def _ngram_rows(self, view: _Version, buckets: list[int]) -> np.ndarray:
        """The rows of ``buckets`` in ``view``'s version, read with the alias in one MGET."""
        if not buckets:
            return np.zeros((0, view.codec.dim), dtype=np.float32)
        prefix = self.keys.ngram_prefix(view.meta.version)
        version, *values = self._fast_call("MGET", self.keys.current,
                                           *[prefix + b"%d" % b for b in buckets])
        if version is None or int(version) != view.meta.version:
            raise _Moved
        if None in values:
            bucket = buckets[values.index(None)]
            raise CorruptValueError(f"model {self.name!r} version {view.meta.version}: its "
                                    f"n-gram bucket {bucket} ({(prefix + b'%d' % bucket).decode()}) "
                                    f"is missing: reload the model")
        stored = view.codec.decode_indexes(values)
        if not np.array_equal(stored, buckets):
            bad = int(np.flatnonzero(stored != np.asarray(buckets))[0])
            raise CorruptValueError(f"model {self.name!r} version {view.meta.version}: the value "
                                    f"of n-gram bucket {buckets[bad]} carries bucket "
                                    f"{int(stored[bad])}: reload the model")
        return view.codec.decode(values)

    def _subword_rows(self, view: _Version, keys: Sequence[Any], indexes: np.ndarray,
                      norm: bool) -> dict[int, np.ndarray]:
        """For the similarity methods: rows of the str ``keys`` whose index is -1, from their
        n-grams (gensim's ``get_vector(key, norm)``), by position; {} if not fastText."""
        params = self._subwords(view)
        at = [j for j, k in enumerate(keys) if indexes[j] < 0 and isinstance(k, str)]
        if params is None or not at:
            return {}
        out = np.zeros((len(at), view.codec.dim), dtype=np.float32)
        try:
            self._fill_subwords(view, params, [keys[j] for j in at], out, list(range(len(at))),
                                norm)
        except _Moved:
            raise _Stale() from None
        return dict(zip(at, out))

    def _subword_mean(self, keys: Sequence[Any], weights: np.ndarray, pre_normalize: bool,
                      post_normalize: bool) -> np.ndarray:
        """gensim's ``FastTextKeyedVectors.get_mean_vector``: every key has a vector."""
        named = [i for i, k in enumerate(keys) if not isinstance(k, np.ndarray)]
        found = self._subword_lookup([self._as_token(keys[i]) for i in named], norm=pre_normalize)
        oov = {named[m] for m in found.missing}  # already as get_vector(key, pre_normalize)
        vectors = dict(zip(named, found.vectors))
        rows = [key if isinstance(key, np.ndarray)
                else _unit(vectors[i]) if pre_normalize and i not in oov else vectors[i]
                for i, key in enumerate(keys)]
        return weighted_mean(rows, weights, post_normalize, self.vector_size)

    # --- what a Redis-backed model does not do -------------------------------------

    @property
    def vectors(self) -> np.ndarray:  # type: ignore[override]
        raise VectorStoreError(
            "RedisKeyedVectors keeps vectors in Redis, not in memory: use kv[tokens], "
            "kv.lookup(tokens) or the similarity methods"
        )

    norms = vectors

    def _read_only(self, *args: Any, **kwargs: Any) -> Any:
        raise ReadOnlyError(_READ_ONLY)

    add_vector = add_vectors = __setitem__ = _read_only
    save = save_word2vec_format = fill_norms = resize_vectors = _read_only
    unit_normalize_all = vectors_for_all = intersect_word2vec_format = _read_only
    sort_by_descending_frequency = set_vecattr = allocate_vecattrs = _read_only

    @classmethod
    def load(cls, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        raise ReadOnlyError(_READ_ONLY)

    load_word2vec_format = load


class IndexToKey(Sequence[str]):
    """Tokens of one model version in index order, fetched lazily by chunks.

    >>> kv.index_to_key[0], kv.index_to_key[-1], len(kv.index_to_key)   # doctest: +SKIP
    ('the', 'zymurgy', 3000000)
    """

    def __init__(self, kv: RedisKeyedVectors, version: int, count: int) -> None:
        self._kv, self._version, self._count = kv, version, count
        self._chunk = lru_cache(maxsize=64)(self._fetch_chunk)

    def __len__(self) -> int:
        return self._count

    def _fetch_chunk(self, chunk: int) -> list[str]:
        return self._fetch_chunks([chunk])[0]

    def _fetch_chunks(self, chunks: Sequence[int]) -> list[list[str]]:
        raw = self._kv._call("MGET", *(self._kv.keys.i2k(self._version, c) for c in chunks))
        if None in raw:
            raise VectorStoreError(
                f"model {self._kv.name!r} version {self._version} is gone (replaced by a reload)"
            )
        return [r.decode("utf-8").split("\n") for r in raw]

    def __getitem__(self, i: Union[int, slice]) -> Any:
        if isinstance(i, slice):
            idx = range(*i.indices(self._count))
            if not idx:
                return []
            lo, hi = min(idx[0], idx[-1]) // I2K_CHUNK, max(idx[0], idx[-1]) // I2K_CHUNK
            chunks = dict(zip(range(lo, hi + 1), self._fetch_chunks(range(lo, hi + 1))))
            return [chunks[j // I2K_CHUNK][j % I2K_CHUNK] for j in idx]
        i = int(i)
        if i < 0:
            i += self._count
        if not 0 <= i < self._count:
            raise IndexError(f"index {i} out of range for a model of {self._count} keys")
        return self._chunk(i // I2K_CHUNK)[i % I2K_CHUNK]

    def __iter__(self) -> Iterator[str]:
        total = -(-self._count // I2K_CHUNK)
        for start in range(0, total, 64):
            for chunk in self._fetch_chunks(range(start, min(total, start + 64))):
                yield from chunk


class KeyToIndex(Mapping[str, int]):
    """Lazy ``token -> index`` mapping backed by the store."""

    def __init__(self, kv: RedisKeyedVectors) -> None:
        self._kv = kv

    def __getitem__(self, key: str) -> int:
        return self._kv.get_index(key)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, (str, int, np.integer)) and self._kv.has_index_for(key)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self._kv)

    def __iter__(self) -> Iterator[str]:
        return iter(self._kv.index_to_key)
