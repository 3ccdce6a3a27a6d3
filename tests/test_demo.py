"""The README's demo: runs end to end, and shuts down cleanly on Ctrl-C."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
DEMO = [sys.executable, str(ROOT / "scripts" / "demo.py")]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("VECTORSTORE_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND")}
    return {**env, "PYTHONUNBUFFERED": "1"}


def _descendants_gone(pids: set[int]) -> bool:
    return all(not psutil.pid_exists(p) or psutil.Process(p).status() == psutil.STATUS_ZOMBIE
               for p in pids)


def test_demo_runs_the_main_job() -> None:
    out = subprocess.run(DEMO, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    summary = re.search(r"(\d+) documents, (\d+) tokens, OOV rate ([\d.]+)%", out.stdout)
    assert summary, out.stdout
    assert int(summary[1]) == 300 and int(summary[2]) > 50_000 and 0 < float(summary[3]) < 50
    assert "most_similar('government')" in out.stdout
    assert len(re.findall(r"^  \S+\s+0\.\d{3}$", out.stdout, re.M)) == 5


def test_demo_stops_everything_on_ctrl_c() -> None:
    proc = subprocess.Popen(DEMO, cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    me = psutil.Process(proc.pid)
    seen: set[int] = set()
    deadline = time.monotonic() + 120
    while not any("celery" in " ".join(c.cmdline()) for c in me.children(recursive=True)
                  if c.is_running()):
        assert time.monotonic() < deadline and proc.poll() is None, "the worker never started"
        time.sleep(0.1)
    seen = {c.pid for c in me.children(recursive=True)}
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert "interrupted" in out
    deadline = time.monotonic() + 20
    while not _descendants_gone(seen):
        assert time.monotonic() < deadline, "redis-server or celery outlived the demo"
        time.sleep(0.1)
