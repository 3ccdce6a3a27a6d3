"""Shared fixtures: a real Redis 8 (embedded, with vector sets) per test session."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gensim
import numpy as np
import pytest
import redis
from celery.result import AsyncResult

from vectorstore.server import EmbeddedCluster, EmbeddedRedis, EmbeddedReplicaSet

TEST_DATA = Path(gensim.__file__).parent / "test" / "test_data"


@pytest.fixture(autouse=True, scope="session")
def _results_do_not_unsubscribe_when_collected() -> Iterator[None]:
    """Tests stop their Redis servers while Celery AsyncResults of theirs still wait for the
    garbage collector (they sit in reference cycles). celery 5.6's ``AsyncResult.__del__``
    then unsubscribes through a result backend that retries its reconnects (20 times, see
    tasks/broker.py), which stalls whatever test runs the collector. Results are always
    read before their server stops, so skipping that clean-up changes no assertion."""
    AsyncResult.__del__ = lambda self: None  # type: ignore[method-assign]
    yield  # not restored: results collected at interpreter exit would unsubscribe then


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture()
def redis_url(redis_server: EmbeddedRedis) -> Iterator[str]:
    """URL of the session's Redis, emptied before each test."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    yield redis_server.url


@pytest.fixture()
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


def synthetic_kv(count: int = 2000, dim: int = 32, clusters: int = 20, seed: int = 0,
                 tokens: list[str] | None = None) -> gensim.models.KeyedVectors:
    """A clustered random model: neighbours share a cluster, so similarity means something."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, dim)).astype(np.float32)
    labels = rng.integers(0, clusters, size=count)
    vectors = centers[labels] + 0.3 * rng.normal(size=(count, dim)).astype(np.float32)
    kv = gensim.models.KeyedVectors(dim, count=0)
    keys = tokens if tokens is not None else [f"w{i}" for i in range(count)]
    kv.add_vectors(keys[:count], vectors.astype(np.float32))
    return kv


def same(got: Any, want: Any) -> None:
    """Same keys in the same order, scores within 1e-5 (gensim's (key, score) lists)."""
    assert [k for k, _ in got] == [k for k, _ in want]
    assert np.allclose([s for _, s in got], [s for _, s in want], atol=1e-5, rtol=0)


def sample(kv: gensim.models.KeyedVectors, n: int, seed: int = 0) -> list[str]:
    """``n`` distinct keys of ``kv``, drawn at random."""
    rng = np.random.default_rng(seed)
    return [kv.index_to_key[i] for i in rng.choice(len(kv), n, replace=False)]


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[EmbeddedCluster]:
    """A Redis Cluster of 3 masters and 3 replicas for the session. Tests that kill nodes
    start their own."""
    with EmbeddedCluster(masters=3, replicas_per_master=1) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def replica_set() -> Iterator[EmbeddedReplicaSet]:
    """A primary with 2 replicas (no sentinels) for the session."""
    with EmbeddedReplicaSet(replicas=2) as replicas:
        yield replicas
