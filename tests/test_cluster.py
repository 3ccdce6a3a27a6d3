"""The store on a real Redis Cluster (3 masters + 3 replicas on loopback) and on a standalone
primary with read replicas: loads, lookups, similarity, versions and lagging replicas,
compared with gensim in memory."""
from __future__ import annotations

import os
import threading
import zlib

import numpy as np
import pytest
import redis
from celery_helpers import frozen
from conftest import TEST_DATA, sample
from gensim.models import KeyedVectors

from vectorstore import RedisKeyedVectors
from vectorstore.errors import LoadError
from vectorstore.index import IndexOptions
from vectorstore.keys import Keys
from vectorstore.loader import drop, load, verify
from vectorstore.server import EmbeddedCluster, EmbeddedReplicaSet
from vectorstore.topology import ClusterDeployment, connect_deployment
from vectorstore.view import TokenKeys

LEE = TEST_DATA / "lee_fasttext.vec"


@pytest.fixture(scope="module")
def lee() -> KeyedVectors:
    return KeyedVectors.load_word2vec_format(str(LEE))


@pytest.fixture()
def cluster(redis_cluster: EmbeddedCluster) -> EmbeddedCluster:
    """The session's cluster, emptied."""
    for node in redis_cluster.masters:
        with node.client() as c:
            c.flushall()
    return redis_cluster


def _keys_per_master(cluster: EmbeddedCluster) -> list[int]:
    sizes = []
    for node in cluster.masters:
        with node.client() as c:
            sizes.append(int(c.dbsize()))
    return sizes


def _mgets(nodes: list) -> int:
    """MGET commands the ``nodes`` have served."""
    total = 0
    for node in nodes:
        with node.client() as c:
            total += int(c.info("commandstats").get("cmdstat_mget", {}).get("calls", 0))
    return total


def test_cluster_load_lookup_verify_drop_equal_gensim(cluster: EmbeddedCluster,
                                                      lee: KeyedVectors) -> None:
    meta = load(str(LEE), "lee", url=cluster.url, progress=False)
    assert meta.count == len(lee)
    sizes = _keys_per_master(cluster)
    assert min(sizes) > len(lee) / 6, sizes  # the tokens spread over every master
    kv = RedisKeyedVectors("lee", url=cluster.url, cache_bytes=0)
    assert isinstance(kv.deployment, ClusterDeployment)
    words = sample(lee, 100)
    assert kv.vector_size == lee.vector_size  # reads the alias and the metadata
    before = kv.stats()["round_trips"]
    got = kv[words]
    assert kv.stats()["round_trips"] - before == 1  # every node asked at once: one round trip
    assert np.array_equal(got, lee[words])
    found = kv.lookup(["fire", "qwxzqwxz", "the"], oov="zero")
    assert found.missing == [1] and np.array_equal(found.vectors[0], lee["fire"])
    assert not found.vectors[1].any()
    assert kv.index_to_key[:5] == lee.index_to_key[:5] and len(kv) == len(lee)
    mgets = _mgets(cluster.masters)
    assert np.array_equal(kv[words], lee[words])
    assert _mgets(cluster.masters) - mgets == 3  # one MGET per master (token groups)
    cached = RedisKeyedVectors("lee", url=cluster.url)
    assert np.array_equal(cached[words], lee[words]) and np.array_equal(cached[words], lee[words])
    result = verify("lee", url=cluster.url)
    assert result.ok, result.problems
    names = TokenKeys.of(Keys("lee"), kv.meta)
    assert len(names.groups) == 3
    stray = names.groups[(zlib.crc32(b"fire") + 1) % 3] + b"fire"  # fire's value, wrong group
    with redis.cluster.RedisCluster.from_url(cluster.url) as rc:
        rc.set(stray, rc.get(names(["fire"])[0]))
        problems = verify("lee", url=cluster.url).problems
        rc.delete(stray)
    assert any("wrong token group" in p for p in problems), problems
    assert drop("lee", url=cluster.url) > len(lee)
    assert sum(_keys_per_master(cluster)) == 1  # only the version counter stays


def test_cluster_similarity_equals_gensim(cluster: EmbeddedCluster, lee: KeyedVectors) -> None:
    load(str(LEE), "lee", url=cluster.url, progress=False, index=IndexOptions("noquant"))
    kv = RedisKeyedVectors("lee", url=cluster.url, exact=True)
    for word in ("fire", "government", "police"):
        want = lee.most_similar(word, topn=10)
        got = kv.most_similar(word, topn=10)
        assert [k for k, _ in got] == [k for k, _ in want]
        assert np.allclose([s for _, s in got], [s for _, s in want], atol=1e-5)
    assert kv.doesnt_match(["fire", "flames", "government"]) == lee.doesnt_match(
        ["fire", "flames", "government"])


def test_cluster_flip_while_readers_run(cluster: EmbeddedCluster, lee: KeyedVectors) -> None:
    """Reloads with other vectors while threads read: every matrix is wholly one version's,
    never a mix, never a silent OOV, and each old version is deleted."""
    second = KeyedVectors(lee.vector_size)
    second.add_vectors(lee.index_to_key, lee.vectors * 2)
    load(lee, "m", url=cluster.url, progress=False, grace=0.2)
    words = sample(lee, 50)
    versions = (lee[words], second[words])
    errors: list[str] = []
    stop = threading.Event()
    seen = [0, 0]

    def read() -> None:
        kv = RedisKeyedVectors("m", url=cluster.url, cache_bytes=0, refresh=0.01)
        while not stop.is_set():
            got = kv[words]
            match = [np.array_equal(got, v) for v in versions]
            if not any(match):
                errors.append("a matrix of no single version")
                return
            seen[match.index(True)] += 1

    readers = [threading.Thread(target=read) for _ in range(2)]
    for t in readers:
        t.start()
    try:
        for kv_in in (second, lee, second):
            load(kv_in, "m", url=cluster.url, progress=False, grace=0.2)
    finally:
        stop.set()
        for t in readers:
            t.join(30)
    assert not errors, errors
    assert all(seen), seen
    with redis.cluster.RedisCluster.from_url(cluster.url) as rc:
        assert sorted(int(v) for v in rc.smembers(Keys("m").versions)) == [4]


def test_cluster_reads_from_replicas(cluster: EmbeddedCluster, lee: KeyedVectors,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    load(lee, "lee", url=cluster.url, progress=False)
    monkeypatch.setenv("VECTORSTORE_READ_FROM", "replicas")
    kv = RedisKeyedVectors("lee", url=cluster.url, cache_bytes=0)
    words = sample(lee, 200)

    before = _mgets(cluster.replicas)
    assert np.array_equal(kv[words], lee[words])
    assert _mgets(cluster.replicas) - before == 3  # one MGET per master's replica


def test_lagging_replica_never_turns_a_token_into_an_oov(
        replica_set: EmbeddedReplicaSet, lee: KeyedVectors,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A replica cut off from its primary (as far behind as a replica gets) while a new
    version is published: lookups through it still give the new version's vectors."""
    with replica_set.primary.client() as c:
        c.flushall()
    replica_set.wait_synced()
    load(lee, "lee", url=replica_set.url, progress=False)
    replica_set.wait_synced()
    monkeypatch.setenv("VECTORSTORE_READ_FROM", "replicas")
    monkeypatch.setenv("VECTORSTORE_REPLICA_URLS", ",".join(replica_set.replica_urls))
    kv = RedisKeyedVectors("lee", url=replica_set.url, cache_bytes=0, refresh=0)
    assert len(connect_deployment(replica_set.url).replicas) == 2
    words = sample(lee, 100)
    assert np.array_equal(kv[words], lee[words])
    second = KeyedVectors(lee.vector_size)
    second.add_vectors(lee.index_to_key, lee.vectors * 2)
    host, port = replica_set.primary.url.split("//")[1].split("/")[0].split(":")
    detached = []
    for node in replica_set.replicas:
        with node.client() as c:
            c.execute_command("REPLICAOF", "NO", "ONE")  # frozen at version 1
        detached.append(node)
    try:
        load(second, "lee", url=replica_set.url, progress=False, grace=0)
        found = kv.lookup(words + ["qwxzqwxz"], oov="zero")
        assert np.array_equal(found.vectors[:-1], second[words])  # re-read on the primary
        assert found.missing == [len(words)]
    finally:
        for node in detached:
            with node.client() as c:
                c.execute_command("REPLICAOF", host, port)
        replica_set.wait_synced()


def test_stalled_replica_costs_one_timeout_then_reads_go_to_the_primary(
        replica_set: EmbeddedReplicaSet, lee: KeyedVectors,
        monkeypatch: pytest.MonkeyPatch) -> None:
    with replica_set.primary.client() as c:
        c.flushall()
    load(lee, "lee", url=replica_set.url, progress=False)
    replica_set.wait_synced()
    monkeypatch.setenv("VECTORSTORE_READ_FROM", "replicas")
    monkeypatch.setenv("VECTORSTORE_REPLICA_URLS", ",".join(replica_set.replica_urls))
    monkeypatch.setenv("VECTORSTORE_SOCKET_TIMEOUT", "0.5")
    kv = RedisKeyedVectors("lee", url=replica_set.url, cache_bytes=0)
    words = sample(lee, 50)
    assert np.array_equal(kv[words], lee[words])
    replica = kv.deployment.replicas[os.getpid() % 2].connection_pool.connection_kwargs["port"]
    [node] = [n for n in replica_set.replicas if n.port == replica]

    before = _mgets([node])
    with frozen(node):
        for _ in range(20):
            assert np.array_equal(kv[words], lee[words])
    assert _mgets([node]) - before == 1  # asked once (timed out), then left alone for a while


def test_cluster_fasttext_subwords_equal_gensim(cluster: EmbeddedCluster) -> None:
    """A fastText .bin on the cluster: OOV words from their n-gram rows (spread over every
    master), bit-identical to gensim, in one round trip with the vocabulary filter."""
    from gensim.models.fasttext import load_facebook_vectors

    path = TEST_DATA / "lee_fasttext.bin"
    ft = load_facebook_vectors(str(path))
    load(str(path), "ft", url=cluster.url, progress=False)
    kv = RedisKeyedVectors("ft", url=cluster.url, cache_bytes=0)
    words = ["fire", "government", "unseenword", "Zürichsee", "qwxz"]
    assert np.array_equal(kv.lookup(["fire", "blaze"], oov="subword").vectors, ft[["fire", "blaze"]])
    before = kv.stats()["round_trips"]  # the filter is read: what follows is one MGET per master
    found = kv.lookup(words, oov="subword")
    assert kv.stats()["round_trips"] - before == 1
    assert found.missing == [2, 3, 4]
    assert np.array_equal(found.vectors, np.stack([ft[w] for w in words]))
    assert verify("ft", url=cluster.url).ok


def test_cluster_load_retried_after_a_lost_reply_is_not_a_duplicate(
        cluster: EmbeddedCluster, lee: KeyedVectors) -> None:
    """A batch's MSETNX applied on the cluster whose reply was lost (a failover) is sent
    again and refused: the loader sees its own values there and goes on; a token stored
    with another value is still a duplicate."""
    from vectorstore.codec import Codec
    from vectorstore.loader import _token_groups
    from vectorstore.topology import deployment as open_deployment

    keys = Keys("m")
    with open_deployment(cluster.url) as d, redis.cluster.RedisCluster.from_url(cluster.url) as rc:
        tags = _token_groups(d, keys, 1)  # the groups the first load of "m" will use
        names = TokenKeys(keys.token_prefix(1), tuple(keys.token_group_prefix(1, t) for t in tags))
        codec = Codec(lee.vector_size)
        first = [t for t in lee.index_to_key if zlib.crc32(t.encode()) % 3 == 0]  # one group
        index = [lee.get_index(t) for t in first]
        values = [codec.encode(lee[[t]], i)[0] for t, i in zip(first, index)]
        for name, value in zip(names(first), values):
            rc.set(name, value)  # what the lost attempt wrote
        load(lee, "m", url=cluster.url, progress=False)
        kv = RedisKeyedVectors("m", url=cluster.url, cache_bytes=0)
        assert np.array_equal(kv[lee.index_to_key], lee.vectors)
        assert verify("m", url=cluster.url).ok
        drop("m", url=cluster.url)
        tags = _token_groups(d, keys, 2)
        names = TokenKeys(keys.token_prefix(2), tuple(keys.token_group_prefix(2, t) for t in tags))
        rc.set(names(["fire"])[0], codec.encode(lee[["fire"]], 0)[0])  # not fire's index
    with pytest.raises(LoadError, match="duplicate token 'fire'"):
        load(lee, "m", url=cluster.url, progress=False)
