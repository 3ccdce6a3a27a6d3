"""Every fenced block of README.md is executed here, as written.

Python blocks run in a fresh interpreter; console blocks run in bash with the
project's commands on PATH, in a directory holding small model files under the
names the README uses. Both talk to an embedded Redis 8 standing in for the
hosts the README names (``localhost:6379``, ``broker:6379``, ``vectors:6379``):
that replacement is the only edit made to a block. Blocks that cannot run here
are listed in ``NOT_RUN`` with the test that covers them instead, and a block
that is neither run nor listed fails the suite.
"""
from __future__ import annotations

import gzip
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from acl_users import README_ACL
from celery import Celery
from conftest import TEST_DATA, synthetic_kv
from gensim.models import KeyedVectors

from tasks.client import client_app
from vectorstore.index import IndexOptions
from vectorstore.loader import load
from vectorstore.server import EmbeddedRedis

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
HOSTS = ("localhost:6379", "broker:6379", "vectors:6379")
WORDS = ["car", "fast", "red", "the", "road", "drive", "engine", "wheel", "truck", "bus"]
# A block not run here names the test that runs it otherwise (matched by a substring).
NOT_RUN = {
    "$ scripts/demo": "test_demo.py runs scripts/demo in a fresh virtual environment",
    "$ scripts/test": "this command runs this very suite",
    "-m benchmarks": "test_benchmarks_smoke.py runs the benchmark suite at its smoke sizes",
    "ACL SETUSER": "test_readme_acl_lines_are_the_tested_ones checks these lines",
}


def fenced() -> list[tuple[str, str]]:
    """(language, text) of every fenced block of README.md, in order."""
    out: list[tuple[str, str]] = []
    lang: str | None = None
    lines: list[str] = []
    for line in README.splitlines():
        fence = re.match(r"^ *```(\S*)$", line)
        if fence and lang is None:
            lang, lines = fence[1], []
        elif fence:
            out.append((lang, "\n".join(lines) + "\n"))
            lang = None
        elif lang is not None:
            lines.append(line.strip() if line.startswith("  ") and lang == "" else line)
    assert lang is None, "README.md has an unclosed code fence"
    return out


def blocks(lang: str) -> list[str]:
    """The fenced blocks of README.md in ``lang`` ("" for blocks without a language)."""
    return [text for block_lang, text in fenced() if block_lang == lang]


def _id(block: str) -> str:
    first = next(line for line in block.splitlines() if line.strip() and not line.startswith("#"))
    return first.strip()[:50]


def _not_run(block: str) -> bool:
    return any(key in block for key in NOT_RUN)


@pytest.fixture(scope="module")
def server() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as s:
        yield s


@pytest.fixture(scope="module")
def news(server: EmbeddedRedis) -> KeyedVectors:
    """The model the README's examples call ``news``: 300-d, with its similarity index."""
    kv = synthetic_kv(3000, 300, tokens=WORDS + [f"w{i}" for i in range(3000 - len(WORDS))])
    load(kv, "news", url=server.url, progress=False, index=IndexOptions())
    return kv


def _here(text: str, server: EmbeddedRedis, db: int = 0) -> str:
    """``text`` with the README's Redis hosts pointing at the embedded server."""
    for host in HOSTS:
        text = text.replace(host, f"127.0.0.1:{server.port}")
    return text if db == 0 else re.sub(rf"(127\.0\.0\.1:{server.port})/0", rf"\1/{db}", text)


def _env(server: EmbeddedRedis, db: int = 0) -> dict[str, str]:
    url = f"redis://127.0.0.1:{server.port}/{db}"
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
            "VECTORSTORE_URL": url, "CELERY_BROKER_URL": url}


@pytest.fixture(scope="module")
def worker(server: EmbeddedRedis, news: KeyedVectors, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Celery]:
    """The README's "Running workers" block, run as written in bash, until the module ends."""
    [block] = [b for b in blocks("console") if "celery -A tasks worker" in b]
    script = "\n".join(line[2:] for line in _here(block, server).splitlines() if line.startswith("$ "))
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["bash", "-ec", "exec " + script if "\n" not in script else script],
                                cwd=ROOT, env=_env(server), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    app = client_app(f"redis://127.0.0.1:{server.port}/0")
    try:
        deadline = time.monotonic() + 60
        while not app.control.ping(timeout=0.5):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        yield app
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_every_block_is_run_or_covered_elsewhere() -> None:
    run = blocks("python") + [b for b in blocks("console") if not _not_run(b)]
    listed = [b for b in blocks("console") + blocks("") if _not_run(b)]
    assert len(run) >= 4 and listed
    for block in blocks(""):
        assert _not_run(block), f"README block runs nowhere: {block!r}"
    for lang, _ in fenced():
        assert lang in ("python", "console", ""), f"README has a {lang} block this test does not run"


@pytest.mark.parametrize("block", blocks("python"), ids=_id)
def test_python_block_runs_as_written(block: str, server: EmbeddedRedis, news: KeyedVectors,
                                      worker: Celery, tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-c", _here(block, server)], cwd=tmp_path,
                         env=_env(server), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Traceback" not in out.stderr


def _model_files(where: Path) -> None:
    """Small 300-d models under the file names of the README's loading examples."""
    kv = synthetic_kv(500, 300, tokens=WORDS + [f"w{i}" for i in range(490)])
    kv.save_word2vec_format(str(where / "GoogleNews-vectors-negative300.bin.gz"), binary=True)
    with open(where / "glove.840B.300d.txt", "w") as f:
        for token in ["a b", "c . d"] + kv.index_to_key:  # GloVe 840B has tokens with spaces
            vec = kv[token] if token in kv else np.ones(300, dtype=np.float32)
            f.write(token + " " + " ".join(f"{x:.6f}" for x in vec) + "\n")
    shutil.copy(TEST_DATA / "lee_fasttext.bin", where / "lee_fasttext.bin")
    with gzip.open(where / "cc.en.300.vec.gz", "wt") as f:
        f.write(f"{len(kv)} 300\n")
        for token in kv.index_to_key:
            f.write(token + " " + " ".join(f"{x:.6f}" for x in kv[token]) + "\n")


@pytest.mark.parametrize("block", [b for b in blocks("console")
                                   if not _not_run(b) and "celery -A tasks worker" not in b], ids=_id)
def test_console_block_runs_as_written(block: str, server: EmbeddedRedis, tmp_path: Path) -> None:
    _model_files(tmp_path)
    commands = [line[2:] for line in _here(block, server, db=1).splitlines() if line.startswith("$ ")]
    out = subprocess.run(["bash", "-ec", "\n".join(commands)], cwd=tmp_path, env=_env(server, db=1),
                         capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Traceback" not in out.stderr and "error" not in out.stderr.lower(), out.stderr


def test_worker_block_serves_tasks(worker: Celery, news: KeyedVectors) -> None:
    from tasks import as_array

    r = worker.send_task("tasks.vectorize_document", [["fast", "red", "car"]], {"model": "news"})
    assert np.array_equal(as_array(r.get(timeout=30)), news[["fast", "red", "car"]])


def test_readme_acl_lines_are_the_tested_ones() -> None:
    """The ACL users the README recommends are exactly those test_acl.py runs."""
    [block] = [b for b in blocks("") if "ACL SETUSER" in b]
    assert tuple(line for line in block.splitlines() if line.strip()) == README_ACL
