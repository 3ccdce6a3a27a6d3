"""A per-process cache of hot vectors, bounded in bytes.

Vectors live in one preallocated float32 slab, so a document whose tokens
are all cached is a single fancy-indexing call. Eviction is CLOCK (second
chance): a hit sets a row's reference bit; the hand clears bits until it
finds unreferenced rows to reuse. Tokens known to be missing are remembered
too (bounded separately), so repeated out-of-vocabulary words cost nothing.

>>> c = VectorCache(dim=2, max_bytes=16)        # room for two vectors
>>> c.put(["a", "b"], np.array([[1, 2], [3, 4]], dtype=np.float32))
>>> rows = c.rows(["b", "zz"]); rows
[1, -1]
>>> c.gather(np.array([1])).tolist()
[[3.0, 4.0]]
"""
from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

MISSING = -2  # row value of a token known to be absent from the model
UNKNOWN = -1  # row value of a token the cache knows nothing about


class VectorCache:
    """Cache of ``dim``-wide float32 vectors using at most ``max_bytes`` for the slab."""

    def __init__(self, dim: int, max_bytes: int, max_missing: int = 100_000) -> None:
        self.dim = dim
        self.capacity = max(0, int(max_bytes) // (4 * dim))
        self.max_missing = max_missing if self.capacity else 0
        self.lock = threading.Lock()
        self._slab = np.empty((self.capacity, dim), dtype=np.float32)
        self._ref = np.zeros(self.capacity, dtype=bool)
        self._owner: list[str | None] = [None] * self.capacity
        self._rows: dict[str, int] = {}
        self._size = 0
        self._hand = 0
        self._missing = 0

    @property
    def enabled(self) -> bool:
        return self.capacity > 0

    def __len__(self) -> int:
        return self._size

    def rows(self, tokens: Sequence[str]) -> list[int]:
        """Row of each token, or UNKNOWN, or MISSING."""
        get = self._rows.get
        return [get(t, UNKNOWN) for t in tokens]

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """Copy of the vectors in ``rows`` (an index array of valid rows); marks them referenced."""
        self._ref[rows] = True
        return self._slab[rows]

    def put(self, tokens: Sequence[str], vectors: np.ndarray) -> None:
        """Cache ``vectors`` of ``tokens`` (tokens not already cached)."""
        k = min(len(tokens), self.capacity)
        if not k:
            return
        free = self._take(k)
        self._slab[free] = vectors[:k]
        for row, token in zip(free.tolist(), tokens[:k]):
            self._owner[row] = token
            self._rows[token] = row

    def put_missing(self, tokens: Sequence[str]) -> None:
        """Remember that ``tokens`` are not in the model."""
        if self._missing + len(tokens) > self.max_missing:
            self._rows = {t: r for t, r in self._rows.items() if r != MISSING}
            self._missing = 0
        if len(tokens) <= self.max_missing:
            self._rows.update(dict.fromkeys(tokens, MISSING))
            self._missing += len(tokens)

    def _take(self, k: int) -> np.ndarray:
        """``k`` rows to write, evicting by CLOCK when the slab is full."""
        if self._size + k <= self.capacity:
            rows = np.arange(self._size, self._size + k)
            self._size += k
            return rows
        taken: list[np.ndarray] = []
        if self._size < self.capacity:
            taken.append(np.arange(self._size, self.capacity))
            self._ref[self._size:] = True  # so this sweep does not pick them again
            self._size = self.capacity
        need = k - sum(len(t) for t in taken)
        while need:
            stop = min(self.capacity, self._hand + max(4 * need, 256))
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
            self._hand = stop % self.capacity
        rows = np.concatenate(taken)
        self._ref[rows] = False  # new entries start unreferenced
        for row in rows.tolist():
            old = self._owner[row]
            if old is not None:
                del self._rows[old]
        return rows

    def clear(self) -> None:
        """Forget everything (used when the model's version changes)."""
        self._rows.clear()
        self._owner = [None] * self.capacity
        self._ref[:] = False
        self._size = self._hand = self._missing = 0
