"""Celery tasks that turn tokenized documents into word-vector arrays.

Run workers from the repository root (settings: ``celeryconfig.py``)::

    celery -A tasks worker --autoscale=8,2

Send tasks by name from any process, without importing the worker code::

    >>> from tasks import as_array                                           # doctest: +SKIP
    >>> from tasks.client import client_app, vectorize  # doctest: +SKIP
    >>> r = client_app().send_task("tasks.vectorize_document", [["fast", "car"]])  # doctest: +SKIP
    >>> as_array(r.get()).shape  # doctest: +SKIP
    (2, 300)
    >>> [m.shape for m in vectorize([["fast", "car"], ["red"]])]  # doctest: +SKIP
    [(2, 300), (1, 300)]

Importing this package is cheap: the Celery app (``tasks.app``) and the task
objects load on first access, so clients never pull in the worker's code.
"""
from typing import Any

from .results import as_array, as_arrays

_WORKER_NAMES = ("app", "vectorize_document", "vectorize_documents", "embed_document")

__all__ = ["as_array", "as_arrays", *_WORKER_NAMES]


def __getattr__(name: str) -> Any:
    if name in _WORKER_NAMES:
        from . import worker

        return getattr(worker, name)
    raise AttributeError(f"module 'tasks' has no attribute {name!r}")
