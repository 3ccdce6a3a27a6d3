"""The README's first command, as a new user runs it, and Ctrl-C at every step of it.

``scripts/demo`` runs in a fresh virtual environment holding only what that
command installs (not the test environment), so a missing dependency fails here.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
_USER_ENV = ("VECTORSTORE_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "VECTORSTORE_VENV",
             "VECTORSTORE_DEMO_MODEL", "VIRTUAL_ENV", "PYTHONPATH")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _USER_ENV}
    path = [p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(sys.prefix)]
    return {**env, "PATH": os.pathsep.join(path), "PYTHONUNBUFFERED": "1", **extra}


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.slow
def test_demo_from_a_fresh_virtual_environment(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    out = subprocess.run([str(ROOT / "scripts" / "demo")], cwd=tmp_path,
                         env=_env(VECTORSTORE_VENV=str(venv)), capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert (venv / "bin" / "python").exists()  # it ran from the venv it made
    assert "Traceback" not in out.stderr and "command not found" not in out.stderr, out.stderr
    summary = re.search(r"(\d+) documents, (\d+) tokens, OOV rate ([\d.]+)%", out.stdout)
    assert summary, out.stdout
    # whitespace tokens, as the model was trained: 59,890 tokens, 23.1% dropped as rare
    assert int(summary[1]) == 300 and int(summary[2]) == 59_890
    assert 20 < float(summary[3]) < 26
    assert "each OOV word got its fastText subword vector, no zero rows" in out.stdout
    assert "most_similar('fire') computed in Redis:" in out.stdout
    neighbours = re.findall(r"^  (\S+)\s+(0\.\d{3})$", out.stdout, re.M)
    assert len(neighbours) == 5 and neighbours[0][0] == "fires", out.stdout


@pytest.fixture(scope="module")
def larger_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 30k x 100 .vec file: loading and indexing it take long enough to be interrupted."""
    rng = np.random.default_rng(0)
    n, dim = 30_000, 100
    vectors = rng.normal(size=(50, dim))[rng.integers(0, 50, n)] + 0.3 * rng.normal(size=(n, dim))
    path = tmp_path_factory.mktemp("demo") / "larger.vec"
    with open(path, "w") as f:
        f.write(f"{n} {dim}\n")
        for i, row in enumerate(vectors):
            f.write(f"w{i} " + " ".join(f"{x:.5f}" for x in row) + "\n")
    return path


@pytest.mark.slow
@pytest.mark.parametrize("step, marker, delay", [
    ("loading", "loading larger.vec", 0.0),
    ("indexing", "building its similarity index", 0.5),
    ("worker starting", "starting celery", 0.0),
    ("documents in flight", "sending 300 documents", 0.2),
])
def test_ctrl_c_at_every_step_stops_everything_within_2_s(
        larger_model: Path, step: str, marker: str, delay: float) -> None:
    # the demo leads its own process group, as in a terminal, where Ctrl-C signals the group
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "demo.py")], cwd=ROOT,
                            env=_env(VECTORSTORE_DEMO_MODEL=str(larger_model)),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
    reader.start()
    deadline = time.monotonic() + 120
    while not any(marker in line for line in lines):
        assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)
        time.sleep(0.01)
    time.sleep(delay)
    started = {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
    assert started, f"nothing was running at step {step}"
    os.killpg(proc.pid, signal.SIGINT)
    sent = time.monotonic()
    try:
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    took = time.monotonic() - sent
    reader.join(5)
    out = "".join(lines)
    assert proc.returncode == 130, out
    assert took < 2.0, f"Ctrl-C at step {step} took {took:.1f} s to exit"
    assert "interrupted: worker and Redis stopped" in out
    assert "Traceback" not in out and "Exception ignored" not in out, out
    deadline = time.monotonic() + 3
    while left := [p for p in started if _running(p)]:
        assert time.monotonic() < deadline, f"processes left after Ctrl-C at {step}: {left}"
        time.sleep(0.05)
