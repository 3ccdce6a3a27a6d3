"""A real ``celery -A tasks worker`` prewarms the default model's cache before its pool
forks (VECTORSTORE_PREWARM); its pool processes serve from the shared pages."""
from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
import redis
from celery_helpers import WorkerProcess
from conftest import synthetic_kv
from gensim.models import KeyedVectors

from tasks import as_array
from tasks.client import client_app
from vectorstore.loader import load
from vectorstore.server import EmbeddedRedis

COUNT, DIM = 20_000, 100  # 8 MB of vectors
PINNED = 15_000  # VECTORSTORE_PREWARM_BYTES of them


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[EmbeddedRedis, EmbeddedRedis, KeyedVectors]]:
    with EmbeddedRedis() as broker, EmbeddedRedis() as store:
        model = synthetic_kv(COUNT, DIM)
        load(model, "m", url=store.url, progress=False)
        yield broker, store, model


def memory_mib(pid: int) -> tuple[float, float]:
    """(private, shared) memory of a process, MiB."""
    info = psutil.Process(pid).memory_full_info()
    return info.uss / 2**20, (info.rss - info.uss) / 2**20


def mgets(url: str) -> int:
    stats = redis.Redis.from_url(url).info("commandstats")
    return int(stats.get("cmdstat_mget", {}).get("calls", 0))


@pytest.mark.parametrize("prewarm", ["1", "0"])
def test_pool_processes_start_warm(servers, tmp_path: Path, prewarm: str) -> None:
    broker, store, model = servers
    env = {"VECTORSTORE_PREWARM": prewarm, "VECTORSTORE_PREWARM_BYTES": str(PINNED * DIM * 4)}
    with WorkerProcess(f"prewarm{prewarm}", broker.url, store.url, tmp_path,
                       args=("--concurrency=2",), env=env) as worker:
        assert (f"prewarmed {PINNED} vectors of model 'm'" in worker.log()) == (prewarm == "1")
        app = client_app(broker.url)
        rng = np.random.default_rng(0)
        docs = [[model.index_to_key[i] for i in rng.integers(0, PINNED, 100)] for _ in range(40)]
        before = mgets(store.url)
        results = [app.send_task("tasks.vectorize_document", [doc], {"model": "m"})
                   for doc in docs]
        for doc, r in zip(docs, results):
            assert np.array_equal(as_array(r.get(timeout=30)), model[doc])
        fetched = mgets(store.url) - before
        memory = [memory_mib(p) for p in worker.pool_pids()]
        print(f"VECTORSTORE_PREWARM={prewarm}: {fetched} MGETs for 40 documents; pool "
              f"processes' private / shared MiB: {[(round(u), round(s)) for u, s in memory]}")
        if prewarm == "1":  # every vector from the cache the parent filled, shared
            assert fetched == 0 and len(memory) == 2
            assert all(shared > PINNED * DIM * 4 / 2**20 for _, shared in memory)
        else:
            assert fetched >= 40


def test_a_reload_is_prewarmed_before_the_next_fork(tmp_path: Path) -> None:
    """After the default model is reloaded, the next pool process the worker forks (here
    each process serves one task, then is replaced) starts with the new version's vectors
    prewarmed."""
    with EmbeddedRedis() as broker, EmbeddedRedis() as store:
        old, new = synthetic_kv(2000, 16), synthetic_kv(2000, 16, seed=9)
        load(old, "m", url=store.url, progress=False, grace=0)
        with WorkerProcess("reload", broker.url, store.url, tmp_path,
                           args=("--concurrency=1", "--max-tasks-per-child=1"),
                           env={"VECTORSTORE_REFRESH": "0.2"}) as worker:
            assert "prewarmed 2000 vectors of model 'm' version 1 for the pool" in worker.log()
            app = client_app(broker.url)

            def served(doc: list[str]) -> np.ndarray:
                return as_array(app.send_task("tasks.vectorize_document", [doc]).get(timeout=30))

            doc = new.index_to_key[:50]
            assert np.array_equal(served(doc), old[doc])
            load(new, "m", url=store.url, progress=False, grace=0)
            time.sleep(0.3)  # past the refresh period of the worker's handle
            assert np.array_equal(served(doc), new[doc])  # a process forked before the reload
            deadline = time.monotonic() + 30
            while "version 2 for the pool" not in worker.log():  # forked after that task
                assert time.monotonic() < deadline, worker.log()
                time.sleep(0.2)
            assert "prewarmed 2000 vectors of model 'm' version 2 for the pool" in worker.log()
            before = mgets(store.url)
            for i in range(0, 2000, 200):
                doc = new.index_to_key[i:i + 200]
                assert np.array_equal(served(doc), new[doc])
            assert mgets(store.url) == before  # all from the shared, prewarmed cache
