"""The embedded Redis: starts, answers, stops, and dies with its parent."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest
import redis

from vectorstore.connection import redact, resolve_url
from vectorstore.errors import VectorStoreError
from vectorstore.server import EmbeddedRedis, find_server


def test_tcp_server_has_vector_sets_and_no_persistence() -> None:
    with EmbeddedRedis() as server:
        client = redis.Redis.from_url(server.url)
        assert client.info("server")["redis_version"].startswith("8.")
        assert client.vset().vcard("none") == 0  # VCARD exists: vector sets
        assert client.config_get("save")["save"] == ""
        assert client.config_get("appendonly")["appendonly"] == "no"
        pid = server.process.pid  # type: ignore[union-attr]
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_unix_socket(tmp_path) -> None:
    with EmbeddedRedis(unix_socket=str(tmp_path / "s.sock")) as server:
        assert server.url.startswith("unix://")
        assert redis.Redis.from_url(server.url).ping()


def test_bad_binary_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("VECTORSTORE_REDIS_SERVER", str(tmp_path / "nope"))
    with pytest.raises(VectorStoreError, match="VECTORSTORE_REDIS_SERVER"):
        find_server()


def test_server_stops_when_parent_is_killed() -> None:
    script = textwrap.dedent("""
        import time
        from vectorstore.server import EmbeddedRedis
        s = EmbeddedRedis().start()
        print(s.process.pid, flush=True)
        time.sleep(60)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    pid = int(parent.stdout.readline())
    assert psutil.pid_exists(pid)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "redis-server outlived its parent"
        time.sleep(0.05)


def test_url_resolution_and_redaction(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VECTORSTORE_URL", raising=False)
    monkeypatch.setenv("REDIS_URL", "redis://r:1/2")
    assert resolve_url() == "redis://r:1/2"
    monkeypatch.setenv("VECTORSTORE_URL", "redis://v:1/0")
    assert resolve_url() == "redis://v:1/0" and resolve_url("unix:///x") == "unix:///x"
    monkeypatch.delenv("VECTORSTORE_URL")
    monkeypatch.delenv("REDIS_URL")
    assert resolve_url() == "redis://localhost:6379/0"
    assert redact("rediss://u:p%40ss@h:6380/0") == "rediss://u:***@h:6380/0"
    assert redact("redis://:pw@h/0") == "redis://:***@h/0"
    assert redact("redis://h:6379/0") == "redis://h:6379/0"
    assert os.environ.get("VECTORSTORE_URL") is None
