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
from vectorstore.index import QUANTIZATIONS, build_index, index_memory

from .config import Context
from .measure import Stopwatch, pct
from .report import figure

TOPN = 10
GENSIM = "gensim exact"


def queries_for(queries: int, n: int) -> int:
    """Fewer queries above 100k vectors (exact scans grow with n), at least 30.

    >>> queries_for(300, 100_000), queries_for(300, 1_000_000)
    (300, 30)
    """
    return min(queries, max(30, queries * 100_000 // n))


def _query(fn: Callable, token: str) -> tuple[float, list[str]]:
    t0 = time.perf_counter()
    out = fn(token, topn=TOPN)
    return time.perf_counter() - t0, [k for k, _ in out]


def run(ctx: Context) -> None:
    p = ctx.profile
    sec = ctx.report.section("4. Similarity search")
    rows, curves = [], {}
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
        for quant in QUANTIZATIONS:
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
        for quant in list(QUANTIZATIONS) + [GENSIM]:
            t50, recall, e50 = curves[(n, quant)]
            axes[0][0].scatter(t50 * 1e3, recall, label=f"{quant} {n:,}",
                               marker="o" if quant != GENSIM else "*")
        axes[0][1].plot(list(QUANTIZATIONS) + [GENSIM],
                        [curves[(n, q)][2] * 1e3 for q in list(QUANTIZATIONS) + [GENSIM]],
                        marker="o", label=f"{n:,} vectors")
    axes[0][0].set(xscale="log", xlabel="approximate p50 ms", ylabel="recall@10",
                   title="approximate mode: latency vs recall")
    axes[0][1].set(yscale="log", ylabel="p50 ms", title="exact mode latency (gensim: in memory)")
    axes[0][0].legend(fontsize=6)
    axes[0][1].legend(fontsize=7)
    sec.plot(fig, "fig4_similarity", "similarity latency and recall")
