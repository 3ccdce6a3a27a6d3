"""A Redis lock for one process at a time, renewed while held, taken over from a dead owner.

The lock is a key set with ``SET NX PX`` to ``host:pid:uuid``, the owner. While
it is held, a thread renews it every third of its TTL; a renewal that finds
another value marks the lock lost, and :meth:`Lock.check` raises. A lock whose
owner is a process of this host that no longer runs is taken over at once
instead of waiting for it to expire; one of another host is respected (nobody
here can tell whether its owner runs) until it expires.

The loader locks a model with it (``vs:news#lock``), the index builder a
version's index (``vs:news:3#vset-lock``); different keys, so the loader can
build an index under its own lock.

>>> with Lock(r, "vs:news#lock", "model 'news'", "loaded", LoadInProgressError,
...           ttl_ms=15_000) as lock:                             # doctest: +SKIP
...     for batch in batches:
...         lock.check()  # raises LoadInProgressError if another process has it now
...         write(batch)
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from contextlib import suppress

import redis

from .errors import VectorStoreError

logger = logging.getLogger(__name__)

# Compare-and-set on the lock value: renew, release, or take over a dead owner's lock.
_RENEW = ("if redis.call('GET', KEYS[1]) == ARGV[1] then "
          "return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end")
_RELEASE = ("if redis.call('GET', KEYS[1]) == ARGV[1] then "
            "return redis.call('DEL', KEYS[1]) else return 0 end")
_TAKE_OVER = ("if redis.call('GET', KEYS[1]) == ARGV[1] then "
              "redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) return 1 else return 0 end")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's process
        pass
    return True


def _dead_here(holder: str) -> bool:
    """True if ``holder`` (``host:pid:uuid``) names a process of this host that is gone."""
    parts = holder.rsplit(":", 2)
    return (len(parts) == 3 and parts[1].isdigit() and parts[0] == socket.gethostname()
            and not _pid_alive(int(parts[1])))


class Lock:
    """The lock at ``key``, held from ``with`` to its end and renewed by a thread meanwhile.

    Args:
        client: the Redis client; the renewals use connections of its pool.
        key: the lock's key (see :mod:`vectorstore.keys`).
        subject, activity: what is locked and what the holder does to it, for
            messages: ``"model 'news'"`` and ``"loaded"`` give "model 'news' is
            being loaded by host:42:ab12 (lock ...)".
        error: the exception to raise when another process holds the lock, or
            took it from us (:meth:`check`, :meth:`lost`).
        ttl_ms: the lock's time to live; renewed every third of it.

    Raises (on entering):
        ``error``: a live process, or one of another host, holds the lock.
    """

    def __init__(self, client: redis.Redis, key: str, subject: str, activity: str,
                 error: type[VectorStoreError], *, ttl_ms: int) -> None:
        self.r, self.key, self.subject, self.activity = client, key, subject, activity
        self.error, self.ttl_ms = error, ttl_ms
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._take_over = client.register_script(_TAKE_OVER)
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Lock:
        for _ in range(3):  # the holder may change between our SET and GET
            if self.r.set(self.key, self.owner, nx=True, px=self.ttl_ms):
                break
            raw = self.r.get(self.key)
            if raw is None:
                continue
            holder = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
            if not _dead_here(holder):
                ttl = self.r.pttl(self.key)
                raise self.error(
                    f"{self.subject} is being {self.activity} by {holder} (lock {self.key}, "
                    f"expires in {max(ttl, 0) / 1000:.1f} s unless renewed)")
            if self._take_over(keys=[self.key], args=[holder, self.owner, self.ttl_ms]):
                logger.warning("%s: took over lock %s of dead process %s",
                               self.subject, self.key, holder)
                break
        else:
            raise self.error(f"{self.subject}: lock {self.key} keeps changing hands")
        self._thread = threading.Thread(target=self._keep, name=f"lock {self.key}", daemon=True)
        self._thread.start()
        return self

    def _keep(self) -> None:
        while not self._stop.wait(self.ttl_ms / 3000):
            try:
                if not self._renew(keys=[self.key], args=[self.owner, self.ttl_ms]):
                    self._lost.set()
                    return
            except redis.RedisError as exc:  # retried at the next tick, well before expiry
                logger.warning("%s: could not renew lock %s: %s", self.subject, self.key, exc)

    def check(self) -> None:
        """Raise ``error`` if the lock expired or another process took it from us."""
        if self._lost.is_set():
            raise self.lost()

    def lost(self) -> VectorStoreError:
        """The error saying that we no longer hold the lock."""
        return self.error(f"{self.subject} is no longer being {self.activity} here: lost lock "
                          f"{self.key} (it expired or was taken over)")

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with suppress(redis.RedisError):
            self._release(keys=[self.key], args=[self.owner])
