"""A clean install of the built wheel, without extras, runs a worker and a task.

The wheel goes into a fresh virtual environment (not the test one); the worker
runs from a directory outside the checkout, so it uses the installed
``tasks`` package and ``celeryconfig`` module, not the source tree.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import venv
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from celery import Celery
from conftest import synthetic_kv

from tasks import as_array
from tasks.client import client_app
from vectorstore.loader import load
from vectorstore.server import EmbeddedRedis

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w",
                    str(where / "dist"), str(ROOT)], check=True, timeout=600)
    [wheel] = (where / "dist").glob("vectorstore-*.whl")
    venv.create(where / "venv", with_pip=True)
    python = where / "venv" / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", str(wheel)], check=True,
                   timeout=900)
    return where / "venv"


@pytest.fixture(scope="module")
def server() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as s:
        yield s


@pytest.mark.slow
def test_wheel_without_extras_runs_a_worker(wheel_venv: Path, server: EmbeddedRedis,
                                            tmp_path: Path) -> None:
    kv = synthetic_kv(500, 16)
    load(kv, "news", url=server.url, progress=False)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(CELERY_BROKER_URL=server.url, VECTORSTORE_URL=server.url, VECTORSTORE_MODEL="news",
               PATH=str(wheel_venv / "bin") + os.pathsep + env.get("PATH", ""))
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["celery", "-A", "tasks", "worker", "--autoscale=2,1",
                                 "--without-gossip", "--without-mingle"], cwd=tmp_path, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    app: Celery = client_app(server.url)
    try:
        r = app.send_task("tasks.vectorize_document", [["w1", "w2", "qwxz"]])
        result = r.get(timeout=120)
        assert np.array_equal(as_array(result)[:2], kv[["w1", "w2"]])
        assert result["oov"] == ["qwxz"]
        assert proc.poll() is None, log.read_text()
    finally:
        proc.terminate()  # the main process only: a warm shutdown (SIGTERM to the whole group
        try:               # kills pool processes under it, and it logs them as lost)
            proc.wait(20)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # pool processes left behind, if any
        proc.wait()
    text = log.read_text()
    assert "Traceback" not in text and "ModuleNotFoundError" not in text, text
    # the installed code ran, not the checkout's
    site = subprocess.run([str(wheel_venv / "bin" / "python"), "-c",
                           "import tasks, celeryconfig; print(tasks.__file__, celeryconfig.__file__)"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout
    assert str(ROOT) not in site and str(wheel_venv) in site, site
