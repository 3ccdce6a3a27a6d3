"""The similarity index split into shards on a real Redis Cluster (3 masters + 3 replicas),
compared with gensim in memory: placement, merged searches, rebuilds, reloads and drops."""
from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest
from conftest import TEST_DATA, same, sample, synthetic_kv
from gensim.models import KeyedVectors

from vectorstore import IndexNotReadyError, RedisKeyedVectors
from vectorstore.index import IndexOptions, IndexStatus, build_index, index_memory, read_status
from vectorstore.keys import Keys
from vectorstore.loader import drop, load
from vectorstore.server import EmbeddedCluster
from vectorstore.topology import deployment

LEE = TEST_DATA / "lee_fasttext.vec"


def _flush(cluster: EmbeddedCluster) -> None:
    for node in cluster.masters:
        with node.client() as c:
            c.flushall()


@pytest.fixture(scope="module")
def lee() -> KeyedVectors:
    return KeyedVectors.load_word2vec_format(str(LEE))


@pytest.fixture(scope="module")
def served(redis_cluster: EmbeddedCluster, lee: KeyedVectors) -> Iterator[str]:
    """The session's cluster, emptied, with Lee loaded and indexed (noquant, default shards)."""
    _flush(redis_cluster)
    load(str(LEE), "lee", url=redis_cluster.url, progress=False, index=IndexOptions("noquant"))
    yield redis_cluster.url
    _flush(redis_cluster)


@pytest.fixture()
def cluster(redis_cluster: EmbeddedCluster) -> EmbeddedCluster:
    """The session's cluster, emptied."""
    _flush(redis_cluster)
    return redis_cluster


def status_of(url: str, name: str) -> IndexStatus:
    with deployment(url) as d:
        version = int(d.client.get(Keys(name).current))
        return read_status(d.client.execute_command, Keys(name), version)


def index_keys(cluster: EmbeddedCluster) -> set[str]:
    """Every vector-set key (served, being built) on any master."""
    found: set[str] = set()
    for node in cluster.masters:
        with node.client() as c:
            found |= {k for k in c.scan_iter(match="*#vset*") if not k.endswith("#vset-lock")}
    return found


def test_one_shard_per_master(served: str, redis_cluster: EmbeddedCluster,
                              lee: KeyedVectors) -> None:
    status = status_of(served, "lee")
    assert status.ready and len(status.keys) == 3
    assert status.describe() == "ready (noquant m=16 ef=200 shards=3)"
    holders = []
    for node in redis_cluster.masters:
        with node.client() as c:
            held = list(c.scan_iter(match="*#vset{*"))
            assert len(held) == 1, held  # each master holds exactly one shard
            key = held[0]
            holders.append(key)
            shard = status.keys.index(key)
            assert c.execute_command("VCARD", key) == len(range(shard, len(lee), 3))
            for i in (shard, shard + 3 * 100, shard + 3 * 500):  # element i sits in shard i % 3
                attr = c.execute_command("VGETATTR", key, lee.index_to_key[i])
                assert json.loads(attr) == {"i": i}
    assert sorted(holders) == sorted(status.keys)
    assert index_keys(redis_cluster) == set(status.keys)  # no build key left
    with deployment(served) as d:
        size = index_memory(d.client.execute_command, Keys("lee"), status.version)
        assert size == sum(d.client.memory_usage(k, samples=0) for k in status.keys)


def test_exact_searches_equal_gensim(served: str, lee: KeyedVectors) -> None:
    kv = RedisKeyedVectors("lee", url=served, exact=True)
    for word in sample(lee, 20):
        same(kv.most_similar(word), lee.most_similar(word))
    a, b, c = sample(lee, 3, seed=1)
    for kwargs in [dict(positive=[a, b], negative=[c], topn=7),
                   dict(positive=[a], restrict_vocab=300),
                   dict(positive=[a, b], clip_start=100, clip_end=900, topn=20),
                   dict(positive=[a], topn=len(lee))]:
        same(kv.most_similar(**kwargs), lee.most_similar(**kwargs))
    same(kv.most_similar_cosmul(positive=[a, b], negative=[c]),
         lee.most_similar_cosmul(positive=[a, b], negative=[c]))
    view = kv._current()
    before = kv.stats()["round_trips"]
    names, cos = kv._vsim(view, kv._index(view), lee[a] / np.linalg.norm(lee[a]), 10,
                          truth=True)
    assert kv.stats()["round_trips"] - before == 1  # three shards, one round trip
    assert names[0].decode() == a and np.all(np.diff(cos) <= 0) and len(names) == 10


def test_approximate_recall(served: str, lee: KeyedVectors) -> None:
    kv = RedisKeyedVectors("lee", url=served)
    words = sample(lee, 50, seed=2)
    hits = sum(len({k for k, _ in kv.most_similar(w)} & {k for k, _ in lee.most_similar(w)})
               for w in words)
    assert hits / (10 * len(words)) >= 0.95


def test_other_methods_equal_gensim(served: str, lee: KeyedVectors) -> None:
    kv = RedisKeyedVectors("lee", url=served, exact=True)
    for w1, w2 in [("fire", "flames"), ("government", "police"), ("the", "of"),
                   ("fire", "the")]:
        assert kv.closer_than(w1, w2) == lee.closer_than(w1, w2)
        assert kv.rank(w1, w2) == lee.rank(w1, w2)
    words = ["fire", "flames", "bushfires", "government"]
    assert kv.doesnt_match(words) == lee.doesnt_match(words)
    assert np.allclose(kv.distances("fire"), lee.distances("fire"), atol=1e-6)


def test_reload_rebuild_and_drop_leave_no_shard(cluster: EmbeddedCluster) -> None:
    first, second = synthetic_kv(3000, 32, seed=5), synthetic_kv(3000, 32, seed=6)
    load(first, "m", url=cluster.url, progress=False, index=IndexOptions(), grace=0)
    v1 = status_of(cluster.url, "m")
    assert len(v1.keys) == 3 and index_keys(cluster) == set(v1.keys)
    load(second, "m", url=cluster.url, progress=False, index=IndexOptions(), grace=0)
    v2 = status_of(cluster.url, "m")
    assert v2.version == v1.version + 1 and index_keys(cluster) == set(v2.keys)
    kv = RedisKeyedVectors("m", url=cluster.url, exact=True)
    same(kv.most_similar("w7"), second.most_similar("w7"))
    rebuilt = build_index("m", url=cluster.url, quantization="q8", shards=2, progress=False)
    assert len(rebuilt.keys) == 2 and not set(rebuilt.keys) & set(v2.keys)
    assert index_keys(cluster) == set(rebuilt.keys)  # the old shards are deleted
    with deployment(cluster.url) as d:
        assert len({d.node_name(k) for k in rebuilt.keys}) == 2
    one = build_index("m", url=cluster.url, shards=1, progress=False)
    assert one.keys == (Keys("m").vset(one.version),) and index_keys(cluster) == set(one.keys)
    assert drop("m", url=cluster.url) > 3000
    assert index_keys(cluster) == set()


def test_a_reader_follows_a_rebuild(cluster: EmbeddedCluster) -> None:
    """A reader that still has the old shards' names (refresh=3600) finds them gone after a
    rebuild and searches the new ones: results stay gensim's."""
    model = synthetic_kv(3000, 32, seed=7)
    load(model, "m", url=cluster.url, progress=False, index=IndexOptions("noquant"))
    exact = RedisKeyedVectors("m", url=cluster.url, exact=True, refresh=3600)
    approx = RedisKeyedVectors("m", url=cluster.url, refresh=3600)
    same(exact.most_similar("w1"), model.most_similar("w1"))
    approx.most_similar("w1")
    old = status_of(cluster.url, "m").keys
    new = build_index("m", url=cluster.url, quantization="q8", progress=False)
    assert not set(old) & set(new.keys)
    for word in ("w1", "w2", "w3"):
        same(exact.most_similar(word), model.most_similar(word))
        same(exact.most_similar(word, restrict_vocab=500),
             model.most_similar(word, restrict_vocab=500))
    assert approx.most_similar("w2")[0][0] == model.most_similar("w2")[0][0]
    assert exact._index(exact._current()).quantization == "q8"


def test_a_missing_shard_is_an_error_not_an_empty_answer(cluster: EmbeddedCluster) -> None:
    load(synthetic_kv(3000, 32, seed=8), "m", url=cluster.url, progress=False,
         index=IndexOptions())
    keys = status_of(cluster.url, "m").keys
    with deployment(cluster.url) as d:
        d.call("UNLINK", keys[1])
    kv = RedisKeyedVectors("m", url=cluster.url, exact=True)
    for kwargs in [dict(), dict(restrict_vocab=100), dict(exact=False)]:
        with pytest.raises(IndexNotReadyError, match=r"is missing; rebuild it with "
                                                     r"`vectorstore index m --force`"):
            kv.most_similar("w1", **kwargs)
    with pytest.raises(IndexNotReadyError, match="is missing"):
        kv.closer_than("w1", "w2")
