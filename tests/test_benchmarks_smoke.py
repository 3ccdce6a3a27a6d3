"""The benchmark suite still runs: ``python -m benchmarks --smoke`` on tiny sizes.

This checks that the report and its tables and plots are produced, never
how fast anything is.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("wordfreq", reason="benchmarks need the 'bench' extra (wordfreq)")
pytest.importorskip("matplotlib", reason="benchmarks need the 'bench' extra (matplotlib)")

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = {
    "1. Per-document latency": "fig1_latency.png",
    "2. Worker cold start and RSS": "fig2_coldstart.png",
    "3. Redis memory per vector and load rate": "fig3_memory.png",
    "4. Similarity search": "fig4_similarity.png",
    "5. Scale test": "fig5_scale.png",
    "6. Batch task throughput": "fig6_batch.png",
    "7. fastText subword vectors": "fig7_fasttext.png",
    "8. Redis Cluster and read replicas": "fig8_cluster.png",
}


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_smoke_run_writes_report_tables_and_plots(tmp_path: Path) -> None:
    out, data = tmp_path / "out", tmp_path / "data"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--out", str(out), "--data", str(data)],
        cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    report = (out / "BENCHMARKS.md").read_text()
    assert "FAILED" not in report
    for key in ("CPU", "RAM", "Python", "redis-server", "redis-py", "hiredis", "numpy",
                "gensim", "celery"):
        assert re.search(rf"^- {key}: \S", report, re.M), f"machine/version line {key} missing"
    for title, png in SECTIONS.items():
        assert f"## {title}" in report, f"section {title!r} missing"
        body = report.split(f"## {title}", 1)[1].split("\n## ", 1)[0]
        assert re.search(r"^\|---", body, re.M), f"section {title!r} has no table"
        assert f"]({png})" in body
        assert (out / png).stat().st_size > 1000
    goals = report.split("## Goals", 1)[1].split("\n## ", 1)[0]
    assert len(re.findall(r"^\| \d\. ", goals, re.M)) >= 9, "goal summary table is incomplete"
