"""Real Celery workers as subprocesses, and a sampler of their pool, memory and progress.

>>> with Worker("tasks", ["--autoscale=8,1"], url) as w:                  # doctest: +SKIP
...     ids = [client.send_task("tasks.vectorize_document", [doc]).id for doc in docs]
...     w.wait_done(ids)
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import redis

from tasks.client import client_app

ROOT = Path(__file__).resolve().parents[1]
RESULT_PREFIX = "celery-task-meta-"


def done_count(client: redis.Redis, ids: Sequence[str]) -> int:
    """How many of the task ``ids`` have a result in the Redis backend."""
    return sum(client.exists(*(RESULT_PREFIX + i for i in ids[lo:lo + 1000]))
               for lo in range(0, len(ids), 1000))


def check_succeeded(sender: Any, ids: Sequence[str]) -> None:
    """Raise if any of the finished tasks ``ids`` failed (a refused task also has a result)."""
    for task_id in ids:
        result = sender.AsyncResult(task_id)
        if result.state != "SUCCESS":
            raise RuntimeError(f"task {task_id} ended {result.state}: {result.result!r}")


class Worker:
    """``celery -A <app> worker <args>`` in a subprocess, with Redis at ``url`` for everything."""

    def __init__(self, app: str, args: Sequence[str], url: str,
                 env: dict[str, str] | None = None) -> None:
        self.app, self.args, self.url = app, list(args), url
        self.env = {**os.environ, "VECTORSTORE_URL": url, "CELERY_BROKER_URL": url,
                    "CELERY_RESULT_BACKEND": url, **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.log = tempfile.NamedTemporaryFile(prefix="bench-worker-", suffix=".log", delete=False)

    def __enter__(self) -> Worker:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", self.app, "worker", "--loglevel=WARNING",
             "--without-gossip", "--without-mingle", *self.args],
            cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL, stdout=self.log,
            stderr=subprocess.STDOUT)
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 60.0) -> None:
        app = client_app(self.url, self.url)
        deadline = time.monotonic() + timeout
        while not app.control.ping(timeout=0.5):
            if self.proc is None or self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"celery worker -A {self.app} did not start:\n{self.tail()}")
        app.close()

    def tail(self) -> str:
        return Path(self.log.name).read_text(errors="replace")[-3000:]

    def pool(self) -> list[psutil.Process]:
        """The worker's pool processes (children of the main process)."""
        try:
            return psutil.Process(self.proc.pid).children() if self.proc else []
        except psutil.NoSuchProcess:
            return []

    def wait_done(self, client: redis.Redis, ids: Sequence[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while done_count(client, ids) < len(ids):
            if time.monotonic() > deadline or (self.proc and self.proc.poll() is not None):
                raise RuntimeError(f"{len(ids) - done_count(client, ids)} of {len(ids)} tasks "
                                   f"not done after {timeout:.0f} s:\n{self.tail()}")
            time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                for child in self.pool():
                    child.kill()
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        os.unlink(self.log.name)


@dataclass
class Sample:
    t: float
    pool: int
    child_rss: list[int]
    child_uss: list[int]  # private memory of each pool process (pages not shared)
    main_rss: int
    redis_bytes: int
    done: int


@dataclass
class Monitor:
    """Samples a worker every ``interval`` seconds in a thread while ``ids`` are being sent."""

    worker: Worker
    client: redis.Redis
    interval: float = 0.25
    ids: list[str] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> Sample:
        rss, uss = [], []
        for p in self.worker.pool():
            try:
                info = p.memory_full_info()
            except psutil.NoSuchProcess:
                continue
            rss.append(info.rss)
            uss.append(info.uss)
        try:
            main = psutil.Process(self.worker.proc.pid).memory_info().rss if self.worker.proc else 0
        except psutil.NoSuchProcess:
            main = 0
        used = int(self.client.info("memory")["used_memory"])
        return Sample(time.monotonic() - self.t0, len(rss), rss, uss, main, used,
                      done_count(self.client, list(self.ids)))

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self._sample())
            self._stop.wait(self.interval)

    def __enter__(self) -> Monitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
