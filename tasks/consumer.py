"""The workers' Celery consumer: a task message that cannot be decoded fails its task.

Celery logs such a message and drops it; whoever waits on the task then waits
forever. This consumer also stores a :class:`~tasks.errors.UndecodableTaskError`
as the task's result (its id is in the message headers, which are readable even
when the body is not), so ``result.get()`` raises at once. Selected in
``celeryconfig`` with ``worker_consumer = "tasks.consumer:Consumer"``.

>>> r = app.send_task("tasks.vectorize_document", [[10 ** 5000]])  # doctest: +SKIP
>>> r.get()                                                      # doctest: +SKIP
Traceback (most recent call last):
...
tasks.errors.UndecodableTaskError: task arguments could not be decoded (application/json): ...
"""
from __future__ import annotations

import logging
from typing import Any

from celery.worker.consumer import Consumer as CeleryConsumer
from kombu.message import Message

from .errors import TaskInputError, UndecodableTaskError

logger = logging.getLogger(__name__)


class Consumer(CeleryConsumer):
    """Celery's consumer; undecodable and invalid task messages fail their task."""

    def on_decode_error(self, message: Message, exc: Exception) -> None:
        super().on_decode_error(message, exc)  # logs it and acknowledges the message
        self._fail(message, UndecodableTaskError(
            f"task arguments could not be decoded ({message.content_type}): {_short(exc)}; "
            f"arguments must be plain JSON (numbers of at most 4300 digits, no "
            f"{{\"__type__\": ...}} objects)"))

    def on_invalid_task(self, body: Any, message: Message, exc: Exception) -> None:
        super().on_invalid_task(body, message, exc)  # logs it and rejects the message
        self._fail(message, TaskInputError(f"invalid task message: {_short(exc)}"))

    def _fail(self, message: Message, error: Exception) -> None:
        """Store ``error`` as the result of the message's task, if it names one."""
        headers = message.headers if isinstance(message.headers, dict) else {}
        task_id = headers.get("id")
        if not isinstance(task_id, str):
            return
        try:
            self.app.backend.mark_as_failure(task_id, error)
        except Exception:  # noqa: BLE001  # the consumer must live on whatever the backend does
            logger.exception("could not store the failure of undecodable task %s", task_id)


def _short(exc: Exception, limit: int = 200) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[:limit - 3] + "..."
