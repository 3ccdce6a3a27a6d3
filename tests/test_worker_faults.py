"""Faults on real servers: Redis restarted (SHUTDOWN and SIGKILL, in the compose layout
with one Redis and with separate Redis servers for vectors and queue/results), a frozen
Redis, killed pool process and worker, undecodable messages. Each runs
``benchmarks.reliability``'s scenario with a few hundred tasks and checks every result
against the model in memory: none lost, none wrong, none failed unexpectedly, and the
worker never died of the restart (it only restarts when the test kills it)."""
from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.reliability import SCENARIOS, scenario

CASES = [(name, layout) for name, (layouts, _) in SCENARIOS.items() if name != "fuzz"
         for layout in layouts]


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("name,layout", CASES, ids=[f"{n}-{lay}" for n, lay in CASES])
def test_no_task_lost_or_wrong(name: str, layout: str, tmp_path: Path) -> None:
    outcome = scenario(name, layout, 300, tmp_path)
    assert (outcome.lost, outcome.wrong, outcome.failed) == (0, 0, 0), outcome.notes
    assert outcome.completed + outcome.expected_errors == outcome.tasks
    if name == "undecodable":
        assert outcome.expected_errors == outcome.tasks
    assert not any("worker died" in n for n in outcome.notes), outcome.notes
    assert outcome.restarts == (1 if name == "worker-kill" else 0)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_reliability_runner_writes_report(tmp_path: Path) -> None:
    """``python -m benchmarks.reliability --tiny`` runs and writes its table."""
    import subprocess
    import sys

    out = tmp_path / "RELIABILITY.md"
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "benchmarks.reliability", "--tiny", "--tasks", "100",
                           "--only", "restart-shutdown,fuzz", "--out", str(out)],
                          cwd=root, capture_output=True, text=True, timeout=230)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = [line for line in out.read_text().splitlines() if line.startswith("| ")]
    assert len(table) == 1 + 3  # header, restart in two layouts, fuzz
    assert all(row.split(" | ")[5:8] == ["0", "0", "0"] for row in table[1:])
