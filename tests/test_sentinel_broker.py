"""Celery on a Redis Sentinel broker and result backend (``sentinel://``): the broker's
primary is killed (SIGKILL) in the middle of a run of tasks, the sentinels promote a
replica, and every task still completes with the right matrix (compared with the model in
memory), sent before the kill or during the failover, while the worker stays alive."""
from __future__ import annotations

import datetime
import gc
import re
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from celery_helpers import WorkerProcess
from conftest import synthetic_kv
from gensim.models import KeyedVectors

from tasks import as_array
from tasks.broker import SENTINEL_MASTER
from tasks.client import Sent, client_app, send, wait
from vectorstore.loader import load
from vectorstore.server import EmbeddedReplicaSet

MASTER = "vs-broker"
SUCCEEDED = re.compile(r"^\[(\S+ \S+): INFO/\S+\] Task tasks\.vectorize_document\[\S+\] succeeded",
                       re.MULTILINE)


@pytest.fixture()
def store(redis_url: str) -> tuple[str, KeyedVectors]:
    kv = synthetic_kv(500, 16)
    load(kv, "m", url=redis_url, progress=False)
    return redis_url, kv


@pytest.fixture()
def broker(monkeypatch: pytest.MonkeyPatch) -> Iterator[EmbeddedReplicaSet]:
    """A primary, 2 replicas, 3 sentinels; clients made here name the primary."""
    monkeypatch.setenv(SENTINEL_MASTER, MASTER)
    with EmbeddedReplicaSet(replicas=2, sentinels=3, master_name=MASTER) as replica_set:
        yield replica_set


def documents(count: int, offset: int = 0) -> list[list[str]]:
    """Documents of 20 tokens, one OOV token in ten."""
    return [[f"w{(7 * i + j) % 500}" if j % 10 else f"oov{i}" for j in range(20)]
            for i in range(offset, offset + count)]


def expected(kv: KeyedVectors, doc: list[str]) -> np.ndarray:
    zero = np.zeros(kv.vector_size, np.float32)
    return np.array([kv[t] if t in kv.key_to_index else zero for t in doc], np.float32)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_tasks_complete_through_a_sentinel_failover_of_the_broker(
        store: tuple[str, KeyedVectors], broker: EmbeddedReplicaSet, tmp_path: Path) -> None:
    store_url, kv = store
    url = broker.sentinel_url(0)
    app = client_app(url)
    with WorkerProcess("sentinel", url, store_url, tmp_path, args=["--concurrency=2"]) as worker:
        docs = documents(300)
        sent: list[Sent] = [send(app, "tasks.vectorize_document", [d], {}) for d in docs]
        old = broker.primary
        done_at: list[float] = []
        lost = wrong = failed = resent = 0
        killed_at: datetime.datetime | None = None
        i = 0
        while i < len(sent):
            if i == 100 and killed_at is None:
                old.kill()
                killed_at = datetime.datetime.now()
                # sent while the sentinels fail over: publishing retries until a primary answers
                more = documents(100, offset=len(docs))
                docs += more
                sent += [send(app, "tasks.vectorize_document", [d], {}) for d in more]
            try:
                value = wait(app, sent[i], timeout=120, resend_after=10)
            except Exception:  # noqa: BLE001  # celery's TimeoutError: the task is lost
                lost += 1
                value = None
            resent += sent[i].resends
            done_at.append(time.monotonic())
            if isinstance(value, BaseException):
                failed += 1
            elif value is not None and not np.array_equal(as_array(value), expected(kv, docs[i])):
                wrong += 1
            i += 1
        assert (lost, wrong, failed) == (0, 0, 0), worker.log()[-3000:]
        assert worker.alive()
        new = broker.wait_primary(30)
        assert new is not old and not old.alive()
        # results not yet collected would unsubscribe through the stopped sentinels
        sent.clear()
        gc.collect()
    assert killed_at is not None
    done = [datetime.datetime.strptime(t, "%Y-%m-%d %H:%M:%S,%f")
            for t in SUCCEEDED.findall(worker.log())]
    resumed = min(t for t in done if t > killed_at) - killed_at
    print(f"\nsentinel failover: worker's first task done {resumed.total_seconds():.1f} s after "
          f"the kill; longest gap between the client's results "
          f"{float(np.diff(done_at).max()):.1f} s; {resent} tasks resent")
