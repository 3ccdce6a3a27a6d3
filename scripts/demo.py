"""The main job, end to end, on an embedded Redis 8 (or yours).

1. start the embedded Redis 8 (unless VECTORSTORE_URL and CELERY_BROKER_URL are set);
2. load a real model shipped with gensim (the fastText model of the Lee corpus,
   with its subword n-gram vectors) and build its similarity index;
3. start ``celery -A tasks worker --autoscale=4,1``;
4. send one ``tasks.vectorize_document`` per document of the Lee corpus, by name;
5. print a summary, and a ``most_similar`` computed inside Redis;
6. shut everything down, also on Ctrl-C (within a second or two, at any step).

Run it with ``scripts/demo`` (which makes the virtual environment first).
``VECTORSTORE_DEMO_MODEL=path`` loads another vector file instead (any format
``vectorstore load`` reads; the tests use a larger one to interrupt each step).
"""
from __future__ import annotations

import _thread
import contextlib
import gc
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import gensim
import numpy as np
import psutil
import redis
from celery import Celery
from tqdm import tqdm

from tasks import as_array
from tasks.client import client_app
from vectorstore import RedisKeyedVectors
from vectorstore.connection import redact
from vectorstore.index import build_index
from vectorstore.loader import load
from vectorstore.server import EmbeddedRedis

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(gensim.__file__).parent / "test" / "test_data"
MODEL, CORPUS = "lee", DATA / "lee_background.cor"
MODEL_FILE = Path(os.environ.get("VECTORSTORE_DEMO_MODEL") or DATA / "lee_fasttext.bin")
# A word whose neighbours in this small model (1,762 words trained on the Lee
# corpus, a year of Australian news about bushfires) show what it learnt.
QUERY = "fire"
# After Ctrl-C the with-blocks stop the worker and Redis in order; should that take
# longer (a library's clean-up stuck after the interrupt), the processes are killed.
FORCE_EXIT_AFTER = 1.2
INTERRUPTED = "\ninterrupted: worker and Redis stopped"
_groups: list[int] = []  # process groups started here: Redis, the worker
_starting = threading.Event()  # set while a process group is being started


def _on_ctrl_c(signum: int, frame: FrameType | None) -> None:
    """First Ctrl-C: unwind as usual, with a deadline; later ones are ignored.

    A Ctrl-C that lands while a finalizer runs (a redis-py pool collected by
    the garbage collector) is raised again 20 ms later: Python swallows an
    exception raised in ``__del__`` ("Exception ignored in ..."), and the
    interrupt would be lost. So is one that lands while a process group is being
    started (:func:`_starting_group`): raised inside ``Popen``, it would leave
    the new process running, unknown to the clean-up."""
    if _starting.is_set() or _in_finalizer(frame):
        threading.Timer(0.02, _thread.interrupt_main).start()
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_force_exit, daemon=True).start()
    raise KeyboardInterrupt


@contextlib.contextmanager
def _starting_group() -> Iterator[None]:
    """Hold Ctrl-C back while a process group starts and is recorded in ``_groups``."""
    _starting.set()
    try:
        yield
    finally:
        _starting.clear()


def _in_finalizer(frame: FrameType | None) -> bool:
    while frame is not None:
        if frame.f_code.co_name == "__del__":
            return True
        frame = frame.f_back
    return False


def _force_exit() -> None:
    time.sleep(FORCE_EXIT_AFTER)
    for group in _groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)
    print(INTERRUPTED, file=sys.stderr, flush=True)
    os._exit(130)


@contextlib.contextmanager
def redis_urls() -> Iterator[tuple[str, str]]:
    """(store URL, broker URL): the user's, or an embedded Redis 8 for both."""
    store, broker = os.environ.get("VECTORSTORE_URL"), os.environ.get("CELERY_BROKER_URL")
    if store and broker:
        yield store, broker
        return
    server = EmbeddedRedis()
    with _starting_group():
        server.launch()
        assert server.process is not None
        _groups.append(server.process.pid)  # it leads its own session
    with server:
        server.wait_ready()
        print(f"embedded Redis 8 at {server.url}", flush=True)
        yield server.url, server.url


@contextlib.contextmanager
def worker(store_url: str, broker_url: str, log: Path) -> Iterator[psutil.Process]:
    """A ``celery -A tasks worker --autoscale=4,1`` subprocess logging to ``log``.

    It runs in its own session, so a terminal's Ctrl-C reaches only this
    program. On the way out it gets a warm shutdown; on an interrupt or an
    error its whole process group is killed at once (the demo's tasks are
    not worth waiting for)."""
    env = {**os.environ, "VECTORSTORE_URL": store_url, "CELERY_BROKER_URL": broker_url,
           "CELERY_RESULT_BACKEND": os.environ.get("CELERY_RESULT_BACKEND", broker_url),
           "VECTORSTORE_MODEL": MODEL}
    cmd = [sys.executable, "-m", "celery", "-A", "tasks", "worker", "--autoscale=4,1",
           "--loglevel=WARNING", "--hostname=demo@%h", "--without-gossip", "--without-mingle"]
    with open(log, "ab") as out:
        with _starting_group():
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            _groups.append(proc.pid)
    finished = False
    try:
        yield psutil.Process(proc.pid)
        finished = True
    finally:
        if finished:
            proc.send_signal(signal.SIGTERM)  # warm shutdown: finish running tasks
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(20 if finished else 0.01)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def pool_memory(proc: psutil.Process) -> tuple[int, int, int]:
    """(main process RSS, pool processes, largest private memory (USS) of one)."""
    pool = proc.children()
    return proc.memory_info().rss, len(pool), max((p.memory_full_info().uss for p in pool), default=0)


def corpus() -> list[list[str]]:
    """The Lee corpus split on whitespace, the way the model was trained: its
    tokens keep their case and punctuation (``"fire"``, ``"Fire"``, ``"fire."``)."""
    return [line.split() for line in CORPUS.read_text().splitlines() if line.strip()]


def vectorize_all(app: Celery, docs: list[list[str]], oov: str) -> tuple[list[np.ndarray], int]:
    """One ``tasks.vectorize_document`` per document, sent by name: (matrices, OOV tokens).

    The results are collected here, while Redis still runs: each unsubscribes
    from its result channel when it goes, and they sit in reference cycles that
    only the garbage collector frees (at exit, with Redis gone, each would retry
    its unsubscribe for seconds)."""
    pending = [app.send_task("tasks.vectorize_document", [doc], {"model": MODEL, "oov": oov})
               for doc in docs]
    raw = [r.get(timeout=120) for r in tqdm(pending, desc="documents", unit="doc")]
    del pending
    gc.collect()
    return [as_array(r) for r in raw], sum(len(r["missing"]) for r in raw)


def main() -> None:
    with redis_urls() as (store_url, broker_url):
        print(f"loading {MODEL_FILE.name} ...", flush=True)
        meta = load(str(MODEL_FILE), MODEL, url=store_url)
        print("building its similarity index ...", flush=True)
        build_index(MODEL, url=store_url)
        print(f"model {MODEL!r}: {meta.count} x {meta.dim} from {MODEL_FILE.name}, "
              f"stored in {redact(store_url)}", flush=True)
        kv = RedisKeyedVectors(MODEL, url=store_url)
        # fastText: words outside the vocabulary get the mean of their n-gram vectors
        policy = "subword" if kv.subwords is not None else "zero"
        docs = corpus()
        app = client_app(broker_url, os.environ.get("CELERY_RESULT_BACKEND", broker_url))
        log = Path(tempfile.gettempdir()) / "vectorstore-demo-worker.log"
        print("starting celery -A tasks worker --autoscale=4,1 ...", flush=True)
        with worker(store_url, broker_url, log) as proc:
            while not app.control.ping(timeout=0.5):
                time.sleep(0.2)
            print(f"sending {len(docs)} documents ...", flush=True)
            start = time.perf_counter()
            results, missing = vectorize_all(app, docs, policy)
            elapsed = time.perf_counter() - start
            main_rss, processes, uss = pool_memory(proc)
        tokens = sum(len(d) for d in docs)
        client = redis.Redis.from_url(store_url, socket_timeout=5)
        used = client.info("memory")["used_memory"]
        client.close()
        print(f"\n{len(docs)} documents, {tokens} tokens, OOV rate {missing / tokens:.1%}, "
              f"{len(docs) / elapsed:.0f} documents/s ({tokens / elapsed:.0f} tokens/s)")
        print("  (OOV: words the model dropped as too rare when it was trained; the corpus is "
              "split on whitespace, as the model was; "
              + ("each OOV word got its fastText subword vector, no zero rows)"
                 if policy == "subword" else "OOV words are zero rows)"))
        print(f"matrices: {results[0].shape} ... {results[-1].shape}, float32")
        print(f"worker: main process {main_rss / 2**20:.0f} MiB RSS, {processes} pool processes "
              f"of at most {uss / 2**20:.0f} MiB private memory each (log: {log})")
        rows = meta.count + (kv.subwords.bucket if kv.subwords is not None else 0)
        print(f"model: {rows * meta.dim * 4 / 2**20:.2f} MiB of float32 vectors (words and n-grams), "
              f"held once in Redis ({used / 2**20:.1f} MiB used); worker memory does not grow with it")
        print(f"most_similar({QUERY!r}) computed in Redis:")
        for token, score in kv.most_similar(QUERY, topn=5):
            print(f"  {token:<16} {score:.3f}")


if __name__ == "__main__":
    signal.signal(signal.SIGINT, _on_ctrl_c)
    try:
        main()
    except KeyboardInterrupt:
        # The worker and Redis are stopped by now (the with-blocks above). Exit at
        # once: pending task results would otherwise try to unsubscribe from the
        # Redis that is gone, retrying for half a minute as the interpreter exits.
        print(INTERRUPTED, file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(130)
