"""Figure 6: batch task throughput, ``vectorize_documents`` vs one task per document.

A worker with a fixed pool (``--concurrency=2``, one process per core, so
autoscaling does not blur the comparison) vectorizes the same documents as
one ``vectorize_document`` task each, and as ``vectorize_documents`` batches
of several sizes. Sizes run in alternating order over two rounds; the best
round counts. The break-even batch size is the smallest batch that beats one
task per document.
"""
from __future__ import annotations

import gc
import time

import numpy as np
import redis

from tasks import as_arrays
from tasks.client import client_app
from tasks.results import MAX_RESULT_BYTES

from .config import Context
from .data import Streams
from .report import figure
from .workers import RESULT_PREFIX, Worker, check_succeeded

ROUNDS = 2


def _throughput(sender, client: redis.Redis, worker: Worker, docs: list[list[str]], size: int,
                model: str) -> float:
    """Docs/s for ``docs`` sent in tasks of ``size`` documents (1: vectorize_document)."""
    t0 = time.perf_counter()
    if size == 1:
        ids = [sender.send_task("tasks.vectorize_document", [d], {"model": model}).id
               for d in docs]
    else:
        ids = [sender.send_task("tasks.vectorize_documents", [docs[i:i + size]],
                                {"model": model}).id for i in range(0, len(docs), size)]
    worker.wait_done(client, ids, timeout=600)
    rate = len(docs) / (time.perf_counter() - t0)
    check_succeeded(sender, ids)
    for lo in range(0, len(ids), 1000):  # drop the results, keep Redis memory flat
        client.delete(*(RESULT_PREFIX + i for i in ids[lo:lo + 1000]))
    return rate


def run(ctx: Context) -> None:
    p = ctx.profile
    sec = ctx.report.section("6. Batch task throughput")
    ctx.flush()
    m = ctx.model(p.scale_vocab)
    ctx.store(m)
    docs = Streams(m.tokens).documents("zipf", p.batch_docs, p.scale_doc_len, seed=6)
    client = redis.Redis.from_url(ctx.redis_url)
    sender = client_app(ctx.redis_url, ctx.redis_url)
    # A result above the tasks' size limit is refused: keep to batches whose result fits.
    fits = MAX_RESULT_BYTES // (p.scale_doc_len * p.dim * 4)
    sizes = [s for s in p.batch_sizes if s <= fits]
    rates: dict[int, list[float]] = {s: [] for s in sizes}
    with Worker("tasks", ["--concurrency=2"], ctx.redis_url,
                {"VECTORSTORE_MODEL": m.name}) as worker:
        check = sender.send_task("tasks.vectorize_documents", [docs[:3]], {"model": m.name})
        expected = m.load(mmap="r")
        for doc, got in zip(docs[:3], as_arrays(check.get(timeout=60))):
            if not np.array_equal(got, expected[doc]):
                raise AssertionError("vectorize_documents differs from gensim's vectors")
        for r in range(ROUNDS):
            for size in (sizes if r % 2 == 0 else sizes[::-1]):
                rates[size].append(_throughput(sender, client, worker, docs, size, m.name))
    del check
    gc.collect()  # the result unsubscribes now, while Redis runs (not at the run's exit)
    sender.close()
    client.close()

    best = {s: max(v) for s, v in rates.items()}
    single = best[1]
    faster = [s for s in sizes if s > 1 and best[s] > single]
    top = max(best.values())
    near_top = min(s for s in sizes if best[s] >= 0.9 * top)
    sec.text(
        f"{p.batch_docs:,} documents of {p.scale_doc_len} Zipf tokens (model {m.count:,} x "
        f"{p.dim}) through `celery -A tasks worker --concurrency=2`, best of {ROUNDS} rounds; "
        f"every task is checked to have succeeded. Batches are at most {fits} documents: a "
        f"larger result would exceed the tasks' {MAX_RESULT_BYTES / 2**20:.0f} MiB result "
        f"limit and be refused.")
    sec.table(["documents per task", "task", "throughput", "vs one task per document"],
              [[s, "vectorize_document" if s == 1 else "vectorize_documents",
                f"{best[s]:,.0f} docs/s", f"{best[s] / single:.2f}x"] for s in sizes])
    sec.text(
        (f"Break-even: batches of {faster[0]} documents already beat one task per document; "
         if faster else "No batch size beat one task per document in this run; ")
        + f"{near_top} documents per task reach 90% of the best throughput "
        f"({top:,.0f} docs/s, {top / single:.1f}x one task per document). Per-task overhead "
        f"(broker round trips, result write and PUBLISH) is what batching amortises; the "
        f"cost is latency: a batch's documents all wait for the whole batch.")

    fig, axes = figure()
    ax = axes[0][0]
    ax.plot(sizes, [best[s] for s in sizes], marker="o", label="vectorize_documents")
    ax.axhline(single, color="k", linestyle=":", label="one vectorize_document per doc")
    ax.set(xscale="log", xlabel="documents per task", ylabel="docs/s",
           title="batch task throughput")
    ax.legend(fontsize=7)
    sec.plot(fig, "fig6_batch", "batch task throughput")
