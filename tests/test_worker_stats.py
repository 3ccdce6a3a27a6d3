"""A real ``celery -A tasks worker`` reports its pool processes' ``kv.stats()`` counters in
``celery inspect stats`` (tasks/stats.py): they add up to what the tasks did, including
the work of processes that have exited since."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from celery_helpers import WorkerProcess, wait_for
from conftest import synthetic_kv
from gensim.models import KeyedVectors

from tasks import as_array
from tasks.client import client_app
from vectorstore.loader import load
from vectorstore.server import EmbeddedRedis

COUNT, DIM = 3000, 16
VALUE_BYTES = DIM * 4 + 4  # float32 vector + its 4-byte index


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[EmbeddedRedis, EmbeddedRedis, dict[str, KeyedVectors]]]:
    with EmbeddedRedis() as broker, EmbeddedRedis() as store:
        models = {"m": synthetic_kv(COUNT, DIM), "n": synthetic_kv(COUNT, DIM, seed=1)}
        for name, model in models.items():
            load(model, name, url=store.url, progress=False)
        yield broker, store, models


def documents(seed: int, n: int, oov_every: int = 0) -> list[list[str]]:
    """``n`` documents of distinct tokens; with ``oov_every``, every so many is unknown."""
    rng = np.random.default_rng(seed)
    docs = []
    for d in range(n):
        doc = [f"w{i}" for i in rng.choice(COUNT, size=5 + d % 7, replace=False)]
        if oov_every and d % oov_every == 0:
            doc.append(f"unknown{d}")
        docs.append(doc)
    return docs


def vectorstore_stats(broker_url: str, hostname: str) -> dict[str, Any]:
    replies = client_app(broker_url).control.inspect([hostname], timeout=2).stats() or {}
    return replies.get(hostname, {}).get("vectorstore", {})


def run(broker_url: str, jobs: list[tuple[str, list[str]]], models: dict[str, KeyedVectors]) -> None:
    app = client_app(broker_url)
    pending = [(model, doc, app.send_task("tasks.vectorize_document", [doc], {"model": model}))
               for model, doc in jobs]
    for model, doc, result in pending:
        known = [t for t in doc if t in models[model]]
        assert np.array_equal(as_array(result.get(timeout=30))[:len(known)], models[model][known])


def test_counters_add_up_across_recycled_processes(servers, tmp_path: Path) -> None:
    """Cache off, processes replaced every 3 tasks: the totals are what the tasks asked for."""
    broker, store, models = servers
    jobs = [(name, doc) for name, seed in (("m", 0), ("n", 1))
            for doc in documents(seed, 12, oov_every=4)]
    with WorkerProcess("stats-recycle", broker.url, store.url, tmp_path,
                       args=("--concurrency=2", "--max-tasks-per-child=3"),
                       env={"VECTORSTORE_CACHE_BYTES": "0", "VECTORSTORE_PREWARM": "0"}) as worker:
        before = vectorstore_stats(broker.url, worker.hostname)
        assert before["processes"] == 2 and before["models"] == {}
        assert sorted(p["pid"] for p in before["per_process"]) == sorted(worker.pool_pids())
        run(broker.url, jobs, models)

        def settled() -> dict[str, Any] | None:  # each process writes after its task's result
            stats = vectorstore_stats(broker.url, worker.hostname)
            done = sum(m["lookups"] for m in stats.get("models", {}).values())
            return stats if done == len(jobs) and stats["processes"] == 2 else None

        stats = wait_for(settled, what="the counters of every task")
        assert "Traceback" not in worker.log()
    for name in ("m", "n"):
        docs = [doc for model, doc in jobs if model == name]
        oov = sum(t not in models[name] for doc in docs for t in doc)
        got = stats["models"][name]
        assert got["lookups"] == len(docs)
        assert got["tokens"] == sum(map(len, docs))
        assert got["absent"] == oov
        assert got["fetched"] == got["tokens"] - oov
        assert got["bytes"] == got["fetched"] * VALUE_BYTES
        assert got["hits"] == 0 and got["hit_rate"] == 0.0
        assert got["round_trips"] >= len(docs)
        assert got["cache_capacity"] == got["cache_entries"] == 0
    # 24 tasks, 3 per process: most processes have exited, the 2 live ones hold less
    assert len(stats["per_process"]) == 2
    live = sum(m.get("m", {"lookups": 0})["lookups"] + m.get("n", {"lookups": 0})["lookups"]
               for m in (p["models"] for p in stats["per_process"]))
    assert live < len(jobs)


def test_prewarmed_pool_reports_hits_and_cache(servers, tmp_path: Path) -> None:
    """Default cache, prewarmed with the whole model: every token is a hit, none fetched."""
    broker, store, models = servers
    jobs = [("m", doc) for doc in documents(2, 10)]
    with WorkerProcess("stats-warm", broker.url, store.url, tmp_path, args=("--concurrency=2",),
                       env={"VECTORSTORE_CACHE_BYTES": str(8 * 2**20)}) as worker:
        run(broker.url, jobs, models)
        stats = wait_for(lambda: (s := vectorstore_stats(broker.url, worker.hostname))
                         .get("models", {}).get("m", {}).get("lookups") == len(jobs) and s,
                         what="the counters of every task")
        pids = set(worker.pool_pids())
    got = stats["models"]["m"]
    assert got["tokens"] == got["hits"] == sum(map(len, (doc for _, doc in jobs)))
    assert got["hit_rate"] == 1.0 and got["fetched"] == got["bytes"] == 0
    ran = [p for p in stats["per_process"] if "m" in p["models"]]
    assert {p["pid"] for p in ran} <= pids
    for process in ran:
        assert process["models"]["m"]["cache_pinned"] == COUNT
    assert got["cache_pinned"] == COUNT * len(ran)
    assert 0 < got["cache_fill"] <= 1
