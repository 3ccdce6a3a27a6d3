"""Pre-trained word vectors served from Redis, with gensim's KeyedVectors API.

>>> from vectorstore import RedisKeyedVectors          # doctest: +SKIP
>>> kv = RedisKeyedVectors("news")                     # doctest: +SKIP
>>> kv[["fast", "car"]].shape                          # doctest: +SKIP
(2, 300)
"""
from .errors import (
                     CorruptValueError,
                     IndexInProgressError,
                     IndexNotReadyError,
                     LoadError,
                     LoadInProgressError,
                     ModelNotFoundError,
                     NotInMemoryError,
                     NotPicklableError,
                     ReadOnlyError,
                     StoreUnavailableError,
                     VectorSetsUnsupportedError,
                     VectorStoreError,
)
from .store import Lookup, RedisKeyedVectors

__all__ = [
    "RedisKeyedVectors", "Lookup", "VectorStoreError", "ModelNotFoundError", "CorruptValueError",
    "ReadOnlyError", "NotInMemoryError", "NotPicklableError", "StoreUnavailableError", "LoadError",
    "LoadInProgressError",
    "IndexNotReadyError", "IndexInProgressError", "VectorSetsUnsupportedError",
]
