"""The seed design, reimplemented faithfully as the benchmarks' baseline.

One key per token, ``<MODEL>:<token>``, whose value is
``bz2.compress(pickle.dumps(vector))``; a lookup is one GET per token, then
decompress and unpickle; a document is the ``vstack`` of those. The bulk
loader pipelines the SETs in batches of 1000.

This module is the only place in the project where pickle appears, and it
only reads what it wrote itself. It is a baseline, never part of the product:
anyone who can write to such a Redis can run code on every reader.

>>> load_seed(client, kv, "news")                    # doctest: +SKIP
>>> SeedKeyedVectors(client, "news")[["fast", "car"]].shape   # doctest: +SKIP
(2, 300)
"""
from __future__ import annotations

import bz2
import pickle
from collections.abc import Sequence

import numpy as np
import redis
from gensim.models import KeyedVectors

BATCH = 1000


def encode(vector: np.ndarray) -> bytes:
    """The seed's stored value of one vector."""
    return bz2.compress(pickle.dumps(vector))


def load_seed(client: redis.Redis, kv: KeyedVectors, key: str, batch_size: int = BATCH) -> int:
    """Store every vector of ``kv`` under ``<key>:<token>``; returns the count."""
    pipe = client.pipeline(transaction=False)
    for i, word in enumerate(kv.index_to_key, 1):
        pipe.set(f"{key}:{word}", encode(kv[word]))
        if i % batch_size == 0:
            pipe.execute()
    pipe.execute()
    return len(kv.index_to_key)


class SeedKeyedVectors:
    """The seed's reader: ``kv[word]`` and ``kv[words]`` with one GET per token."""

    def __init__(self, client: redis.Redis, key: str) -> None:
        self.client = client
        self.key = key

    def word_vec(self, word: str) -> np.ndarray:
        raw = self.client.get(f"{self.key}:{word}")
        if not isinstance(raw, bytes):
            raise KeyError(f"Key '{word}' not present")
        return pickle.loads(bz2.decompress(raw))

    def __getitem__(self, words: str | Sequence[str]) -> np.ndarray:
        if isinstance(words, str):
            return self.word_vec(words)
        return np.vstack([self.word_vec(word) for word in words])
