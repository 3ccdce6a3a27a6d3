"""Shared fixtures: a real Redis 8 (embedded, with vector sets) per test session."""
from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import gensim
import numpy as np
import pytest
import redis

from vectorstore.server import EmbeddedRedis

TEST_DATA = Path(gensim.__file__).parent / "test" / "test_data"


@pytest.fixture(autouse=True)
def _collect_task_results() -> Iterator[None]:
    """Free each test's Celery AsyncResults while the test's Redis still runs: they sit in
    reference cycles, and when the garbage collector frees one later, celery 5.6 unsubscribes
    it from a Redis a module fixture has stopped, retrying for seconds."""
    yield
    gc.collect()


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
