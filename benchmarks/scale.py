"""Figure 5: autoscaled Celery workers under a burst, then idle; and the seed article's costs.

``celery -A tasks worker --autoscale=8,1`` runs as a subprocess against a
fresh embedded Redis 8 that is broker, result backend and vector store. A
burst of ``vectorize_document`` tasks is sent at once, then the worker idles.
A sampler records the pool size (the worker's child processes), per-process
RSS, Redis memory and finished tasks every 0.25 s. The anchor is the same
Celery setup whose pool processes each load a gensim model into memory
(:mod:`benchmarks.inmemory`), measured at the largest size that fits 8
copies in this machine's free RAM and projected linearly above that.

The cost comparison redoes the seed article's: six t2.large (8 GiB) each
holding the model in a worker, against one t2.large running the workers plus
one cache.m3.xlarge (ElastiCache) holding the model, with measured memory.
"""
from __future__ import annotations

import gc
import time
from dataclasses import dataclass

import numpy as np
import psutil
import redis

from tasks import as_array
from tasks.client import client_app
from vectorstore.loader import load
from vectorstore.server import EmbeddedRedis

from .config import Context
from .data import Streams
from .measure import MB, memory_delta
from .report import figure
from .workers import Monitor, Sample, Worker, check_succeeded

AUTOSCALE = "--autoscale=8,1"
MAX_POOL = 8
GOOGLE_NEWS = 3_000_000
GiB = 2**30
# The seed article's on-demand prices (US-West2) and the instances' memory.
T2_LARGE = {"price": 0.0928, "memory": 8 * GiB}
CACHE_M3_XLARGE = {"price": 0.364, "memory": 13.3 * GiB}
OS_RESERVE = 1 * GiB  # left to the OS and the worker's main process on each instance
HOURS_PER_YEAR = 8760


@dataclass
class Run:
    """One contender's burst: samples, when sending started and the last task finished."""

    name: str
    samples: list[Sample]
    sent_at: float
    done_at: float
    docs: int

    @property
    def throughput(self) -> float:
        return self.docs / (self.done_at - self.sent_at)

    @property
    def peak_pool(self) -> int:
        return max(s.pool for s in self.samples)

    @property
    def max_child_rss(self) -> int:
        return max((max(s.child_rss) for s in self.samples if s.child_rss), default=0)

    @property
    def max_child_uss(self) -> int:
        return max((max(s.child_uss) for s in self.samples if s.child_uss), default=0)

    @property
    def max_main_rss(self) -> int:
        return max(s.main_rss for s in self.samples)

    def host_memory(self, processes: int) -> int:
        """Memory of one worker with ``processes`` pool processes: its main process
        (which holds the pages the pool shares) and each process's private pages."""
        return self.max_main_rss + processes * self.max_child_uss

    @property
    def final_pool(self) -> int:
        return self.samples[-1].pool


def burst(name: str, app: str, task: str, kwargs: dict, url: str, docs: list[list[str]],
          idle: float, env: dict[str, str], expected: np.ndarray) -> Run:
    """Send ``docs`` as one task each to a fresh autoscaled worker, then watch it idle."""
    client = redis.Redis.from_url(url)
    sender = client_app(url, url)
    with Worker(app, [AUTOSCALE], url, env) as worker, Monitor(worker, client) as mon:
        time.sleep(1.0)
        sent_at = time.monotonic() - mon.t0
        for doc in docs:
            mon.ids.append(sender.send_task(task, [doc], kwargs).id)
        worker.wait_done(client, mon.ids, timeout=600)
        done_at = time.monotonic() - mon.t0
        check_succeeded(sender, mon.ids)
        got = as_array(sender.AsyncResult(mon.ids[0]).get(timeout=30))
        if not np.array_equal(got, expected):
            raise AssertionError(f"{name}: task result differs from gensim's vectors")
        time.sleep(idle)
        gc.collect()  # results unsubscribe now, while Redis runs (not retrying once it is gone)
    sender.close()
    client.close()
    return Run(name, mon.samples, sent_at, done_at, len(docs))


def in_memory_size(count: int, dim: int) -> int:
    """Largest model size <= ``count`` of which 8 process copies fit in 40% of free RAM."""
    budget = 0.4 * psutil.virtual_memory().available / MAX_POOL
    fits = int(budget / (dim * 4 * 1.3))
    for n in (count, 1_000_000, 500_000, 200_000, 100_000, 50_000, 20_000, 10_000):
        if n <= min(count, fits):
            return n
    return min(count, 2000)


def run(ctx: Context) -> None:
    p = ctx.profile
    sec = ctx.report.section("5. Scale test: autoscaled workers under a burst")
    m = ctx.model(p.scale_vocab)
    n_mem = in_memory_size(m.count, p.dim)
    m_mem = ctx.model(n_mem)
    docs = Streams(m.tokens).documents("zipf", p.scale_docs, p.scale_doc_len, seed=5)
    mem_docs = docs if n_mem == m.count else Streams(m_mem.tokens).documents(
        "zipf", p.scale_docs, p.scale_doc_len, seed=5)
    with EmbeddedRedis() as server:
        client = redis.Redis.from_url(server.url)
        with memory_delta(client) as stored:
            load(str(m.bin_path), m.name, url=server.url, progress=False)
        keepalive = {"AUTOSCALE_KEEPALIVE": str(p.scale_keepalive)}
        ours = burst("vectorstore", "tasks", "tasks.vectorize_document", {"model": m.name},
                     server.url, docs, p.scale_idle, {"VECTORSTORE_MODEL": m.name, **keepalive},
                     m.load(mmap="r")[docs[0]])
        client.flushall()
        gensim_run = burst(f"gensim in memory ({n_mem:,})", "benchmarks.inmemory",
                           "bench.vectorize_document", {}, server.url, mem_docs, p.scale_idle,
                           {"BENCH_KV_PATH": str(m_mem.kv_path), **keepalive},
                           m_mem.load(mmap="r")[mem_docs[0]])
        bare = _bare_worker_rss(server.url)
        client.close()
    bytes_per_vector = stored["bytes"] / m.count
    runs = [ours, gensim_run]

    sec.text(
        f"Burst: {p.scale_docs:,} `vectorize_document` tasks of {p.scale_doc_len} Zipf tokens, "
        f"sent at once to `celery -A tasks worker {AUTOSCALE}` (model {m.count:,} x {p.dim} "
        f"in Redis), then {p.scale_idle:.0f} s idle. Celery's autoscaler runs every "
        f"AUTOSCALE_KEEPALIVE = {p.scale_keepalive:.0f} s (default 30 s) and shrinks the pool "
        f"once no task arrived for that long. The anchor runs the same Celery settings "
        f"with each pool process loading a {n_mem:,} x {p.dim} gensim model into its own memory "
        f"on its first task. Throughput = tasks / (last result - first send). RSS of a pool "
        f"process that has not run a task (forked, idle): {bare / MB:.0f} MB. Redis memory grows "
        f"during the burst by the results the backend keeps (one {p.scale_doc_len} x {p.dim} "
        f"float32 matrix each, for CELERY_RESULT_EXPIRES), for both contenders.")
    sec.table(["workers", "peak pool", "throughput", "burst drained in",
               "max RSS per pool process", "of it private", "worker main process RSS",
               "pool after idle", "Redis used_memory at peak"],
              [[r.name, r.peak_pool, f"{r.throughput:,.0f} docs/s",
                f"{r.done_at - r.sent_at:.1f} s", f"{r.max_child_rss / MB:.0f} MB",
                f"{r.max_child_uss / MB:.0f} MB", f"{r.max_main_rss / MB:.0f} MB", r.final_pool,
                f"{max(s.redis_bytes for s in r.samples) / MB:.0f} MB"] for r in runs])
    sec.text(
        "A pool process's RSS counts the pages it shares with the worker's main process: "
        "the imports and, for vectorstore, the prewarmed cache (`VECTORSTORE_PREWARM_BYTES`, "
        "filled before the pool forks). Only its private pages (USS) cost memory per process; "
        "the gensim anchor loads its model after the fork, so all of it is private.")

    fig, axes = figure(ncols=2, nrows=2, width=5.5, height=3.0)
    for r in runs:
        t = np.array([s.t for s in r.samples])
        done = np.array([s.done for s in r.samples])
        rate = np.gradient(done, t) if len(t) > 1 else np.zeros_like(t)
        axes[0][0].step(t, [s.pool for s in r.samples], where="post", label=r.name)
        axes[0][1].plot(t, rate, label=r.name)
        axes[1][0].plot(t, [np.mean(s.child_rss) / MB if s.child_rss else 0 for s in r.samples],
                        label=r.name)
        axes[1][1].plot(t, [s.redis_bytes / MB for s in r.samples], label=r.name)
    for ax, (ylabel, title) in zip(
            [a for row in axes for a in row],
            [("processes", "pool size"), ("docs/s", "throughput"),
             ("MB", "mean RSS per pool process"), ("MB", "Redis used_memory")]):
        ax.set(xlabel="seconds", ylabel=ylabel, title=title)
    axes[0][0].legend(fontsize=7)
    sec.plot(fig, "fig5_scale", "pool size, throughput, RSS and Redis memory over time")

    _costs(sec, ours, gensim_run, n_mem, bare, bytes_per_vector, p.dim)


def _bare_worker_rss(url: str) -> int:
    """RSS of an idle pool process of the project's worker (no task run yet)."""
    with Worker("tasks", ["--concurrency=1"], url) as worker:
        time.sleep(0.5)
        return max(c.memory_info().rss for c in worker.pool())


def _costs(sec, ours: Run, gensim_run: Run, n_mem: int, bare: int, bytes_per_vector: float,
           dim: int) -> None:
    """The seed article's cost comparison with this run's measured memory, for 3M x 300."""
    scale = GOOGLE_NEWS / n_mem * (300 / dim)
    gensim_rss = bare + (gensim_run.max_child_rss - bare) * scale
    redis_bytes = bytes_per_vector * GOOGLE_NEWS * (300 / dim)
    usable = T2_LARGE["memory"] - OS_RESERVE
    workers = 6
    a_cost = workers * T2_LARGE["price"]
    b_cost = T2_LARGE["price"] + CACHE_M3_XLARGE["price"]
    sec.text(
        "Cost comparison of the seed article, redone with this run's memory for a GoogleNews-"
        f"size model (3M x 300). Per worker process: gensim in memory "
        f"{gensim_rss / GiB:.2f} GiB (measured {gensim_run.max_child_rss / MB:.0f} MB at "
        f"{n_mem:,} x {dim}, projected linearly), vectorstore {ours.max_child_uss / MB:.0f} MB "
        f"private (measured, flat in model size) plus, once per worker, its main process "
        f"({ours.max_main_rss / MB:.0f} MB, with the prewarmed cache the pool shares). "
        f"Redis for 3M x 300 float32: {redis_bytes / GiB:.2f} GiB "
        f"({bytes_per_vector * 300 / dim:.0f} B/vector measured here, float16 about half). "
        f"Usable memory per t2.large: 8 GiB minus 1 GiB for the OS. Prices: t2.large "
        f"${T2_LARGE['price']}/h, cache.m3.xlarge (13.3 GiB) ${CACHE_M3_XLARGE['price']}/h.")
    sec.table(
        ["scenario", "instances", "memory needed", "fits", "$/hour", "$/year"],
        [["A: 6 workers each holding the model", "6 x t2.large",
          f"{gensim_rss / GiB:.2f} GiB per instance", _fits(gensim_rss, usable),
          f"{a_cost:.4f}", f"{a_cost * HOURS_PER_YEAR:,.0f}"],
         ["B: 6 workers on one t2.large + Redis", "1 x t2.large + 1 x cache.m3.xlarge",
          f"{ours.host_memory(workers) / GiB:.2f} GiB workers, {redis_bytes / GiB:.2f} GiB Redis",
          f"{_fits(ours.host_memory(workers), usable)}, "
          f"{_fits(redis_bytes, CACHE_M3_XLARGE['memory'])}",
          f"{b_cost:.4f}", f"{b_cost * HOURS_PER_YEAR:,.0f}"]])
    per_box = int((usable - ours.max_main_rss) // ours.max_child_uss)
    sec.text(
        f"B saves ${(a_cost - b_cost) * HOURS_PER_YEAR:,.0f}/year (the article: $876). Pool "
        f"processes that fit in one t2.large by memory: vectorstore {per_box}, gensim in memory "
        f"{int(usable // gensim_rss)}; with vectorstore the t2.large's 2 vCPUs, not its memory, "
        f"bound the pool. Break-even: B is cheaper from "
        f"{int(np.ceil(b_cost / T2_LARGE['price']))} model-holding instances on.")


def _fits(needed: float, available: float) -> str:
    return "yes" if needed <= available else f"no ({needed / available:.1f}x)"
