"""A stalled Redis (frozen with SIGSTOP): every client path fails clearly within its timeouts,
while the server is still frozen, and works again once it continues.

Each test freezes a Redis of its own, never the session's. A freeze is lifted by a timer
after ``THAW_AFTER`` s at the latest, so a call that waited for the server instead of
timing out would succeed late rather than hang: the tests assert that each call failed
*before* the timer thawed the server.
"""
from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import redis
from celery_helpers import WorkerProcess, wait_for
from click.testing import CliRunner
from conftest import TEST_DATA, synthetic_kv
from gensim.models import KeyedVectors

from tasks import as_array
from tasks.client import client_app
from vectorstore import RedisKeyedVectors, StoreUnavailableError
from vectorstore.cli import main
from vectorstore.connection import Timeouts, connect, worst_case
from vectorstore.loader import load
from vectorstore.server import EmbeddedRedis

THAW_AFTER = 60.0
TIMEOUTS = {"VECTORSTORE_SOCKET_TIMEOUT": "1", "VECTORSTORE_CONNECT_TIMEOUT": "1"}


@pytest.fixture(scope="module")
def model() -> KeyedVectors:
    return synthetic_kv(500, 16)


@pytest.fixture()
def store(model: KeyedVectors, monkeypatch: pytest.MonkeyPatch) -> Iterator[EmbeddedRedis]:
    """A Redis of this test's own with model ``m``; clients made here time out after 1 s."""
    for name, value in TIMEOUTS.items():
        monkeypatch.setenv(name, value)
    with EmbeddedRedis() as server:
        load(model, "m", url=server.url, progress=False)
        yield server


@contextmanager
def stalled(server: EmbeddedRedis) -> Iterator[threading.Event]:
    """``server`` frozen until the block ends, or ``THAW_AFTER`` s (then the event is set)."""
    assert server.process is not None
    process = server.process
    thawed = threading.Event()

    def thaw() -> None:
        thawed.set()
        process.send_signal(signal.SIGCONT)

    timer = threading.Timer(THAW_AFTER, thaw)
    process.send_signal(signal.SIGSTOP)
    timer.start()
    try:
        yield thawed
    finally:
        timer.cancel()
        process.send_signal(signal.SIGCONT)


def test_timeouts_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*TIMEOUTS, "VECTORSTORE_SLOW_TIMEOUT", "VECTORSTORE_HEALTH_CHECK_INTERVAL"):
        monkeypatch.delenv(name, raising=False)
    assert Timeouts.from_env() == Timeouts(connect=2.0, socket=5.0, slow=120.0, health_check=30.0)
    assert round(worst_case(), 6) == 6 * (2 + 5) + 3.1  # 5 retries: 0.1+0.2+0.4+0.8+1.6 s
    monkeypatch.setenv("VECTORSTORE_SOCKET_TIMEOUT", "0.5")
    monkeypatch.setenv("VECTORSTORE_HEALTH_CHECK_INTERVAL", "0")
    kwargs = connect("redis://h:1/0").connection_pool.connection_kwargs
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"],
            kwargs["health_check_interval"]) == (0.5, 2.0, 0)
    for bad in ("0", "-1", "soon", "inf", "nan"):
        monkeypatch.setenv("VECTORSTORE_SOCKET_TIMEOUT", bad)
        with pytest.raises(Exception, match=f"VECTORSTORE_SOCKET_TIMEOUT='{bad}' is not a "
                                            f"number of seconds > 0"):
            connect("redis://h:1/0")


def test_lookups_fail_clearly_while_redis_is_stalled_and_recover(store: EmbeddedRedis,
                                                                 model: KeyedVectors) -> None:
    used = RedisKeyedVectors("m", url=store.url, cache_bytes=0, refresh=0)
    assert np.array_equal(used["w1"], model["w1"])  # its connection is open
    raw = connect(store.url)
    raw.ping()
    with stalled(store) as thawed:
        for what, call in [("open connection", lambda: used[["w2", "w3"]]),
                           ("new connection", lambda: RedisKeyedVectors("m", url=store.url)["w2"]),
                           ("similarity", lambda: used.most_similar("w1", exact=True))]:
            with pytest.raises(StoreUnavailableError, match=rf"{store.port}.*Timeout") as info:
                call()
            assert not thawed.is_set(), f"{what}: waited for the server ({info.value})"
        with pytest.raises(redis.TimeoutError):
            raw.get("vs:m#current")
        with pytest.raises(redis.TimeoutError):
            connect(store.url).ping()
        assert not thawed.is_set()
    assert np.array_equal(used[["w2", "w3"]], model[["w2", "w3"]])  # back at once
    assert raw.ping()


@pytest.mark.parametrize("args", [["info", "m"], ["list"], ["verify", "m"], ["drop", "m", "--yes"],
                                  ["index", "m", "--no-progress"],
                                  ["load", str(TEST_DATA / "lee_fasttext.vec"), "--name", "lee",
                                   "--no-progress"]])
def test_cli_fails_in_one_line_while_redis_is_stalled(store: EmbeddedRedis, args: list[str]) -> None:
    with stalled(store) as thawed:
        result = CliRunner().invoke(main, [*args, "--url", store.url], catch_exceptions=False)
        assert not thawed.is_set()
    assert result.exit_code == 2, result.output
    assert result.stderr == (f"error: Redis at {store.url} did not answer in time (Timeout "
                             f"reading from socket; VECTORSTORE_CONNECT_TIMEOUT=1 s, "
                             f"VECTORSTORE_SOCKET_TIMEOUT=1 s)\n")
    assert CliRunner().invoke(main, ["info", "m", "--url", store.url]).exit_code == 0


@pytest.mark.slow
def test_task_on_a_stalled_store_is_retried_and_succeeds(store: EmbeddedRedis, model: KeyedVectors,
                                                         tmp_path: Path) -> None:
    """The worker gets StoreUnavailableError after the socket timeout and retries the task
    (instead of blocking until its time limit), and the retry succeeds once Redis continues."""
    with EmbeddedRedis() as broker, \
            WorkerProcess("stall", broker.url, store.url, tmp_path, args=["--concurrency=1"],
                          env={**TIMEOUTS, "VECTORSTORE_PREWARM": "0"}) as worker:  # must read Redis
        client = client_app(broker.url)
        doc = ["w1", "w2", "w3"]
        with stalled(store) as thawed:
            result = client.send_task("tasks.vectorize_document", [doc])
            wait_for(lambda: f"[{result.id}] retry: Retry in" in worker.log(), timeout=30,
                     what="the task to be retried")
            assert not thawed.is_set()
        assert np.array_equal(as_array(result.get(timeout=60)), model[doc])
        assert "StoreUnavailableError" in worker.log() and "SoftTimeLimit" not in worker.log()


def test_wrong_password_is_not_retried(redis_url: str, client: redis.Redis) -> None:
    """A refused login is a ConnectionError to redis-py, but retrying cannot fix it."""
    def denied() -> int:
        return client.info("stats")["acl_access_denied_auth"]

    client.execute_command("ACL", "SETUSER", "u", "on", ">right", "~*", "+@all")
    try:
        before = denied()
        with pytest.raises(redis.AuthenticationError):
            connect(redis_url.replace("redis://", "redis://u:wrong@")).ping()
        assert denied() == before + 1
    finally:
        client.execute_command("ACL", "DELUSER", "u")


def test_slow_calls_wait_the_slow_timeout(store: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    """A command marked slow (an exact similarity search) waits VECTORSTORE_SLOW_TIMEOUT for
    its reply where any other fails after the socket timeout: with Redis frozen for 2 s, a
    lookup fails (socket timeout 1 s) and a slow call returns the right reply (slow 30 s)."""
    monkeypatch.setenv("VECTORSTORE_SLOW_TIMEOUT", "30")
    kv = RedisKeyedVectors("m", url=store.url, cache_bytes=0)
    name = kv.keys.current
    assert kv.deployment.call("GET", name) == b"1"
    assert store.process is not None
    store.process.send_signal(signal.SIGSTOP)
    threading.Timer(2.0, store.process.send_signal, [signal.SIGCONT]).start()
    with pytest.raises(StoreUnavailableError, match="did not answer within its timeout"):
        kv.deployment.call("GET", name)
    assert kv.deployment.call("GET", name, slow=True) == b"1"
