"""Figure 3: Redis memory per vector, and load rate per file format against gensim.

Each contender loads into its own fresh Redis, so ``INFO memory``
used_memory before and after gives the memory it added; divided by the
vector count and compared with the raw payload (dim x 4 bytes for float32,
dim x 2 for float16). This project loads with ``vectorstore.loader.load``
from the four file layouts users download: a word2vec binary, a word2vec text
file (as gensim writes it), a fastText ``.vec`` (each line ending with a
space) and a GloVe file (no header; some tokens hold spaces). gensim's
``load_word2vec_format`` reads the same files (text files: their first
lines only, it reads ~3k vectors/s). The seed design bulk-loads
bz2(pickle(vector)) from an in-memory gensim model, pipelined in batches of
1000; a plain SET of the raw float32 bytes per key is the layout anchor.

Every load reports wall rate and CPU seconds (the loading process, all its
threads; Redis from ``INFO cpu``), and the section states the machine's load
average, since the machine may be shared.
"""
from __future__ import annotations

import importlib
import os
import resource
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from gensim.models import KeyedVectors

from vectorstore.loader import load
from vectorstore.server import EmbeddedRedis

from . import data
from .config import Context
from .measure import Stopwatch, memory_delta
from .report import figure
from .seed import load_seed

BATCH = 1000
SPACED = 1000  # GloVe: one token in SPACED holds a space ("new york" style)
PER = 200_000  # CPU seconds are given per this many vectors
# Each file is loaded ROUNDS times, this project's loader and gensim's alternated file by
# file, and the faster run of each counts: other jobs on a shared machine only slow a run
# down (in single runs, gensim's rate on the same lines moved by 10% between figures).
ROUNDS = 2


def gensim_lines(count: int) -> int:
    """How many vectors gensim reads from a text file: a share, as it reads ~3k/s.

    >>> gensim_lines(1_000_000), gensim_lines(100_000), gensim_lines(2000)
    (50000, 5000, 2000)
    """
    return min(count, max(2000, count // 20))


def vec_file(m: data.Model) -> Path:
    """``m`` in fastText's ``.vec`` layout: word2vec text whose lines end with ``" \\n"``."""
    return _derived(m, ".vec", header=True, edit=lambda i, line: line[:-1] + b" \n")


def glove_file(m: data.Model) -> Path:
    """``m`` as GloVe text: no header; after the lines gensim reads (it refuses tokens
    with spaces), one token in :data:`SPACED` holds a space (``"the x"``)."""
    skip = gensim_lines(m.count)

    def edit(i: int, line: bytes) -> bytes:
        return line.replace(b" ", b" x ", 1) if i >= skip and i % SPACED == 0 else line

    return _derived(m, ".glove.txt", header=False, edit=edit)


def _derived(m: data.Model, suffix: str, header: bool,
             edit: Callable[[int, bytes], bytes]) -> Path:
    """A text file made from ``m``'s word2vec text file line by line, written once."""
    path = m.stem.with_suffix(suffix)
    if not path.exists():
        tmp = path.with_name(path.name + ".part")
        with open(m.text_path(), "rb") as src, open(tmp, "wb") as out:
            first = src.readline()
            if header:
                out.write(first)
            for i, line in enumerate(src):
                out.write(edit(i, line))
        os.replace(tmp, path)
    return path


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _plain_set(client: redis.Redis, kv: KeyedVectors) -> None:
    pipe = client.pipeline(transaction=False)
    for i, word in enumerate(kv.index_to_key, 1):
        pipe.set(f"RAW:{word}", kv.vectors[i - 1].tobytes())
        if i % BATCH == 0:
            pipe.execute()
    pipe.execute()


def _measure(fn: Callable[[str, redis.Redis], Any], count: int) -> dict[str, float]:
    """Memory added, rate and CPU seconds of ``fn(url, client)`` in a fresh Redis."""
    with EmbeddedRedis() as server:
        client = redis.Redis.from_url(server.url)
        cpu, redis_cpu = _cpu(), _redis_cpu(client)
        with memory_delta(client) as mem, Stopwatch() as sw:
            fn(server.url, client)
        cpu, redis_cpu = _cpu() - cpu, _redis_cpu(client) - redis_cpu
        client.close()
    return {"count": count, "bytes": mem["bytes"] / count, "rate": count / sw.seconds,
            "seconds": sw.seconds, "cpu": cpu, "redis_cpu": redis_cpu}


def _gensim(path: Path, fmt: str, limit: int) -> dict[str, float]:
    """Rate and CPU seconds of gensim's ``load_word2vec_format`` on the first ``limit``."""
    cpu = _cpu()
    with Stopwatch() as sw:
        kv = KeyedVectors.load_word2vec_format(str(path), binary=fmt == "word2vec-binary",
                                               no_header=fmt == "glove", limit=limit)
    return {"count": len(kv), "rate": len(kv) / sw.seconds, "seconds": sw.seconds,
            "cpu": _cpu() - cpu}


def _faster(best: dict[str, float] | None, run: dict[str, float]) -> dict[str, float]:
    """``run`` if it loaded faster than ``best`` (or there is none yet), else ``best``."""
    return run if best is None or run["rate"] > best["rate"] else best


def _load(path: Path, fmt: str, dtype: str = "float32") -> Callable[[str, redis.Redis], Any]:
    return lambda url, client: load(str(path), "bench", url=url, fmt=fmt, dtype=dtype,
                                    progress=False, grace=0)


def run(ctx: Context) -> None:
    p = ctx.profile
    sec = ctx.report.section("3. Redis memory per vector and load rate")
    m = ctx.model(p.memory_size)
    kv = m.load()
    small = KeyedVectors(p.dim, count=0)
    small.add_vectors(kv.index_to_key[:p.memory_seed_size], kv.vectors[:p.memory_seed_size])
    del kv
    n, ns, share = m.count, p.memory_seed_size, gensim_lines(m.count)
    files = [  # label, path, format
        ("word2vec binary", m.bin_path, "word2vec-binary"),
        ("word2vec text", m.text_path(), "word2vec-text"),
        ("fastText .vec", vec_file(m), "fasttext-vec"),
        ("GloVe", glove_file(m), "glove"),
    ]
    payload = {"float32": 4 * p.dim, "float16": 2 * p.dim}
    importlib.import_module("polars")  # the text reader's parser: imported once per process
    busy = os.getloadavg()[0]
    loads: dict[str, dict[str, float]] = {}
    gensim: dict[str, dict[str, float]] = {}
    for _ in range(ROUNDS):
        for label, path, fmt in files:
            loads[label] = _faster(loads.get(label), _measure(_load(path, fmt), n))
            gensim[label] = _faster(gensim.get(label), _gensim(
                path, fmt, n if fmt == "word2vec-binary" else share))
    busy_after = os.getloadavg()[0]
    cases = [
        *[(f"vectorstore float32, {label}", "float32", loads[label]) for label, _, _ in files],
        ("vectorstore float16, word2vec binary", "float16",
         _measure(_load(m.bin_path, "word2vec-binary", "float16"), n)),
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

    sec.text(
        f"Load rate per file format, the same files for both: this project's loader (parsing, "
        f"checksum, MSETNX into a fresh local Redis, publishing) and gensim's "
        f"`load_word2vec_format` into memory (binary: the whole file; text: its first "
        f"{share:,} vectors, as it reads ~3k/s). The GloVe file has no header, and one token in "
        f"{SPACED:,} after line {share:,} holds a space, which gensim refuses. Each file was "
        f"loaded {ROUNDS} times by each, the two alternated file by file; the faster run of each "
        f"counts. CPU seconds per "
        f"{PER:,} vectors: the loading process (all threads: parser, writer, polars) and Redis. "
        f"Machine load average (1 min): {busy:.1f} before these loads, {busy_after:.1f} after, on "
        f"{os.cpu_count()} cores: with other jobs running, rates fall while CPU seconds do not.")
    sec.table(["file", "vectorstore", "CPU-s loader + Redis", "gensim", "gensim CPU-s",
               "vectorstore / gensim"],
              [[label, f"{loads[label]['rate']:,.0f} vectors/s",
                f"{_per(loads[label], 'cpu'):.2f} + {_per(loads[label], 'redis_cpu'):.2f}",
                f"{gensim[label]['rate']:,.0f} vectors/s ({gensim[label]['count']:,})",
                f"{_per(gensim[label], 'cpu'):.2f}",
                f"{loads[label]['rate'] / gensim[label]['rate']:.1f}x"] for label, _, _ in files])

    fig, axes = figure(ncols=2)
    labels = [name.replace(", ", "\n", 1) for name, _, _ in cases]
    axes[0][0].barh(labels, [c["bytes"] for _, _, c in cases])
    for y, (_, dt, _) in enumerate(cases):
        axes[0][0].plot([payload[dt]] * 2, [y - 0.4, y + 0.4], color="k")
    axes[0][0].set(xlabel="Redis bytes per vector (black: payload)", title="memory")
    axes[0][0].tick_params(axis="y", labelsize=7)
    ys = list(range(len(files)))
    ours = axes[0][1].barh([y + 0.2 for y in ys], [loads[f[0]]["rate"] for f in files],
                           height=0.4, label="vectorstore")
    theirs = axes[0][1].barh([y - 0.2 for y in ys], [gensim[f[0]]["rate"] for f in files],
                             height=0.4, label="gensim")
    for bars in (ours, theirs):
        axes[0][1].bar_label(bars, [f"{b.get_width():,.0f}/s" for b in bars], fontsize=7)
    axes[0][1].set_yticks(ys, [f[0] for f in files], fontsize=7)
    top = max(b.get_width() for bars in (ours, theirs) for b in bars)
    axes[0][1].set(xlabel="vectors/s", title="load rate by file format",
                   xlim=(0, top * 1.3))  # room for the labels
    axes[0][1].legend(fontsize=7)
    sec.plot(fig, "fig3_memory", "Redis memory per vector, and load rate by file format")

    by_name = {name: c for name, _, c in cases}
    for dt, name in (("float32", "vectorstore float32, word2vec binary"),
                     ("float16", "vectorstore float16, word2vec binary")):
        c = by_name[name]
        sec.goal(f"{dt} memory <= 1.15x its {payload[dt]}-byte payload",
                 c["bytes"] <= 1.15 * payload[dt],
                 f"{c['bytes']:.0f} B = {c['bytes'] / payload[dt]:.3f}x")
    binary = loads["word2vec binary"]
    sec.goal("load >= 150k vectors/s from a word2vec binary", binary["rate"] >= 150_000,
             f"{binary['rate']:,.0f} vectors/s, {_per(binary, 'cpu'):.2f} CPU-s per "
             f"{PER:,} (+ Redis {_per(binary, 'redis_cpu'):.2f}); load average {busy:.1f}")
    for label in ("word2vec text", "fastText .vec", "GloVe"):
        ours_, theirs_ = loads[label], gensim[label]
        sec.goal(f"load >= 50k vectors/s and >= 15x gensim's text loader from {label}",
                 ours_["rate"] >= 50_000 and ours_["rate"] >= 15 * theirs_["rate"],
                 f"{ours_['rate']:,.0f} vectors/s = {ours_['rate'] / theirs_['rate']:.1f}x "
                 f"gensim's {theirs_['rate']:,.0f}/s; {_per(ours_, 'cpu'):.2f} CPU-s per "
                 f"{PER:,} vs gensim's {_per(theirs_, 'cpu'):.2f}")
    value = {dt: payload[dt] + 4 for dt in payload}  # vector + uint32 index
    sec.text(
        "What limits memory: each value is the vector plus a 4-byte index; jemalloc rounds "
        + ", ".join(f"a {value[dt]}-byte {dt} value to {jemalloc_class(value[dt] + 4)} B"
                    for dt in payload)
        + "; the key and its dict entry add a fixed ~"
        f"{binary['bytes'] - jemalloc_class(value['float32'] + 4):.0f} B, which weigh twice "
        "as much against float16's smaller payload. What limits the load rate: the plain-SET "
        f"anchor, which parses nothing, writes {by_name[cases[-1][0]]['rate']:,.0f} vectors/s "
        "into this Redis from one client; the binary loader also checksums every vector "
        "(SHA-256, on its writer thread) and Redis spends its own CPU on every MSETNX; text "
        "loaders are bound by parsing the decimal numbers (polars, on parser threads). Redis "
        "and the loader share this machine's cores with other users' jobs.")


def _per(c: dict[str, float], key: str) -> float:
    """``c[key]`` (CPU seconds) per :data:`PER` vectors."""
    return c[key] * PER / c["count"]


def jemalloc_class(n: int) -> int:
    """The jemalloc size class (bytes) an allocation of ``n`` bytes is rounded up to.

    >>> jemalloc_class(1208), jemalloc_class(608)
    (1280, 640)
    """
    if n <= 16:
        return 16
    spacing = 1 << max(4, (n - 1).bit_length() - 3)
    return -(-n // spacing) * spacing
