"""Exceptions raised by vectorstore. All derive from :class:`VectorStoreError`."""
from __future__ import annotations


class VectorStoreError(Exception):
    """Base class of every error this package raises on purpose."""


class ModelNotFoundError(VectorStoreError, LookupError):
    """The named model has no published version in this Redis."""


class CorruptValueError(VectorStoreError):
    """A value read from Redis is not what the model stored: wrong length or type, a
    non-finite float, an index that disagrees, an alias that holds no version number."""


class ReadOnlyError(VectorStoreError, NotImplementedError):
    """A writing method was called on a Redis-backed, read-only model."""


class NotPicklableError(VectorStoreError, TypeError):
    """A handle built with ``client=`` was pickled; only ``url=`` handles travel (a TypeError,
    as pickle's own refusal of a lock or a socket)."""


class NotInMemoryError(VectorStoreError, AttributeError):
    """An in-memory matrix (``kv.vectors``, ``kv.norms``) was asked of a Redis-backed model.

    An AttributeError too, so ``hasattr(kv, "vectors")`` is False and
    ``getattr(kv, "norms", None)`` is None, as library code probing a model expects.
    """


class StoreUnavailableError(VectorStoreError, ConnectionError):
    """Redis could not be reached after the configured retries."""


class LoadError(VectorStoreError):
    """A model file is malformed; the message names the file and the record."""


class LoadInProgressError(VectorStoreError):
    """Another loader holds the lock for this model name."""


class IndexNotReadyError(VectorStoreError):
    """A similarity method was called before the model's vector index is built."""


class VectorSetsUnsupportedError(VectorStoreError):
    """The Redis server has no vector sets (VADD/VSIM need Redis 8 or later)."""


class IndexInProgressError(VectorStoreError):
    """Another process is building the vector index of this model version."""
