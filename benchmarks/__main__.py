"""Run the benchmark suite and write BENCHMARKS.md with its PNG plots.

Usage::

    .venv/bin/python -m benchmarks --quick            # ~4 minutes on 2 cores, small sizes
    .venv/bin/python -m benchmarks --full             # the issue's sizes: ~80 minutes on 2 cores,
                                                      # ~60 of them building 1M-vector indexes
    .venv/bin/python -m benchmarks --full --similarity-sizes 100000   # ~25 minutes
    .venv/bin/python -m benchmarks --full --only similarity --quantizations q8 --update
    .venv/bin/python -m benchmarks --smoke --out /tmp/b   # seconds, for the test suite
    .venv/bin/python -m benchmarks --quick --only latency,memory
    .venv/bin/python -m benchmarks --full --only batch --update   # redo one figure

``--full`` writes into ``benchmarks/`` (the committed report); the other
modes write into ``benchmarks/out/``. Generated models are cached in
``benchmarks/data/``. A real Redis 8 (``EmbeddedRedis``) is started for the
run. A figure that fails is reported as such; the others still run, and the
exit status is 1.
"""
from __future__ import annotations

import argparse
import importlib
import shlex
import sys
import time
import traceback
from pathlib import Path

import redis

from vectorstore.server import EmbeddedRedis

from .config import PROFILES, Context, profile
from .data import DEFAULT_DATA_DIR
from .report import Report

FIGURES = ("latency", "coldstart", "memory", "similarity", "scale", "batch", "fasttext",
           "cluster")
HERE = Path(__file__).parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    for name in PROFILES:
        mode.add_argument(f"--{name}", dest="mode", action="store_const", const=name,
                          help=f"run the {name} profile")
    ap.add_argument("--only", default=",".join(FIGURES),
                    help=f"comma-separated figures to run (default all: {','.join(FIGURES)})")
    ap.add_argument("--out", type=Path, default=None,
                    help="report directory (default benchmarks/ for --full, else benchmarks/out/)")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR,
                    help="directory for generated models, reused between runs")
    ap.add_argument("--update", action="store_true",
                    help="keep the sections of figures not run from the report in --out "
                         "(to redo some figures of a long full run)")
    ap.add_argument("--similarity-sizes", default=None,
                    help="comma-separated index sizes for figure 4, e.g. 100000,1000000")
    ap.add_argument("--quantizations", default=None,
                    help="comma-separated index quantizations for figure 4 (default q8,noquant,bin)")
    args = ap.parse_args(argv)
    args.only = [f.strip() for f in args.only.split(",") if f.strip()]
    unknown = sorted(set(args.only) - set(FIGURES))
    if unknown:
        ap.error(f"unknown figure(s) {unknown}: choose from {', '.join(FIGURES)}")
    if args.out is None:
        args.out = HERE if args.mode == "full" else HERE / "out"
    if args.similarity_sizes:
        args.similarity_sizes = tuple(int(s) for s in args.similarity_sizes.split(","))
    if args.quantizations:
        args.quantizations = tuple(q.strip() for q in args.quantizations.split(","))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python -m benchmarks " + shlex.join(sys.argv[1:] if argv is None else argv)
    started = time.perf_counter()
    failed = []
    with EmbeddedRedis() as server:
        version = redis.Redis.from_url(server.url).info("server")["redis_version"]
        report = Report(args.out, args.mode, redis_version=version)
        ctx = Context(profile(args.mode, args.similarity_sizes, args.quantizations), args.data, server.url, report)
        for name in args.only:
            t0 = time.perf_counter()
            print(f"[benchmarks] {name} ...", flush=True)
            report.figure = name
            try:
                importlib.import_module(f".{name}", __package__).run(ctx)
            except Exception:  # report it, keep the other figures
                failed.append(name)
                trace = traceback.format_exc()
                print(trace, file=sys.stderr, flush=True)
                report.section(f"{name}: FAILED").text(f"```\n{trace[-3000:]}\n```")
            report.timings[name] = f"{time.perf_counter() - t0:.0f} s"
            print(f"[benchmarks] {name} done in {time.perf_counter() - t0:.1f} s", flush=True)
        if args.update:
            report.keep_previous(FIGURES)
        path = report.write(time.perf_counter() - started, command)
    print(f"[benchmarks] wrote {path} in {time.perf_counter() - started:.0f} s"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
