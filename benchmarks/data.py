"""Benchmark data: synthetic models whose tokens are real English words.

A model of ``count`` x ``dim`` takes the ``count`` most frequent words of
wordfreq's large English list (about 320k), padded with synthetic tokens
``~w<rank>`` for bigger vocabularies, and clustered random vectors, so that
neighbours share a cluster and similarity search means something. Models
are written once per size as a word2vec binary (``.bin``), gensim's native
format (``.kv`` + ``.npy``, loadable with ``mmap='r'``) and, on request, a
word2vec text file (``.txt``), and reused by later runs.

Token streams are drawn either uniformly over the vocabulary or Zipf-like,
as in real text: real words by their wordfreq frequency, synthetic tokens
continuing Zipf's law (frequency ~ 1/rank) below the last real word.

>>> m = model(1000, dim=16, data_dir=tmp)                         # doctest: +SKIP
>>> docs = Streams(m.tokens).documents("zipf", 5, 100, seed=1)    # doctest: +SKIP
>>> len(docs), len(docs[0])                                       # doctest: +SKIP
(5, 100)
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from gensim.models import KeyedVectors

DEFAULT_DATA_DIR = Path(__file__).parent / "data"
DISTRIBUTIONS = ("uniform", "zipf")
_CHUNK = 100_000


def real_words(count: int) -> list[str]:
    """Up to ``count`` most frequent English words (no whitespace, printable)."""
    import wordfreq

    words = wordfreq.top_n_list("en", count + 1000, wordlist="large")
    return [w for w in words if w.split() == [w] and w.isprintable()][:count]


def vocabulary(count: int) -> list[str]:
    """``count`` tokens by descending frequency: real words, then ``~w<rank>`` padding."""
    words = real_words(count)
    return words + [f"~w{i}" for i in range(len(words), count)]


def frequencies(tokens: Sequence[str]) -> np.ndarray:
    """Probabilities of ``tokens`` in running text (wordfreq, Zipf tail for padding)."""
    import wordfreq

    freq = wordfreq.get_frequency_dict("en", wordlist="large")
    p = np.array([freq.get(t, 0.0) for t in tokens], dtype=np.float64)
    real = np.flatnonzero(p)
    last = real[-1] if len(real) else -1
    if last + 1 < len(p):  # continue Zipf's law from the last real word
        anchor = p[last] * (last + 1) if last >= 0 else 1.0
        ranks = np.arange(last + 2, len(p) + 1, dtype=np.float64)
        p[last + 1:] = anchor / ranks
    p[p == 0] = p[p > 0].min()
    return p / p.sum()


def clustered_vectors(count: int, dim: int, seed: int = 0) -> np.ndarray:
    """``count`` x ``dim`` float32 vectors around ``count // 500`` (16..2000) centres."""
    rng = np.random.default_rng(seed)
    clusters = int(np.clip(count // 500, 16, 2000))
    centers = rng.normal(size=(clusters, dim)).astype(np.float32)
    out = np.empty((count, dim), dtype=np.float32)
    for lo in range(0, count, _CHUNK):
        hi = min(count, lo + _CHUNK)
        labels = rng.integers(0, clusters, size=hi - lo)
        out[lo:hi] = centers[labels] + 0.5 * rng.standard_normal((hi - lo, dim), dtype=np.float32)
    return out


@dataclass(frozen=True)
class Model:
    """Files of one generated model; ``name`` is a valid vectorstore model name."""

    count: int
    dim: int
    stem: Path

    @property
    def name(self) -> str:
        return f"m{self.count}x{self.dim}"

    @property
    def bin_path(self) -> Path:
        return self.stem.with_suffix(".bin")

    @property
    def kv_path(self) -> Path:
        return self.stem.with_suffix(".kv")

    @property
    def payload(self) -> int:
        """Bytes of one float32 vector."""
        return 4 * self.dim

    def text_path(self) -> Path:
        """A word2vec text file of the model, written on first use."""
        path = self.stem.with_suffix(".txt")
        if not path.exists():
            tmp = path.with_suffix(".txt.part")
            self.load().save_word2vec_format(str(tmp), binary=False)
            os.replace(tmp, path)
        return path

    def load(self, mmap: str | None = None) -> KeyedVectors:
        """The model as gensim KeyedVectors (in memory, or memory-mapped with ``mmap='r'``)."""
        return KeyedVectors.load(str(self.kv_path), mmap=mmap)

    @cached_property
    def tokens(self) -> list[str]:
        return vocabulary(self.count)


def model(count: int, dim: int = 300, data_dir: Path = DEFAULT_DATA_DIR, seed: int = 0) -> Model:
    """The model of ``count`` x ``dim``, generated and saved on first use, else reused."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    m = Model(count, dim, data_dir / f"model-{count}x{dim}-s{seed}")
    done = m.stem.with_suffix(".done")
    if done.exists():
        return m
    kv = KeyedVectors(dim, count=count, dtype=np.float32)
    kv.vectors = clustered_vectors(count, dim, seed)
    kv.index_to_key = m.tokens
    kv.key_to_index = {t: i for i, t in enumerate(m.tokens)}
    kv.save_word2vec_format(str(m.bin_path), binary=True)
    kv.save(str(m.kv_path))
    done.touch()
    return m


class Streams:
    """Documents drawn from a vocabulary, uniformly or with text-like (Zipf) frequencies."""

    def __init__(self, tokens: Sequence[str]) -> None:
        self.tokens = list(tokens)

    @cached_property
    def _cdf(self) -> np.ndarray:
        return np.cumsum(frequencies(self.tokens))

    def indexes(self, dist: str, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` token indexes drawn from ``dist`` ("uniform" or "zipf")."""
        if dist == "uniform":
            return rng.integers(0, len(self.tokens), size=n)
        if dist == "zipf":
            idx = np.searchsorted(self._cdf, rng.random(n) * self._cdf[-1], side="right")
            return np.minimum(idx, len(self.tokens) - 1)
        raise ValueError(f"unknown distribution {dist!r}: choose one of {DISTRIBUTIONS}")

    def documents(self, dist: str, n_docs: int, length: int, seed: int = 0) -> list[list[str]]:
        """``n_docs`` documents of ``length`` tokens each."""
        rng = np.random.default_rng(seed)
        idx = self.indexes(dist, n_docs * length, rng).reshape(n_docs, length)
        toks = self.tokens
        return [[toks[i] for i in row] for row in idx]
