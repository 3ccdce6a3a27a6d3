"""Exceptions the tasks raise for bad requests; a client gets them back by type and message.

Celery sends a failure through the (json/msgpack) result backend as the
exception's module, class name and arguments. A client that has imported this
small module gets these very classes back; any other client gets a class of
the same name and the same message.

>>> err = DocumentTooLongError("document has 20000 tokens, the limit is 10000")
>>> isinstance(err, DocumentError) and isinstance(err, TaskInputError)
True
>>> err.args
('document has 20000 tokens, the limit is 10000',)
"""
from __future__ import annotations


class TaskInputError(ValueError):
    """The request is invalid; retrying it cannot help."""


class InvalidOptionError(TaskInputError):
    """An option (``max_len``, ``oov``, ``dtype``, ...) has a bad value."""


class UnknownModelError(TaskInputError, LookupError):
    """No model of that name is loaded in the store (or no model was named)."""


class DocumentError(TaskInputError):
    """Something is wrong with one document; the other documents may be fine."""


class InvalidDocumentError(DocumentError):
    """A document is not a non-empty list of strings."""


class DocumentTooLongError(DocumentError):
    """A document has more tokens than the worker accepts."""


class OutOfVocabularyError(DocumentError, LookupError):
    """With ``oov="error"``, a token is not in the model."""


class ResultTooLargeError(DocumentError):
    """The result would exceed the size the result backend can carry safely."""


class UndecodableTaskError(TaskInputError):
    """The task message's arguments could not be decoded (e.g. a JSON integer over
    4300 digits, a ``{"__type__": ...}`` object kombu cannot rebuild); the worker failed
    the task rather than drop it."""
