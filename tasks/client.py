"""Send many documents to the workers by task name, in chunks, with a progress bar.

Nothing here imports the worker's code: a client needs only the broker and
result backend (``CELERY_BROKER_URL``, ``CELERY_RESULT_BACKEND``) or an app
of its own. Failures come back as :mod:`tasks.errors` exceptions.

>>> out = vectorize([["fast", "car"], "not a list", ["red"]], model="news")  # doctest: +SKIP
>>> [type(x).__name__ for x in out]  # doctest: +SKIP
['ndarray', 'InvalidDocumentError', 'ndarray']
>>> out[0].shape  # doctest: +SKIP
(2, 300)
"""
from __future__ import annotations

import os
from collections import deque
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np
from celery import Celery
from celery.result import AsyncResult
from tqdm.auto import tqdm

from .errors import DocumentError
from .results import CONTENT_TYPES, RESULT_SERIALIZER, TASK_SERIALIZER, as_array, as_arrays

DEFAULT_BROKER_URL = "redis://localhost:6379/0"


def client_app(broker_url: Optional[str] = None, result_backend: Optional[str] = None) -> Celery:
    """A Celery app that sends tasks by name: JSON arguments, msgpack results, no pickle.

    URLs default to ``CELERY_BROKER_URL`` and ``CELERY_RESULT_BACKEND`` (else the broker).
    """
    broker = broker_url or os.environ.get("CELERY_BROKER_URL", DEFAULT_BROKER_URL)
    backend = result_backend or os.environ.get("CELERY_RESULT_BACKEND", broker)
    app = Celery("vectorstore-client", broker=broker, backend=backend, set_as_current=False)
    app.conf.update(task_serializer=TASK_SERIALIZER, result_serializer=RESULT_SERIALIZER,
                    accept_content=CONTENT_TYPES, result_accept_content=CONTENT_TYPES,
                    broker_connection_retry_on_startup=True)
    return app


def chunks(docs: Sequence[Any], chunk_tokens: int, max_len: Optional[int] = None
           ) -> Iterator[list[int]]:
    """Indexes of ``docs`` grouped so each group has at most ``chunk_tokens`` tokens
    (and result rows); a longer document goes alone.

    >>> list(chunks([["a"] * 3, ["b"] * 2, ["c"] * 4, "bad"], chunk_tokens=5))
    [[0, 1], [2, 3]]
    """
    group: list[int] = []
    size = 0
    for i, doc in enumerate(docs):
        n = max(len(doc) if isinstance(doc, list) else 1, max_len or 1)
        if group and size + n > chunk_tokens:
            yield group
            group, size = [], 0
        group.append(i)
        size += n
    if group:
        yield group


def vectorize(docs: Sequence[Any], *, model: Optional[str] = None, max_len: Optional[int] = None,
              oov: str = "zero", dtype: str = "float32", normalize: bool = False,
              app: Optional[Celery] = None, chunk_tokens: int = 2048, window: int = 8,
              timeout: Optional[float] = 300.0, progress: bool = True
              ) -> list[Union[np.ndarray, BaseException]]:
    """The matrices of ``docs`` in input order, with an exception in place of each failed one.

    Documents go in ``tasks.vectorize_documents`` chunks of about
    ``chunk_tokens`` tokens, at most ``window`` chunks in flight (this bounds
    the results waiting in Redis for this client). When a chunk fails because
    of one of its documents, its documents are sent again one by one, so only
    the bad ones fail. Options are those of ``tasks.vectorize_document``; with
    ``max_len`` every matrix is (max_len, dim).

    Raises celery's TimeoutError if a chunk takes longer than ``timeout`` s
    (e.g. no worker is running).
    """
    if chunk_tokens < 1 or window < 1:
        raise ValueError(f"chunk_tokens and window must be positive, got {chunk_tokens}, {window}")
    app = app or client_app()
    options = dict(model=model, max_len=max_len, oov=oov, dtype=dtype, normalize=normalize)
    out: list[Any] = [None] * len(docs)
    groups = chunks(docs, chunk_tokens, max_len)
    pending: deque[tuple[list[int], AsyncResult]] = deque()

    def send(group: list[int]) -> None:
        batch = [docs[i] for i in group]
        pending.append((group, app.send_task("tasks.vectorize_documents", [batch], options)))

    with tqdm(total=len(docs), unit="doc", disable=not progress) as bar:
        for group in groups:
            send(group)
            while len(pending) >= window:
                _collect(app, docs, options, *pending.popleft(), out, timeout, bar)
        while pending:
            _collect(app, docs, options, *pending.popleft(), out, timeout, bar)
    return out


def _get(result: AsyncResult, timeout: Optional[float]) -> Any:
    """The value or the exception of ``result``, which is then deleted from the backend."""
    try:
        return result.get(timeout=timeout, propagate=False)
    finally:
        result.forget()


def _collect(app: Celery, docs: Sequence[Any], options: dict[str, Any], group: list[int],
             result: AsyncResult, out: list[Any], timeout: Optional[float], bar: tqdm) -> None:
    """Put the arrays or errors of one chunk's ``result`` into ``out``."""
    value = _get(result, timeout)
    if isinstance(value, DocumentError) and len(group) > 1:
        singles = [(i, app.send_task("tasks.vectorize_document", [docs[i]], options))
                   for i in group]
        for i, single in singles:
            one = _get(single, timeout)
            out[i] = one if isinstance(one, BaseException) else as_array(one)
    elif isinstance(value, BaseException):
        for i in group:
            out[i] = value
    else:
        arrays = as_arrays(value)
        for i, array in zip(group, arrays):
            out[i] = array
    bar.update(len(group))
