"""Figure 4: similarity search in Redis against exact gensim.

For each index size and quantization (q8, noquant, bin) the model's vector
set is built with :func:`vectorstore.index.build_index` (build rate, and
``MEMORY USAGE`` of the set per vector), then the same query tokens go, in
round-robin order per query, to ``most_similar(token, topn=10)`` of gensim in
memory (the truth), this project in approximate (HNSW) mode and in exact mode.
Recall@10 = overlap of the returned tokens with gensim's top 10.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from vectorstore import RedisKeyedVectors
from vectorstore.index import DEFAULT_QUANTIZATION, build_index, index_memory
from vectorstore.similarity import default_search_ef

from .config import Context
from .measure import Stopwatch, pct
from .report import figure

TOPN = 10
GENSIM = "gensim exact"


def queries_for(queries: int, n: int) -> int:
    """Fewer queries above 100k vectors (exact scans grow with n), at least 100.

    >>> queries_for(300, 100_000), queries_for(300, 1_000_000)
    (300, 100)
    """
    return min(queries, max(100, queries * 100_000 // n))


def _query(fn: Callable, token: str) -> tuple[float, list[str]]:
    t0 = time.perf_counter()
    out = fn(token, topn=TOPN)
    return time.perf_counter() - t0, [k for k, _ in out]


def run(ctx: Context) -> None:
    p = ctx.profile
    sec = ctx.report.section("4. Similarity search")
    quantizations = p.similarity_quantizations
    rows, curves = [], {}
    tradeoff: list[list[object]] = []
    default_recall: dict[int, tuple[float, float]] = {}  # size -> (p50 s, recall) of the defaults
    for n in p.similarity_sizes:
        ctx.flush()
        m = ctx.model(n)
        ctx.store(m)
        truth_kv = m.load()
        rng = np.random.default_rng(4)
        picks = rng.integers(0, n, size=queries_for(p.similarity_queries, n))
        queries = [m.tokens[i] for i in picks]
        truth_kv.most_similar(queries[0], topn=TOPN)  # fills gensim's norms, untimed
        gensim_times: list[float] = []
        for quant in quantizations:
            with Stopwatch() as build:
                build_index(m.name, url=ctx.redis_url, quantization=quant, force=True,
                            progress=False)
            approx = RedisKeyedVectors(m.name, url=ctx.redis_url, cache_bytes=0)
            exact = RedisKeyedVectors(m.name, url=ctx.redis_url, cache_bytes=0, exact=True)
            size = index_memory(approx._call, approx.keys, approx.version) or 0
            contenders = {GENSIM: truth_kv.most_similar, "approximate": approx.most_similar,
                          "exact": exact.most_similar}
            for fn in contenders.values():
                fn(queries[0], topn=TOPN)  # connections, untimed
            times: dict[str, list[float]] = {k: [] for k in contenders}
            found: dict[str, list[list[str]]] = {k: [] for k in contenders}
            names = list(contenders)
            for i, q in enumerate(queries):
                for name in names[i % 3:] + names[:i % 3]:
                    dt, got = _query(contenders[name], q)
                    times[name].append(dt)
                    found[name].append(got)
            hits = {name: [len(set(a) & set(b)) / TOPN for a, b in zip(found[name], found[GENSIM])]
                    for name in names}
            gensim_times += times[GENSIM]
            g50 = pct(times[GENSIM], 50)
            rows.append([f"{n:,}", quant, f"{n / build.seconds:,.0f}/s ({build.seconds:.0f} s)",
                         f"{size / n:.0f}"]
                        + [f"{pct(times[k], 50) * 1e3:.3g} / {pct(times[k], 95) * 1e3:.3g} "
                           f"({pct(times[k], 50) / g50:.2f}x)" for k in ("approximate", "exact")]
                        + [f"{np.mean(hits['approximate']):.3f}", f"{np.mean(hits['exact']):.3f}"])
            curves[(n, quant)] = (pct(times["approximate"], 50), float(np.mean(hits["approximate"])),
                                  pct(times["exact"], 50))
            if quant == DEFAULT_QUANTIZATION:
                default_recall[n] = curves[(n, quant)][:2]
                tradeoff += _ef_tradeoff(ctx, m.name, n, queries, found[GENSIM], p.similarity_efs)
        rows.append([f"{n:,}", f"{GENSIM} (all queries)", "-", f"{4 * p.dim}",
                     f"{pct(gensim_times, 50) * 1e3:.3g} / {pct(gensim_times, 95) * 1e3:.3g} "
                     f"(1.00x)", "-", "1.000", "-"])
        curves[(n, GENSIM)] = (pct(gensim_times, 50), 1.0, pct(gensim_times, 50))
    ctx.flush()

    sec.text(
        "Query tokens drawn uniformly from the vocabulary ("
        + ", ".join(f"{queries_for(p.similarity_queries, n)} at {n:,}"
                    for n in p.similarity_sizes) + f"); top {TOPN}; "
        f"index sizes {', '.join(f'{n:,}' for n in p.similarity_sizes)} x {p.dim}. Latency cells: "
        f"p50 / p95 ms (p50 relative to gensim exact `most_similar` in memory, measured "
        f"round-robin with the Redis queries). Build: `build_index` with default M/EF, one "
        f"connection; memory: `MEMORY USAGE` of the vector set / vectors (the raw vectors the "
        f"lookups use are stored separately, see figure 3). Change sizes with "
        f"`--similarity-sizes`.")
    sec.table(["vectors", "index", "build rate", "bytes/vector", "approximate ms",
               "exact ms", "recall@10 approximate", "recall@10 exact"], rows)

    fig, axes = figure(ncols=2)
    for n in p.similarity_sizes:
        for quant in list(quantizations) + [GENSIM]:
            t50, recall, e50 = curves[(n, quant)]
            axes[0][0].scatter(t50 * 1e3, recall, label=f"{quant} {n:,}",
                               marker="o" if quant != GENSIM else "*")
        axes[0][1].plot(list(quantizations) + [GENSIM],
                        [curves[(n, q)][2] * 1e3 for q in list(quantizations) + [GENSIM]],
                        marker="o", label=f"{n:,} vectors")
    axes[0][0].set(xscale="log", xlabel="approximate p50 ms", ylabel="recall@10",
                   title="approximate mode: latency vs recall")
    axes[0][1].set(yscale="log", ylabel="p50 ms", title="exact mode latency (gensim: in memory)")
    axes[0][0].legend(fontsize=6)
    axes[0][1].legend(fontsize=7)
    sec.plot(fig, "fig4_similarity", "similarity latency and recall")

    if tradeoff:
        sec.text(f"Search breadth against recall on the default `{DEFAULT_QUANTIZATION}` index "
                 "(same queries; `kv.search_ef`; the default grows with the model: "
                 "`default_search_ef(n)` = 0.4 sqrt(n) within 100..800). Cells: p50 / p95 ms, "
                 "recall@10 against gensim.")
        sec.table(["vectors", "search EF", "approximate ms", "recall@10"], tradeoff)
    for n, (t50, recall) in default_recall.items():
        sec.goal(f"{n:,} vectors, default index and search: recall@10 >= 0.95 with p50 <= 5 ms",
                 recall >= 0.95 and t50 <= 0.005, f"recall {recall:.3f}, p50 {t50 * 1e3:.2f} ms")


def _ef_tradeoff(ctx: Context, name: str, n: int, queries: list[str], truth: list[list[str]],
                 efs: tuple[int, ...]) -> list[list[object]]:
    """Rows of (size, EF, p50 / p95 ms, recall@10) for each search EF, round-robin per query."""
    stores = {ef: RedisKeyedVectors(name, url=ctx.redis_url, cache_bytes=0) for ef in efs}
    for ef, kv in stores.items():
        kv.search_ef = ef
        kv.most_similar(queries[0], topn=TOPN)  # connections, untimed
    times: dict[int, list[float]] = {ef: [] for ef in efs}
    hits: dict[int, list[float]] = {ef: [] for ef in efs}
    order = list(efs)
    for i, (q, expected) in enumerate(zip(queries, truth)):
        for ef in order[i % len(order):] + order[:i % len(order)]:
            dt, got = _query(stores[ef].most_similar, q)
            times[ef].append(dt)
            hits[ef].append(len(set(got) & set(expected)) / TOPN)
    default = default_search_ef(n)
    return [[f"{n:,}", f"{ef}" + (" (default)" if ef == default else ""),
             f"{pct(times[ef], 50) * 1e3:.3g} / {pct(times[ef], 95) * 1e3:.3g}",
             f"{np.mean(hits[ef]):.3f}"] for ef in efs]
