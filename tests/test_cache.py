"""The hot-vector cache: bounded, and never returns a wrong vector."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vectorstore.cache import MISSING, UNKNOWN, VectorCache


def vec(token: str, dim: int = 4) -> np.ndarray:
    return np.full(dim, float(abs(hash(token)) % 1000), dtype=np.float32)


@settings(max_examples=200, deadline=None)
@given(capacity=st.integers(0, 12),
       batches=st.lists(st.lists(st.integers(0, 40), max_size=15), max_size=25))
def test_cached_rows_always_hold_their_token(capacity: int, batches: list[list[int]]) -> None:
    cache = VectorCache(dim=4, max_bytes=capacity * 16)
    for batch in batches:
        tokens = [f"t{i}" for i in batch]
        rows = cache.rows(tokens).tolist()
        hits = [r for r in rows if r >= 0]
        if hits:
            got = cache.gather(np.array(hits))
            want = np.stack([vec(t) for t, r in zip(tokens, rows) if r >= 0])
            assert np.array_equal(got, want)
        new = list(dict.fromkeys(t for t, r in zip(tokens, rows) if r == UNKNOWN))
        cache.put(new, np.stack([vec(t) for t in new]) if new else np.empty((0, 4)))
        cached = [r for r in cache.rows([f"t{i}" for i in range(41)]).tolist() if r >= 0]
        assert len(set(cached)) == len(cached) == len(cache) <= capacity


def test_hot_tokens_survive_eviction() -> None:
    cache = VectorCache(dim=2, max_bytes=8 * 10)  # ten rows
    cache.put(["hot"], np.ones((1, 2), dtype=np.float32))
    for i in range(50):
        cache.gather(np.array(cache.rows(["hot"])))  # referenced between every insert
        cache.put([f"cold{i}"], np.zeros((1, 2), dtype=np.float32))
    assert cache.rows(["hot"])[0] >= 0
    assert len(cache) == 10


def test_missing_tokens_are_remembered_and_bounded() -> None:
    cache = VectorCache(dim=2, max_bytes=64, max_missing=3)
    cache.put_missing(["a", "b"])
    assert cache.rows(["a", "b", "c"]).tolist() == [MISSING, MISSING, UNKNOWN]
    cache.put_missing(["c", "d"])  # over the bound: the old ones are dropped
    assert cache.rows(["a", "c", "d"]).tolist() == [UNKNOWN, MISSING, MISSING]


def test_disabled_cache_stores_nothing() -> None:
    cache = VectorCache(dim=2, max_bytes=0)
    cache.put(["a"], np.ones((1, 2), dtype=np.float32))
    cache.put_missing(["b"])
    assert not cache.enabled and cache.rows(["a", "b"]).tolist() == [UNKNOWN, UNKNOWN]


def test_admission_on_second_sighting_and_pinned_rows_stay() -> None:
    cache = VectorCache(dim=2, max_bytes=4 * 8)  # four evictable rows
    v = np.arange(16, dtype=np.float32).reshape(8, 2)
    assert cache.pin(["p0"], v[:1]) == 0  # no row reserved to pin
    cache.reserve(4)
    assert cache.pin(["p0", "p1", "p2", "p3", "p4"], v[:5]) == 4 and cache.capacity == 8
    cache.admit(["a"], v[4:5])
    assert cache.rows(["a"]).tolist() == [UNKNOWN]  # first sighting: remembered only
    cache.admit(["a"], v[4:5])
    assert cache.rows(["a"]).tolist()[0] >= 4  # second: cached, after the pinned rows
    for i in range(40):  # churn: the evictable rows turn over, the pinned ones never
        cache.admit([f"x{i}"] * 2, np.repeat(v[5:6], 2, axis=0))
        cache.admit([f"x{i}"], v[5:6])
    assert cache.rows(["p0", "p1", "p2", "p3"]).tolist() == [0, 1, 2, 3]
    assert np.array_equal(cache.gather(np.arange(4)), v[:4])
    assert len(cache) == 8 and cache.pinned == 4 and cache.evicted > 0
    with pytest.raises(ValueError, match="clear"):
        cache.pin(["q"], v[:1])
    cache.clear()
    assert len(cache) == cache.pinned == 0 and cache.rows(["p0"]).tolist() == [UNKNOWN]
