"""The benchmark report: markdown tables, goals and PNG plots (matplotlib, Agg).

Each figure adds a :class:`Section`; :meth:`Report.write` writes
``BENCHMARKS.md`` with the machine and versions on top, a summary of every
goal (met or missed), then the sections in order.

>>> r = Report(tmp, mode="quick")                                   # doctest: +SKIP
>>> s = r.section("Latency")                                        # doctest: +SKIP
>>> s.table(["size", "ms"], [[10, "0.1"]]); s.goal("fast", True, "0.1 ms")  # doctest: +SKIP
>>> r.write(runtime=12.0)                                           # doctest: +SKIP
PosixPath('.../BENCHMARKS.md')
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402

REPORT_NAME = "BENCHMARKS.md"
STATE_NAME = "BENCHMARKS.json"  # the report's content, for --update
DPI = 72
_PLAIN = FuncFormatter(lambda v, _: f"{v:g}")


@dataclass
class Goal:
    section: str
    what: str
    passed: bool | None  # None: could not be measured
    detail: str
    figure: str = ""


@dataclass
class Section:
    """One figure's part of the report."""

    title: str
    out_dir: Path
    report: Report
    lines: list[str] = field(default_factory=list)
    figure: str = ""  # the figure module that wrote it

    def text(self, md: str) -> None:
        self.lines += [md.strip(), ""]

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        self.lines.append("| " + " | ".join(map(str, headers)) + " |")
        self.lines.append("|" + "|".join("---" for _ in headers) + "|")
        for row in rows:
            self.lines.append("| " + " | ".join(map(str, row)) + " |")
        self.lines.append("")

    def goal(self, what: str, passed: bool | None, detail: str) -> None:
        """Record a goal of the issue and whether this run met it."""
        self.report.goals.append(Goal(self.title, what, passed, detail, self.figure))
        mark = {True: "met", False: "**missed**", None: "not measured"}[passed]
        self.lines += [f"- Goal: {what}: {mark} ({detail})", ""]

    def plot(self, fig: Any, name: str, caption: str) -> Path:
        """Save ``fig`` as ``<name>.png`` next to the report and show it."""
        path = self.out_dir / f"{name}.png"
        for ax in fig.axes:  # plain numbers on log axes ("3", not "3x10^0")
            for axis in (ax.xaxis, ax.yaxis):
                if axis.get_scale() == "log":
                    lo, hi = sorted(axis.get_view_interval())
                    axis.set_major_formatter(_PLAIN)
                    axis.set_minor_formatter(_PLAIN if hi < 20 * lo else NullFormatter())
        fig.tight_layout()
        fig.savefig(path, dpi=DPI)
        plt.close(fig)
        self.lines += [f"![{caption}]({path.name})", ""]
        return path


def figure(ncols: int = 1, nrows: int = 1, width: float = 6.0, height: float = 3.6
           ) -> tuple[Any, Any]:
    """A matplotlib figure with a grid of ``nrows`` x ``ncols`` axes (``axes[row][col]``)."""
    return plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)


class Report:
    """Collects sections and goals; writes the markdown report."""

    def __init__(self, out_dir: Path, mode: str, redis_version: str = "?") -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.mode = mode
        self.redis_version = redis_version
        self.sections: list[Section] = []
        self.goals: list[Goal] = []
        self.timings: dict[str, str] = {}  # figure -> "N s"
        self.figure = ""  # the figure running now
        self.kept: list[str] = []  # figures carried over from an earlier run

    def section(self, title: str) -> Section:
        s = Section(title, self.out_dir, self, figure=self.figure)
        self.sections.append(s)
        return s

    @property
    def state_path(self) -> Path:
        return self.out_dir / STATE_NAME

    def keep_previous(self, order: Sequence[str]) -> None:
        """Carry over the sections of figures not re-run from the last report here, in ``order``.

        Lets ``--update --only batch`` redo one figure of a long full run.
        """
        if not self.state_path.exists():
            return
        old = json.loads(self.state_path.read_text())
        ran = {s.figure for s in self.sections} | set(self.timings)
        for sec in old["sections"]:
            if sec["figure"] not in ran:
                self.sections.append(Section(sec["title"], self.out_dir, self, sec["lines"],
                                             sec["figure"]))
        self.goals += [Goal(**g) for g in old["goals"] if g["figure"] not in ran]
        for fig, t in old["timings"].items():
            if fig not in ran:
                self.timings[fig] = t
                self.kept.append(fig)
        rank = {f: i for i, f in enumerate(order)}
        self.sections.sort(key=lambda s: rank.get(s.figure, len(rank)))
        self.goals.sort(key=lambda g: rank.get(g.figure, len(rank)))
        self.timings = dict(sorted(self.timings.items(), key=lambda kv: rank.get(kv[0], len(rank))))

    def write(self, runtime: float, command: str) -> Path:
        lines = [
            "# Benchmarks", "",
            f"Generated by `{command}` ({self.mode} mode) in {runtime / 60:.1f} minutes"
            + (" (the figures it ran)" if self.kept else "") + ". "
            "Every figure is measured side by side with its anchors in the same run on the "
            "same machine; ratios matter more than absolute times on a shared, noisy machine.",
            "",
            "## Machine and versions", "",
        ]
        for k, v in environment(self.redis_version).items():
            lines.append(f"- {k}: {v}")
        lines += ["", "Seconds per figure: "
                  + ", ".join(f"{f}: {t}" for f, t in self.timings.items()) + "."]
        if self.kept:
            lines.append(f"Kept from the previous run (not re-run by this command): "
                         f"{', '.join(self.kept)}.")
        lines.append("")
        lines += ["## Goals", "", "| figure | goal | result | measured |", "|---|---|---|---|"]
        for g in self.goals:
            mark = {True: "met", False: "**missed**", None: "not measured"}[g.passed]
            lines.append(f"| {g.section} | {g.what} | {mark} | {g.detail} |")
        lines.append("")
        for s in self.sections:
            lines += [f"## {s.title}", ""] + s.lines
        path = self.out_dir / REPORT_NAME
        path.write_text("\n".join(lines).rstrip() + "\n")
        self.state_path.write_text(json.dumps({
            "sections": [{"title": s.title, "figure": s.figure, "lines": s.lines}
                         for s in self.sections],
            "goals": [asdict(g) for g in self.goals], "timings": self.timings}, indent=1))
        return path


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram() -> str:
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
        return f"{kb / 2**20:.1f} GiB"
    except (OSError, ValueError, IndexError):
        return "unknown"


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=Path(__file__).parent, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _blas() -> str:
    try:
        import numpy

        blas = numpy.__config__.CONFIG["Build Dependencies"]["blas"]
        return f"{blas['name']} {blas['version']}"
    except (AttributeError, KeyError, TypeError):
        return "unknown"


def environment(redis_version: str) -> dict[str, str]:
    """Machine and versions, for the top of the report."""
    blas_env = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
                if k in os.environ}
    return {
        "CPU": f"{_cpu_model()}, {os.cpu_count()} cores",
        "RAM": _ram(),
        "OS": platform.platform(),
        "Python": sys.version.split()[0],
        "redis-server": redis_version,
        "redis-py": _version("redis"),
        "hiredis": _version("hiredis"),
        "numpy": _version("numpy"),
        "gensim": _version("gensim"),
        "celery": _version("celery"),
        "BLAS": _blas(),
        "OpenBLAS environment": (", ".join(f"{k}={v}" for k, v in blas_env.items())
                                 + " (set on this machine; it can slow numpy's BLAS)"
                                 if blas_env else "OPENBLAS_CORETYPE not set"),
        "commit": _git_commit(),
    }
