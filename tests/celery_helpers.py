"""A real ``celery -A tasks worker`` subprocess for tests, and a way to freeze a Redis.

>>> with WorkerProcess("w1", broker_url, store_url, tmp_path) as w:   # doctest: +SKIP
...     client_app(broker_url).send_task("tasks.vectorize_document", [["a"]]).get()
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import psutil

from vectorstore.server import EmbeddedRedis

ROOT = Path(__file__).resolve().parents[1]
_CELERY = Path(sys.executable).with_name("celery")


class WorkerProcess:
    """``celery -A tasks worker`` run from the repository root, logging to a file.

    Args:
        name: node name (the hostname is ``name@vectorstore-test``).
        broker_url: broker and result backend.
        store_url: the Redis holding the models (``VECTORSTORE_URL``).
        log_dir: where ``<name>.log`` goes.
        args: extra worker arguments (pool size).
        queues: queues to consume.
        env: extra environment variables.
    """

    def __init__(self, name: str, broker_url: str, store_url: str, log_dir: Path, *,
                 args: Sequence[str] = ("--autoscale=4,1",), queues: Sequence[str] = ("celery",),
                 env: dict[str, str] | None = None) -> None:
        self.hostname = f"{name}@vectorstore-test"
        self.log_path = Path(log_dir) / f"{name}.log"
        self.cmd = [str(_CELERY) if _CELERY.exists() else sys.executable, "-A", "tasks", "worker",
                    "--loglevel=INFO", f"--hostname={self.hostname}", f"--queues={','.join(queues)}",
                    "--without-heartbeat", "--without-gossip", "--without-mingle", *args]
        if not _CELERY.exists():
            self.cmd[1:1] = ["-m", "celery"]
        self.env = {**os.environ, "CELERY_BROKER_URL": broker_url,
                    "CELERY_RESULT_BACKEND": broker_url, "VECTORSTORE_URL": store_url,
                    "VECTORSTORE_MODEL": "m", "PYTHONUNBUFFERED": "1", **(env or {})}
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> WorkerProcess:
        """Start the worker and wait until it logs that it is ready."""
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.cmd, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        deadline = time.monotonic() + timeout
        while f"{self.hostname} ready." not in self.log():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"worker {self.hostname} did not start:\n{self.log()[-4000:]}")
            time.sleep(0.05)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def pool_pids(self) -> list[int]:
        """Pids of the pool processes (the main process's children)."""
        try:
            return [p.pid for p in psutil.Process(self.pid).children()]
        except psutil.NoSuchProcess:
            return []

    def kill(self) -> None:
        """SIGKILL the main process and its pool at once, as a crash would."""
        if self.alive():
            os.killpg(self.pid, signal.SIGKILL)
            assert self.process is not None
            self.process.wait()

    def stop(self) -> None:
        """Warm shutdown (SIGTERM); SIGKILL the process group if it takes over 15 s."""
        if self.process is None:
            return
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.pid, signal.SIGKILL)  # pool children left behind, if any
        except ProcessLookupError:
            pass
        self.process.wait()

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def frozen(server: EmbeddedRedis) -> Iterator[None]:
    """Stop ``server`` (SIGSTOP) so commands sent to it hang until the block ends: a store
    that has stalled. Connections still open (the kernel accepts them)."""
    assert server.process is not None
    server.process.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        server.process.send_signal(signal.SIGCONT)


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05, what: str = "condition"):
    """Poll ``predicate`` until it returns a true value; return that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
