"""The embedded Redis: starts, answers, stops, and dies with its parent; the embedded
cluster, replica set and sentinels form, serve and fail over."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from urllib.parse import urlsplit

import psutil
import pytest
import redis
from click.testing import CliRunner
from redis.cluster import RedisCluster
from redis.sentinel import Sentinel

from vectorstore.cli import main as cli
from vectorstore.connection import redact, resolve_url
from vectorstore.errors import VectorStoreError
from vectorstore.server import (
    CLUSTER_SLOTS,
    EmbeddedCluster,
    EmbeddedRedis,
    EmbeddedReplicaSet,
    find_server,
)


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


def test_cluster_serves_keys_on_every_master_and_replicates(redis_cluster: EmbeddedCluster) -> None:
    rc = RedisCluster.from_url(redis_cluster.url, socket_timeout=5)
    try:
        keys = {f"k{i}": str(i) for i in range(300)}
        for key, value in keys.items():
            rc.set(key, value)
        assert {key: rc.get(key) for key in keys} == {k: v.encode() for k, v in keys.items()}
        masters, replicas = redis_cluster.masters, redis_cluster.replicas
        assert len(masters) == 3 and len(replicas) == 3
        for master in masters:  # each master holds its share, and its replica a copy
            c = master.client()
            assert c.execute_command("WAIT", 1, 5000) == 1
            own = [k for k in keys if redis_cluster.node_for_slot(rc.keyslot(k)) is master]
            assert 0 < len(own) < len(keys)
            assert sorted(c.keys("k*")) == sorted(own)
        assert sum(r.client().dbsize() for r in replicas) >= len(keys)
        assert redis_cluster.node_for_slot(0) is masters[0]
        assert redis_cluster.node_for_slot(CLUSTER_SLOTS - 1) is masters[-1]
    finally:
        for key in rc.scan_iter("k*"):
            rc.delete(key)
        rc.close()


def test_cluster_master_killed_replica_promoted_keys_still_readable() -> None:
    with EmbeddedCluster(masters=3, replicas_per_master=1) as cluster:
        rc = RedisCluster.from_url(cluster.url, socket_timeout=5)
        keys = {f"k{i}": str(i) for i in range(300)}
        for key, value in keys.items():
            rc.set(key, value)
        victim = cluster.node_for_slot(rc.keyslot("k0"))
        assert victim.client().execute_command("WAIT", 1, 5000) == 1
        victim.kill()
        cluster.wait_ok(30)
        promoted = cluster.node_for_slot(rc.keyslot("k0"))
        assert promoted is not victim and promoted in cluster.masters
        assert len(cluster.masters) == 3 and len(cluster.replicas) == 2
        rc.close()
        rc = RedisCluster.from_url(cluster.url, socket_timeout=5)
        assert {key: rc.get(key) for key in keys} == {k: v.encode() for k, v in keys.items()}
        rc.close()
    assert not any(node.alive() for node in cluster.nodes)


def test_replica_set_replicates_and_replicas_are_read_only(replica_set: EmbeddedReplicaSet) -> None:
    primary, replicas = replica_set.primary, replica_set.replicas
    assert primary.url == replica_set.url == replica_set.urls[0] and len(replicas) == 2
    assert replica_set.replica_urls == [r.url for r in replicas]
    writer = primary.client()
    try:
        writer.set("replicated", "yes")
        replica_set.wait_synced(10)
        for replica in replicas:
            c = replica.client()
            assert c.get("replicated") == "yes"
            with pytest.raises(redis.ReadOnlyError):
                c.set("replicated", "no")
            c.close()
    finally:
        writer.delete("replicated")
        writer.close()


def test_sentinels_report_the_primary_and_fail_over() -> None:
    with EmbeddedReplicaSet(replicas=2, sentinels=3, master_name="vs") as rs:
        sentinel = Sentinel([("127.0.0.1", s.port) for s in rs.sentinels], socket_timeout=2)
        old = rs.primary
        assert sentinel.discover_master("vs") == ("127.0.0.1", old.port)
        assert sorted(p for _, p in sentinel.discover_slaves("vs")) == sorted(
            r.port for r in rs.replicas)
        assert rs.sentinel_url(1).count("sentinel://") == 3 and rs.sentinel_url(1).endswith("/1")
        sentinel.master_for("vs").set("before", "kill")
        rs.wait_synced(10)
        old.kill()
        new = rs.wait_primary(60)
        assert new is not old and new in rs.nodes[1:]
        assert sentinel.discover_master("vs") == ("127.0.0.1", new.port)
        assert sentinel.master_for("vs").get("before") == b"kill"
        rs.wait_synced(30)  # the other replica now follows the promoted one
        assert rs.replicas == [n for n in rs.nodes[1:] if n is not new]
    assert not any(n.alive() for n in [*rs.nodes, *rs.sentinels])


def _cli_server(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vectorstore.cli", "server", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _servers_of(proc: subprocess.Popen) -> list[psutil.Process]:
    return [p for p in psutil.Process(proc.pid).children() if "redis-server" in p.name()]


def _stopped(servers: list[psutil.Process]) -> bool:
    return not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in servers)


def test_cli_cluster_serves_and_sigterm_stops_every_node() -> None:
    proc = _cli_server("--cluster", "3", "--replicas", "1")
    assert proc.stdout is not None
    try:
        seed = proc.stdout.readline().strip()
        assert seed.startswith("redis://127.0.0.1:")
        rc = RedisCluster.from_url(seed, socket_timeout=5)
        assert rc.set("k", "v") and rc.get("k") == b"v"
        assert len(rc.get_primaries()) == 3 and len(rc.get_replicas()) == 3
        rc.close()
        servers = _servers_of(proc)
        assert len(servers) == 6
        victim = servers[0]
        victim.kill()  # a dead node is reported; the others keep running
        while "exited with code" not in (line := proc.stderr.readline()):  # type: ignore[union-attr]
            assert line, "no report of the killed node"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "stopped" in err and "Traceback" not in err
    assert _stopped(servers)


def test_cli_replicas_with_sentinels_print_urls_and_ctrl_c_stops_them() -> None:
    proc = _cli_server("--replicas", "2", "--sentinels", "3")
    assert proc.stdout is not None
    try:
        primary = proc.stdout.readline().strip()
        replicas = [proc.stdout.readline().strip() for _ in range(2)]
        sentinels = proc.stdout.readline().strip()
        assert primary.startswith("redis://") and all(r.startswith("replica redis://")
                                                      for r in replicas)
        assert sentinels.startswith("sentinel sentinel://") and sentinels.count(";") == 2
        writer = redis.Redis.from_url(primary)
        writer.set("k", "v")
        assert writer.execute_command("WAIT", 2, 5000) == 2
        assert redis.Redis.from_url(replicas[0].split()[1]).get("k") == b"v"
        addresses = [urlsplit(u) for u in sentinels.split()[1].split(";")]
        sentinel = Sentinel([(a.hostname, a.port) for a in addresses], socket_timeout=2)
        assert sentinel.discover_master("vectorstore") == ("127.0.0.1", urlsplit(primary).port)
        servers = _servers_of(proc)
        assert len(servers) == 6
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "stopped" in err and "Traceback" not in err
    assert _stopped(servers)


@pytest.mark.parametrize("args,message", [
    (["--sentinels", "3"], "--sentinels needs --replicas"),
    (["--cluster", "3", "--replicas", "1", "--sentinels", "3"], "--sentinels needs --replicas"),
    (["--cluster", "3", "--port", "7000"], "single server"),
])
def test_cli_server_option_conflicts(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["server", *args])
    assert result.exit_code == 2 and message in result.output
