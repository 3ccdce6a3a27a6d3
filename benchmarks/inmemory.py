"""The scale test's anchor: Celery workers that each hold a gensim model in memory.

Same settings as the project's workers (``celeryconfig``), same result
format (:func:`tasks.results.pack`); the difference is where vectors live:
each pool process loads ``BENCH_KV_PATH`` (a gensim ``.kv``) fully into its
own memory on its first task, as the seed article's workers did.

    BENCH_KV_PATH=benchmarks/data/model-100000x300-s0.kv \\
    celery -A benchmarks.inmemory worker --autoscale=8,1
"""
from __future__ import annotations

import os
import threading
from typing import Any

from celery import Celery
from gensim.models import KeyedVectors

from tasks.results import pack

app = Celery("bench-inmemory")
app.config_from_object("celeryconfig")

_model: KeyedVectors | None = None
_lock = threading.Lock()


def model() -> KeyedVectors:
    """This process's copy of the model, loaded on first use."""
    global _model
    with _lock:
        if _model is None:
            _model = KeyedVectors.load(os.environ["BENCH_KV_PATH"])
        return _model


@app.task(name="bench.vectorize_document")
def vectorize_document(tokens: list[str]) -> dict[str, Any]:
    """The (n, dim) float32 matrix of ``tokens`` from the in-memory model."""
    return pack(model()[tokens], [], [], "inmemory", 0)
