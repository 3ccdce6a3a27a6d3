"""Prewarming, the cache's admission and stats(), on a real Redis, against gensim in memory."""
from __future__ import annotations

import multiprocessing
import time

import numpy as np
import pytest
import redis
from conftest import synthetic_kv
from gensim.models import KeyedVectors

from vectorstore import RedisKeyedVectors
from vectorstore.loader import load


@pytest.fixture()
def model(redis_url: str) -> KeyedVectors:
    kv = synthetic_kv(3000, 16)
    load(kv, "m", url=redis_url, progress=False, grace=0)
    return kv


def mgets(client: redis.Redis) -> int:
    return int(client.info("commandstats").get("cmdstat_mget", {}).get("calls", 0))


def test_prewarm_caches_the_first_tokens(redis_url: str, model: KeyedVectors,
                                         client: redis.Redis) -> None:
    kv = RedisKeyedVectors("m", url=redis_url, cache_bytes=500 * 16 * 4, refresh=60)
    assert kv.prewarm() == 3000  # the default budget (256 MiB) holds the whole model
    assert kv.prewarm(10) == 10 and kv.stats()["cache_pinned"] == 10
    assert kv.prewarm(max_bytes=1000 * 16 * 4) == 1000
    assert kv.stats()["cache_capacity"] == 1500  # pinned rows beside the 500 evictable ones
    top = model.index_to_key[:1000]
    before = mgets(client)
    rng = np.random.default_rng(0)
    for _ in range(20):
        doc = [top[i] for i in rng.integers(0, 1000, 50)]
        assert np.array_equal(kv[doc], model[doc])
    assert mgets(client) == before  # all from the cache
    doc = top[:10] + ["w2999", "nope"]
    found = kv.lookup(doc, oov="zero")
    assert np.array_equal(found.vectors[:11], model[doc[:11]]) and found.missing == [11]
    stats = kv.stats()
    assert stats["tokens"] == 20 * 50 + 12 and stats["hits"] == 20 * 50 + 10
    assert stats["absent"] == 1 and stats["cache_entries"] == 1000
    assert stats["cache_fill"] == 1000 / 1500 and stats["fetched"] >= 1000


def test_pinned_rows_leave_the_evictable_ones_to_admission(redis_url: str,
                                                           model: KeyedVectors) -> None:
    kv = RedisKeyedVectors("m", url=redis_url, cache_bytes=500 * 16 * 4, refresh=60)
    assert kv.prewarm(1000) == 1000
    top, tail = model.index_to_key[:20], model.index_to_key[1000:1300]
    for _ in range(2):  # the second fetch admits them (the doorkeeper), >= 62 at a time
        for i in range(0, 300, 30):
            doc = top + tail[i:i + 30]
            assert np.array_equal(kv[doc], model[doc])
    stats = kv.stats()
    assert stats["cache_pinned"] == 1000 and stats["cache_entries"] == 1270
    doc = top + tail[:270]
    assert np.array_equal(kv[doc], model[doc])
    assert kv.stats()["fetched"] == stats["fetched"]  # pinned and admitted rows both answer


def test_prewarm_budget_from_the_environment(monkeypatch: pytest.MonkeyPatch, redis_url: str,
                                             model: KeyedVectors) -> None:
    monkeypatch.setenv("VECTORSTORE_PREWARM_BYTES", str(200 * 16 * 4))
    assert RedisKeyedVectors("m", url=redis_url).prewarm() == 200
    monkeypatch.setenv("VECTORSTORE_PREWARM_BYTES", "lots")
    with pytest.raises(ValueError, match="VECTORSTORE_PREWARM_BYTES must be an integer, got 'lots'"):
        RedisKeyedVectors("m", url=redis_url).prewarm()


def test_prewarmed_handle_still_sees_a_flip(redis_url: str, model: KeyedVectors) -> None:
    kv = RedisKeyedVectors("m", url=redis_url, refresh=0.2)
    kv.prewarm()
    assert np.array_equal(kv[["w1", "w2"]], model[["w1", "w2"]])
    new = synthetic_kv(3000, 16, seed=9)
    load(new, "m", url=redis_url, progress=False, grace=0.5)
    time.sleep(0.3)
    assert np.array_equal(kv[["w1", "w2"]], new[["w1", "w2"]])
    assert kv.stats()["cache_pinned"] == 0  # a new version starts with an empty cache


def test_stream_warms_the_cache_by_admission(redis_url: str, model: KeyedVectors) -> None:
    kv = RedisKeyedVectors("m", url=redis_url)
    rng = np.random.default_rng(1)
    hot = model.index_to_key[:200]
    for _ in range(300):
        doc = [hot[i] for i in rng.integers(0, 200, 40)]
        assert np.array_equal(kv[doc], model[doc])
    stats = kv.stats()
    assert stats["cache_admitted"] > 0 and stats["hits"] > stats["tokens"] / 2


def _child_stats(kv: RedisKeyedVectors, doc: list[str], queue: multiprocessing.Queue) -> None:
    queue.put((kv[doc].tolist(), kv.stats()))


def test_forked_child_starts_warm(redis_url: str, model: KeyedVectors) -> None:
    kv = RedisKeyedVectors("m", url=redis_url, refresh=60)
    kv.prewarm()
    kv.close()  # as the worker's parent does: no socket shared with the children
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    doc = model.index_to_key[:100]
    child = ctx.Process(target=_child_stats, args=(kv, doc, queue))
    child.start()
    vectors, stats = queue.get(timeout=20)
    child.join(10)
    assert np.array_equal(np.array(vectors, dtype=np.float32), model[doc])
    assert stats["hits"] == stats["tokens"] == 100  # counters of this process only
    assert stats["round_trips"] == 0 and stats["fetched"] == 0
