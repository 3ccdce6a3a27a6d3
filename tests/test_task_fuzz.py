"""Property-based tests of the tasks' arguments against a real worker: whatever the
arguments, the task comes back (never lost) as a clear :mod:`tasks.errors` failure or as
exactly what gensim in memory computes, and the worker lives on. The example count is
bounded so CI stays fast."""
from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from celery import Celery
from celery_helpers import WorkerProcess
from conftest import synthetic_kv
from gensim.models import KeyedVectors
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasks import as_array
from tasks.client import client_app
from tasks.errors import TaskInputError
from vectorstore.loader import load
from vectorstore.server import EmbeddedRedis

VOCAB = [f"w{i}" for i in range(300)]
EXAMPLES = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10 ** 400), 10 ** 400) | st.floats(allow_nan=False)
    | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=6)
tokens = st.one_of(
    st.sampled_from(VOCAB),
    st.text(max_size=8),
    st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=2),
    st.just("x" * 1001),
)
documents = st.one_of(st.lists(tokens, min_size=0, max_size=12), json_values)
maybe = lambda good: st.one_of(good, json_values)  # noqa: E731


@pytest.fixture(scope="module")
def model() -> KeyedVectors:
    return synthetic_kv(len(VOCAB), 8, tokens=VOCAB)


@pytest.fixture(scope="module")
def client(model: KeyedVectors, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Celery]:
    with EmbeddedRedis() as server:
        load(model, "m", url=server.url, progress=False)
        logs = tmp_path_factory.mktemp("fuzz-logs")
        with WorkerProcess("fuzz", server.url, server.url, logs, args=["--concurrency=2"]) as worker:
            app = client_app(server.url)
            yield app
            gc.collect()  # pending results unsubscribe while Redis still runs
            assert worker.alive(), worker.log()[-3000:]
            assert "Unrecoverable error" not in worker.log()
            app.close()


def outcome(client: Celery, name: str, args: list, kwargs: dict) -> Any:
    result = client.send_task(f"tasks.{name}", args, kwargs)
    value = result.get(timeout=30, propagate=False)  # TimeoutError: the task was lost
    result.forget()
    if isinstance(value, BaseException):
        assert isinstance(value, TaskInputError), repr(value)
        assert str(value)
    return value


def rows(model: KeyedVectors, doc: list[str], oov: str, normalize: bool) -> np.ndarray:
    out = [model.get_vector(t, norm=normalize) if t in model.key_to_index
           else np.zeros(model.vector_size, np.float32)
           for t in doc if t in model.key_to_index or oov == "zero"]
    return np.array(out, np.float32).reshape(-1, model.vector_size)


@EXAMPLES
@given(doc=documents, max_len=maybe(st.none() | st.integers(-2, 20)),
       oov=maybe(st.sampled_from(["zero", "skip", "error"])),
       dtype=maybe(st.sampled_from(["float32", "float16"])), normalize=maybe(st.booleans()))
def test_vectorize_document(client: Celery, model: KeyedVectors, doc: Any, max_len: Any, oov: Any,
                            dtype: Any, normalize: Any) -> None:
    value = outcome(client, "vectorize_document", [doc],
                    dict(max_len=max_len, oov=oov, dtype=dtype, normalize=normalize))
    if isinstance(value, BaseException):
        return
    looked = doc[:max_len] if max_len is not None and oov != "skip" else doc
    want = rows(model, looked, oov, normalize)
    if max_len is not None:
        want = np.vstack([want, np.zeros((max_len, model.vector_size), np.float32)])[:max_len]
    assert np.array_equal(as_array(value), want.astype(dtype))
    assert value["oov"] == [t for t in looked if t not in model.key_to_index]


@EXAMPLES
@given(docs=st.one_of(st.lists(documents, max_size=4), json_values))
def test_vectorize_documents(client: Celery, model: KeyedVectors, docs: Any) -> None:
    value = outcome(client, "vectorize_documents", [docs], {})
    if isinstance(value, BaseException):
        return
    assert [np.array_equal(as_array(v), rows(model, d, "zero", False)) for v, d in zip(value, docs)] \
        == [True] * len(docs)


@EXAMPLES
@given(doc=documents, weights=maybe(st.none() | st.lists(st.floats(-1e3, 1e3), max_size=12)),
       pre=maybe(st.booleans()), post=maybe(st.booleans()))
def test_embed_document(client: Celery, model: KeyedVectors, doc: Any, weights: Any, pre: Any,
                        post: Any) -> None:
    value = outcome(client, "embed_document", [doc],
                    dict(weights=weights, pre_normalize=pre, post_normalize=post))
    if isinstance(value, BaseException):
        return
    want = model.get_mean_vector(doc, weights=weights, pre_normalize=pre, post_normalize=post)
    assert np.array_equal(as_array(value), want)


def test_worker_alive_after_fuzz(client: Celery, model: KeyedVectors) -> None:
    value = outcome(client, "vectorize_document", [["w1", "w2"]], {})
    assert np.array_equal(as_array(value), model[["w1", "w2"]])
