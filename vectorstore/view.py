"""What a process knows about the model version it serves: the store reads through it, the
similarity methods take it, and neither imports the other for it.

>>> kv._current().meta.version, kv._current().alias        # doctest: +SKIP
(3, b'3')
"""
from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

from .cache import VectorCache
from .codec import Codec, Meta
from .errors import CorruptValueError, VectorStoreError
from .keys import I2K_CHUNK, Keys


class Reader(Protocol):
    """What :class:`IndexToKey` needs of the store: a model name, its keys, one command."""

    name: str
    keys: Keys

    def _call(self, *args: Any) -> Any: ...


GROUPS_FIELD = "token_groups"  # metadata: hash tags of a version's token groups, comma-separated


@dataclass(frozen=True)
class TokenKeys:
    """The key names of one version's tokens: ``prefix + token``, or, for a version loaded
    into a Redis Cluster, ``group prefix + token``, where the group is the token's CRC-32
    modulo the number of groups and each group prefix ends with a hash tag of its own
    (:meth:`vectorstore.keys.Keys.token_group_prefix`), chosen by the loader so that the
    groups lie on distinct masters. A document's tokens then fall in one hash slot per
    master: one MGET per node, not one per token's slot.

    >>> TokenKeys(b"vs:m:1:")(["car"])
    [b'vs:m:1:car']
    >>> TokenKeys(b"vs:m:1:", (b"vs:m:1:{m:1:0}", b"vs:m:1:{m:1:4}"))(["car", "fast"])
    [b'vs:m:1:{m:1:4}car', b'vs:m:1:{m:1:0}fast']
    """

    prefix: bytes
    groups: tuple[bytes, ...] = ()

    @classmethod
    def of(cls, keys: Keys, meta: Meta) -> TokenKeys:
        """The token keys of ``meta``'s version (its groups from the metadata, if any)."""
        tags = [t for t in meta.extra.get(GROUPS_FIELD, "").split(",") if t]
        return cls(keys.token_prefix(meta.version),
                   tuple(keys.token_group_prefix(meta.version, t) for t in tags))

    def __call__(self, tokens: Sequence[str]) -> list[bytes]:
        """Key names of ``tokens`` (str; anything else raises AttributeError)."""
        if not self.groups:  # the lookup hot path: one pass over the tokens
            prefix = self.prefix
            return [prefix + t.encode() for t in tokens]
        return self.raw([t.encode() for t in tokens])

    def raw(self, tokens: Sequence[bytes]) -> list[bytes]:
        """Key names of UTF-8 encoded ``tokens``."""
        if not self.groups:
            prefix = self.prefix
            return [prefix + t for t in tokens]
        groups, n = self.groups, len(self.groups)
        return [groups[zlib.crc32(t) % n] + t for t in tokens]

    def token(self, key: bytes) -> bytes | None:
        """The token of key name ``key``, or None if no token of this version has that key."""
        if not key.startswith(self.prefix):
            return None
        token = key[len(self.prefix):]
        if not self.groups:
            return token
        close = token.find(b"}")
        token = token[close + 1:] if token.startswith(b"{") and close > 0 else b""
        return token if token and self.raw([token])[0] == key else None


@dataclass
class View:
    """The version the model's alias points to, as one process sees it."""

    meta: Meta
    codec: Codec
    names: TokenKeys  # of its tokens
    cache: VectorCache
    index_to_key: IndexToKey
    alias: bytes  # the alias's value while it points to this version


class IndexToKey(Sequence[str]):
    """Tokens of one model version in index order, fetched lazily by chunks.

    >>> kv.index_to_key[0], kv.index_to_key[-1], len(kv.index_to_key)   # doctest: +SKIP
    ('the', 'zymurgy', 3000000)
    """

    def __init__(self, kv: Reader, version: int, count: int) -> None:
        self._kv, self._version, self._count = kv, version, count
        self._chunk = lru_cache(maxsize=64)(self._fetch_chunk)

    def __len__(self) -> int:
        return self._count

    def _fetch_chunk(self, chunk: int) -> list[str]:
        return self._fetch_chunks([chunk])[0]

    def _fetch_chunks(self, chunks: Sequence[int]) -> list[list[str]]:
        kv = self._kv
        names = [kv.keys.i2k(self._version, c) for c in chunks]
        raw = kv._call("MGET", kv.keys.current, *names)
        if raw[0] != b"%d" % self._version:
            raise VectorStoreError(
                f"model {kv.name!r} version {self._version} is gone (replaced by a reload)")
        out = []
        for name, chunk, value in zip(names, chunks, raw[1:]):
            want = min(I2K_CHUNK, self._count - chunk * I2K_CHUNK)
            try:
                tokens = value.decode("utf-8").split("\n") if value is not None else []
            except UnicodeDecodeError:
                tokens = []
            if len(tokens) != want:
                raise CorruptValueError(
                    f"model {kv.name!r}: its index->token chunk {name} is missing, not a string "
                    f"or does not hold {want} UTF-8 tokens: run `vectorstore verify {kv.name}` "
                    f"and reload the model")
            out.append(tokens)
        return out

    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            idx = range(*i.indices(self._count))
            if not idx:
                return []
            lo, hi = min(idx[0], idx[-1]) // I2K_CHUNK, max(idx[0], idx[-1]) // I2K_CHUNK
            chunks = dict(zip(range(lo, hi + 1), self._fetch_chunks(range(lo, hi + 1))))
            return [chunks[j // I2K_CHUNK][j % I2K_CHUNK] for j in idx]
        i = int(i)
        if i < 0:
            i += self._count
        if not 0 <= i < self._count:
            raise IndexError(f"index {i} out of range for a model of {self._count} keys")
        return self._chunk(i // I2K_CHUNK)[i % I2K_CHUNK]

    def __eq__(self, other: object) -> bool:
        """Equal to any sequence of the same tokens in the same order (a list, as gensim's)."""
        if isinstance(other, IndexToKey) and (other._kv.keys, other._version) == (
                self._kv.keys, self._version):
            return True
        if not isinstance(other, Sequence) or isinstance(other, (str, bytes)):
            return NotImplemented
        return len(other) == self._count and all(a == b for a, b in zip(self, other))

    __hash__ = None  # type: ignore[assignment]  # mutable-sequence semantics, like a list

    def __iter__(self) -> Iterator[str]:
        total = -(-self._count // I2K_CHUNK)
        for start in range(0, total, 64):
            for chunk in self._fetch_chunks(range(start, min(total, start + 64))):
                yield from chunk
