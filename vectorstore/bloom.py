"""A Bloom filter of a model's vocabulary: tokens it certainly does not hold.

The loader writes one for a fastText model (``vs:NAME:V#bloom``, raw bytes,
:data:`BITS_PER_TOKEN` bits per vocabulary token), so a reader knows, before
asking Redis, which tokens of a document are out of the vocabulary and can
fetch their n-gram rows in the same MGET as the other tokens. A token the
filter rejects is certainly not in the vocabulary; one it accepts is in it,
or a false positive, which costs the reader more round trips: about 0.05% of
the tokens outside the vocabulary at 16 bits per token and 11 hashes (10 bits
would make it 0.8%, and a third of the 100-token documents with 50 OOV tokens
would meet one; the filter of 2M words takes 4 MB).

The ``k`` bit positions of a token follow from one 32-bit hash, fastText's
own (FNV-1a over the UTF-8 bytes; gensim's compiled ``ft_hash_bytes``): its
product with 2^64/phi gives ``h1`` (high half) and ``h2`` (low half, odd),
and position ``i`` is ``((h1 + i * h2) mod 2^32) * bits >> 32``. Bit ``p`` is
bit ``p % 8`` of byte ``p // 8``. Tokens with the same 32-bit hash share
their positions, which adds about ``count / 2^32`` (0.05% at 2M tokens) to
the false positive rate. Building and testing are numpy operations over a
batch of tokens (~35 us to test 100 tokens on this project's machine).

>>> f = BloomFilter(BloomParams.sized(3))
>>> f.add([b"car", b"red", b"fast"])
>>> f.might_contain(["car", "red", "fast"]).tolist()
[True, True, True]
>>> g = BloomFilter.stored(f.params_with_checksum(), f.to_bytes(), "test filter")
>>> g.might_contain(["car"]).tolist()
[True]
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from gensim.models.fasttext import ft_hash_bytes

from .errors import CorruptValueError

HASH = "fnv1a32-km1"  # the hashing scheme above; a reader refuses any other
BITS_PER_TOKEN = 16  # ~0.046% false positives with 11 hashes
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_LOW = np.uint64(0xFFFFFFFF)
_32 = np.uint64(32)
_MASKS = (1 << np.arange(8)).astype(np.uint8)
_FIELDS = ("bloom_bits", "bloom_hashes", "bloom_checksum")


@dataclass(frozen=True)
class BloomParams:
    """A filter's size in ``bits``, its number of ``hashes`` and the checksum of its bytes."""

    bits: int
    hashes: int
    checksum: str = ""

    @classmethod
    def sized(cls, count: int, bits_per_token: int = BITS_PER_TOKEN) -> BloomParams:
        """Parameters for ``count`` tokens: ``bits_per_token`` bits each (a whole number of
        bytes, 64 at least) and the number of hashes that minimizes false positives.

        >>> BloomParams.sized(1_000_000)
        BloomParams(bits=16000000, hashes=11, checksum='')
        """
        bits = max(64, -(-count * bits_per_token // 8) * 8)
        return cls(bits, max(1, round(bits / max(count, 1) * math.log(2))))

    @property
    def nbytes(self) -> int:
        return self.bits // 8

    def to_extra(self) -> dict[str, str]:
        """Fields of the version's metadata (:attr:`vectorstore.codec.Meta.extra`)."""
        return {"bloom_hash": HASH, "bloom_bits": str(self.bits),
                "bloom_hashes": str(self.hashes), "bloom_checksum": self.checksum}

    @classmethod
    def from_extra(cls, extra: Mapping[str, str]) -> BloomParams | None:
        """The parameters stored by :meth:`to_extra`, or None for a version without a filter.

        >>> BloomParams.from_extra(BloomParams(64, 3, "ab").to_extra())
        BloomParams(bits=64, hashes=3, checksum='ab')
        >>> BloomParams.from_extra({"format": "glove"}) is None
        True
        """
        if "bloom_hash" not in extra:
            return None
        if extra["bloom_hash"] != HASH:
            raise CorruptValueError(f"model's vocabulary filter is hashed with "
                                    f"{extra['bloom_hash']!r}, this vectorstore knows only "
                                    f"{HASH!r}: reload the model")
        try:
            bits, hashes = int(extra["bloom_bits"]), int(extra["bloom_hashes"])
            checksum = extra["bloom_checksum"]
        except (KeyError, ValueError) as exc:
            raise CorruptValueError(f"model's vocabulary filter metadata is incomplete or "
                                    f"invalid: {exc}") from None
        if bits < 8 or bits % 8 or not 1 <= hashes <= 64:
            raise CorruptValueError(f"model's vocabulary filter metadata is invalid: "
                                    f"bits={bits}, hashes={hashes}")
        return cls(bits, hashes, checksum)


def checksum(data: bytes | memoryview) -> str:
    """The checksum stored with a filter's bytes (blake2b, 128 bits, hex)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


class BloomFilter:
    """A Bloom filter over tokens, as bytes (see the module's docstring for the layout)."""

    def __init__(self, params: BloomParams, data: bytes | None = None) -> None:
        self.params = params
        self._k = np.arange(params.hashes, dtype=np.uint64)
        self._bits = np.uint64(params.bits)
        self._data = (np.zeros(params.nbytes, dtype=np.uint8) if data is None
                      else np.frombuffer(data, dtype=np.uint8))

    @classmethod
    def stored(cls, params: BloomParams, raw: bytes | None, where: str) -> BloomFilter:
        """The filter of ``raw`` read from Redis, after checking its length and checksum.

        Raises CorruptValueError naming ``where`` if it is missing, short, long or altered.
        """
        if raw is None:
            raise CorruptValueError(f"{where} is missing or not a string: reload the model")
        if len(raw) != params.nbytes:
            raise CorruptValueError(f"{where} holds {len(raw)} bytes instead of "
                                    f"{params.nbytes} ({params.bits} bits): reload the model")
        if params.checksum and checksum(raw) != params.checksum:
            raise CorruptValueError(f"{where} does not match the checksum stored with it "
                                    f"(altered after the load): reload the model")
        return cls(params, raw)

    def _positions(self, raw: Sequence[bytes]) -> np.ndarray:
        """``len(raw) x hashes`` bit positions of the UTF-8 tokens ``raw``."""
        g = np.fromiter(map(ft_hash_bytes, raw), dtype=np.uint64, count=len(raw)) * _GOLDEN
        h1, h2 = g >> _32, (g & _LOW) | np.uint64(1)
        return (((h1[:, None] + self._k * h2[:, None]) & _LOW) * self._bits) >> _32

    def add(self, raw: Sequence[bytes]) -> None:
        """Add the UTF-8 encoded tokens ``raw``."""
        if not self._data.flags.writeable:
            raise ValueError("a filter read from Redis is read-only")
        p = self._positions(raw).ravel()
        np.bitwise_or.at(self._data, p >> np.uint64(3), _MASKS[p & np.uint64(7)])

    def might_contain(self, tokens: Sequence[str]) -> np.ndarray:
        """Per token, False if it is certainly not in the filter (a bool array)."""
        p = self._positions([t.encode() for t in tokens]).astype(np.intp)
        return np.asarray((self._data[p >> 3] & _MASKS[p & 7]).all(axis=1))

    def to_bytes(self) -> bytes:
        return self._data.tobytes()

    def params_with_checksum(self) -> BloomParams:
        """:attr:`params` with the checksum of the filter's current bytes."""
        return BloomParams(self.params.bits, self.params.hashes, checksum(self._data.data))
