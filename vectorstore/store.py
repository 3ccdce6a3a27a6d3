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
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from itertools import chain
from typing import Any, NamedTuple, TypeVar, cast

import numpy as np
import redis
from gensim.models import KeyedVectors

from .bloom import BloomFilter, BloomParams
from .cache import MISSING, UNKNOWN, VectorCache
from .codec import Meta, alias_version
from .connection import redact, resolve_url
from .errors import (
    CorruptValueError,
    ModelNotFoundError,
    NotInMemoryError,
    NotPicklableError,
    ReadOnlyError,
    VectorStoreError,
)
from .keys import DEFAULT_PREFIX, Keys
from .similarity import SimilarityMixin, _Stale, weighted_mean
from .subword import NgramPlan, SubwordParams
from .topology import Deployment, Moved, connect_deployment, unavailable
from .view import IndexToKey, TokenKeys, View

T = TypeVar("T")
DEFAULT_CACHE_BYTES = 32 * 2**20
DEFAULT_PREWARM_BYTES = 256 * 2**20
KNOWN_SAMPLE = 16  # tokens of a document looked up in the cache before deciding to use it
ADMIT_STRIDE = 8  # of a document fetched whole, every 8th token is offered to the cache
PREWARM_BATCH = 4096  # vectors per MGET while prewarming (~5 MB at 300 x float32)
OOV_POLICIES = ("error", "zero", "skip", "subword")  # subword: fastText models, _fill_subwords
_READ_ONLY = (
    "RedisKeyedVectors is read-only: load models into Redis with "
    "`vectorstore load PATH --name NAME` or vectorstore.loader.load(...)"
)
_NOT_IN_MEMORY = (
    "RedisKeyedVectors keeps vectors in Redis, not in memory: use kv[tokens], "
    "kv.lookup(tokens), kv.get_vector(key, norm=True), kv.vectors_for_all(keys) "
    "or the similarity methods"
)


def default_cache_bytes() -> int:
    """Cache size from ``VECTORSTORE_CACHE_BYTES`` (0 turns the cache off), else 32 MiB."""
    return _env_bytes("VECTORSTORE_CACHE_BYTES", DEFAULT_CACHE_BYTES)


def default_prewarm_bytes() -> int:
    """Bytes :meth:`RedisKeyedVectors.prewarm` pins, from ``VECTORSTORE_PREWARM_BYTES``,
    else 256 MiB (223,696 vectors of 300 dimensions)."""
    return _env_bytes("VECTORSTORE_PREWARM_BYTES", DEFAULT_PREWARM_BYTES)


def _env_bytes(name: str, default: int) -> int:
    raw = os.environ.get(name)
    try:
        return default if raw is None else int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None


class Lookup(NamedTuple):
    """Result of :meth:`RedisKeyedVectors.lookup`: the matrix and the OOV positions."""

    vectors: np.ndarray
    missing: list[int]


def _unit(vec: np.ndarray) -> np.ndarray:
    """``vec`` / its norm, computed as gensim's ``fill_norms`` does (bit-identical)."""
    return vec / np.linalg.norm(vec[None, :], axis=1)[0]


class Counters:
    """What one process did through one handle (see :meth:`RedisKeyedVectors.stats`)."""

    __slots__ = ("lookups", "tokens", "hits", "fetched", "absent", "round_trips", "bytes")

    def __init__(self) -> None:
        self.lookups = self.tokens = self.hits = self.fetched = 0
        self.absent = self.round_trips = self.bytes = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


_handles: weakref.WeakSet[RedisKeyedVectors] = weakref.WeakSet()


def _reset_counters() -> None:
    """In a forked child: counters start at zero (the parent's stay the parent's)."""
    for kv in list(_handles):
        kv._counts = Counters()


os.register_at_fork(after_in_child=_reset_counters)


_Moved = Moved  # the model's alias moved to another version during a read


class RedisKeyedVectors(SimilarityMixin, KeyedVectors):
    """A read-only, Redis-backed ``KeyedVectors``.

    Args:
        name: model name given to ``vectorstore load``.
        url: Redis URL; default ``VECTORSTORE_URL``, ``REDIS_URL``, then localhost.
        client: a ready redis-py client instead of ``url``.
        prefix: key namespace the model was loaded under.
        cache_bytes: bound of the per-process hot-vector cache; 0 turns it off
            (rows pinned by :meth:`prewarm` come on top).
        refresh: seconds between checks of the model's alias for a new version.
        exact: default mode of similarity methods (exact, or HNSW approximate).

    Nothing is fetched until first use, and each process opens its own
    connection, so an instance created before a fork (Celery prefork) is safe.
    An instance pickles by reference (name, URL, options; see :meth:`__reduce__`),
    so multiprocessing, concurrent.futures, joblib, Dask or Ray can ship it.

    Differences from gensim's in-memory ``KeyedVectors``: ``kv.vectors`` and
    ``kv.norms`` raise :class:`~vectorstore.errors.NotInMemoryError` (an
    AttributeError: ``hasattr(kv, "vectors")`` is False), and so do
    ``get_normed_vectors``, ``fill_norms`` and ``init_sims``; writing methods
    raise ReadOnlyError; ``get_vecattr`` knows only ``"count"``; ``kv[[]]``
    returns an empty ``(0, vector_size)`` matrix where gensim raises
    ValueError (so a batch of empty documents needs no special case).
    """

    def __init__(self, name: str, url: str | None = None, client: redis.Redis | None = None,
                 *, prefix: str = DEFAULT_PREFIX, cache_bytes: int | None = None,
                 refresh: float = 1.0, exact: bool = False) -> None:
        self.keys = Keys(name, prefix)
        self.name = name
        self.url = None if client is not None else resolve_url(url)
        self.cache_bytes = default_cache_bytes() if cache_bytes is None else int(cache_bytes)
        self.refresh = refresh
        self.exact = exact
        self._given_client = client
        self._deployment: Deployment | None = None
        self._pid = os.getpid()
        self._view: View | None = None
        self._checked = -float("inf")
        self._counts = Counters()
        _handles.add(self)

    def __repr__(self) -> str:
        where = redact(self.url) if self.url else repr(self._given_client)
        return f"<RedisKeyedVectors {self.name!r} at {where}>"

    # --- connection and version -------------------------------------------------

    @property
    def deployment(self) -> Deployment:
        """This process's way to Redis (:mod:`vectorstore.topology`: one server, replicas or
        a cluster), re-created after a fork when built from a URL."""
        if self._deployment is None or (self._pid != os.getpid() and self._given_client is None):
            try:
                self._deployment = connect_deployment(self.url, self._given_client)
            except redis.AuthenticationError:
                raise
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                raise unavailable(exc, self.url) from exc
            self._pid = os.getpid()
        return self._deployment

    @property
    def redis(self) -> redis.Redis:
        """This process's redis-py client (a ``RedisCluster`` on a cluster)."""
        return cast(redis.Redis, self.deployment.client)

    def _call(self, *args: Any) -> Any:
        """One command on the primary owning its key (``args[1]``), one round trip."""
        return self._fast_calls([args])[0]

    def _fast_calls(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Replies to ``commands`` (each on its key's primary), about one round trip."""
        return self._counted(lambda d: d.calls(commands))

    def _values(self, names: Sequence[bytes]) -> list[bytes | None]:
        """Values of the string keys ``names`` (:meth:`Deployment.mget`: any slots, replicas)."""
        return self._counted(lambda d: d.mget(names))

    def _counted(self, work: Callable[[Deployment], T]) -> T:
        """``work(deployment)``, its round trips added to this process's counters."""
        d = self.deployment
        before = d.round_trips
        try:
            return work(d)
        finally:
            self._counts.round_trips += d.round_trips - before

    def _current(self) -> View:
        if time.monotonic() - self._checked >= self.refresh or self._view is None:
            self._sync()
        assert self._view is not None
        return self._view

    def _sync(self) -> bool:
        """Re-read the alias; switch to a new version if it moved (then return True)."""
        for _ in range(3):
            version = alias_version(self._read("GET", self.keys.current), self.keys.current)
            if version is None:
                raise ModelNotFoundError(
                    f"no model named {self.name!r} under prefix {self.keys.prefix!r}: "
                    f"load it with `vectorstore load PATH --name {self.name}`"
                )
            self._checked = time.monotonic()
            if self._view is not None and self._view.meta.version == version:
                return False
            key = self.keys.meta(version)
            raw = self._read("HGETALL", key)
            if raw:
                try:
                    meta = Meta.from_hash(dict(zip(raw[::2], raw[1::2])) if isinstance(raw, list)
                                          else raw)
                except CorruptValueError as exc:
                    raise CorruptValueError(f"model {self.name!r}: {key}: {exc}") from None
                self._view = View(
                    meta=meta, codec=meta.codec(), names=TokenKeys.of(self.keys, meta),
                    cache=VectorCache(meta.dim, self.cache_bytes),
                    index_to_key=IndexToKey(self, version, meta.count), alias=b"%d" % version)
                return True
        raise VectorStoreError(f"model {self.name!r}: version metadata vanished while reading it")

    def _read(self, command: str, key: str) -> Any:
        """``command key`` (GET, HGETALL); a key of the wrong type is a CorruptValueError."""
        try:
            return self._call(command, key)
        except redis.ResponseError as exc:
            if str(exc).startswith("WRONGTYPE"):
                raise CorruptValueError(f"model {self.name!r}: {key} is not a "
                                        f"{'string' if command == 'GET' else 'hash'} "
                                        f"({exc}): reload or drop the model") from None
            raise

    @property
    def meta(self) -> Meta:
        """Metadata of the version being served."""
        return self._current().meta

    @property
    def version(self) -> int:
        return self._current().meta.version

    @property
    def vector_size(self) -> int:
        return self._current().meta.dim

    def __len__(self) -> int:
        return self._current().meta.count

    @property
    def index_to_key(self) -> IndexToKey:
        """Lazy sequence of tokens in index order; fetches 1024-token chunks on demand."""
        return self._current().index_to_key

    @property
    def key_to_index(self) -> KeyToIndex:
        """Lazy mapping token -> index, like gensim's dict."""
        return KeyToIndex(self)

    # --- lookups ----------------------------------------------------------------

    def _mget(self, view: View, tokens: Sequence[str],
              ride: _NgramRide | None = None) -> list[bytes | None]:
        """Values of ``tokens`` in ``view``'s version, read with the alias in one MGET
        (and the n-gram rows ``ride`` asks for, handed to it).

        Raises _Moved if the alias no longer points to ``view``: then the values
        may belong to another version, and the caller re-syncs and retries.
        """
        try:
            names = view.names(tokens)
        except AttributeError:
            bad = next(t for t in tokens if not isinstance(t, str))
            raise TypeError(f"tokens must be str, got {type(bad).__name__} {bad!r}") from None
        extra = ride.names(tokens) if ride is not None else []
        sure = {i for i, t in enumerate(tokens) if t in ride.absent} if ride is not None else ()
        values = self._counted(lambda d: d.versioned_mget(self.keys.current, view.alias,
                                                          [*names, *extra], sure))
        if extra:
            ride.read(values[len(names):])  # type: ignore[union-attr]  # extra: ride is set
            del values[len(names):]
        return values

    def _on_current(self, read: Callable[[View], T]) -> T:
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
        self._counts.lookups += 1
        self._counts.absent += len(missing)
        if missing and oov == "error":
            raise KeyError(f"Key '{keys[missing[0]]}' not present")
        if missing and oov == "skip":
            out = np.delete(out, missing, axis=0)
        return Lookup(out, missing)

    def _decode(self, view: View, tokens: Sequence[str], values: Sequence[bytes],
                expected: np.ndarray | None = None) -> np.ndarray:
        """float32 vectors of ``tokens`` from their stored ``values``, checked on the way.

        A value of the wrong length, holding a NaN or an infinity, or whose
        stored index is out of the model's range (or is not ``expected``, where
        the caller knows the tokens' indexes) raises CorruptValueError naming
        the tokens. The checks cost about 7 us per 100 x 300 values; what a
        reader cannot see (a token's value overwritten by another token's, a
        deleted token key) is for ``vectorstore verify``.
        """
        codec = view.codec
        try:
            rec = codec.records(values)
        except CorruptValueError:
            bad = codec.bad_lengths(values)
            raise self._corrupt(view, [tokens[i] for i in bad],
                                f"{len(values[bad[0]])} bytes instead of {codec.size} "
                                f"({codec.dim} x {codec.dtype} + 4-byte index)") from None
        out = rec["v"].astype(np.float32)
        stored = rec["i"]
        counts = self._counts
        counts.fetched += len(values)
        counts.bytes += len(values) * codec.size
        if expected is not None and not np.array_equal(stored, expected):
            bad = np.flatnonzero(stored != expected).tolist()
            raise self._corrupt(view, [tokens[i] for i in bad],
                                f"index {int(stored[bad[0]])} where the model has it at "
                                f"{int(expected[bad[0]])}")
        if len(values) and int(stored.max()) >= view.meta.count:
            bad = np.flatnonzero(stored >= view.meta.count).tolist()
            raise self._corrupt(view, [tokens[i] for i in bad],
                                f"index {int(stored[bad[0]])} (the model has {view.meta.count})")
        if not np.isfinite(out).all():
            bad = np.flatnonzero(~np.isfinite(out).all(axis=1)).tolist()
            raise self._corrupt(view, [tokens[i] for i in bad], "NaN or infinite floats")
        return out

    def _check_absent(self, view: View, tokens: Sequence[str],
                      ride: _NgramRide | None = None) -> None:
        """Raise CorruptValueError if a token MGET read as absent has a key of another type.

        MGET answers nil for a hash, list or set as for no key, so such a token
        would pass for out-of-vocabulary. One more round trip (EXISTS per
        token, ~15 us), paid by a lookup that meets tokens absent and not yet
        known to be absent. A deleted token key cannot be told from an
        out-of-vocabulary token this way: ``vectorstore verify`` names those.
        Tokens ``ride``'s vocabulary filter rejected need no check: they are no
        tokens of the model, whatever their keys hold.
        """
        if ride is not None:
            tokens = ride.unsure(tokens)
            if not tokens:
                return
        names = view.names(tokens)
        exists = self._fast_calls([("EXISTS", n) for n in names])
        bad = [t for t, e in zip(tokens, exists) if e]
        if bad:
            raise self._corrupt(view, bad, "no string: its key is another Redis type")

    def _corrupt(self, view: View, tokens: Sequence[str], what: str) -> CorruptValueError:
        shown = ", ".join(map(repr, tokens[:5])) + (f" and {len(tokens) - 5} more"
                                                    if len(tokens) > 5 else "")
        return CorruptValueError(
            f"model {self.name!r} version {view.meta.version}: the stored value of token(s) "
            f"{shown} holds {what}: run `vectorstore verify {self.name}` and reload the model")

    def _lookup_direct(self, view: View, keys: list[str], ride: _NgramRide | None = None
                       ) -> tuple[np.ndarray, list[int]]:
        """Vectors of ``keys`` and their OOV positions, all read from Redis (no cache)."""
        values = self._mget(view, keys, ride)
        self._counts.tokens += len(keys)
        out, missing = self._decode_some(view, keys, values)
        if missing:
            self._check_absent(view, list(dict.fromkeys(keys[i] for i in missing)), ride)
        return out, missing

    def _decode_some(self, view: View, keys: list[str],
                     values: list[bytes | None]) -> tuple[np.ndarray, list[int]]:
        """Vectors of ``keys`` from ``values`` (zero rows where None), and the None positions."""
        if None not in values:
            return self._decode(view, keys, cast("list[bytes]", values)), []
        missing = [i for i, v in enumerate(values) if v is None]
        out = np.zeros((len(keys), view.codec.dim), dtype=np.float32)
        found = [i for i, v in enumerate(values) if v is not None]
        if found:
            out[found] = self._decode(view, [keys[i] for i in found],
                                      [v for v in values if v is not None])
        return out, missing

    def _lookup_cached(self, view: View, keys: list[str], ride: _NgramRide | None = None
                       ) -> tuple[np.ndarray, list[int]]:
        """``_lookup_direct`` through the cache: no round trip when every token is cached
        (or known absent), else one MGET of the others, offered to the cache afterwards.

        Each token touched costs (memory latency), so a document whose first
        tokens are mostly unknown takes the cache-off path (fetch all) and
        offers only every ``ADMIT_STRIDE``-th token to the cache.
        """
        cache, counts = view.cache, self._counts
        counts.tokens += len(keys)
        sample = keys[:KNOWN_SAMPLE]
        if cache.known(sample) * 2 < len(sample):
            out, missing = self._decode_some(view, keys, self._mget(view, keys, ride))
            absent = missing
            wanted, fetched = keys[::ADMIT_STRIDE], out[::ADMIT_STRIDE]
            offered_absent = [i // ADMIT_STRIDE for i in missing if i % ADMIT_STRIDE == 0]
            got = keys
        else:
            with cache.lock:
                rows = cache.rows(keys)
                hit = rows >= 0
                hits = int(np.count_nonzero(hit))
                counts.hits += hits
                if hits == len(keys):
                    return cache.gather(rows), []
                out = cache.gather(np.maximum(rows, 0))  # one copy; misses overwritten below
            unknown = np.flatnonzero(rows == UNKNOWN)
            wanted = got = [keys[i] for i in unknown.tolist()]  # Python work per miss only
            fetched, absent = self._decode_some(view, wanted,
                                                self._mget(view, wanted, ride) if wanted else [])
            offered_absent = absent
            out[unknown] = fetched
            gone = rows == MISSING
            gone[unknown[absent]] = True
            missing = np.flatnonzero(gone).tolist()
            out[missing] = 0
        new_absent = [t for t in dict.fromkeys(got[i] for i in absent)
                      if not cache.known_missing(t)]
        if new_absent:
            self._check_absent(view, new_absent, ride)
        if offered_absent:
            keep = np.ones(len(wanted), dtype=bool)
            keep[offered_absent] = False
            wanted, fetched = [t for t, k in zip(wanted, keep.tolist()) if k], fetched[keep]
        with cache.lock:
            cache.admit(wanted, fetched)
            if new_absent:
                cache.put_missing(new_absent)
        return out, missing

    def prewarm(self, n: int | None = None, *, max_bytes: int | None = None) -> int:
        """Cache the model's ``n`` first tokens, by default as many as ``max_bytes`` of
        float32 rows hold (default ``VECTORSTORE_PREWARM_BYTES``, 256 MiB).

        Model files list tokens by descending frequency (word2vec, GloVe,
        fastText), so these are the most frequent words. They are pinned beside
        the ``cache_bytes`` of evictable rows: never evicted nor rewritten, so a
        Celery worker that prewarms before its pool forks (``VECTORSTORE_PREWARM``)
        has every pool process share those pages copy-on-write: one copy per
        worker, however many pool processes. Reads the index->token chunks and
        MGETs vectors 4096 at a time, checking each value's stored index. Clears
        the cache first; a new model version starts with an empty cache again.
        A handle whose cache is off (``cache_bytes=0``) caches nothing.

        >>> kv = RedisKeyedVectors("news")                            # doctest: +SKIP
        >>> kv.prewarm(max_bytes=64 * 2**20)                         # doctest: +SKIP
        55924

        Returns the number of tokens cached.
        """
        budget = default_prewarm_bytes() if max_bytes is None else max(0, int(max_bytes))

        def read(view: View) -> int:
            cache = view.cache
            total = min(view.meta.count, budget // (4 * view.meta.dim) if n is None else max(0, n))
            with cache.lock:
                cache.reserve(total)
            self._bloom(view)  # fastText: read before a worker forks, so its pool shares it
            total = min(total, cache.capacity - cache.evictable)
            done = 0
            for lo in range(0, total, PREWARM_BATCH):
                hi = min(total, lo + PREWARM_BATCH)
                tokens = view.index_to_key[lo:hi]
                values = self._mget(view, tokens)
                if None in values:
                    raise self._corrupt(view, [t for t, v in zip(tokens, values) if v is None],
                                        "nothing: its key is missing or not a string")
                vectors = self._decode(view, tokens, cast("list[bytes]", values),
                                       np.arange(lo, hi, dtype=np.uint32))
                with cache.lock:
                    done += cache.pin(tokens, vectors)
            return done
        return self._on_current(read)

    def stats(self) -> dict[str, int | float]:
        """This process's counters for this handle, and the state of its cache.

        ``lookups`` (calls), ``tokens`` (asked for), ``hits`` (answered by the
        cache), ``fetched`` (vectors read from Redis), ``absent`` (OOV tokens),
        ``round_trips`` (Redis commands or pipelines), ``bytes`` (vector bytes
        read), ``hit_rate``; ``cache_capacity``/``cache_entries``/``cache_pinned``
        (vectors), ``cache_fill`` (entries / capacity), ``cache_admitted`` and
        ``cache_evicted`` (since the version's cache was made), ``cache_bytes``
        (the bound). Counters start at zero in a forked child.

        >>> kv.stats()["hit_rate"]                                    # doctest: +SKIP
        0.93
        """
        out: dict[str, int | float] = dict(self._counts.as_dict())
        out["hit_rate"] = out["hits"] / out["tokens"] if out["tokens"] else 0.0
        cache = self._view.cache if self._view is not None else None
        out.update(cache_bytes=self.cache_bytes,
                   cache_capacity=cache.capacity if cache else 0,
                   cache_entries=len(cache) if cache else 0,
                   cache_pinned=cache.pinned if cache else 0,
                   cache_fill=len(cache) / cache.capacity if cache and cache.capacity else 0.0,
                   cache_admitted=cache.admitted if cache else 0,
                   cache_evicted=cache.evicted if cache else 0)
        return out

    def get_vectors(self, keys: Iterable[str], oov: str = "error") -> np.ndarray:
        """Stacked vectors of ``keys``; see :meth:`lookup` for ``oov``."""
        return self.lookup(keys, oov).vectors

    def _as_token(self, key: str | int | np.integer) -> str:
        if isinstance(key, str):
            return key
        if isinstance(key, (int, np.integer)):
            return self.index_to_key[int(key)]
        raise TypeError(f"keys must be str or int, got {type(key).__name__} {key!r}")

    def get_vector(self, key: str | int | np.integer, norm: bool = False) -> np.ndarray:
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

    def get_index(self, key: str | int, default: int | None = None) -> int:
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

    def _index_of(self, view: View, key: str) -> int | None:
        value = self._mget(view, [key])[0]
        if value is None:
            self._check_absent(view, [key])
            return None
        self._decode(view, [key], [value])
        return int(view.codec.decode_indexes([value])[0])

    def has_index_for(self, key: str | int) -> bool:
        return self.get_index(key, -1) >= 0

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str) and self.subwords is not None:
            return True  # fastText: every word has a vector (gensim's FastTextKeyedVectors)
        return isinstance(key, (str, int, np.integer)) and self.has_index_for(key)  # type: ignore[arg-type]

    def get_mean_vector(self, keys: Sequence[Any], weights: Sequence[float] | None = None,
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
        ``kv.key_to_index`` tell the vocabulary). The n-gram rows read are kept
        in a cache of their own, bounded by ``cache_bytes`` like the tokens'.
        """
        return self._subwords(self._current())

    def _subwords(self, view: View) -> SubwordParams | None:
        seen = self.__dict__.get("_subwords_seen")
        if seen is None or seen[0] is not view:
            seen = self.__dict__["_subwords_seen"] = (view, SubwordParams.from_extra(view.meta.extra))
        return seen[1]

    def _subword_lookup(self, keys: list[str], norm: bool = False) -> Lookup:
        """``lookup(keys, oov="subword")``: OOV rows from their n-grams, in one round trip.

        With the model's vocabulary filter (:mod:`vectorstore.bloom`, written by the
        loader), the n-gram rows of the tokens it rejects, and of the tokens the
        cache knows missing, are read in the same MGET as the other tokens
        (deduplicated, not those in the n-gram cache); only a false positive of the
        filter (~0.8% of OOV tokens) needs one more. A model loaded without a
        filter reads the OOV tokens' n-gram rows in a second MGET.

        ``missing`` lists the OOV positions (filled, not left out). With ``norm``
        the OOV rows are gensim's ``get_vector(key, norm=True)`` (the n-gram sum
        over its norm), the others are left raw.
        """
        def read(view: View) -> tuple[np.ndarray, list[int]]:
            params = self._subwords(view)
            if params is None:
                raise ValueError(
                    f"oov='subword' needs a fastText model loaded from its .bin file (with "
                    f"n-gram buckets); model {self.name!r} has none: use oov='zero', 'skip' "
                    f"or 'error'")
            bloom = self._bloom(view)
            ride = None if bloom is None else _NgramRide(
                view, params, bloom, keys, self._ngram_cache(view),
                self.keys.ngram_prefix(view.meta.version))
            out, missing = (self._lookup_cached if view.cache.enabled
                            else self._lookup_direct)(view, keys, ride)
            self._fill_subwords(view, params, keys, out, missing, norm, ride)
            return out, missing
        found = Lookup(*self._on_current(read))
        self._counts.lookups += 1
        self._counts.absent += len(found.missing)
        return found

    def _bloom(self, view: View) -> BloomFilter | None:
        """``view``'s vocabulary filter, read once per version (None if it has none)."""
        seen = self.__dict__.get("_bloom_seen")
        if seen is None or seen[0] is not view:
            params = BloomParams.from_extra(view.meta.extra)
            bloom = None
            if params is not None:
                key = self.keys.bloom(view.meta.version)
                [raw] = self._counted(lambda d: d.versioned_mget(self.keys.current,
                                                                 view.alias, [key]))
                bloom = BloomFilter.stored(params, raw, f"model {self.name!r} version "
                                           f"{view.meta.version}: its vocabulary filter {key}")
            seen = self.__dict__["_bloom_seen"] = (view, bloom)
        return seen[1]

    def _fill_subwords(self, view: View, params: SubwordParams, keys: Sequence[str],
                       out: np.ndarray, missing: list[int], norm: bool = False,
                       ride: _NgramRide | None = None) -> None:
        """Set the rows ``missing`` of ``out`` from their tokens' n-gram rows (those ``ride``
        read, the others in one MGET, deduplicated); zero rows for tokens without n-grams."""
        if not missing:
            return
        tokens = list(dict.fromkeys(keys[i] for i in missing))
        plan = NgramPlan(tokens, params, ride.hashes if ride is not None else None)
        rows = self._ngram_rows(view, plan.buckets, ride.values if ride is not None else {})
        vectors = plan.units(rows) if norm else plan.means(rows)
        at = {t: j for j, t in enumerate(tokens)}
        out[missing] = vectors[[at[keys[i]] for i in missing]]

    def _ngram_cache(self, view: View) -> VectorCache:
        """This process's cache of ``view``'s n-gram rows (``cache_bytes``, like the tokens')."""
        seen = self.__dict__.get("_ngram_cache_seen")
        if seen is None or seen[0] is not view:
            seen = (view, VectorCache(view.meta.dim, self.cache_bytes, max_missing=0))
            self.__dict__["_ngram_cache_seen"] = seen
        return seen[1]

    def _ngram_rows(self, view: View, buckets: list[int],
                    given: Mapping[int, bytes | None]) -> np.ndarray:
        """The rows of ``buckets``: from the n-gram cache, from the values ``given`` (read
        with the tokens), the others in one MGET."""
        cache = self._ngram_cache(view)
        out = np.empty((len(buckets), view.codec.dim), dtype=np.float32)
        names = [str(b) for b in buckets]
        miss = list(range(len(buckets)))
        if cache.enabled:
            with cache.lock:
                rows = np.array(cache.rows(names), dtype=np.intp)
                hit = rows >= 0
                out[hit] = cache.gather(rows[hit])
            miss = np.flatnonzero(~hit).tolist()
        if not miss:
            return out
        wanted = [buckets[i] for i in miss]
        read = iter(self._ngram_values(view, [b for b in wanted if b not in given]))
        out[miss] = fetched = self._decode_ngrams(
            view, wanted, [given[b] if b in given else next(read) for b in wanted])
        if cache.enabled:
            with cache.lock:
                cache.put([names[i] for i in miss], fetched)
        return out

    def _ngram_values(self, view: View, buckets: list[int]) -> list[bytes | None]:
        """The stored values of ``buckets`` in ``view``'s version, read with the alias in one
        MGET (none for no bucket)."""
        if not buckets:
            return []
        prefix = self.keys.ngram_prefix(view.meta.version)
        return self._counted(lambda d: d.versioned_mget(
            self.keys.current, view.alias, [prefix + b"%d" % b for b in buckets]))

    def _decode_ngrams(self, view: View, buckets: list[int],
                       values: list[bytes | None]) -> np.ndarray:
        """float32 rows of ``buckets`` from their stored ``values``, checked like tokens'
        (present, length, stored bucket number, finite floats)."""
        codec = view.codec

        def corrupt(i: int, what: str) -> CorruptValueError:
            key = (self.keys.ngram_prefix(view.meta.version) + b"%d" % buckets[i]).decode()
            return CorruptValueError(f"model {self.name!r} version {view.meta.version}: its "
                                     f"n-gram bucket {buckets[i]} ({key}) {what}: run "
                                     f"`vectorstore verify {self.name}` and reload the model")
        if None in values:
            raise corrupt(values.index(None), "is missing or not a string")
        present = cast("list[bytes]", values)
        bad = codec.bad_lengths(present)
        if bad:
            raise corrupt(bad[0], f"holds {len(present[bad[0]])} bytes instead of {codec.size}")
        rec = codec.records(present)
        stored = rec["i"]
        if not np.array_equal(stored, buckets):
            i = int(np.flatnonzero(stored != np.asarray(buckets))[0])
            raise corrupt(i, f"holds the row of bucket {int(stored[i])}")
        rows = rec["v"].astype(np.float32).reshape(len(present), codec.dim)
        if not np.isfinite(rows).all():
            raise corrupt(int(np.flatnonzero(~np.isfinite(rows).all(axis=1))[0]),
                          "holds NaN or infinite floats")
        self._counts.fetched += len(present)
        self._counts.bytes += len(present) * codec.size
        return rows

    def _subword_rows(self, view: View, keys: Sequence[Any], indexes: np.ndarray,
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

    # --- gensim's other read-only methods -----------------------------------------

    def get_vecattr(self, key: str | int, attr: str) -> int:
        """gensim's per-key attribute; only ``"count"`` is known to a Redis-backed model.

        ``count`` is ``len(kv) - index``, what gensim's ``load_word2vec_format``
        sets when it reads a file without a vocabulary file (model files list
        tokens by descending frequency, so it orders keys as their counts would).

        >>> kv.get_vecattr("the", "count") == len(kv) - kv.get_index("the")   # doctest: +SKIP
        True

        Raises KeyError for a key not in the model or another attribute.
        """
        if attr != "count":
            raise KeyError(f"model {self.name!r} has no per-key attribute {attr!r}: a "
                           f"Redis-backed model knows only 'count' (len(kv) - index)")
        return len(self) - self.get_index(key)

    def vectors_for_all(self, keys: Iterable[Any], allow_inference: bool = True,
                        copy_vecattrs: bool = False) -> KeyedVectors:
        """A new in-memory gensim ``KeyedVectors`` of the ``keys`` present (one MGET), as gensim.

        Keys are deduplicated, kept in their first order, and the absent ones
        left out; each gets ``count`` = (number of keys) - (its new index), or
        with ``copy_vecattrs`` its count in this model. ``allow_inference``:
        on a fastText model (:attr:`subwords`), keys outside the vocabulary get
        their n-gram vectors, as gensim's ``FastTextKeyedVectors``.

        >>> small = kv.vectors_for_all(["car", "qwxz", "car", "red"])   # doctest: +SKIP
        >>> small.index_to_key, small.vectors.shape                     # doctest: +SKIP
        (['car', 'red'], (2, 300))
        """
        unique = list(dict.fromkeys(keys))
        if allow_inference:  # gensim: 'key in kv', which an index is; else 'in key_to_index'
            tokens = [self._as_token(k) if isinstance(k, (int, np.integer)) and 0 <= k < len(self)
                      else k for k in unique]
        else:
            tokens = unique
        if any(not isinstance(t, str) for t in tokens):  # gensim: such keys are never 'in'
            kept = [i for i, t in enumerate(tokens) if isinstance(t, str)]
            unique, tokens = [unique[i] for i in kept], [tokens[i] for i in kept]
        infer = allow_inference and bool(tokens) and self.subwords is not None

        def read(view: View) -> tuple[np.ndarray, np.ndarray]:
            values = self._mget(view, tokens) if tokens else []
            vectors = np.zeros((len(tokens), view.codec.dim), dtype=np.float32)
            indexes = np.full(len(tokens), -1, dtype=np.int64)
            found = [i for i, v in enumerate(values) if v is not None]
            if found:
                present = [v for v in values if v is not None]
                vectors[found] = self._decode(view, [tokens[i] for i in found], present)
                indexes[found] = view.codec.decode_indexes(present)
            if len(found) < len(tokens):
                self._check_absent(view, [t for t, v in zip(tokens, values) if v is None])
            if infer:
                params = self._subwords(view)
                assert params is not None
                self._fill_subwords(view, params, tokens, vectors,
                                    np.flatnonzero(indexes < 0).tolist())
            return vectors, indexes

        vectors, indexes = self._on_current(read)
        keep = np.arange(len(tokens)) if infer else np.flatnonzero(indexes >= 0)
        vocab = [unique[i] for i in keep.tolist()]
        out = KeyedVectors(self.vector_size, len(vocab), dtype=np.float32)
        out.index_to_key = vocab
        out.key_to_index = {k: i for i, k in enumerate(vocab)}
        out.vectors = np.ascontiguousarray(vectors[keep])
        out.next_index = len(vocab)
        if vocab:  # gensim sets counts key by key, so an empty result has none
            counts = np.arange(len(vocab), 0, -1, dtype=np.int64)
            if copy_vecattrs:  # gensim copies the counts of the keys that have one
                own = indexes[keep] >= 0
                counts[own] = len(self) - indexes[keep][own]
            out.expandos["count"] = counts
        return out

    # --- pickling and closing -----------------------------------------------------

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled by reference: name, URL and options, never vectors, cache or connection.

        So ``multiprocessing``, ``concurrent.futures``, joblib, Dask or Ray can
        ship a handle to their workers, which connect on first use. A handle
        built with ``client=`` cannot be pickled (a client is bound to its
        process): build it with ``url=`` instead.
        """
        if self.url is None:
            raise NotPicklableError(
                f"{self!r} was built with client=, which cannot be pickled (its connections "
                f"belong to this process): build it with url= to send it to other processes")
        return _rebuild, (type(self), self.name, self.url, self._options())

    def _options(self) -> dict[str, Any]:
        """Keyword arguments that rebuild this handle (with its name and URL)."""
        options: dict[str, Any] = dict(prefix=self.keys.prefix, cache_bytes=self.cache_bytes,
                                       refresh=self.refresh, exact=self.exact)
        if "search_ef" in self.__dict__:
            options["search_ef"] = self.search_ef
        return options

    def close(self) -> None:
        """Close this process's connections; the next use opens new ones.

        Call it before forking when the parent used the handle (e.g. to
        :meth:`prewarm`), so no child shares the parent's sockets.
        """
        if self._deployment is not None:
            if self._given_client is None:
                self._deployment.close()
                self._deployment = None
            else:
                self._deployment.disconnect()

    # --- what a Redis-backed model does not do -------------------------------------

    @property
    def vectors(self) -> np.ndarray:
        raise NotInMemoryError(_NOT_IN_MEMORY)

    norms = vectors

    def _not_in_memory(self, *args: Any, **kwargs: Any) -> Any:
        raise NotInMemoryError(_NOT_IN_MEMORY)

    fill_norms = get_normed_vectors = init_sims = _not_in_memory

    def _read_only(self, *args: Any, **kwargs: Any) -> Any:
        raise ReadOnlyError(_READ_ONLY)

    add_vector = add_vectors = __setitem__ = _read_only
    save = save_word2vec_format = resize_vectors = _read_only
    unit_normalize_all = intersect_word2vec_format = _read_only
    sort_by_descending_frequency = set_vecattr = allocate_vecattrs = _read_only

    @classmethod
    def load(cls, *args: Any, **kwargs: Any) -> Any:
        raise ReadOnlyError(_READ_ONLY)

    load_word2vec_format = load


def _rebuild(cls: type[RedisKeyedVectors], name: str, url: str,
             options: dict[str, Any]) -> RedisKeyedVectors:
    """Unpickle a handle: a new, unconnected one with the same settings."""
    search_ef = options.pop("search_ef", None)
    kv = cls(name, url, **options)
    if search_ef is not None:
        kv.search_ef = search_ef
    return kv


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


class _NgramRide:
    """The n-gram rows a fastText lookup reads in the same MGET as its tokens.

    ``_mget`` asks :meth:`names` for the keys to add, given the tokens it
    fetches: the n-gram rows (deduplicated, not in the n-gram cache) of the
    tokens the vocabulary filter rejects and of those the token cache knows
    missing. :attr:`values` then holds what was read, by bucket.
    """

    def __init__(self, view: View, params: SubwordParams, bloom: BloomFilter,
                 keys: Sequence[str], ngram_cache: VectorCache, prefix: bytes) -> None:
        self.view, self.params, self.bloom, self.keys = view, params, bloom, keys
        self.ngram_cache, self.prefix = ngram_cache, prefix
        self.absent: set[str] = set()  # tokens the filter rejected: certainly OOV
        self.hashes: dict[str, list[int]] = {}  # their n-grams' buckets (and known missing's)
        self.values: dict[int, bytes | None] = {}
        self._buckets: list[int] = []

    def names(self, fetching: Sequence[str]) -> list[bytes]:
        """Keys of the n-gram rows to read with the tokens ``fetching``."""
        unique = list(dict.fromkeys(fetching))
        maybe = self.bloom.might_contain(unique).tolist()
        self.absent = {t for t, m in zip(unique, maybe) if not m}
        oov = list(self.absent)
        cache = self.view.cache
        if cache.enabled:
            oov += [t for t in dict.fromkeys(self.keys) if cache.known_missing(t)]
        if not oov:
            return []
        self.hashes = {t: self.params.buckets(t) for t in oov}
        buckets = list(dict.fromkeys(chain.from_iterable(self.hashes.values())))
        if self.ngram_cache.enabled:
            rows = self.ngram_cache.rows([str(b) for b in buckets]).tolist()
            buckets = [b for b, row in zip(buckets, rows) if row < 0]
        self._buckets = buckets
        return [self.prefix + b"%d" % b for b in buckets]

    def read(self, values: Sequence[bytes | None]) -> None:
        """Keep ``values`` of the keys :meth:`names` gave, by bucket."""
        self.values = dict(zip(self._buckets, values))

    def unsure(self, tokens: Sequence[str]) -> list[str]:
        """``tokens`` but those the filter rejected (an MGET read them absent for sure)."""
        return [t for t in tokens if t not in self.absent]
