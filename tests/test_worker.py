"""End to end: real ``celery -A tasks worker`` subprocesses, a real Redis as broker and
result backend and another as the vector store, tasks sent by name from a client app
that does not import the worker's code. Values are compared with gensim in memory."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from celery import Celery
from celery_helpers import WorkerProcess, frozen, wait_for
from conftest import TEST_DATA, synthetic_kv
from gensim.models import KeyedVectors
from gensim.utils import simple_preprocess

from tasks import as_array, as_arrays
from tasks.client import client_app, vectorize
from tasks.errors import (
    DocumentTooLongError,
    InvalidDocumentError,
    InvalidOptionError,
    OutOfVocabularyError,
    ResultTooLargeError,
    UndecodableTaskError,
    UnknownModelError,
)
from vectorstore import StoreUnavailableError
from vectorstore.loader import load
from vectorstore.server import EmbeddedRedis, free_port

ODD = ["a:b", "{x}", "#hash", "naïve", "東京", "emoji🙂", "a b", "vs:m:1:x", "-", "0"]
LEE_VEC = TEST_DATA / "lee_fasttext.vec"
DOCS = [simple_preprocess(line) for line in
        (TEST_DATA / "lee_background.cor").read_text().splitlines()[:60]]
TIMEOUT = 30
#: Tests that hold a task by freezing the store need processes whose cache starts empty.
NO_PREWARM = {"VECTORSTORE_PREWARM": "0"}


# --- fixtures ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def broker() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture(scope="module")
def store() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture(scope="module")
def models(store: EmbeddedRedis) -> dict[str, KeyedVectors]:
    """``lee``: gensim's bundled fastText vectors, loaded from the file; ``m``: synthetic,
    with odd tokens (the workers' default model)."""
    load(LEE_VEC, "lee", url=store.url, progress=False)
    m = synthetic_kv(3000, 24, tokens=ODD + [f"w{i}" for i in range(3000 - len(ODD))])
    load(m, "m", url=store.url, progress=False)
    return {"lee": KeyedVectors.load_word2vec_format(LEE_VEC), "m": m}


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("worker-logs")


@pytest.fixture(scope="module")
def worker(broker: EmbeddedRedis, store: EmbeddedRedis, models: dict, log_dir: Path
           ) -> Iterator[WorkerProcess]:
    """The worker most tests share: ``--autoscale=4,1``, caches not prewarmed."""
    with WorkerProcess("w1", broker.url, store.url, log_dir, env=NO_PREWARM) as w:
        yield w


@pytest.fixture(autouse=True)
def _print_logs_on_failure(request: pytest.FixtureRequest, log_dir: Path) -> Iterator[None]:
    failed = request.session.testsfailed
    yield
    if request.session.testsfailed > failed:
        for log in sorted(log_dir.glob("*.log")):
            sys.__stderr__.write(f"\n===== {log.name} (tail) =====\n{log.read_text()[-6000:]}\n")


@pytest.fixture(scope="module")
def client(broker: EmbeddedRedis) -> Iterator[Celery]:
    app = client_app(broker.url)
    yield app
    app.close()


# --- helpers ------------------------------------------------------------------------

def expected(kv: KeyedVectors, tokens: list[str], max_len: int | None = None, oov: str = "zero",
             dtype: str = "float32", normalize: bool = False) -> np.ndarray:
    """What the task must return, computed with gensim in memory."""
    if max_len is not None and oov != "skip":
        tokens = tokens[:max_len]
    rows = [kv.get_vector(t, norm=normalize) if t in kv.key_to_index
            else np.zeros(kv.vector_size, np.float32)
            for t in tokens if t in kv.key_to_index or oov == "zero"]
    matrix = np.array(rows, dtype=np.float32).reshape(-1, kv.vector_size)
    if max_len is not None:
        matrix = np.vstack([matrix, np.zeros((max_len, kv.vector_size), np.float32)])[:max_len]
    return matrix.astype(dtype)


def run(client: Celery, task: str, *args: Any, queue: str | None = None, **kwargs: Any) -> Any:
    return client.send_task(f"tasks.{task}", args, kwargs, queue=queue).get(timeout=TIMEOUT)


def mget_calls(r: redis.Redis) -> int:
    return r.info("commandstats").get("cmdstat_mget", {}).get("calls", 0)


def active_task(client: Celery, hostname: str, task_id: str) -> dict | None:
    """The worker's running-task entry of ``task_id`` (it has the pool process pid)."""
    active = client.control.inspect([hostname], timeout=1).active() or {}
    return next((t for t in active.get(hostname, []) if t["id"] == task_id), None)


# --- results equal gensim ----------------------------------------------------------------

@pytest.mark.parametrize("options", [
    {}, {"oov": "skip"}, {"max_len": 400}, {"max_len": 50}, {"oov": "skip", "max_len": 50},
    {"dtype": "float16"}, {"normalize": True}, {"normalize": True, "oov": "skip", "max_len": 30},
], ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "defaults")
def test_document_matches_gensim(worker: WorkerProcess, client: Celery, models: dict,
                                 options: dict) -> None:
    lee = models["lee"]
    pending = [(doc, client.send_task("tasks.vectorize_document", [doc],
                                      {"model": "lee", **options})) for doc in DOCS[:3]]
    for doc, result in pending:
        out = result.get(timeout=TIMEOUT)
        array = as_array(out)
        assert array.dtype == np.dtype(options.get("dtype", "float32"))
        assert np.array_equal(array, expected(lee, doc, **options))
        looked_up = doc if "max_len" not in options or options.get("oov") == "skip" \
            else doc[:options["max_len"]]
        oov = [i for i, t in enumerate(looked_up) if t not in lee.key_to_index]
        assert oov and out["missing"] == oov
        assert out["oov"] == [doc[i] for i in oov]
        assert (out["model"], out["version"]) == ("lee", 1)


def test_default_model_and_odd_tokens(worker: WorkerProcess, client: Celery, models: dict) -> None:
    m = models["m"]
    out = run(client, "vectorize_document", ODD + ["nope"])
    assert out["model"] == "m" and out["missing"] == [len(ODD)] and out["oov"] == ["nope"]
    assert np.array_equal(as_array(out), expected(m, ODD + ["nope"]))


def test_batch_is_one_lookup_and_matches_gensim(worker: WorkerProcess, client: Celery,
                                                 models: dict, store: EmbeddedRedis) -> None:
    lee, r = models["lee"], redis.Redis.from_url(store.url)
    docs = DOCS[10:30]
    before = mget_calls(r)
    ragged = run(client, "vectorize_documents", docs, model="lee")
    assert mget_calls(r) - before == 1  # one MGET for the unique tokens of all documents
    assert len(ragged) == len(docs)
    for doc, out, matrix in zip(docs, ragged, as_arrays(ragged)):
        assert np.array_equal(matrix, expected(lee, doc))
        assert out["oov"] == [t for t in doc if t not in lee.key_to_index]

    docs = DOCS[30:45]
    before = mget_calls(r)
    padded = run(client, "vectorize_documents", docs, model="lee", max_len=64, dtype="float16",
                 normalize=True)
    assert mget_calls(r) - before == 1
    tensor = as_arrays(padded)
    assert tensor.shape == (len(docs), 64, lee.vector_size) and tensor.dtype == np.float16
    assert np.array_equal(tensor, np.stack([expected(lee, d, 64, dtype="float16", normalize=True)
                                            for d in docs]))
    assert padded["oov"] == [[t for t in d[:64] if t not in lee.key_to_index] for d in docs]
    r.close()


@pytest.mark.parametrize("options", [
    {}, {"pre_normalize": False}, {"post_normalize": True},
    {"weights": "linear"}, {"weights": "linear", "pre_normalize": False, "post_normalize": True},
], ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "defaults")
def test_embed_document_matches_gensim(worker: WorkerProcess, client: Celery, models: dict,
                                       options: dict) -> None:
    lee = models["lee"]
    for doc in DOCS[:3]:
        kwargs = dict(options)
        if kwargs.get("weights") == "linear":
            kwargs["weights"] = [1.0 + i / 10 for i in range(len(doc))]
        out = run(client, "embed_document", doc, model="lee", **kwargs)
        want = lee.get_mean_vector(doc, **kwargs)
        assert np.array_equal(as_array(out), want)  # same float32 sum, in the same order
        assert out["oov"] == [t for t in doc if t not in lee.key_to_index]


# --- bad input: a clear error, no retry, the worker lives on -----------------------------

BAD = [
    ("vectorize_document", ["fast car"], {}, InvalidDocumentError,
     "document must be a list of str tokens, got str 'fast car'"),
    ("vectorize_document", [{"a": 1}], {}, InvalidDocumentError, "got dict"),
    ("vectorize_document", [None], {}, InvalidDocumentError, "got NoneType"),
    ("vectorize_document", [["ok", 3]], {}, InvalidDocumentError,
     "token 1 of document is int 3, expected str"),
    ("vectorize_document", [[]], {}, InvalidDocumentError, "document is empty"),
    ("vectorize_document", [["w1"] * 10_001], {}, DocumentTooLongError,
     "document has 10001 tokens, the limit is 10000"),
    ("vectorize_document", [["w1"]], {"model": "nosuchmodel"}, UnknownModelError,
     "no model named 'nosuchmodel'"),
    ("vectorize_document", [["w1"]], {"model": "bad name!"}, InvalidOptionError,
     "invalid model name 'bad name!'"),
    ("vectorize_document", [["w1"]], {"oov": "drop"}, InvalidOptionError,
     "oov must be one of 'zero', 'skip', 'error'.*; got 'drop'"),
    ("vectorize_document", [["w1"]], {"dtype": "float64"}, InvalidOptionError,
     "dtype must be one of 'float32', 'float16'; got 'float64'"),
    ("vectorize_document", [["w1"]], {"max_len": 0}, InvalidOptionError,
     "max_len must be null or an integer from 1 to 10000; got 0"),
    ("vectorize_document", [["w1"]], {"max_len": True}, InvalidOptionError, "got True"),
    ("vectorize_document", [["w1"]], {"normalize": "yes"}, InvalidOptionError,
     "normalize must be true or false; got 'yes'"),
    ("vectorize_document", [["w1", "qqq"]], {"oov": "error"}, OutOfVocabularyError,
     "token 1 'qqq' is not in model 'm'"),
    ("vectorize_document", [["w1"]], {"colour": "red"}, TypeError,
     "unexpected keyword argument 'colour'"),
    ("vectorize_documents", ["w1 w2"], {}, InvalidDocumentError, "docs must be a list"),
    ("vectorize_documents", [[]], {}, InvalidDocumentError, "docs is empty"),
    ("vectorize_documents", [[["w1"], "w2"]], {}, InvalidDocumentError,
     "document 1 must be a list of str tokens"),
    ("vectorize_documents", [[["w1"], ["w2", "qqq"]]], {"oov": "error"}, OutOfVocabularyError,
     "document 1, token 1 'qqq' is not in model 'm'"),
    ("vectorize_documents", [[["w1"] * 6000, ["w2"] * 6000]], {}, DocumentTooLongError,
     "docs have 12000 tokens in all, the limit per request is 10000"),
    ("vectorize_documents", [[["w1"]] * 2000], {"max_len": 10_000}, ResultTooLargeError,
     r"batch result would be 1831\.1 MiB \(2000 x 10000 x 24 float32\), over the 8\.0 MiB"),
    ("embed_document", [["w1", "w2"]], {"weights": [1.0]}, InvalidOptionError,
     "weights must be null or a list of 2 numbers"),
    ("embed_document", [["w1", "qqq"]], {"ignore_missing": False}, OutOfVocabularyError,
     "token 1 'qqq' is not in model 'm'"),
    ("embed_document", [["w1"]], {"post_normalize": 1}, InvalidOptionError,
     "post_normalize must be true or false"),
    # inputs a fuzzing run found escaping validation (issue 13, item 5)
    ("vectorize_document", [["\udcff"]], {}, InvalidDocumentError,
     "token 0 of document '\\\\udcff' is not valid Unicode"),
    ("vectorize_document", [["w1"]], {"dtype": {}}, InvalidOptionError, "dtype must be one of"),
    ("vectorize_document", [["w1"]], {"oov": []}, InvalidOptionError, "oov must be one of"),
    ("embed_document", [["w1"]], {"weights": [10**400]}, InvalidOptionError,
     "weights must be finite numbers within float32's range"),
    ("vectorize_document", [["x" * 1_000_001]], {}, InvalidDocumentError,
     "token 0 of document has 1000001 characters, the limit is 1000"),
    ("vectorize_document", [[{"__type__": "datetime", "__value__": "x"}]], {}, UndecodableTaskError,
     "task arguments could not be decoded"),
    ("vectorize_documents", [[[f"oov{i}" + "x" * 990 for i in range(9000)]]], {"dtype": "float16"},
     ResultTooLargeError, r"bytes of OOV tokens\), over the 8\.0 MiB"),
]


@pytest.mark.parametrize("task,args,kwargs,error,message", BAD,
                         ids=[f"{b[0]}-{b[3].__name__}-{i}" for i, b in enumerate(BAD)])
def test_bad_input_fails_clearly(worker: WorkerProcess, client: Celery, task: str, args: list,
                                 kwargs: dict, error: type, message: str) -> None:
    result = client.send_task(f"tasks.{task}", args, kwargs)
    with pytest.raises(error, match=message):
        result.get(timeout=TIMEOUT)
    assert result.state == "FAILURE"


def test_bad_input_was_not_retried_and_worker_lives_on(worker: WorkerProcess, client: Celery,
                                                       models: dict) -> None:
    log = worker.log()
    assert "raised expected: InvalidDocumentError" in log
    assert " retry: " not in log and "WorkerLostError" not in log
    assert worker.alive()
    assert np.array_equal(as_array(run(client, "vectorize_document", ["w1"])), models["m"][["w1"]])


# --- client helper ------------------------------------------------------------------------

def test_client_helper_keeps_order_and_puts_errors_in_place(worker: WorkerProcess, client: Celery,
                                                            models: dict) -> None:
    lee = models["lee"]
    docs: list[Any] = list(DOCS[:40])
    bad = {3: "not a list", 11: [], 25: ["ok", 5]}
    for i, doc in bad.items():
        docs.insert(i, doc)
    out = vectorize(docs, model="lee", app=client, chunk_tokens=600, window=3, progress=False)
    assert len(out) == len(docs)
    for i, (doc, got) in enumerate(zip(docs, out)):
        if i in bad:
            assert isinstance(got, InvalidDocumentError), (i, got)
        else:
            assert np.array_equal(got, expected(lee, doc)), i

    padded = vectorize(DOCS[:20], model="lee", max_len=32, oov="skip", app=client,
                       chunk_tokens=200, progress=False)
    assert all(np.array_equal(got, expected(lee, d, 32, "skip")) for d, got in zip(DOCS, padded))

    unknown = vectorize(DOCS[:5], model="nosuchmodel", app=client, progress=False)
    assert all(isinstance(e, UnknownModelError) for e in unknown)


def test_client_works_without_worker_code(worker: WorkerProcess, broker: EmbeddedRedis,
                                          models: dict, tmp_path: Path) -> None:
    script = f"""
import json, sys
from tasks.client import client_app, vectorize
out = vectorize([["w1", "w2", "nope"], "bad"], app=client_app({broker.url!r}), progress=False)
loaded = [m for m in ("tasks.worker", "celeryconfig", "vectorstore", "gensim") if m in sys.modules]
print(json.dumps({{"first": out[0].tolist(), "second": repr(out[1]), "loaded": loaded}}))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERY_")}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.splitlines()[-1])
    assert got["loaded"] == []
    assert np.array_equal(np.array(got["first"], np.float32),
                          expected(models["m"], ["w1", "w2", "nope"]))
    assert got["second"].startswith("InvalidDocumentError(\"document must be a list")


# --- model reload, autoscaling, crashes ------------------------------------------------------------

def test_model_flip_reaches_running_workers(worker: WorkerProcess, client: Celery,
                                            store: EmbeddedRedis) -> None:
    tokens = [f"t{i}" for i in range(400)]
    old, new = (synthetic_kv(400, 16, seed=s, tokens=tokens) for s in (1, 2))
    load(old, "flip", url=store.url, progress=False)
    doc = tokens[::7]
    results = [run(client, "vectorize_document", doc, model="flip") for _ in range(6)]
    assert all(np.array_equal(as_array(r), old[doc]) for r in results)

    load(new, "flip", url=store.url, progress=False, grace=0.5)
    time.sleep(1.5)  # every process re-checks the alias within VECTORSTORE_REFRESH (1 s)
    pending = [client.send_task("tasks.vectorize_document", [doc], {"model": "flip"})
               for _ in range(12)]
    for result in pending:
        out = result.get(timeout=TIMEOUT)
        assert out["version"] == 2
        assert np.array_equal(as_array(out), new[doc])


def test_autoscaler_grows_the_pool_under_a_burst(worker: WorkerProcess, client: Celery,
                                                 store: EmbeddedRedis, models: dict) -> None:
    """While the store stalls, tasks pile up: the pool grows to its maximum; then all complete."""
    lee = models["lee"]

    def pool_size() -> int:
        stats = client.control.inspect([worker.hostname], timeout=1).stats() or {}
        return len(stats.get(worker.hostname, {}).get("pool", {}).get("processes", []))

    # start from one process (earlier tests may have grown the pool)
    control, where = client.control, [worker.hostname]
    assert control.autoscale(1, 1, destination=where, reply=True)
    wait_for(lambda: pool_size() == 1, what="the pool to shrink to 1 process")
    assert control.autoscale(4, 1, destination=where, reply=True)
    mark = len(worker.log())
    with frozen(store):
        pending = [client.send_task("tasks.vectorize_document", [doc], {"model": "lee"})
                   for doc in DOCS[:24]]
        wait_for(lambda: pool_size() == 4, what="the pool to grow to 4 processes")
    for doc, result in zip(DOCS, pending):
        assert np.array_equal(as_array(result.get(timeout=TIMEOUT)), expected(lee, doc))
    log = worker.log()[mark:]
    assert "Scaling up" in log
    assert "Timed out waiting for UP message" not in log


def test_killed_pool_process_task_is_redelivered(worker: WorkerProcess, client: Celery,
                                                 store: EmbeddedRedis, models: dict) -> None:
    doc = [f"w{i}" for i in range(2500, 2600)]  # tokens no process has cached
    with frozen(store):
        result = client.send_task("tasks.vectorize_document", [doc])
        running = wait_for(lambda: active_task(client, worker.hostname, result.id),
                           what="the task to start")
        os.kill(running["worker_pid"], signal.SIGKILL)
        wait_for(lambda: worker.log().count(f"[{result.id}] received") == 2,
                 what="the task to be delivered again")
    assert np.array_equal(as_array(result.get(timeout=TIMEOUT)), models["m"][doc])
    assert result.state == "SUCCESS"
    assert "signal 9 (SIGKILL)" in worker.log()
    assert worker.alive()


@pytest.mark.slow
def test_killed_worker_task_is_redelivered_after_visibility_timeout(
        worker: WorkerProcess, client: Celery, broker: EmbeddedRedis, store: EmbeddedRedis,
        models: dict, log_dir: Path) -> None:
    """The whole worker dies mid-task (SIGKILL to all its processes): the task stays
    unacknowledged in the broker and another worker runs it once the visibility timeout
    has passed."""
    doc = [f"w{i}" for i in range(2600, 2700)]
    crashing = WorkerProcess("crashing", broker.url, store.url, log_dir, queues=["crash"],
                             args=["--concurrency=1"], env=NO_PREWARM)
    with crashing:
        with frozen(store):
            result = client.send_task("tasks.vectorize_document", [doc], queue="crash")
            wait_for(lambda: active_task(client, crashing.hostname, result.id),
                     what="the task to start")
            crashing.kill()
        assert result.state == "PENDING"
        with WorkerProcess("rescuer", broker.url, store.url, log_dir, queues=["crash"],
                           args=["--concurrency=1"],
                           env={"CELERY_VISIBILITY_TIMEOUT": "2"}) as rescuer:
            assert np.array_equal(as_array(result.get(timeout=TIMEOUT)), models["m"][doc])
            assert f"[{result.id}] received" in rescuer.log()


@pytest.mark.slow
def test_unreachable_store_bounded_retries_then_clear_error(client: Celery, broker: EmbeddedRedis,
                                                            log_dir: Path) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    with WorkerProcess("nostore", broker.url, dead, log_dir, queues=["nostore"],
                       args=["--concurrency=1"], env={"VECTORSTORE_TASK_RETRIES": "1"}) as w:
        result = client.send_task("tasks.vectorize_document", [["w1"]], queue="nostore")
        with pytest.raises(StoreUnavailableError, match="unreachable after retries"):
            result.get(timeout=60)
        assert w.log().count(f"[{result.id}] retry: Retry in") == 1
        assert w.alive()
