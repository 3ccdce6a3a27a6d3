"""Small measuring helpers shared by the figures: percentiles, memory, Redis.

>>> pct([1.0, 2.0, 3.0, 4.0], 50)
2.5
>>> fmt_bytes(1536)
'1.5 KiB'
"""
from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import redis

MB = 2**20


def pct(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile of ``values`` (NaN when empty)."""
    return float(np.percentile(values, q)) if len(values) else float("nan")


def fmt_bytes(n: float) -> str:
    """Human-readable bytes (binary units)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def fmt_ms(seconds: float) -> str:
    """Seconds as milliseconds with 3 significant digits."""
    return f"{seconds * 1e3:.3g}"


def ratio(a: float, b: float) -> str:
    """``a / b`` formatted as ``1.23x``."""
    return f"{a / b:.2f}x" if b else "n/a"


class Stopwatch:
    """Wall time of a block: ``with Stopwatch() as sw: ...; sw.seconds``."""

    seconds: float = 0.0

    def __enter__(self) -> Stopwatch:
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._t0


def used_memory(client: redis.Redis) -> int:
    """Redis ``INFO memory`` used_memory, in bytes."""
    return int(client.info("memory")["used_memory"])


@contextmanager
def memory_delta(client: redis.Redis) -> Iterator[dict]:
    """Redis memory a block adds: ``with memory_delta(c) as d: ...``, then ``d["bytes"]``."""
    out: dict = {}
    before = used_memory(client)
    yield out
    out["bytes"] = used_memory(client) - before


def proc_memory(pid: int | str = "self") -> dict[str, int]:
    """RSS, anonymous (private) and file-backed RSS of a process, in bytes, from /proc."""
    fields = {"VmRSS": "rss", "RssAnon": "anon", "RssFile": "file"}
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key = line.split(":", 1)[0]
            if key in fields:
                out[fields[key]] = int(line.split()[1]) * 1024
    return out
