"""Figure 7: fastText models with subword vectors (issue 12).

A synthetic fastText binary model (Facebook's format, written here: real
English words, random vectors, ``bucket`` n-gram rows) is loaded into Redis
and read back as 100-token documents with 0%, 10% and 50% out-of-vocabulary
tokens (typos of vocabulary words, as in real text), against gensim's
``load_facebook_vectors`` in memory on the same file. Contenders, run
round-robin per document: ``lookup(doc, oov="subword")`` with the cache off
(one MGET: the vocabulary filter tells the OOV tokens, whose n-gram rows are
read with the tokens) and warm; the same without the filter (a model loaded
before the loader wrote one: the n-gram rows in a second MGET); gensim in
memory; a Redis PING. Also: round trips per document, the filter's size and
false positives, Redis bytes of the n-gram rows (float32 and float16), and
the memory and start time of a process serving the model against one holding
it with gensim.

Run alone, at any size (prints the section)::

    .venv/bin/python -m benchmarks.fasttext --words 100000 --buckets 200000 --dim 100
"""
from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import redis

from vectorstore import RedisKeyedVectors
from vectorstore.bloom import BloomParams
from vectorstore.fasttext import MAGIC
from vectorstore.keys import Keys
from vectorstore.subword import NgramPlan, SubwordParams

from .config import Context
from .data import DEFAULT_DATA_DIR, Streams, vocabulary
from .measure import Stopwatch, fmt_bytes, memory_delta, pct, ratio
from .report import figure

# profile -> words, buckets, dim, documents per OOV rate, warm-up documents
SIZES = {"smoke": (2000, 5000, 16, 10, 10), "quick": (100_000, 200_000, 100, 300, 300),
         "full": (1_000_000, 2_000_000, 300, 1000, 2000)}
OOV_RATES = (0.0, 0.1, 0.5)
DOC_LEN = 100
COLD, WARM, TWO = "vectorstore cold", "vectorstore warm", "no filter: 2 MGETs (cold)"
ANCHOR, FLOOR = "gensim in memory", "Redis PING"


def write_model(path: Path, words: list[str], bucket: int, dim: int, minn: int = 3,
                maxn: int = 6, seed: int = 0) -> None:
    """A fastText binary model (format version 12, skipgram) with random vectors.

    The output matrix is left empty: ``load_facebook_vectors`` and the loader skip it.
    """
    rng = np.random.default_rng(seed)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<2i", MAGIC, 12))
        f.write(struct.pack("<12id", dim, 5, 5, 5, 5, 1, 2, 2, bucket, minn, maxn, 100, 1e-4))
        f.write(struct.pack("<3iqq", len(words), len(words), 0, 10**9, -1))
        f.write(b"".join(w.encode() + b"\0" + struct.pack("<qb", 10**8 // (i + 1) + 1, 0)
                         for i, w in enumerate(words)))
        f.write(b"\0" + struct.pack("<2q", len(words) + bucket, dim))
        for lo in range(0, len(words) + bucket, 100_000):
            n = min(100_000, len(words) + bucket - lo)
            f.write((0.1 * rng.standard_normal((n, dim), dtype=np.float32)).astype("<f4").tobytes())
        f.write(b"\0" + struct.pack("<2q", 0, dim))
    os.replace(tmp, path)


def model_path(data_dir: Path, words: int, bucket: int, dim: int) -> Path:
    """The synthetic model of this size, written on first use."""
    path = data_dir / f"fasttext-{words}w-{bucket}b-{dim}d.bin"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        write_model(path, vocabulary(words), bucket, dim)
    return path


def typos(tokens: list[str], vocab: set[str], n: int, seed: int) -> list[str]:
    """``n`` distinct out-of-vocabulary tokens: ``tokens`` with one letter inserted."""
    rng = np.random.default_rng(seed)
    out: dict[str, None] = {}
    while len(out) < n:
        t = tokens[int(rng.integers(len(tokens)))]
        at = int(rng.integers(len(t) + 1))
        typo = t[:at] + "etaoinshrdlu"[int(rng.integers(12))] + t[at:]
        if typo not in vocab:
            out[typo] = None
    return list(out)


def documents(streams: Streams, oov_pool: list[str], rate: float, n: int, seed: int
              ) -> list[list[str]]:
    """``n`` Zipf-like documents of DOC_LEN tokens, ``rate`` of them OOV at random places."""
    rng = np.random.default_rng(seed)
    docs = streams.documents("zipf", n, DOC_LEN, seed=seed)
    k = round(rate * DOC_LEN)
    for doc in docs:
        for pos in rng.choice(DOC_LEN, size=k, replace=False):
            doc[pos] = oov_pool[int(rng.integers(len(oov_pool)))]
    return docs


class _WithoutFilter(RedisKeyedVectors):
    """A handle that ignores the vocabulary filter: the n-gram rows in a second MGET."""

    def _bloom(self, view: Any) -> None:
        return None


def _time(fn: Callable[[list[str]], object], doc: list[str]) -> float:
    t0 = time.perf_counter()
    fn(doc)
    return time.perf_counter() - t0


_PROBE = r"""
import json, sys, time
t0 = time.perf_counter()
def rss():
    with open("/proc/self/status") as f:
        return {l.split(":")[0]: int(l.split()[1]) * 1024 for l in f if l.startswith(("VmRSS", "RssAnon"))}
base = rss()
doc = json.loads(sys.argv[3])
from gensim.models.fasttext import load_facebook_vectors
from vectorstore import RedisKeyedVectors
if sys.argv[1] == "gensim":
    kv = load_facebook_vectors(sys.argv[2])
    kv[doc]
elif sys.argv[1] == "vectorstore":
    kv = RedisKeyedVectors("ft", url=sys.argv[2])
    kv.lookup(doc, oov="subword")
end = rss()
print(json.dumps({"seconds": time.perf_counter() - t0, "rss": end["VmRSS"] - base["VmRSS"],
                  "anon": end["RssAnon"] - base["RssAnon"]}))
"""


def _probe(kind: str, where: str, doc: list[str]) -> dict:
    """Start-to-first-matrix seconds and RSS growth of a fresh process serving ``doc``
    (``kind`` "imports": the imports both need, nothing else)."""
    out = subprocess.run([sys.executable, "-c", _PROBE, kind, where, json.dumps(doc)],
                         capture_output=True, text=True, check=True, timeout=3600)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _ngram_bytes(client: redis.Redis, keys: Keys, version: int, bucket: int) -> float:
    """Redis bytes of the n-gram rows: MEMORY USAGE of 256 bucket keys x ``bucket``."""
    sample = range(0, bucket, max(1, bucket // 256))
    with client.pipeline(transaction=False) as pipe:
        for b in sample:
            pipe.memory_usage(keys.ngram(version, b))
        sizes = pipe.execute()
    return float(np.mean(sizes)) * bucket


def run(ctx: Context) -> None:
    measure(ctx, *SIZES[ctx.profile.name])


def measure(ctx: Context, words: int, bucket: int, dim: int, n_docs: int, warmup: int) -> None:
    from gensim.models.fasttext import load_facebook_vectors

    from vectorstore.loader import load

    sec = ctx.report.section("7. fastText subword vectors")
    ctx.flush()
    client = redis.Redis.from_url(ctx.redis_url)
    path = model_path(ctx.data_dir, words, bucket, dim)
    with Stopwatch() as gensim_load:
        g = load_facebook_vectors(str(path))
    memory: dict[str, tuple[float, float, float]] = {}
    for dtype in ("float16", "float32"):  # float32 last: it stays loaded
        client.flushall()  # synchronously: used_memory must be settled before the load
        with memory_delta(client) as delta, Stopwatch() as loading:
            meta = load(str(path), "ft", url=ctx.redis_url, dtype=dtype, progress=False, grace=0)
        memory[dtype] = (delta["bytes"], _ngram_bytes(client, Keys("ft"), meta.version, bucket),
                         loading.seconds)
    params = SubwordParams(g.min_n, g.max_n, g.bucket)
    bloom_params = BloomParams.from_extra(meta.extra)
    assert bloom_params is not None

    vocab = g.index_to_key
    streams = Streams(vocab)
    oov_pool = typos(vocab[:20_000], set(vocab), 5000, seed=7)
    # refresh: the alias re-check (one GET per second by default) stays out of round trips
    cold = RedisKeyedVectors("ft", url=ctx.redis_url, cache_bytes=0, refresh=3600)
    warm = RedisKeyedVectors("ft", url=ctx.redis_url, refresh=3600)
    two = _WithoutFilter("ft", url=ctx.redis_url, cache_bytes=0, refresh=3600)
    ping = redis.Redis.from_url(ctx.redis_url)
    contenders: dict[str, Callable[[list[str]], object]] = {
        COLD: lambda doc: cold.lookup(doc, oov="subword"),
        WARM: lambda doc: warm.lookup(doc, oov="subword"),
        TWO: lambda doc: two.lookup(doc, oov="subword"),
        ANCHOR: g.__getitem__,
        FLOOR: lambda doc: ping.ping(),
    }
    handles = {COLD: cold, WARM: warm, TWO: two}
    names = list(contenders)
    results: dict[tuple[float, str], list[float]] = {}
    trips: dict[tuple[float, str], float] = {}
    ngrams: dict[float, float] = {}
    bloom = cold._bloom(cold._current())
    assert bloom is not None
    false_positive = float(np.mean(bloom.might_contain(oov_pool)))
    for r, rate in enumerate(OOV_RATES):
        for doc in documents(streams, oov_pool, rate, warmup, seed=100 + r):
            warm.lookup(doc, oov="subword")
        docs = documents(streams, oov_pool, rate, n_docs, seed=200 + r)
        expected = g[docs[0]]
        for name, fn in contenders.items():  # untimed first call, checked against gensim
            got = fn(docs[0])
            if name != FLOOR and not np.allclose(np.asarray(getattr(got, "vectors", got)),
                                                 expected, rtol=1e-6, atol=1e-7):
                raise AssertionError(f"{name} returned other vectors than gensim")
        ngrams[rate] = float(np.mean([len(NgramPlan([t for t in d if t not in g.key_to_index],
                                                    params).buckets) for d in docs[:50]]))
        times: dict[str, list[float]] = {name: [] for name in names}
        before = {name: kv.stats()["round_trips"] for name, kv in handles.items()}
        for i, doc in enumerate(docs):
            for name in names[i % len(names):] + names[:i % len(names)]:
                times[name].append(_time(contenders[name], doc))
        for name in names:
            results[(rate, name)] = times[name]
        for name, kv in handles.items():
            trips[(rate, name)] = (kv.stats()["round_trips"] - before[name]) / len(docs)

    probe_doc = documents(streams, oov_pool, 0.1, 1, seed=999)[0]
    base = _probe("imports", "", probe_doc)
    served = _probe("vectorstore", ctx.redis_url, probe_doc)
    held = _probe("gensim", str(path), probe_doc)

    sec.text(
        f"Model: synthetic fastText binary, {words:,} words (real English words, wordfreq) + "
        f"{bucket:,} n-gram buckets x {dim}, minn 3, maxn 6, random vectors "
        f"({path.stat().st_size / 2**20:,.0f} MiB file). Documents: {n_docs} x {DOC_LEN} tokens "
        f"per OOV rate, Zipf-like vocabulary tokens with OOV tokens (typos of frequent words, "
        f"~{np.mean([len(t) for t in oov_pool]):.1f} characters) at random places. "
        f"vectorstore: `lookup(doc, oov=\"subword\")`: one MGET of the tokens and of the "
        f"deduplicated n-gram rows of the tokens the vocabulary filter rejects (those not in "
        f"the n-gram cache); warm: the default caches (32 MiB of vocabulary vectors, 32 MiB "
        f"of n-gram rows) warmed on {warmup} documents of the same kind. No filter: the same "
        f"handle as cold, ignoring the filter, as for a model loaded without one: one MGET of "
        f"the tokens, then one of the n-gram rows of the OOV tokens (and an EXISTS check of "
        f"them). gensim: `load_facebook_vectors` (FastTextKeyedVectors), `kv[doc]`. Cells: "
        f"p50 / p95 ms (p50 relative to gensim in memory). Vocabulary filter: "
        f"{bloom_params.bits // 8:,} bytes ({bloom_params.bits / words:.0f} bits per word, "
        f"{bloom_params.hashes} hashes), read once per process; it accepted "
        f"{false_positive:.3%} of the {len(oov_pool):,} OOV tokens (false positives, which "
        f"cost a cold lookup 2 more round trips). Handles re-check the model's alias "
        f"every hour instead of every second here, so that GET stays out of the round "
        f"trips per document.")
    rows = []
    for rate in OOV_RATES:
        anchor = pct(results[(rate, ANCHOR)], 50)
        row: list[object] = [f"{rate:.0%}", f"{ngrams[rate]:.0f}"]
        for name in names:
            t = results[(rate, name)]
            row.append(f"{pct(t, 50) * 1e3:.3g} / {pct(t, 95) * 1e3:.3g} "
                       f"({ratio(pct(t, 50), anchor)})")
        rows.append(row)
    sec.table(["OOV", "n-gram rows read"] + names, rows)
    sec.table(["OOV", *(f"round trips per document, {name}" for name in handles)],
              [[f"{rate:.0%}", *(f"{trips[(rate, name)]:.2f}" for name in handles)]
               for rate in OOV_RATES])

    fig, axes = figure()
    ax = axes[0][0]
    x = [100 * r for r in OOV_RATES]
    for name in names:
        ax.plot(x, [pct(results[(r, name)], 50) * 1e3 for r in OOV_RATES], marker="o", label=name)
    ax.set(yscale="log", xlabel="OOV tokens per 100-token document (%)", ylabel="p50 ms",
           title="100-token documents, fastText subwords")
    ax.legend(fontsize=7)
    sec.plot(fig, "fig7_fasttext", "per-document latency with OOV tokens")

    payload = bucket * dim * 4
    sec.table(["stored as", "Redis bytes, whole model", "n-gram rows", "per n-gram row",
               "vs float32 payload", "load time"],
              [[dtype, fmt_bytes(total), fmt_bytes(rows_), f"{rows_ / bucket:.0f} B",
                f"{rows_ / payload:.2f}x", f"{secs:.1f} s"]
               for dtype, (total, rows_, secs) in memory.items()])
    sec.table(["process (fresh interpreter)", "start to first matrix", "RSS growth",
               "over the imports alone"],
              [[name, f"{p['seconds']:.2f} s", fmt_bytes(p["rss"]),
                fmt_bytes(p["rss"] - base["rss"]) if p is not base else ""]
               for name, p in [("imports of gensim + vectorstore", base),
                               ("vectorstore worker: RedisKeyedVectors, 1 lookup", served),
                               ("gensim: load_facebook_vectors, kv[doc]", held)]])
    sec.text(f"gensim's load in this process took {gensim_load.seconds:.1f} s.")
    for rate in OOV_RATES:
        cold_r = pct(results[(rate, COLD)], 50) / pct(results[(rate, ANCHOR)], 50)
        sec.goal(f"cold lookup with {rate:.0%} OOV within 2x of gensim in memory (p50)",
                 cold_r <= 2, f"{cold_r:.2f}x")
    worst = max(trips[(rate, COLD)] for rate in OOV_RATES)
    sec.goal("cold lookups: one round trip per document whatever the OOV rate (mean <= 1.05)",
             worst <= 1.05, f"at most {worst:.3f}")
    ours, theirs = served["rss"] - base["rss"], held["rss"] - base["rss"]
    sec.goal("a serving process adds less than a tenth of what gensim's model adds (RSS over "
             "the imports)", ours < theirs / 10, f"{fmt_bytes(ours)} vs {fmt_bytes(theirs)}")


def main(argv: list[str] | None = None) -> int:
    from vectorstore.server import EmbeddedRedis

    from .config import profile
    from .report import Report

    ap = argparse.ArgumentParser(prog="python -m benchmarks.fasttext", description=__doc__)
    ap.add_argument("--words", type=int, default=100_000)
    ap.add_argument("--buckets", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=100)
    ap.add_argument("--docs", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR)
    args = ap.parse_args(argv)
    with EmbeddedRedis() as server, tempfile.TemporaryDirectory() as out:
        report = Report(Path(out), "quick")
        ctx = Context(profile("quick"), args.data, server.url, report)
        measure(ctx, args.words, args.buckets, args.dim, args.docs, args.warmup)
        for section in report.sections:
            print("\n".join(section.lines))
        for goal in report.goals:
            print(f"goal: {goal.what}: {'met' if goal.passed else 'MISSED'} ({goal.detail})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
