"""Figure 2: worker cold start and RSS against model size.

Each contender runs in a fresh Python subprocess that imports numpy, redis
and gensim (as any worker would), gets its model ready and computes one
100-token document matrix, then reports its memory from /proc. Two times:
the wall time the parent sees from process start to that report, and the
child's own time from "numpy/redis/gensim imported" to the first matrix,
which is the cost above a bare Python without the noise of interpreter
starts on a shared machine. A bare interpreter that only imports
numpy/redis/gensim is measured the same way, and every contender is reported
above it. Contenders run round-robin per repeat.
Model files are in the page cache (warm disk) for every contender.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time

from .config import Context
from .data import Streams
from .measure import MB, pct
from .report import figure

BARE = "bare Python"
PROJECT = "vectorstore"
CONTENDERS = (BARE, PROJECT, "gensim word2vec .bin", "gensim .kv", "gensim .kv mmap")

# The child keeps its model alive while it reports.
# argv = contender, model name, Redis URL, .bin path, .kv path, JSON doc.
CHILD = r"""
import json, sys, time
import numpy, redis, gensim
from gensim.models import KeyedVectors
t_imported = time.perf_counter()
who, name, url, bin_path, kv_path, doc = sys.argv[1:7]
doc = json.loads(doc)
if who == "bare Python":
    kv = {t: numpy.zeros(1) for t in doc}
elif who == "vectorstore":
    from vectorstore import RedisKeyedVectors
    kv = RedisKeyedVectors(name, url=url)
elif who == "gensim word2vec .bin":
    kv = KeyedVectors.load_word2vec_format(bin_path, binary=True)
elif who == "gensim .kv":
    kv = KeyedVectors.load(kv_path)
elif who == "gensim .kv mmap":
    kv = KeyedVectors.load(kv_path, mmap="r")
matrix = numpy.vstack([kv[t] for t in doc]) if isinstance(kv, dict) else kv[doc]
mem = {"inproc": time.perf_counter() - t_imported}
for line in open("/proc/self/status"):
    k = line.split(":")[0]
    if k in ("VmRSS", "RssAnon", "RssFile"):
        mem[k] = int(line.split()[1]) * 1024
print(json.dumps({"rows": len(matrix), **mem}), flush=True)
"""


def start_once(who: str, name: str, url: str, bin_path: str, kv_path: str,
               doc: list[str]) -> dict:
    """Run one child; its wall time to the first matrix and its memory."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, who, name, url, bin_path, kv_path, json.dumps(doc)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    seconds = time.perf_counter() - t0
    _, err = proc.communicate()
    if proc.returncode or not line:
        raise RuntimeError(f"cold start of {who!r} failed (exit {proc.returncode}): {err[-2000:]}")
    out = json.loads(line)
    if out["rows"] != len(doc):
        raise RuntimeError(f"{who!r} returned {out['rows']} rows for {len(doc)} tokens")
    return {"seconds": seconds, "inproc": out["inproc"], "rss": out["VmRSS"],
            "anon": out["RssAnon"]}


def run(ctx: Context) -> None:
    p = ctx.profile
    sec = ctx.report.section("2. Worker cold start and RSS")
    ctx.flush()
    models = [ctx.model(n) for n in p.coldstart_sizes]
    load_s = {m.count: ctx.store(m) for m in models}
    raw: dict[tuple[int, str], list[dict]] = {}
    for m in models:
        doc = Streams(m.tokens).documents("zipf", 1, 100, seed=7)[0]
        for _ in range(p.coldstart_repeats):
            for who in CONTENDERS:
                r = start_once(who, m.name, ctx.redis_url, str(m.bin_path), str(m.kv_path), doc)
                raw.setdefault((m.count, who), []).append(r)
    ctx.flush()

    def med(count: int, who: str, what: str) -> float:
        """Fastest start (noise only adds time), median memory."""
        values = [r[what] for r in raw[(count, who)]]
        return min(values) if what in ("seconds", "inproc") else pct(values, 50)

    above = {(n, who): {w: med(n, who, w) - med(n, BARE, w)
                        for w in ("seconds", "inproc", "rss", "anon")}
             for n in p.coldstart_sizes for who in CONTENDERS if who != BARE}
    sec.text(
        f"{p.coldstart_repeats} fresh subprocesses per cell, round-robin; the fastest start "
        f"counts (a shared machine only adds time), the median memory. Cells: time from "
        f"numpy/redis/gensim imported to the first 100-token matrix, inside the process, above "
        f"a bare Python that imports them (in brackets: the same from process start, seen by "
        f"the parent, which adds the noise of interpreter starts), then RSS above it, then "
        f"private (anonymous) RSS above it. The bare Python itself: "
        + ", ".join(f"{med(n, BARE, 'seconds'):.2f} s / {med(n, BARE, 'rss') / MB:.0f} MB"
                    for n in p.coldstart_sizes[:1])
        + ". Loading each model into Redis with `vectorstore.loader.load` took "
        + ", ".join(f"{n:,}: {s:.1f} s" for n, s in load_s.items()) + ".")
    rows = []
    for n in p.coldstart_sizes:
        row: list[object] = [f"{n:,} x {p.dim}"]
        for who in CONTENDERS[1:]:
            a = above[(n, who)]
            row.append(f"{a['inproc']:.3f} s ({a['seconds']:+.2f} s), {a['rss'] / MB:+.0f} MB, "
                       f"{a['anon'] / MB:+.0f} MB private")
        rows.append(row)
    sec.table(["model"] + list(CONTENDERS[1:]), rows)

    fig, axes = figure(ncols=2)
    for who in CONTENDERS[1:]:
        xs = list(p.coldstart_sizes)
        axes[0][0].plot(xs, [max(above[(n, who)]["inproc"], 1e-3) for n in xs], marker="o",
                        label=who)
        axes[0][1].plot(xs, [max(above[(n, who)]["rss"] / MB, 0.1) for n in xs], marker="o",
                        label=who)
    axes[0][0].set(xscale="log", yscale="log", xlabel="vocabulary", ylabel="s above bare Python",
                   title="start to first matrix")
    axes[0][1].set(xscale="log", yscale="log", xlabel="vocabulary", ylabel="MB above bare Python",
                   title="RSS after first matrix")
    axes[0][0].legend(fontsize=7)
    sec.plot(fig, "fig2_coldstart", "cold start and RSS")

    ours = [above[(n, PROJECT)] for n in p.coldstart_sizes]
    first, last = ours[0]["inproc"], ours[-1]["inproc"]
    sec.goal("vectorstore cold start flat in vocabulary size",
             last <= 1.25 * first + 0.05,
             f"{first:.3f} s at {p.coldstart_sizes[0]:,}, {last:.3f} s at "
             f"{p.coldstart_sizes[-1]:,}")
    worst = max(max(o["inproc"], o["seconds"]) for o in ours)
    sec.goal("vectorstore cold start <= 0.5 s above bare Python",
             worst <= 0.5, f"worst {worst:.3f} s (in process or from process start)")
    sec.goal("vectorstore RSS <= +30 MB above bare Python",
             max(o["rss"] for o in ours) <= 30 * MB,
             f"worst {max(o['rss'] for o in ours) / MB:+.1f} MB")
