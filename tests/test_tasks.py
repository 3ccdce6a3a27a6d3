"""The tasks package without a worker subprocess: the result wire format through Celery's
own (msgpack) result encoding, exceptions through it, the client's chunking, the settings,
and the tasks on an in-process threads-pool worker against a real Redis."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from celery import Celery
from celery_helpers import ROOT
from conftest import synthetic_kv

from tasks import as_array, as_arrays
from tasks.client import chunks, client_app, vectorize
from tasks.errors import DocumentError, InvalidDocumentError, ResultTooLargeError, TaskInputError
from tasks.results import check_size, pack
from vectorstore.loader import load


@pytest.fixture()
def backend() -> Iterator[Any]:
    """The result backend of a client app (encodes like the workers; connects lazily)."""
    app = client_app("redis://127.0.0.1:1/0")
    yield app.backend
    app.close()


def through(backend: Any, value: Any) -> Any:
    return backend.decode(backend.encode(value))


# --- result wire format ------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(5,), (3, 4), (2, 3, 4), (0, 4)])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_result_round_trips_through_msgpack_exactly(backend: Any, shape: tuple, dtype: str
                                                    ) -> None:
    array = np.random.default_rng(0).normal(size=shape).astype(dtype)
    payload = backend.encode(pack(array, [1], ["x"], "m", 3))
    assert isinstance(payload, bytes) and b"__bytes__" not in payload  # raw bytes, not base64
    got = backend.decode(payload)
    assert (got["missing"], got["oov"], got["model"], got["version"]) == ([1], ["x"], "m", 3)
    out = as_array(got)
    assert out.dtype == np.dtype(dtype) and out.shape == shape
    assert np.array_equal(out, array)
    out[...] = 0  # a writable copy, not a view of the message
    assert len(payload) < array.nbytes + 200


def test_batch_results_become_a_list_or_a_tensor(backend: Any) -> None:
    a, b = np.ones((2, 3), np.float32), np.zeros((1, 3), np.float32)
    ragged = through(backend, [pack(a, [], [], "m", 1), pack(b, [0], ["q"], "m", 1)])
    assert [x.tolist() for x in as_arrays(ragged)] == [a.tolist(), b.tolist()]
    tensor = np.stack([a, np.vstack([b, b])])
    assert np.array_equal(as_arrays(through(backend, pack(tensor, [[], [0]], [[], ["q"]], "m", 1))),
                          tensor)


@pytest.mark.parametrize("result,message", [
    ("not a dict", "expected a dict with shape, dtype and data"),
    ({"shape": [2], "dtype": "object", "data": b""}, "unknown dtype 'object'"),
    ({"shape": [2], "dtype": "float32", "data": b"\0" * 7}, "data has 7 bytes, shape \\[2\\] of "
                                                            "float32 needs 8"),
    ({"shape": [-1], "dtype": "float32", "data": b""}, "malformed shape"),
    ({"shape": [1], "dtype": "float32", "data": "text"}, "data of type str"),
])
def test_malformed_result_is_rejected(result: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        as_array(result)


def test_size_limit_names_the_numbers() -> None:
    check_size((1000, 300), "float32", 8 * 2**20)
    with pytest.raises(ResultTooLargeError, match=r"result would be 11\.4 MiB \(10000 x 300 "
                                                  r"float32\), over the 8\.0 MiB result limit"):
        check_size((10_000, 300), "float32", 8 * 2**20)


# --- exceptions through the result backend ---------------------------------------------------

def test_exception_type_and_message_survive_the_backend(backend: Any) -> None:
    sent = InvalidDocumentError("token 1 of document is int 3, expected str")
    meta = through(backend, backend.prepare_exception(sent))
    assert meta["exc_module"] == "tasks.errors"
    got = backend.exception_to_python(meta)
    assert type(got) is InvalidDocumentError and got.args == sent.args
    assert isinstance(got, DocumentError) and isinstance(got, TaskInputError)


def test_client_without_the_errors_module_still_gets_name_and_message(backend: Any) -> None:
    meta = {"exc_type": "InvalidDocumentError", "exc_module": "tasks.not_imported_here",
            "exc_message": ["document is empty: give at least one token"]}
    got = backend.exception_to_python(meta)
    assert type(got).__name__ == "InvalidDocumentError"
    assert str(got) == "document is empty: give at least one token"


# --- client chunking, settings ------------------------------------------------------------------

def test_chunks_bound_tokens_and_keep_long_documents_alone() -> None:
    docs = [["a"] * 3, ["b"] * 2, ["c"] * 9, ["d"], "bad", ["e"] * 4]
    assert list(chunks(docs, chunk_tokens=5)) == [[0, 1], [2], [3, 4], [5]]
    assert list(chunks(docs, chunk_tokens=5, max_len=2)) == [[0, 1], [2], [3, 4], [5]]
    assert list(chunks(docs, chunk_tokens=100, max_len=40)) == [[0, 1], [2, 3], [4, 5]]
    with pytest.raises(ValueError, match="chunk_tokens and window must be positive"):
        vectorize([["a"]], chunk_tokens=0, app=Celery(set_as_current=False))


def _celeryconfig() -> Any:
    spec = importlib.util.spec_from_file_location("celeryconfig_under_test",
                                                  ROOT / "celeryconfig.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_client_and_workers_agree_on_serialization_and_never_accept_pickle() -> None:
    conf, client = _celeryconfig(), client_app("redis://127.0.0.1:1/0").conf
    for key in ("task_serializer", "result_serializer", "accept_content", "result_accept_content"):
        assert client[key] == getattr(conf, key), key
    assert sorted(conf.accept_content) == sorted(conf.result_accept_content) == ["json", "msgpack"]


def test_config_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "VECTORSTORE_MODEL",
                 "CELERY_VISIBILITY_TIMEOUT", "VECTORSTORE_MAX_TOKENS"):
        monkeypatch.delenv(name, raising=False)
    conf = _celeryconfig()
    assert conf.broker_url == conf.result_backend == "redis://localhost:6379/0"
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_soft_time_limit < conf.task_time_limit
    assert conf.broker_transport_options["visibility_timeout"] > conf.task_time_limit
    assert conf.vectorstore_model is None and conf.vectorstore_max_tokens == 10_000
    assert conf.vectorstore_max_result_bytes <= 16 * 2**20  # Redis cuts pubsub clients at 32 MB


@pytest.mark.parametrize("name", ["VECTORSTORE_MAX_TOKENS", "VECTORSTORE_CACHE_BYTES",
                                  "CELERY_TASK_TIME_LIMIT"])
def test_bad_setting_fails_at_startup_naming_the_variable(monkeypatch: pytest.MonkeyPatch,
                                                           name: str) -> None:
    monkeypatch.setenv(name, "lots")
    with pytest.raises(ValueError, match=f"{name} must be .*'lots'"):
        _celeryconfig()


def test_importing_the_package_does_not_load_the_worker() -> None:
    code = ("import sys, tasks, tasks.client, tasks.errors, tasks.results; "
            "print([m for m in ('tasks.worker', 'celeryconfig', 'gensim') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# --- in-process worker, threads pool ---------------------------------------------------------------

def test_threads_pool_worker_in_process(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Several threads of one process share its store and cache; results stay exact."""
    monkeypatch.syspath_prepend(str(ROOT))  # Celery imports celeryconfig from the repo root
    import celery.contrib.testing.tasks  # noqa: F401  (registers celery.ping)
    from celery.contrib.testing.worker import start_worker

    from tasks import app, worker

    kv = synthetic_kv(1500, 16, seed=4)
    load(kv, "threads", url=redis_url, progress=False)
    app.conf.update(broker_url=redis_url, result_backend=redis_url, vectorstore_url=redis_url)
    rng = np.random.default_rng(1)
    docs = [[f"w{i}" for i in rng.integers(0, 1600, size=50)] for _ in range(40)]
    client = client_app(redis_url)
    try:
        with start_worker(app, pool="threads", concurrency=4, perform_ping_check=True,
                          shutdown_timeout=10):
            pending = [client.send_task("tasks.vectorize_document", [d], {"model": "threads"})
                       for d in docs]
            for doc, result in zip(docs, pending):
                want = np.array([kv[t] if t in kv.key_to_index else np.zeros(16, np.float32)
                                 for t in doc])
                assert np.array_equal(as_array(result.get(timeout=30)), want)
    finally:
        client.close()
        worker._stores.pop("threads", None)
