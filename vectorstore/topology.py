"""How to talk to the Redis deployment: one server, a primary with read replicas, or a cluster.

The store, the similarity methods, the loader and the index builder reach
Redis through one :class:`Deployment`, whatever it is:

* :meth:`~Deployment.call` / :meth:`~Deployment.calls`: commands on the primary
  that owns their key (``args[1]``), on connections of this thread's own;
  several commands go out as one pipeline per node, every node's pipeline
  sent before any reply is read, so a batch costs about one round trip
  whatever the number of nodes.
* :meth:`~Deployment.mget`: values of string keys in any slots, from the
  replicas when reads go there; a nil a replica gives is asked again of the
  primary, so a lagging replica never turns a value into a nil.
* :meth:`~Deployment.versioned_mget`: the same, for keys of one model version,
  guarded by the model's alias: raises :class:`Moved` when the alias no longer
  names that version, so a nil is never a key deleted by a reload.
* :attr:`~Deployment.client`: a redis-py client for everything else
  (``redis.Redis``, or ``redis.cluster.RedisCluster``, which routes by key).

Which deployment a URL is: a server that answers ``CLUSTER INFO`` with
``cluster_enabled``/``cluster_state`` is a Redis Cluster node, used as the seed
(one ``CLUSTER INFO`` per process, at first use; a user not allowed to run it
is taken for a standalone server). Reads go to replicas with
``VECTORSTORE_READ_FROM=replicas`` (default ``primary``): a cluster's own
replicas, or for a standalone primary the servers listed in
``VECTORSTORE_REPLICA_URLS`` (comma-separated URLs). Writes always go to primaries.

>>> d = connect_deployment("redis://localhost:6379/0")          # doctest: +SKIP
>>> d.mget([b"vs:news:3:car", b"vs:news:3:qwxz"])               # doctest: +SKIP
[b'...', None]
>>> d.kind                                                       # doctest: +SKIP
'standalone'
"""
from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

import hiredis
import redis
from redis.backoff import ExponentialBackoff
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.retry import Retry

from .connection import (
    BACKOFF_BASE,
    BACKOFF_CAP,
    RETRIES,
    Timeouts,
    check_url,
    connect,
    redact,
    resolve_url,
    safe_message,
)
from .errors import StoreUnavailableError, VectorStoreError

Key = bytes | str
Command = Sequence[Any]
READ_FROM = ("primary", "replicas")
REPLICA_PAUSE = 10.0  # seconds a process reads from primaries after a replica failed it
# Errors after which a cluster's slot map may have changed (failover, resharding).
_TOPOLOGY_ERRORS = (redis.ConnectionError, redis.exceptions.MovedError,
                    redis.exceptions.AskError, redis.exceptions.ClusterDownError,
                    redis.exceptions.TryAgainError, redis.exceptions.MasterDownError,
                    redis.exceptions.ReadOnlyError)


class Moved(Exception):
    """The model's alias no longer names the version a read was for."""


def read_from(environ: dict[str, str] | None = None) -> str:
    """``VECTORSTORE_READ_FROM``: ``primary`` (default) or ``replicas``.

    >>> read_from({"VECTORSTORE_READ_FROM": "replicas"})
    'replicas'
    """
    raw = (os.environ if environ is None else environ).get("VECTORSTORE_READ_FROM", "primary")
    value = raw.strip().lower() or "primary"
    if value not in READ_FROM:
        raise VectorStoreError(f"VECTORSTORE_READ_FROM={raw!r}: use 'primary' or 'replicas'")
    return value


def replica_urls(environ: dict[str, str] | None = None) -> list[str]:
    """``VECTORSTORE_REPLICA_URLS``, split on commas (replicas of a standalone primary)."""
    raw = (os.environ if environ is None else environ).get("VECTORSTORE_REPLICA_URLS", "")
    return [u.strip() for u in raw.split(",") if u.strip()]


def unavailable(exc: Exception, url: str | None) -> StoreUnavailableError:
    """The StoreUnavailableError for ``exc`` (a connection error or a timeout) at ``url``.

    >>> str(unavailable(redis.TimeoutError("Timeout reading"), "redis://u:pw@db:6379/0"))
    'Redis at redis://u:***@db:6379/0 did not answer within its timeout (TimeoutError: Timeout reading)'
    """
    what = ("did not answer within its timeout" if isinstance(exc, redis.TimeoutError)
            else "unreachable after retries")
    text = f"{type(exc).__name__}: {exc}"
    if url:
        text = safe_message(text, url) or type(exc).__name__
    return StoreUnavailableError(f"Redis at {redact(url) if url else 'the given client'} "
                                 f"{what} ({text})")


class _Links(threading.local):
    """This thread's own connections, by server name, and the process they belong to."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.conns: dict[str, redis.Connection] = {}


class Deployment:
    """A standalone Redis, or a primary with read replicas (``replicas``): see the module doc.

    Args:
        client: the primary's redis-py client (from :func:`vectorstore.connection.connect`).
        url: its URL, for messages (shown redacted); None for a client given as is.
        replicas: clients of read replicas; reads go to one of them, chosen per process.
    """

    kind = "standalone"

    def __init__(self, client: redis.Redis, url: str | None = None,
                 replicas: Sequence[redis.Redis] = ()) -> None:
        self.client: Any = client
        self.url = url
        self.replicas = list(replicas)
        self.round_trips = 0
        self._links = _Links()
        self._replicas_back_at = 0.0
        self.slow_timeout = Timeouts.from_env().slow

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.where}>"

    @property
    def where(self) -> str:
        """Where this deployment is, for messages (no password)."""
        return redact(self.url) if self.url else "the given client"

    # --- errors -------------------------------------------------------------------

    def unavailable(self, exc: Exception) -> StoreUnavailableError:
        """The StoreUnavailableError for ``exc`` (a connection error or a timeout)."""
        return unavailable(exc, self.url)

    # --- connections -----------------------------------------------------------------

    def _conn(self, name: str, pool_of: redis.Redis, readonly: bool = False,
              timeout: float | None = None) -> redis.Connection:
        """This thread's connection to server ``name`` (made from ``pool_of``'s settings);
        with ``timeout``, another one whose replies may take that long (slow commands)."""
        if timeout is not None:
            name += f"#timeout={timeout}"
        links = self._links
        if links.pid != os.getpid():  # a fork: the parent's sockets are not ours
            links.conns.clear()
            links.pid = os.getpid()
        conn = links.conns.get(name)
        if conn is None:
            conn = cast(redis.Connection, pool_of.connection_pool.make_connection())
            if timeout is not None:
                conn.socket_timeout = timeout
            if readonly:  # a cluster replica serves reads only after READONLY, on every connect
                conn.register_connect_callback(self._send_readonly)
            links.conns[name] = conn
        return conn

    def _send_readonly(self, conn: Any) -> None:
        """Connect callback (a bound method: redis-py holds it by weak reference)."""
        conn.send_command("READONLY")
        conn.read_response()

    def _forget(self, name: str) -> None:
        conn = self._links.conns.pop(name, None)
        if conn is not None:
            conn.disconnect()

    def disconnect(self) -> None:
        """Close this thread's own connections (the next call opens new ones)."""
        for name in list(self._links.conns):
            self._forget(name)

    def close(self) -> None:
        """:meth:`disconnect`, and close the clients' pools."""
        self.disconnect()
        for client in (self.client, *self.replicas):
            client.close()

    def _exchange(self, conn: redis.Connection, commands: Sequence[Command]) -> list[Any]:
        """Send ``commands`` on ``conn`` and read their replies (an error reply is returned,
        not raised, so the connection stays in step)."""
        conn.send_packed_command([hiredis.pack_command(tuple(c)) for c in commands],
                                 check_health=True)
        return self._replies(conn, len(commands))

    @staticmethod
    def _replies(conn: redis.Connection, n: int) -> list[Any]:
        out: list[Any] = []
        try:
            for _ in range(n):
                try:
                    out.append(conn.read_response())
                except redis.ResponseError as exc:
                    out.append(exc)
        except BaseException:
            conn.disconnect()  # replies left unread: this connection is out of step
            raise
        return out

    # --- the interface -----------------------------------------------------------------

    def call(self, *args: Any, slow: bool = False) -> Any:
        """One command on the primary owning its key, on this thread's connection."""
        return self.calls([args], slow=slow)[0]

    def calls(self, commands: Sequence[Command], *, slow: bool = False) -> list[Any]:
        """Replies to ``commands`` (each on its key's primary), about one round trip in time.

        ``slow``: commands known to take long (an exact ``VSIM ... TRUTH`` over millions
        of vectors) wait ``VECTORSTORE_SLOW_TIMEOUT`` for their replies, not the socket
        timeout. Raises the first error reply (a redis.ResponseError) after reading them all.
        """
        replies = self._on_primaries(commands, self.slow_timeout if slow else None)
        for reply in replies:
            if isinstance(reply, redis.ResponseError):
                raise reply
        return replies

    def _on_primaries(self, commands: Sequence[Command], timeout: float | None) -> list[Any]:
        conn = self._conn("primary", self.client, timeout=timeout)
        self.round_trips += 1
        try:
            return conn.retry.call_with_retry(
                lambda: self._exchange(conn, commands), lambda _: conn.disconnect())
        except redis.AuthenticationError:
            raise
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise self.unavailable(exc) from exc

    def mget(self, names: Sequence[Key], absent: Collection[int] = ()) -> list[bytes | None]:
        """Values of the string keys ``names`` (None: no such string), in order; the keys
        at positions ``absent`` are known not to exist (a replica's nil needs no check)."""
        if not names:
            return []
        if self.replicas and self._replicas_usable():
            values = self._replica_mget(names)
            if values is not None:
                return self._recheck(names, values, absent)
            self._replica_failed()
        return cast("list[bytes | None]", self.calls([("MGET", *names)])[0])

    def _replicas_usable(self) -> bool:
        return time.monotonic() >= self._replicas_back_at

    def _replica_failed(self) -> None:
        """Read from the primaries for ``REPLICA_PAUSE`` seconds: a replica that is down or
        stalled would otherwise cost every read a connect or socket timeout."""
        self._replicas_back_at = time.monotonic() + REPLICA_PAUSE

    def versioned_mget(self, alias: str, expected: bytes, names: Sequence[Key],
                       absent: Collection[int] = ()) -> list[bytes | None]:
        """``mget(names)`` for keys of the version ``expected`` names; raises :class:`Moved`
        if the alias ``alias`` names another (the values may then be of a deleted version).

        On one server the alias rides in the same MGET as the values (atomic). Where
        it cannot (replicas, cluster), keys of a version are never rewritten, so a
        value read is that version's; a nil is confirmed by reading the alias on
        its primary after the values were read (a version is deleted only after
        the alias moved away from it), unless its position is in ``absent`` (keys
        the caller knows do not exist, such as tokens a vocabulary filter rejects).
        """
        if self.replicas or self.kind == "cluster":
            values = self.mget(names, absent)
            if any(v is None and i not in absent for i, v in enumerate(values)):
                self._check_alias(alias, expected)
            return values
        version, *values = self.calls([("MGET", alias, *names)])[0]
        if version != expected:
            raise Moved
        return cast("list[bytes | None]", values)

    def _check_alias(self, alias: str, expected: bytes) -> None:
        if self.calls([("GET", alias)])[0] != expected:
            raise Moved

    def _replica_mget(self, names: Sequence[Key]) -> list[bytes | None] | None:
        """MGET on this process's replica; None if it failed (the caller asks the primary)."""
        replica = self.replicas[os.getpid() % len(self.replicas)]
        conn = self._conn("replica", replica)
        self.round_trips += 1
        try:
            reply = self._exchange(conn, [("MGET", *names)])[0]
        except (redis.ConnectionError, redis.TimeoutError):
            conn.disconnect()
            return None
        return None if isinstance(reply, redis.ResponseError) else cast("list[bytes | None]", reply)

    def _recheck(self, names: Sequence[Key], values: list[bytes | None],
                 absent: Collection[int] = ()) -> list[bytes | None]:
        """``values`` with each nil a replica gave asked again of the primary (but for the
        positions ``absent``)."""
        missing = [i for i, v in enumerate(values) if v is None and i not in absent]
        if missing:
            again = self._primary_mget([names[i] for i in missing])
            for i, v in zip(missing, again):
                values[i] = v
        return values

    def _primary_mget(self, names: Sequence[Key]) -> list[bytes | None]:
        return cast("list[bytes | None]", self.calls([("MGET", *names)])[0])

    def node(self, key: Key) -> redis.Redis:
        """A redis-py client of the primary that owns ``key`` (for per-node work)."""
        return cast(redis.Redis, self.client)

    @property
    def primaries(self) -> int:
        """How many primaries hold the data (1, or a cluster's masters)."""
        return 1

    def spread(self, key_of: Callable[[int], Key], count: int, tries: int = 100_000) -> list[int]:
        """``count`` candidates ``n`` whose keys ``key_of(n)`` lie evenly on the primaries: taken
        in turn, a candidate is kept while its node holds no more than any other (so the first
        ``primaries`` kept are on distinct nodes). On one server: ``0 .. count-1``.

        >>> Deployment(redis.Redis()).spread(lambda n: f"k{{{n}}}", 3)
        [0, 1, 2]
        """
        taken: dict[str, int] = {}
        out: list[int] = []
        for candidate in range(tries):
            if len(out) == count:
                return out
            node = self.node_name(key_of(candidate))
            if taken.get(node, 0) <= len(out) // self.primaries:
                taken[node] = taken.get(node, 0) + 1
                out.append(candidate)
        if len(out) == count:
            return out
        raise VectorStoreError(f"could not spread {count} keys over {self.primaries} nodes "
                               f"(is the cluster's slot map uneven?)")

    def node_name(self, key: Key) -> str:
        """A name of the primary that owns ``key`` (host:port/db or socket; no password)."""
        kw = self.node(key).connection_pool.connection_kwargs
        where = kw.get("path") or f"{kw.get('host', 'localhost')}:{kw.get('port', 6379)}"
        return f"{where}/{kw.get('db', 0)}"


class ClusterDeployment(Deployment):
    """A Redis Cluster: commands grouped by the node owning their slot, one pipeline per node,
    all sent before any is read; MOVED, ASK, CLUSTERDOWN or a lost node refresh the slot map
    and retry (``RETRIES`` times, sleeping as :mod:`vectorstore.connection` does, 3.1 s in
    all: a failover with a short ``cluster-node-timeout`` goes unnoticed; a longer one fails
    the call with StoreUnavailableError, which a Celery task retries later).
    """

    kind = "cluster"

    def __init__(self, client: RedisCluster, url: str | None = None,
                 replicas: bool = False) -> None:
        super().__init__(cast(redis.Redis, client), url)
        self.cluster = client
        self.read_replicas = replicas
        self._refresh_lock = threading.Lock()

    def _primary(self, slot: int) -> Any:
        return self.cluster.nodes_manager.get_node_from_slot(slot)

    def node(self, key: Key) -> redis.Redis:
        node = self._primary(key_slot(key if isinstance(key, bytes) else key.encode()))
        return cast(redis.Redis, node.redis_connection)

    @property
    def primaries(self) -> int:
        return len(self.cluster.get_primaries())

    def close(self) -> None:
        self.disconnect()
        self.cluster.close()

    def _refresh(self) -> None:
        """Re-read the slot map (after a failover or a MOVED)."""
        with self._refresh_lock:
            self.cluster.nodes_manager.initialize()

    def _routed(self, commands: Sequence[Command], replicas: bool,
                timeout: float | None = None) -> list[Any]:
        """Replies to ``commands``, each sent to the node owning its key's slot (a replica
        of it if ``replicas``), one pipeline per node, all nodes written before any is read."""
        by_node: dict[str, tuple[Any, list[int]]] = {}
        manager = self.cluster.nodes_manager
        for i, command in enumerate(commands):
            key = command[1]
            slot = key_slot(key if isinstance(key, bytes) else str(key).encode())
            nodes = manager.slots_cache.get(slot)
            if not nodes:
                raise redis.exceptions.SlotNotCoveredError(f"slot {slot} is not covered")
            node = random.choice(nodes[1:]) if replicas and len(nodes) > 1 else nodes[0]
            by_node.setdefault(node.name, (node, []))[1].append(i)
        out: list[Any] = [None] * len(commands)
        self.round_trips += 1
        sent = []
        try:
            for name, (node, at) in by_node.items():
                conn = self._conn(name, node.redis_connection,
                                  readonly=node.server_type == "replica", timeout=timeout)
                conn.send_packed_command([hiredis.pack_command(tuple(commands[i])) for i in at],
                                         check_health=True)
                sent.append((name, conn, at))
            for _name, conn, at in sent:
                for i, reply in zip(at, self._replies(conn, len(at))):
                    out[i] = reply
        except (redis.ConnectionError, redis.TimeoutError):
            for name, _conn, _at in sent:
                self._forget(name)
            raise
        return out

    def _on_primaries(self, commands: Sequence[Command], timeout: float | None) -> list[Any]:
        return self._with_failover(lambda: self._routed(commands, False, timeout))

    def _with_failover(self, attempt: Callable[[], list[Any]]) -> list[Any]:
        """``attempt()`` until its replies hold no redirection, refreshing the slot map between
        tries; a timeout is not retried (a stalled node; see :mod:`vectorstore.connection`)."""
        for n in range(RETRIES + 1):
            try:
                replies = attempt()
            except redis.AuthenticationError:
                raise
            except redis.TimeoutError as exc:
                raise self.unavailable(exc) from exc
            except (redis.ConnectionError, redis.exceptions.SlotNotCoveredError,
                    redis.exceptions.RedisClusterException) as exc:
                if n == RETRIES:
                    raise self.unavailable(exc) from exc
            else:
                redirected = [r for r in replies if isinstance(r, _TOPOLOGY_ERRORS)]
                if not redirected:
                    return replies
                if n == RETRIES:
                    raise self.unavailable(redirected[0])
                if isinstance(redirected[0], (redis.exceptions.MovedError,
                                              redis.exceptions.AskError)):
                    self._safe_refresh()
                    continue  # the new owner is known at once
            time.sleep(min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (n + 1)))
            self._safe_refresh()
        raise AssertionError("unreachable")

    def _safe_refresh(self) -> None:
        try:
            self._refresh()
        except (redis.RedisError, IndexError, KeyError):
            pass  # every known node is down for now: the next attempt tries again

    def mget(self, names: Sequence[Key], absent: Collection[int] = ()) -> list[bytes | None]:
        if not names:
            return []
        commands = _mgets_by_slot(names)
        if self.read_replicas and self._replicas_usable():
            try:
                replies = self._routed([c for c, _ in commands], True)
            except (redis.ConnectionError, redis.TimeoutError, redis.RedisClusterException):
                self._safe_refresh()
            else:
                if not any(isinstance(r, Exception) for r in replies):
                    return self._recheck(names, _unsplit(len(names), commands, replies), absent)
            self._replica_failed()
        return self._primary_mget(names)

    def _primary_mget(self, names: Sequence[Key]) -> list[bytes | None]:
        commands = _mgets_by_slot(names)
        return _unsplit(len(names), commands, self.calls([c for c, _ in commands]))


def _mgets_by_slot(names: Sequence[Key]) -> list[tuple[tuple[Any, ...], list[int]]]:
    """One ``MGET`` per hash slot of ``names`` (a cluster refuses keys of several slots),
    with the positions of its keys."""
    by_slot: dict[int, list[int]] = {}
    for i, name in enumerate(names):
        by_slot.setdefault(key_slot(name if isinstance(name, bytes) else name.encode()),
                           []).append(i)
    return [(("MGET", *[names[i] for i in at]), at) for at in by_slot.values()]


def _unsplit(n: int, commands: list[tuple[tuple[Any, ...], list[int]]],
             replies: Sequence[Any]) -> list[bytes | None]:
    out: list[bytes | None] = [None] * n
    for (_, at), reply in zip(commands, replies):
        for i, value in zip(at, reply):
            out[i] = value
    return out


def is_cluster(client: redis.Redis) -> bool:
    """Whether ``client``'s server is a Redis Cluster node (``CLUSTER INFO``); a server
    without cluster support, or a user not allowed to ask, counts as standalone."""
    try:
        info = client.execute_command("CLUSTER INFO")
    except redis.ResponseError:
        return False
    if isinstance(info, dict):  # parsed by redis-py
        return "cluster_state" in info
    return b"cluster_state:" in (info if isinstance(info, bytes) else str(info).encode())


def connect_deployment(url: str | None = None, client: Any = None) -> Deployment:
    """The :class:`Deployment` for ``url`` (or the environment), or for a ready ``client``
    (``redis.Redis`` or ``RedisCluster``), with reads where ``VECTORSTORE_READ_FROM`` says.

    Raises:
        redis.ConnectionError, redis.TimeoutError: the server cannot be reached to tell
            what it is (redis-py's errors, as any first command would raise).
        VectorStoreError: a malformed URL or setting (no password shown).
    """
    replicas = read_from() == "replicas"
    if isinstance(client, RedisCluster):
        return ClusterDeployment(client, None, replicas)
    if client is not None:
        return Deployment(client, None)
    url = resolve_url(url)
    primary = connect(url)
    if is_cluster(primary):
        primary.close()
        return ClusterDeployment(connect_cluster(url), url, replicas)
    return Deployment(primary, url, [connect(u) for u in replica_urls()] if replicas else ())


def connect_cluster(url: str) -> RedisCluster:
    """A redis-py ``RedisCluster`` seeded by ``url``, with :mod:`vectorstore.connection`'s
    timeouts (the slot map is read at once: one ``CLUSTER SLOTS``)."""
    check_url(url)
    t = Timeouts.from_env()
    try:
        return RedisCluster.from_url(
            url, socket_connect_timeout=t.connect, socket_timeout=t.socket,
            health_check_interval=t.health_check, socket_read_size=256 * 1024,
            retry=Retry(ExponentialBackoff(cap=BACKOFF_CAP, base=BACKOFF_BASE), RETRIES))
    except ValueError as exc:
        reason = safe_message(str(exc), url) or "it cannot be parsed"
        raise VectorStoreError(f"invalid Redis URL {redact(url)}: {reason}") from None
    except redis.RedisError as exc:
        raise unavailable(exc, url) from exc


@contextmanager
def deployment(url: str | None = None, client: Any = None) -> Iterator[Deployment]:
    """The deployment of ``client`` (left open) or of ``url`` (closed on exit); for functions
    that take ``url=`` or ``client=`` (the client wins).

    >>> with deployment("redis://localhost:6379/0") as d:            # doctest: +SKIP
    ...     d.client.ping()
    True
    """
    d = connect_deployment(url, client)
    try:
        yield d
    finally:
        if client is None:
            d.close()
        else:
            d.disconnect()
