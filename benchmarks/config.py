"""Sizes of each benchmark mode, and the context every figure runs in.

``smoke`` runs in seconds (for the test suite), ``quick`` in a few minutes,
``full`` at the sizes of the issue (see BENCHMARKS.md for how long it took).

>>> PROFILES["quick"].latency_vocab
100000
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import redis

from . import data
from .measure import Stopwatch
from .report import Report


@dataclass(frozen=True)
class Profile:
    """How big and how long each figure runs."""

    name: str
    dim: int
    # 1. per-document latency
    latency_vocab: int
    latency_docs: dict[int, int]  # document length -> documents per distribution
    latency_warmup_docs: int  # 100-token documents warming the cache
    # 2. cold start
    coldstart_sizes: tuple[int, ...]
    coldstart_repeats: int
    # 3. Redis memory and load rate
    memory_size: int
    memory_seed_size: int  # the seed design loads ~3k vectors/s: keep it smaller
    # 4. similarity
    similarity_sizes: tuple[int, ...]
    similarity_queries: int
    # 5. scale test
    scale_vocab: int
    scale_docs: int
    scale_doc_len: int
    scale_idle: float  # seconds to watch the idle pool shrink
    scale_keepalive: float  # Celery's AUTOSCALE_KEEPALIVE: autoscaler period, idle time to shrink
    # 6. batch tasks
    batch_docs: int
    batch_sizes: tuple[int, ...] = field(default=(1, 2, 5, 10, 20, 50))
    similarity_quantizations: tuple[str, ...] = field(default=("q8", "noquant", "bin"))
    similarity_efs: tuple[int, ...] = field(default=(100, 200, 400, 800))  # search EF trade-off


PROFILES = {
    "smoke": Profile(
        name="smoke", dim=16, latency_vocab=2000, latency_docs={10: 5, 100: 5},
        latency_warmup_docs=5, coldstart_sizes=(2000,), coldstart_repeats=1,
        memory_size=2000, memory_seed_size=500, similarity_sizes=(500,),
        similarity_queries=5, scale_vocab=2000, scale_docs=20, scale_doc_len=20,
        scale_idle=0.0, scale_keepalive=30.0, batch_docs=20, batch_sizes=(1, 5)),
    "quick": Profile(
        name="quick", dim=300, latency_vocab=100_000,
        latency_docs={10: 200, 100: 200, 1000: 30}, latency_warmup_docs=300,
        coldstart_sizes=(10_000, 100_000), coldstart_repeats=3,
        memory_size=100_000, memory_seed_size=10_000, similarity_sizes=(10_000,),
        similarity_queries=100, scale_vocab=100_000, scale_docs=3000, scale_doc_len=100,
        scale_idle=25.0, scale_keepalive=10.0, batch_docs=400),
    "full": Profile(
        name="full", dim=300, latency_vocab=1_000_000,
        latency_docs={10: 1000, 100: 1000, 1000: 200}, latency_warmup_docs=2000,
        coldstart_sizes=(10_000, 100_000, 1_000_000, 3_000_000), coldstart_repeats=3,
        memory_size=1_000_000, memory_seed_size=100_000, similarity_sizes=(100_000, 1_000_000),
        similarity_queries=300, scale_vocab=1_000_000, scale_docs=20_000, scale_doc_len=100,
        scale_idle=70.0, scale_keepalive=30.0, batch_docs=2000),
}


def profile(name: str, similarity_sizes: tuple[int, ...] | None = None,
            quantizations: tuple[str, ...] | None = None) -> Profile:
    """The profile ``name``, optionally with other similarity index sizes and quantizations."""
    p = PROFILES[name]
    if similarity_sizes:
        p = replace(p, similarity_sizes=similarity_sizes)
    return replace(p, similarity_quantizations=quantizations) if quantizations else p


@dataclass
class Context:
    """What a figure gets: sizes, where data lives, the shared Redis, the report."""

    profile: Profile
    data_dir: Path
    redis_url: str
    report: Report

    def model(self, count: int) -> data.Model:
        """The generated model of ``count`` tokens at this profile's dimension."""
        return data.model(count, self.profile.dim, self.data_dir)

    def flush(self) -> None:
        """Empty the shared Redis, so each figure starts from the same state."""
        client = redis.Redis.from_url(self.redis_url)
        client.flushall(asynchronous=True)  # millions of keys: free them in Redis's background
        client.close()

    def store(self, m: data.Model, name: str | None = None, dtype: str = "float32") -> float:
        """Load ``m`` into the shared Redis with the project's loader; returns seconds."""
        from vectorstore.loader import load

        with Stopwatch() as sw:
            load(str(m.bin_path), name or m.name, url=self.redis_url, dtype=dtype, progress=False)
        return sw.seconds
