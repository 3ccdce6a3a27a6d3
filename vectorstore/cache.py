"""A per-process cache of hot vectors, bounded in bytes, that never makes a lookup slower.

Vectors live in one preallocated float32 slab, so a document whose tokens
are all cached is a single fancy-indexing call. The slab has two regions:

* pinned rows ``[0, pinned)``, reserved by :meth:`VectorCache.reserve` beside
  the ``max_bytes`` bound and filled by :meth:`VectorCache.pin` with a model's
  most frequent tokens (``RedisKeyedVectors.prewarm``), never written again: a
  Celery worker fills them before its pool forks, and every pool process
  shares those pages copy-on-write (one copy per worker, not per process);
* ``max_bytes`` of evictable rows, filled by admission and evicted by CLOCK
  (second chance: a hit sets a row's reference bit; the hand clears bits
  until it finds unreferenced rows to reuse).

Admission (TinyLFU's doorkeeper): a token fetched from Redis enters the
cache only the second time it is fetched within the last ``evictable``
distinct fetches, so a stream of tokens that never come back (uniformly
drawn words, the long tail of real text) costs two set operations per
document instead of an insertion per token. Tokens known to be missing are
remembered too (bounded separately), so repeated out-of-vocabulary words cost
nothing.

>>> c = VectorCache(dim=2, max_bytes=16)        # room for two vectors
>>> v = np.array([[1, 2], [3, 4]], dtype=np.float32)
>>> c.admit(["a", "b"], v); len(c)              # first sighting: remembered, not cached
0
>>> c.admit(["a", "b"], v); c.rows(["b", "zz"]).tolist()   # second: cached
[1, -1]
>>> c.gather(np.array([1])).tolist()
[[3.0, 4.0]]
"""
from __future__ import annotations

import threading
from collections.abc import Sequence
from itertools import repeat

import numpy as np

MISSING = -2  # row value of a token known to be absent from the model
UNKNOWN = -1  # row value of a token the cache knows nothing about
ADMIT_BATCH = 256  # admitted tokens inserted together (fewer for small caches)


class VectorCache:
    """Cache of ``dim``-wide float32 vectors using at most ``max_bytes`` for the slab."""

    def __init__(self, dim: int, max_bytes: int, max_missing: int = 100_000) -> None:
        self.dim = dim
        self.evictable = max(0, int(max_bytes) // (4 * dim))
        self.max_missing = max_missing if self.evictable else 0
        self.lock = threading.Lock()
        self._allocate(0)
        self._rows: dict[str, int] = {}
        self._seen: set[str] = set()  # the doorkeeper: fetched once, not cached (yet)
        self._queued: list[str] = []  # fetched again, to insert with the next batch
        self._queued_vectors: list[np.ndarray] = []
        self._size = 0
        self._pinned = self._reserved = 0
        self._hand = 0
        self._missing = 0
        self.admitted = self.evicted = 0

    def _allocate(self, pinned: int) -> None:
        """A fresh slab of ``pinned`` rows to pin and the evictable ones (pages of the
        slab take memory only once written)."""
        self.capacity = pinned + self.evictable
        self._slab = np.empty((self.capacity, self.dim), dtype=np.float32)
        self._ref = np.zeros(self.capacity, dtype=bool)
        self._owner: list[str | None] = [None] * self.capacity

    @property
    def enabled(self) -> bool:
        return self.evictable > 0

    @property
    def pinned(self) -> int:
        """Rows filled by :meth:`pin`, never evicted."""
        return self._pinned

    def __len__(self) -> int:
        return self._size

    def rows(self, tokens: Sequence[str]) -> np.ndarray:
        """Row of each token (an intp array), or UNKNOWN, or MISSING."""
        return np.fromiter(map(self._rows.get, tokens, repeat(UNKNOWN)), dtype=np.intp,
                           count=len(tokens))

    def known(self, tokens: Sequence[str]) -> int:
        """How many of ``tokens`` are cached or known missing (a C loop, ~15 ns a token)."""
        return sum(map(self._rows.__contains__, tokens))

    def known_missing(self, token: str) -> bool:
        return self._rows.get(token) == MISSING

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """Copy of the vectors in ``rows`` (an index array of valid rows); marks the
        evictable ones referenced (the pinned rows' bits stay unwritten: shared pages)."""
        self._ref[rows[rows >= self._pinned] if self._pinned else rows] = True
        return self._slab[rows]

    def admit(self, tokens: Sequence[str], vectors: np.ndarray) -> None:
        """Offer ``vectors`` of ``tokens`` just fetched (not cached; repeats allowed).

        Tokens fetched before since the doorkeeper was last reset are queued
        and inserted :data:`ADMIT_BATCH` at a time (so the fixed cost of an
        insertion is shared); the others are only remembered.
        """
        if not self.capacity > self._pinned:
            return
        seen = self._seen
        again = seen.intersection(tokens)  # C loops: no Python work per token
        if len(seen) + len(tokens) > self.evictable:
            seen.clear()  # TinyLFU's reset: the doorkeeper forgets old sightings
        seen.update(tokens)
        if not again:
            return
        seen.difference_update(again)
        at = [i for i, t in enumerate(tokens) if t in again]
        self._queued += [tokens[i] for i in at]
        self._queued_vectors.append(vectors[at])
        if len(self._queued) >= min(ADMIT_BATCH, max(1, (self.capacity - self._pinned) // 8)):
            queued, vectors = self._queued, np.concatenate(self._queued_vectors)
            self._queued, self._queued_vectors = [], []
            first: dict[str, int] = {}
            for i, t in enumerate(queued):
                first.setdefault(t, i)
            self.put(list(first), vectors[list(first.values())])

    def put(self, tokens: Sequence[str], vectors: np.ndarray) -> None:
        """Cache ``vectors`` of ``tokens`` (distinct tokens not already cached) in the
        evictable rows; past their number, the first ones only."""
        known = self._rows
        if any(map(known.__contains__, tokens)):  # another thread cached some meanwhile
            keep = [i for i, t in enumerate(tokens) if t not in known]
            tokens, vectors = [tokens[i] for i in keep], vectors[keep]
        k = min(len(tokens), self.capacity - self._pinned)
        if k <= 0:
            return
        rows = self._take(k)
        self._slab[rows] = vectors[:k]
        owner = self._owner
        for row, token in zip(rows.tolist(), tokens[:k]):
            owner[row] = token
        self._rows.update(zip(tokens[:k], rows.tolist()))
        self.admitted += k

    def reserve(self, rows: int) -> None:
        """Make room to :meth:`pin` ``rows`` vectors beside the evictable rows; empties the cache.

        >>> c = VectorCache(dim=2, max_bytes=8); c.reserve(2)
        >>> c.pin(["a", "b", "c"], np.ones((3, 2), dtype=np.float32)), c.capacity
        (2, 3)
        """
        self.clear()
        if self.enabled:
            self._allocate(max(0, rows))
        self._reserved = self.capacity - self.evictable

    def pin(self, tokens: Sequence[str], vectors: np.ndarray) -> int:
        """Cache ``vectors`` of ``tokens`` (distinct, not cached) in the rows :meth:`reserve`
        made, never evicted, after the pinned ones; only while nothing else is cached.
        Returns how many were pinned."""
        if self._size != self._pinned:
            raise ValueError("pin() only before anything else is cached: clear() first")
        k = min(len(tokens), self._reserved - self._pinned)
        lo, hi = self._pinned, self._pinned + k
        self._slab[lo:hi] = vectors[:k]
        self._owner[lo:hi] = tokens[:k]
        self._rows.update(zip(tokens[:k], range(lo, hi)))
        self._size = self._pinned = self._hand = hi
        return k

    def put_missing(self, tokens: Sequence[str]) -> None:
        """Remember that ``tokens`` are not in the model."""
        if self._missing + len(tokens) > self.max_missing:
            self._rows = {t: r for t, r in self._rows.items() if r != MISSING}
            self._missing = 0
        if len(tokens) <= self.max_missing:
            self._rows.update(dict.fromkeys(tokens, MISSING))
            self._missing += len(tokens)

    def _take(self, k: int) -> np.ndarray:
        """``k`` evictable rows to write (``k`` <= their number), evicting by CLOCK when full."""
        lo, cap = self._pinned, self.capacity
        if self._size + k <= cap:
            rows = np.arange(self._size, self._size + k)
            self._size += k
            return rows
        taken: list[np.ndarray] = []
        if self._size < cap:
            taken.append(np.arange(self._size, cap))
            self._ref[self._size:] = True  # so this sweep does not pick them again
            self._size = cap
        need = k - sum(len(t) for t in taken)
        while need:
            stop = min(cap, self._hand + max(4 * need, 256))
            window = self._ref[self._hand:stop]
            free = np.flatnonzero(~window)[:need]
            if len(free) == need:  # clear bits the hand passed, up to the last victim
                window[:free[-1] + 1] = False
                stop = self._hand + free[-1] + 1
            else:
                window[:] = False
            taken.append(free + self._hand)
            self._ref[taken[-1]] = True  # taken: later sweeps of this call skip them
            need -= len(free)
            self._hand = stop if stop < cap else lo
        rows = np.concatenate(taken)
        self._ref[rows] = False  # new entries start unreferenced
        for row in rows.tolist():
            old = self._owner[row]
            if old is not None:
                self._rows.pop(old, None)
                self.evicted += 1
        return rows

    def clear(self) -> None:
        """Forget everything, pinned rows too (and give back their memory)."""
        self._rows.clear()
        self._seen.clear()
        self._queued, self._queued_vectors = [], []
        self._allocate(0)
        self._size = self._pinned = self._reserved = self._hand = self._missing = 0
