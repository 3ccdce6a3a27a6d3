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
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis
from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.result import AsyncResult
from tqdm.auto import tqdm

from .broker import check_sentinel, connection_settings
from .errors import DocumentError
from .results import CONTENT_TYPES, RESULT_SERIALIZER, TASK_SERIALIZER, as_array, as_arrays

DEFAULT_BROKER_URL = "redis://localhost:6379/0"


def client_app(broker_url: str | None = None, result_backend: str | None = None) -> Celery:
    """A Celery app that sends tasks by name: JSON arguments, msgpack results, no pickle.

    URLs default to ``CELERY_BROKER_URL`` and ``CELERY_RESULT_BACKEND`` (else the broker).
    """
    broker = broker_url or os.environ.get("CELERY_BROKER_URL", DEFAULT_BROKER_URL)
    backend = result_backend or os.environ.get("CELERY_RESULT_BACKEND", broker)
    check_sentinel({"CELERY_BROKER_URL": broker, "CELERY_RESULT_BACKEND": backend})
    app = Celery("vectorstore-client", broker=broker, backend=backend, set_as_current=False)
    app.conf.update(task_serializer=TASK_SERIALIZER, result_serializer=RESULT_SERIALIZER,
                    accept_content=CONTENT_TYPES, result_accept_content=CONTENT_TYPES,
                    **connection_settings())
    return app


def chunks(docs: Sequence[Any], chunk_tokens: int, max_len: int | None = None
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


def vectorize(docs: Sequence[Any], *, model: str | None = None, max_len: int | None = None,
              oov: str | None = None, dtype: str = "float32", normalize: bool = False,
              app: Celery | None = None, chunk_tokens: int = 2048, window: int = 8,
              timeout: float | None = 300.0, resend_after: float | None = 60.0,
              progress: bool = True) -> list[np.ndarray | BaseException]:
    """The matrices of ``docs`` in input order, with an exception in place of each failed one.

    Documents go in ``tasks.vectorize_documents`` chunks of about
    ``chunk_tokens`` tokens, at most ``window`` chunks in flight (this bounds
    the results waiting in Redis for this client). When a chunk fails because
    of one of its documents, its documents are sent again one by one, so only
    the bad ones fail. Options are those of ``tasks.vectorize_document`` (``oov``
    None: the model's default, ``"subword"`` for a fastText model); with
    ``max_len`` every matrix is (max_len, dim). A task with no result after
    ``resend_after`` s is sent again (see :func:`wait`).

    Raises celery's TimeoutError if a chunk takes longer than ``timeout`` s
    (e.g. no worker is running).
    """
    if chunk_tokens < 1 or window < 1:
        raise ValueError(f"chunk_tokens and window must be positive, got {chunk_tokens}, {window}")
    app = app or client_app()
    options = dict(model=model, max_len=max_len, oov=oov, dtype=dtype, normalize=normalize)
    out: list[Any] = [None] * len(docs)
    groups = chunks(docs, chunk_tokens, max_len)
    pending: deque[tuple[list[int], Sent]] = deque()
    waiting = dict(timeout=timeout, resend_after=resend_after)

    with tqdm(total=len(docs), unit="doc", disable=not progress) as bar:
        for group in groups:
            pending.append((group, send(app, "tasks.vectorize_documents",
                                        [[docs[i] for i in group]], options)))
            while len(pending) >= window:
                _collect(app, docs, options, *pending.popleft(), out, waiting, bar)
        while pending:
            _collect(app, docs, options, *pending.popleft(), out, waiting, bar)
    return out


@dataclass
class Sent:
    """A task sent by name, with what is needed to send it again under the same id,
    and how many times :func:`wait` did."""

    name: str
    args: list[Any]
    kwargs: dict[str, Any]
    result: AsyncResult
    resends: int = 0


def send(app: Celery, name: str, args: list[Any], kwargs: dict[str, Any]) -> Sent:
    """Send task ``name`` and keep its arguments (for :func:`wait`)."""
    return Sent(name, args, kwargs, app.send_task(name, args, kwargs))


def wait(app: Celery, sent: Sent, timeout: float | None = 300.0,
         resend_after: float | None = 60.0) -> Any:
    """The value, or the exception, of the task ``sent``; its result is then deleted.

    The Redis broker can lose a task taken off the queue at the very moment Redis
    stops (kombu pops it, then records it as unacknowledged: a crash between the two
    leaves no trace). So a task without a result after ``resend_after`` s is sent
    again under the same id, then after twice as long, and so on; a task that was
    only slow runs twice, harmlessly (tasks only read, and both runs store the same
    result). ``resend_after=None`` never resends. While Redis restarts, it waits for it.
    Raises celery's TimeoutError after ``timeout`` s.

    >>> sent = send(app, "tasks.vectorize_document", [["fast", "car"]], {})  # doctest: +SKIP
    >>> as_array(wait(app, sent)).shape                                     # doctest: +SKIP
    (2, 300)
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    interval = resend_after
    try:
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            step = left if interval is None else interval if left is None else min(interval, left)
            try:
                # ready() reads the stored result: celery's result consumer drops the
                # notices of results that arrived while it waited on another task, and
                # get() would then wait a whole second to look
                sent.result.ready()
                return sent.result.get(timeout=step, propagate=False)
            except (redis.ConnectionError, redis.TimeoutError):
                # Redis restarts: wait for it (each get() first reads the stored result)
                if deadline is not None and time.monotonic() >= deadline:
                    raise
                time.sleep(min(1.0, step or 1.0))
                continue
            except CeleryTimeoutError:
                if interval is None or (deadline is not None and time.monotonic() >= deadline):
                    raise
                app.send_task(sent.name, sent.args, sent.kwargs, task_id=sent.result.id)
                sent.resends += 1
                interval *= 2
    finally:
        with suppress(redis.RedisError):  # a result left behind expires (result_expires)
            sent.result.forget()


def _collect(app: Celery, docs: Sequence[Any], options: dict[str, Any], group: list[int],
             sent: Sent, out: list[Any], waiting: dict[str, Any], bar: tqdm) -> None:
    """Put the arrays or errors of one chunk's task ``sent`` into ``out``."""
    value = wait(app, sent, **waiting)
    if isinstance(value, DocumentError) and len(group) > 1:
        singles = [(i, send(app, "tasks.vectorize_document", [docs[i]], options)) for i in group]
        for i, single in singles:
            one = wait(app, single, **waiting)
            out[i] = one if isinstance(one, BaseException) else as_array(one)
    elif isinstance(value, BaseException):
        for i in group:
            out[i] = value
    else:
        arrays = as_arrays(value)
        for i, array in zip(group, arrays):
            out[i] = array
    bar.update(len(group))
