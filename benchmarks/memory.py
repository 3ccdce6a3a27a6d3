"""Figure 3: Redis memory per vector and bulk load rate.

Each contender loads into its own fresh Redis, so ``INFO memory``
used_memory before and after gives the memory it added; divided by the
vector count and compared with the raw payload (dim x 4 bytes for float32,
dim x 2 for float16). This project loads from a word2vec binary and a
word2vec text file with ``vectorstore.loader.load``; the seed design bulk-loads
bz2(pickle(vector)) from an in-memory gensim model, pipelined in batches of
1000; a plain SET of the raw float32 bytes per key is the layout anchor.
"""
from __future__ import annotations

import redis
from gensim.models import KeyedVectors

from vectorstore.loader import load
from vectorstore.server import EmbeddedRedis

from .config import Context
from .measure import Stopwatch, memory_delta
from .report import figure
from .seed import load_seed

BATCH = 1000


def _plain_set(client: redis.Redis, kv: KeyedVectors) -> None:
    pipe = client.pipeline(transaction=False)
    for i, word in enumerate(kv.index_to_key, 1):
        pipe.set(f"RAW:{word}", kv.vectors[i - 1].tobytes())
        if i % BATCH == 0:
            pipe.execute()
    pipe.execute()


def _measure(fn, count: int) -> dict:
    """Memory added and rate of ``fn(client)`` in a fresh Redis."""
    with EmbeddedRedis() as server:
        client = redis.Redis.from_url(server.url)
        with memory_delta(client) as mem, Stopwatch() as sw:
            fn(server.url, client)
        client.close()
    return {"count": count, "bytes": mem["bytes"] / count, "rate": count / sw.seconds,
            "seconds": sw.seconds}


def run(ctx: Context) -> None:
    p = ctx.profile
    sec = ctx.report.section("3. Redis memory per vector and load rate")
    m = ctx.model(p.memory_size)
    text = str(m.text_path())
    kv = m.load()
    small = KeyedVectors(p.dim, count=0)
    small.add_vectors(kv.index_to_key[:p.memory_seed_size], kv.vectors[:p.memory_seed_size])
    n, ns = m.count, p.memory_seed_size
    payload = {"float32": 4 * p.dim, "float16": 2 * p.dim}
    cases = [
        ("vectorstore float32, word2vec binary", "float32",
         _measure(lambda url, c: load(str(m.bin_path), "bench", url=url, progress=False), n)),
        ("vectorstore float16, word2vec binary", "float16",
         _measure(lambda url, c: load(str(m.bin_path), "bench", url=url, dtype="float16",
                                      progress=False), n)),
        ("vectorstore float32, word2vec text", "float32",
         _measure(lambda url, c: load(text, "bench", url=url, progress=False), n)),
        ("seed design bz2(pickle), pipelined", "float32",
         _measure(lambda url, c: load_seed(c, small, "SEED", BATCH), ns)),
        ("anchor: plain SET of raw float32, pipelined", "float32",
         _measure(lambda url, c: _plain_set(c, small), ns)),
    ]
    sec.text(
        f"Vectors: {n:,} x {p.dim} for this project, the first {ns:,} of them for the seed design "
        f"and the plain-SET anchor (the seed loads a few thousand vectors/s). Each row is a fresh "
        f"Redis; bytes/vector = used_memory delta / count, including the project's metadata and "
        f"index-to-key chunks. Load rate: from the file to a servable model for this project; "
        f"from an in-memory gensim model (no file parsing) for the seed and the anchor.")
    sec.table(["contender", "vectors", "bytes/vector", "payload", "x payload", "load rate",
               "load time"],
              [[name, f"{c['count']:,}", f"{c['bytes']:.0f}", payload[dt],
                f"{c['bytes'] / payload[dt]:.3f}x", f"{c['rate']:,.0f} vectors/s",
                f"{c['seconds']:.1f} s"] for name, dt, c in cases])
    seed_rate = cases[3][2]["rate"]
    sec.text("Load rate relative to the seed design: " + ", ".join(
        f"{name.split(',')[0]} {name.split(', ')[-1]} {c['rate'] / seed_rate:.0f}x"
        for name, dt, c in cases[:3]) + ".")

    fig, axes = figure(ncols=2)
    labels = [name.replace(", ", "\n", 1) for name, _, _ in cases]
    axes[0][0].barh(labels, [c["bytes"] for _, _, c in cases])
    for y, (_, dt, _) in enumerate(cases):
        axes[0][0].plot([payload[dt]] * 2, [y - 0.4, y + 0.4], color="k")
    axes[0][0].set(xlabel="Redis bytes per vector (black: payload)", title="memory")
    bars = axes[0][1].barh(labels, [c["rate"] for _, _, c in cases])
    axes[0][1].bar_label(bars, [f"{c['rate']:,.0f}/s" for _, _, c in cases], fontsize=7)
    axes[0][1].set(xlabel="vectors/s", title="bulk load rate")
    axes[0][1].set_yticklabels([])
    for ax in axes[0]:
        ax.tick_params(axis="y", labelsize=7)
    sec.plot(fig, "fig3_memory", "Redis memory per vector and load rate")

    for _name, dt, c in cases[:2]:
        sec.goal(f"{dt} memory <= 1.15x its {payload[dt]}-byte payload",
                 c["bytes"] <= 1.15 * payload[dt],
                 f"{c['bytes']:.0f} B = {c['bytes'] / payload[dt]:.3f}x")
    sec.goal("load >= 150k vectors/s from a word2vec binary", cases[0][2]["rate"] >= 150_000,
             f"{cases[0][2]['rate']:,.0f} vectors/s (text: {cases[2][2]['rate']:,.0f}/s)")
    value = {dt: payload[dt] + 4 for dt in payload}  # vector + uint32 index
    sec.text(
        "What limits memory: each value is the vector plus a 4-byte index; jemalloc rounds "
        + ", ".join(f"a {value[dt]}-byte {dt} value to {jemalloc_class(value[dt] + 4)} B"
                    for dt in payload)
        + "; the key and its dict entry add a fixed ~"
        f"{cases[0][2]['bytes'] - jemalloc_class(value['float32'] + 4):.0f} B, which weigh twice "
        "as much against float16's smaller payload. What limits the load rate: the plain-SET "
        f"anchor, which parses nothing, writes {cases[4][2]['rate']:,.0f} vectors/s into this "
        "Redis from one client, and the loader also reads the file and checksums every vector; "
        "Redis and the loader share this machine's 2 cores (and other users' jobs).")


def jemalloc_class(n: int) -> int:
    """The jemalloc size class (bytes) an allocation of ``n`` bytes is rounded up to.

    >>> jemalloc_class(1208), jemalloc_class(608)
    (1280, 640)
    """
    if n <= 16:
        return 16
    spacing = 1 << max(4, (n - 1).bit_length() - 3)
    return -(-n // spacing) * spacing
