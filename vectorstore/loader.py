"""Load word vectors into Redis atomically, and inspect, verify or drop loaded models.

A load writes a fresh version next to the one being served and flips the
model's alias only when every vector is written, so readers never see a
half-loaded model:

1. take the model's lock (:class:`vectorstore.lock.Lock`: ``SET NX PX``, renewed
   while loading; a lock left by a dead process on this host is taken over);
2. delete leftover versions of earlier loads that died (all versions but the
   current one: holding the lock means nobody else is writing);
3. ``INCR`` the version counter, register the version, write metadata with
   state ``loading``;
4. write each batch with one ``MSETNX`` (a duplicate token makes it fail) and
   the index->token chunks, while hashing tokens and vector bytes (SHA-256);
5. if asked (``index=IndexOptions(...)``), build the new version's similarity
   index (:func:`vectorstore.index.build_index`), still unpublished, so the
   model can answer similarity queries from the moment its alias flips;
6. in one ``MULTI``/``EXEC`` (guarded by ``WATCH`` on the lock): mark the
   version ready with its count and checksum, point the alias at it, list the
   model; then, after ``grace`` seconds, delete the previous version.

Any error or Ctrl-C, in the index build too, deletes the new version's keys
(and its partial index) and releases the lock; a SIGKILLed load leaves keys
nobody sees, removed by the next load.

Parsing and packing run in the caller's thread (text: polars on parser
threads, see :mod:`vectorstore.readers`), sending and hashing on a writer
thread of its own. Measured on this project's 2-core development machine
into a local Redis 8.2, 300-d float32, CPU seconds per 200k vectors (the
loader's process, all threads; then Redis): word2vec binary 0.8-0.9 + 0.3,
220-285k vectors/s at 1M with load average ~1, 135-165k/s with ~1.4 cores
taken by other jobs (reading ~0.25, packing the MSETNX commands and the
checksum input ~0.25, hashing ~0.3, sending ~0.1); fastText .vec 3.8-4.1 +
0.35 (polars ~2.3 of it), 74-78k/s at 1M with load average ~1 (gensim's text
loader on the same file: 5.5-6k/s, 33-36 CPU-s); word2vec text the same;
GloVe with one token in 1,000 holding a space ~4.1 (~70k/s). Those rates were
measured by hand on a quiet machine, before text was parsed 4000 lines at a time
and hashed with SHA-256; the benchmark report's figure 3 has binary 252k/s and text
74-87k/s, 16-17x gensim's text loader.
The loader's RSS stays ~165 MiB (binary) and ~235 MiB (text) at 1M, whatever
the file size.

>>> meta = load("GoogleNews-vectors-negative300.bin.gz", "news")     # doctest: +SKIP
>>> meta.count, meta.dim
(3000000, 300)
>>> verify("news").ok                                                   # doctest: +SKIP
True
>>> meta = load("GoogleNews-vectors-negative300.bin.gz", "news",
...             index=IndexOptions("q8"))                               # doctest: +SKIP
"""
from __future__ import annotations

import logging
import queue
import re
import threading
import time
from collections import deque
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import hiredis
import numpy as np
import redis
from redis.crc import key_slot
from tqdm import tqdm

from .bloom import BloomFilter, BloomParams
from .codec import Codec, Meta, check_dtype, checksum_digest
from .errors import CorruptValueError, LoadError, LoadInProgressError, ModelNotFoundError
from .fasttext import FastTextReader
from .index import IndexOptions, build_index, check_vector_sets, read_status
from .keys import DEFAULT_PREFIX, I2K_CHUNK, Keys, models_key
from .lock import Lock
from .readers import DEFAULT_BATCH, Reader, open_vectors
from .subword import SubwordParams
from .topology import ClusterDeployment, Deployment, deployment
from .view import GROUPS_FIELD, TokenKeys

logger = logging.getLogger(__name__)

LOCK_TTL_MS = 15_000
SCAN_COUNT = 5000
MEMORY_SAMPLE = 128
MAX_PROBLEMS = 20


@dataclass
class VerifyResult:
    """Outcome of :func:`verify`: what the metadata says versus what Redis holds."""

    name: str
    version: int
    expected_count: int
    found_count: int
    expected_checksum: str
    found_checksum: str
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (not self.problems and self.found_count == self.expected_count
                and self.found_checksum == self.expected_checksum)


@dataclass
class ModelInfo:
    """Outcome of :func:`info`: the served version's metadata and the model's footprint."""

    name: str
    meta: Meta
    versions: list[int]
    bytes_used: int
    loading: str | None = None


def load(source: Any, name: str, *, url: str | None = None,
         client: redis.Redis | None = None, fmt: str = "auto", limit: int | None = None,
         dtype: str = "float32", batch_size: int = DEFAULT_BATCH, progress: bool = True,
         prefix: str = DEFAULT_PREFIX, grace: float = 2.0,
         index: IndexOptions | None = None) -> Meta:
    """Load the vectors of ``source`` as model ``name``; return the published metadata.

    Args:
        source: path of a vector file (see :mod:`vectorstore.readers`) or a gensim
            ``KeyedVectors``.
        name: model name; a reload replaces the served version atomically.
        url, client: where to load (``client`` wins); default from the environment.
        fmt: file format, ``"auto"`` to detect it.
        limit: load only the first ``limit`` records.
        dtype: stored float type, ``"float32"`` or ``"float16"``.
        batch_size: records per ``MSETNX``.
        progress: show a tqdm progress bar on stderr.
        prefix: key namespace.
        grace: seconds between publishing and deleting the previous version,
            so readers that still use it can notice the new alias.
        index: build the new version's similarity index with these options
            before publishing it; without, similarity calls raise
            IndexNotReadyError until ``vectorstore index NAME`` has built one.

    Raises:
        LoadError: the file is malformed (the message names file and line/record).
        LoadInProgressError: another live process is loading ``name``.
        VectorSetsUnsupportedError: ``index`` is given and the server has no
            vector sets (raised before anything is written).

    >>> load(kv, "demo", progress=False).count                         # doctest: +SKIP
    2000
    >>> load(kv, "demo", index=IndexOptions("noquant"), progress=False).version  # doctest: +SKIP
    2
    """
    keys = Keys(name, prefix)
    check_dtype(dtype)
    with open_vectors(source, fmt, limit=limit, batch_size=batch_size) as reader, \
            deployment(url, client) as d, _lock(d.client, keys) as lock:
        r = d.client
        if index is not None:
            check_vector_sets(r.execute_command, d.node_name(keys.vset(0)), keys.vset(0))
        _remove_leftovers(r, keys)
        old = _replaceable_version(r, keys)
        if index is None and old is not None and read_status(r.execute_command, keys, old).ready:
            logger.warning("model %s: served version %s has a similarity index, the new one "
                           "will have none (similarity calls raise IndexNotReadyError) until "
                           "`vectorstore index %s` builds it; load with index=IndexOptions() "
                           "(--index) to build it before the switch", name, old, name)
        version: int | None = None
        try:
            version = int(r.incr(keys.seq))
            r.sadd(keys.versions, version)
            meta = Meta(version=version, dim=reader.dim, dtype=dtype, count=reader.count or 0,
                        source=reader.source, extra={"format": reader.fmt})
            if d.primaries > 1:
                meta.extra[GROUPS_FIELD] = ",".join(_token_groups(d, keys, version))
            r.hset(keys.meta(version), mapping=meta.to_hash())
            started = time.monotonic()
            meta.count, meta.checksum = _write(d, keys, version, reader, Codec(reader.dim, dtype),
                                               lock, progress, TokenKeys.of(keys, meta))
            if not meta.count:
                raise LoadError(f"{reader.source}: no vectors to load")
            if isinstance(reader, FastTextReader) and reader.params is not None:
                # fastText .bin: its n-gram buckets and their parameters, still unpublished
                meta.extra.update(_write_ngrams(d, keys, version, reader,
                                                Codec(reader.dim, dtype), lock, progress))
            meta.extra["load_seconds"] = f"{time.monotonic() - started:.3f}"
            if index is not None:
                r.hset(keys.meta(version), mapping=meta.to_hash())  # the builder reads count
                build_index(name, client=r, prefix=prefix, version=version,
                            quantization=index.quantization, m=index.m, ef=index.ef,
                            workers=index.workers, shards=index.shards, progress=progress)
            meta.state = "ready"
            _publish(r, keys, meta, lock)
        except BaseException:
            if version is not None:
                with suppress(redis.RedisError):
                    _delete_version(r, keys, version)
                    if version == 1:  # this load created the counter: leave nothing behind
                        r.delete(keys.seq)
            raise
        if old is not None:
            time.sleep(grace)
            try:
                _delete_version(r, keys, old)
            except redis.RedisError as exc:
                logger.warning("model %s: could not delete replaced version %s (%s); "
                               "the next load removes it", name, old, exc)
        return meta


def drop(name: str, *, url: str | None = None, client: redis.Redis | None = None,
         prefix: str = DEFAULT_PREFIX) -> int:
    """Delete model ``name`` (every version); return the number of keys deleted.

    The alias goes first, so readers see "no such model", never a half-deleted
    one. The version counter stays, so a later load never reuses a version
    number that a reader may still have cached.

    Raises:
        ModelNotFoundError: nothing of ``name`` exists.
        LoadInProgressError: a load of ``name`` is running.
    """
    keys = Keys(name, prefix)
    with deployment(url, client) as d, _lock(d.client, keys):
        r = d.client
        current = _replaceable_version(r, keys)
        versions = {int(v) for v in r.smembers(keys.versions)}
        if (current is None and not versions and not r.sismember(keys.models, name)
                and not r.exists(keys.current)):
            raise ModelNotFoundError(f"no model named {name!r} under prefix {prefix!r}")
        deleted = r.delete(keys.current, keys.versions)  # one slot (see keys.py)
        r.srem(keys.models, name)
        for version in sorted(versions | ({current} if current is not None else set())):
            deleted += _delete_version(r, keys, version)
        return deleted


def list_models(*, url: str | None = None, client: redis.Redis | None = None,
                prefix: str = DEFAULT_PREFIX) -> list[str]:
    """Names of the published models under ``prefix``, sorted.

    >>> list_models()                                                  # doctest: +SKIP
    ['glove', 'news']
    """
    with deployment(url, client) as d:
        return sorted(n.decode() for n in d.client.smembers(models_key(prefix)))


def info(name: str, *, url: str | None = None, client: redis.Redis | None = None,
         prefix: str = DEFAULT_PREFIX) -> ModelInfo:
    """Metadata of the served version of ``name``, versions present, and bytes used.

    ``bytes_used`` is an estimate: ``MEMORY USAGE`` of a sample of vector keys
    times the count, plus every index->token chunk and the metadata.

    >>> m = info("news")                                               # doctest: +SKIP
    >>> m.meta.dim, m.meta.count, m.versions, m.bytes_used // 2**20
    (300, 3000000, [7], 3843)
    """
    keys = Keys(name, prefix)
    with deployment(url, client) as d:
        r = d.client
        meta = _current_meta(r, keys)
        versions = sorted(int(v) for v in r.smembers(keys.versions))
        holder = r.get(keys.lock)
        return ModelInfo(name=name, meta=meta, versions=versions,
                         bytes_used=_memory_estimate(r, keys, meta),
                         loading=holder.decode(errors="replace") if holder else None)


def verify(name: str, *, url: str | None = None, client: redis.Redis | None = None,
           prefix: str = DEFAULT_PREFIX) -> VerifyResult:
    """Check every stored token of the served version against its metadata; name what is wrong.

    Streams over the index->token chunks (one ``GET`` and one ``MGET`` per 1024
    tokens) and reports, per token: a missing key, a key of another type, a
    value of the wrong length, a value whose stored index is not the token's
    (a random or moved value), a NaN/inf value; per chunk: a missing, retyped or
    malformed chunk. It then counts the version's token keys with ``SCAN`` and,
    if there are more than the model's tokens, names the keys that are not
    tokens of the model (they would be served for an out-of-vocabulary word).
    Finally the count and checksum are compared with the metadata; a value
    whose floats were changed in place shows there only. A fastText model's
    n-gram rows and vocabulary filter are checked too (:func:`_verify_subwords`).

    Raises:
        ModelNotFoundError: nothing named ``name``.
        CorruptValueError: the model's alias or metadata is unreadable.

    >>> result = verify("news")                                        # doctest: +SKIP
    >>> result.ok, result.found_count
    (True, 3000000)
    """
    keys = Keys(name, prefix)
    with deployment(url, client) as d:
        r = d.client
        meta = _current_meta(r, keys)
        check = _TokenCheck(d, keys, meta)
        chunks = -(-meta.count // I2K_CHUNK)
        for chunk in range(chunks):
            check.chunk(chunk, last=chunk == chunks - 1)
        if r.exists(keys.i2k(meta.version, chunks)):
            check.problem(f"index->token chunk {chunks} exists, but the metadata counts "
                          f"{meta.count} tokens ({chunks} chunks)")
        check.extra_keys()
        _verify_subwords(d, keys, meta, check)
        if _current_version(r, keys) != meta.version:
            check.problem(f"the model was reloaded while it was verified (it now serves "
                          f"another version than {meta.version}): run verify again")
        problems = check.problems
        if check.bad > len(problems):
            problems.append(f"... and {check.bad - len(problems)} more")
        return VerifyResult(name=name, version=meta.version, expected_count=meta.count,
                            found_count=check.found, expected_checksum=meta.checksum,
                            found_checksum=check.digest.hexdigest(), problems=problems)


class _TokenCheck:
    """The state of one :func:`verify` run: problems found, tokens seen, checksum so far."""

    def __init__(self, d: Deployment, keys: Keys, meta: Meta) -> None:
        self.d, self.r, self.keys, self.meta = d, d.client, keys, meta
        self.codec = meta.codec()
        self.token_prefix = keys.token_prefix(meta.version)
        self.names = TokenKeys.of(keys, meta)
        self.digest = checksum_digest(meta.checksum)
        self.problems: list[str] = []
        self.bad = self.found = self.existing = 0
        self.named: set[bytes] = set()  # token keys already reported
        self.bad_chunks: set[int] = set()  # their tokens' keys are not checked one by one

    def problem(self, text: str) -> None:
        self.bad += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(text)

    def chunk(self, chunk: int, last: bool) -> None:
        """Check the tokens of index->token chunk ``chunk`` and hash the good ones."""
        first = chunk * I2K_CHUNK
        want = self.meta.count - first if last else I2K_CHUNK
        where = f"index->token chunk {chunk} (indexes {first}-{first + want - 1})"
        try:
            raw = self.r.get(self.keys.i2k(self.meta.version, chunk))
        except redis.ResponseError as exc:  # WRONGTYPE
            raw = None
            self.problem(f"{where}: unreadable ({exc})")
        else:
            if raw is None:
                self.problem(f"{where}: missing")
        if raw is None:
            self.bad_chunks.add(chunk)
            return
        tokens = bytes(raw).split(b"\n")
        if len(tokens) != want:
            self.bad_chunks.add(chunk)
            self.problem(f"{where}: holds {len(tokens)} tokens, expected {want}")
        try:
            bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            self.problem(f"{where}: invalid UTF-8 at byte {exc.start}")
        names = self.names.raw(tokens)
        values = self.d.mget(names)
        problems = self._value_problems(values, first)
        retyped = [i for i, v in enumerate(values) if v is None]
        if retyped:
            with self.r.pipeline(transaction=False) as pipe:
                for i in retyped:
                    pipe.type(names[i])
                for i, kind in zip(retyped, pipe.execute(), strict=True):
                    kind = kind.decode() if isinstance(kind, bytes) else str(kind)
                    if kind != "none":
                        problems[i] = f"the key is a {kind}, not a string (retyped)"
                        self.existing += 1
        self.existing += len(values) - len(retyped)
        for i, problem in sorted(problems.items()):
            self.named.add(names[i])
            token = tokens[i].decode("utf-8", "replace")
            self.problem(f"token {token!r} (index {first + i}): {problem}")
        good = [i for i in range(len(tokens)) if i not in problems]
        self.digest.update(_checksum_input([tokens[i] for i in good],
                                           [bytes(values[i]) for i in good],
                                           self.codec.payload))
        self.found += len(tokens)

    def _value_problems(self, values: list[Any], first: int) -> dict[int, str]:
        """What is wrong with each stored value (None: no key) of tokens ``first``..."""
        problems: dict[int, str] = {}
        ok: list[int] = []
        for i, value in enumerate(values):
            if value is None:
                problems[i] = "no vector stored"
            elif len(value) != self.codec.size:
                problems[i] = f"value has {len(value)} bytes, expected {self.codec.size}"
            else:
                ok.append(i)
        for i, (vector, index) in zip(ok, self._decode([values[i] for i in ok]), strict=True):
            if index != first + i:
                problems[i] = (f"value carries index {index}: it is not this token's "
                               f"(overwritten or copied from another key)")
            elif not np.isfinite(vector).all():
                col = int(np.argmin(np.isfinite(vector)))
                problems[i] = f"value {vector[col]} (field {col + 1}) is not finite"
        return problems

    def _decode(self, values: list[bytes]) -> list[tuple[np.ndarray, int]]:
        """(vector, stored index) of each value of the right length."""
        if not values:
            return []
        # the layout's own decoding, value by value if it refuses the batch
        try:
            return list(zip(self.codec.decode(values), self.codec.decode_indexes(values).tolist(),
                            strict=True))
        except CorruptValueError:
            if len(values) == 1:
                return [(np.full(self.codec.dim, np.nan, np.float32), -1)]
            return [pair for v in values for pair in self._decode([v])]

    def extra_keys(self) -> None:
        """Name the version's token keys that are not tokens of the model, if any."""
        pattern = self.token_prefix + b"*"
        scanned = sum(1 for _ in self.r.scan_iter(match=pattern, count=SCAN_COUNT))
        if scanned <= self.existing:
            return
        chunks: dict[int, list[bytes]] = {}
        batch: list[bytes] = []
        for key in self.r.scan_iter(match=pattern, count=SCAN_COUNT):
            batch.append(key)
            if len(batch) >= SCAN_COUNT:
                self._check_membership(batch, chunks)
                batch = []
        self._check_membership(batch, chunks)

    def _check_membership(self, names: list[bytes], chunks: dict[int, list[bytes]]) -> None:
        """Report the keys of ``names`` whose stored index does not lead back to them."""
        names = [n for n in names if n not in self.named]
        if not names:
            return
        values = self.d.mget(names)
        for name, value in zip(names, values, strict=True):
            token = self.names.token(name)
            if token is None:  # in the version's key space, yet no token's key name
                self.named.add(name)
                self.problem(f"key {name.decode('utf-8', 'replace')!r} is not the key of any "
                             f"token of the model (wrong token group)")
                continue
            index = -1
            if value is not None and len(value) == self.codec.size:
                index = self._decode([bytes(value)])[0][1]
            chunk = index // I2K_CHUNK if 0 <= index < self.meta.count else -1
            if chunk in self.bad_chunks:
                continue  # reported with its chunk
            if chunk >= 0 and chunk not in chunks:
                if len(chunks) >= 64:
                    chunks.clear()
                with suppress(redis.ResponseError):
                    raw = self.r.get(self.keys.i2k(self.meta.version, chunk))
                    chunks[chunk] = bytes(raw).split(b"\n") if raw else []
            listed = chunks.get(chunk, [])
            if chunk < 0 or index % I2K_CHUNK >= len(listed) \
                    or listed[index % I2K_CHUNK] != token:
                self.named.add(name)
                self.problem(f"key {name.decode('utf-8', 'replace')!r} is not a token of the "
                             f"model (not in its index->token chunks); it would be served for "
                             f"{token.decode('utf-8', 'replace')!r}")


# --- writing ------------------------------------------------------------------------


def _token_groups(d: Deployment, keys: Keys, version: int) -> list[str]:
    """Hash tags of ``version``'s token groups on a cluster: one per master, each on its own
    (see :class:`vectorstore.view.TokenKeys`)."""
    chosen = d.spread(lambda n: keys.token_group_prefix(version, keys.token_group_tag(version, n)),
                      d.primaries)
    return [keys.token_group_tag(version, n) for n in chosen]


def _write(d: Deployment, keys: Keys, version: int, reader: Reader, codec: Codec,
           lock: Lock, progress: bool, names: TokenKeys) -> tuple[int, str]:
    """Write every batch of ``reader`` as ``version`` under ``names``; return (count, checksum)."""
    pending: list[str] = []  # tokens of the index->token chunk being filled
    chunk = count = 0
    packer = _Packer(keys.token_prefix(version), codec)
    writer = _Writer(d, reader, codec, packer, names)
    try:
        with tqdm(total=reader.count, unit=" vectors", unit_scale=True, disable=not progress,
                  desc=f"loading {keys.name}", mininterval=0.5) as bar:
            for tokens, vectors, first in reader:
                lock.check()
                if codec.dtype == "float16":
                    _check_float16(reader, vectors, first)
                raw = _utf8(tokens)
                pending += tokens
                chunks = []
                while len(pending) >= I2K_CHUNK:
                    chunks.append((keys.i2k(version, chunk), "\n".join(pending[:I2K_CHUNK])))
                    del pending[:I2K_CHUNK]
                    chunk += 1
                writer.send(_Job(first, tokens, raw, *packer.pack(raw, vectors, first), chunks,
                                 vectors))
                count += len(raw)
                bar.update(len(raw))
            if pending:
                last = (keys.i2k(version, chunk), "\n".join(pending))
                writer.send(_Job(count, [], [], b"", b"", [last]))
            writer.close()
    finally:
        writer.stop()
    return count, writer.digest.hexdigest()


def _utf8(tokens: list[str]) -> list[bytes]:
    """``[t.encode() for t in tokens]`` in one step (the readers refuse tokens with ``"\\n"``)."""
    return "\n".join(tokens).encode().split(b"\n") if tokens else []


class _Packer:
    """The ``MSETNX`` command and the checksum input of a batch, without a Python step per record.

    The values are framed in one array (:meth:`Codec.frame`), cut by one
    ``re.findall`` and interleaved with the key names by list slice assignment,
    so a batch costs a few C-level passes over its bytes: at 300-d, ~0.25 CPU-s
    per 200k vectors where ``hiredis.pack_command`` and one slice per value took
    ~0.8. The bytes are exactly ``hiredis.pack_command(("MSETNX", name, value,
    ...))`` and :func:`_checksum_input` (tests compare them).

    >>> cmd, hashed = _Packer(b"p:", Codec(1)).pack([b"a"], np.ones((1, 1), np.float32), 0)
    >>> cmd
    b'*3\\r\\n$6\\r\\nMSETNX\\r\\n$3\\r\\np:a\\r\\n$8\\r\\n\\x00\\x00\\x80?\\x00\\x00\\x00\\x00\\r\\n'
    >>> hashed
    b'a\\n\\x00\\x00\\x80?'
    """

    def __init__(self, prefix: bytes, codec: Codec) -> None:
        self.prefix, self.codec = prefix, codec
        self._value_head = b"\r\n$%d\r\n" % codec.size  # ends the name, starts the value
        width = len(self._value_head) + codec.size + 2
        self._values = re.compile(rb"(?s).{%d}" % width)
        # the value head ends with "\n", which the checksum puts between token and vector
        self._hashed = re.compile(rb"(?s).{%d}(.{%d}).{%d}"
                                  % (len(self._value_head) - 1, codec.payload + 1, 4 + 2))
        self._name_heads: dict[int, bytes] = {}  # "$<length of name>\r\n<prefix>" by token length

    def pack(self, raw: list[bytes], vectors: np.ndarray, first: int) -> tuple[bytes, bytes]:
        """``(MSETNX command, checksum input)`` for tokens ``raw`` and their ``vectors``."""
        if not raw:
            return b"", b""
        framed = memoryview(self.codec.frame(vectors, first, self._value_head, b"\r\n").reshape(-1))
        lengths = list(map(len, raw))
        for n in set(lengths).difference(self._name_heads):
            self._name_heads[n] = b"$%d\r\n" % (len(self.prefix) + n) + self.prefix
        command: list[bytes] = [b""] * (3 * len(raw) + 1)
        command[0] = b"*%d\r\n$6\r\nMSETNX\r\n" % (2 * len(raw) + 1)
        command[1::3] = map(self._name_heads.__getitem__, lengths)
        command[2::3] = raw
        command[3::3] = self._values.findall(framed)
        hashed: list[bytes] = [b""] * (2 * len(raw))
        hashed[::2] = raw
        hashed[1::2] = self._hashed.findall(framed)
        return b"".join(command), b"".join(hashed)


@dataclass
class _Job:
    """One batch, ready to send: its tokens, packed MSETNX, hash input, index->token chunks."""

    first: int
    tokens: list[str]
    raw: list[bytes]
    command: bytes
    hashed: bytes
    chunks: list[tuple[str, str]]
    vectors: np.ndarray | None = None  # for a cluster, which needs one MSETNX per hash slot


class _Writer:
    """Writes jobs in order from a thread and a connection of its own.

    The thread sends a job before reading the replies to the previous one, so
    the caller's parsing, the network and Redis all work at once; it also hashes
    (hashlib releases the GIL). Errors of the thread, such as a duplicate token
    found by ``MSETNX``, are raised in the caller at its next :meth:`send` or at
    :meth:`close`. Once :meth:`stop` returns, Redis has executed everything that
    was sent. On a cluster a job is one ``MSETNX`` per hash slot, every node's
    share sent at once (:meth:`Deployment.calls`), one job at a time.
    """

    def __init__(self, d: Deployment, reader: Reader, codec: Codec, packer: _Packer,
                 names: TokenKeys, depth: int = 4) -> None:
        self.d, self.reader, self.codec, self.names = d, reader, codec, names
        self.r = d.client
        self.digest = checksum_digest()
        self._cluster = isinstance(d, ClusterDeployment)
        assert self._cluster or names.groups == () and names.prefix == packer.prefix
        self._conn = None if self._cluster else self.r.connection_pool.get_connection()
        self._jobs: queue.Queue[_Job | None] = queue.Queue(depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="vectorstore writer", daemon=True)
        self._thread.start()

    def send(self, job: _Job) -> None:
        self._raise()
        self._jobs.put(job)

    def close(self) -> None:
        """Wait until every job is written; raise the first error."""
        self.stop()
        self._raise()

    def stop(self) -> None:
        """Let the thread write what it has sent, skip the rest, and end."""
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        unread: deque[_Job] = deque()  # sent, replies not read yet
        while (job := self._jobs.get()) is not None:
            if self._error is not None:
                continue  # keep draining, so the caller never blocks
            try:
                if self._cluster:
                    self._write_sharded(job)
                    continue
                self._conn.send_packed_command(self._pack(job), check_health=False)
                unread.append(job)
                if len(unread) > 1:
                    self._finish(unread.popleft())
            except BaseException as exc:  # handed to the caller's thread
                self._error = exc
        while unread:  # Redis must have run all we sent before the caller cleans up
            try:
                self._finish(unread.popleft())
            except BaseException as exc:
                self._error = self._error or exc
        if self._conn is not None:
            self._conn.disconnect()  # a failed job may have left replies unread
            self.r.connection_pool.release(self._conn)
        self.d.disconnect()

    @staticmethod
    def _pack(job: _Job) -> list[bytes]:
        packed = [job.command] if job.raw else []
        packed += [hiredis.pack_command(("SET", key, tokens)) for key, tokens in job.chunks]
        return packed

    def _finish(self, job: _Job) -> None:
        """Read the replies to ``job``; hash it, or raise for a duplicate token."""
        assert self._conn is not None
        replies = [self._conn.read_response() for _ in range(bool(job.raw) + len(job.chunks))]
        if job.raw and not replies[0]:
            self._duplicate(job, range(len(job.raw)))
        self.digest.update(job.hashed)

    def _write_sharded(self, job: _Job) -> None:
        """Write ``job`` on a cluster: one ``MSETNX`` per hash slot; hash it, or raise for
        a duplicate token."""
        assert job.vectors is not None or not job.raw
        values = self.codec.encode(job.vectors, job.first) if job.raw else []
        names = self.names.raw(job.raw)
        slots: dict[int, list[int]] = {}
        for i, name in enumerate(names):
            slots.setdefault(key_slot(name), []).append(i)
        groups = list(slots.values())
        commands: list[tuple[Any, ...]] = [
            ("MSETNX", *[x for i in at for x in (names[i], values[i])]) for at in groups]
        commands += [("SET", key, tokens) for key, tokens in job.chunks]
        replies = self.d.calls(commands)
        for at, ok in zip(groups, replies):
            # A refused MSETNX whose keys all hold this job's values is this job's own,
            # applied before a failover lost its reply and the deployment sent it again.
            if not ok and self.d.mget([names[i] for i in at]) != [values[i] for i in at]:
                self._duplicate(job, at)
        self.digest.update(job.hashed)

    def _duplicate(self, job: _Job, among: Sequence[int]) -> None:
        """Raise the LoadError for the first token of ``among`` already stored."""
        existing = self.d.mget(self.names.raw([job.raw[i] for i in among]))
        i = next(i for i, v in zip(among, existing) if v is not None)
        earlier = int(self.codec.decode_indexes([existing[among.index(i)]])[0])
        raise self.reader.error(job.first + i, f"duplicate token {job.tokens[i]!r} "
                                               f"(first at {self.reader.locate(earlier)})")


def _checksum_input(tokens: Sequence[bytes], values: Sequence[bytes], payload: int) -> bytes:
    """Per record: token bytes, ``"\\n"``, the stored vector bytes (without the index)."""
    parts: list[Any] = [b""] * (2 * len(tokens))
    parts[::2] = [t + b"\n" for t in tokens]
    parts[1::2] = [memoryview(v)[:payload] for v in values]
    return b"".join(parts)


def _check_float16(reader: Reader, vectors: np.ndarray, first: int) -> None:
    """Raise LoadError for a value too large for float16 (it would become inf)."""
    with np.errstate(over="ignore"):
        finite = np.isfinite(vectors.astype(np.float16))
    if not finite.all():
        row, col = np.argwhere(~finite)[0]
        raise reader.error(first + int(row), f"value {vectors[row, col]} (field {col + 1}) "
                           f"does not fit in float16 (max 65504): load it as float32")


# --- fastText n-gram buckets (vectorstore.fasttext, vectorstore.subword) ----------------


def _write_ngrams(d: Deployment, keys: Keys, version: int, reader: FastTextReader,
                  codec: Codec, lock: Lock, progress: bool) -> dict[str, str]:
    """Write every n-gram bucket row of ``reader`` as ``version``, and the Bloom filter of
    the vocabulary written before (:func:`_write_bloom`); return their metadata fields."""
    assert reader.params is not None
    packer = _Packer(keys.ngram_prefix(version), codec)
    writer = _Writer(d, reader, codec, packer, TokenKeys(packer.prefix))
    try:
        with tqdm(total=reader.params.bucket, unit=" buckets", unit_scale=True,
                  disable=not progress, desc=f"n-grams {keys.name}", mininterval=0.5) as bar:
            for first, rows in reader.ngram_rows():
                lock.check()
                _check_ngrams(reader, rows, first, codec.dtype)
                numbers = [str(b) for b in range(first, first + len(rows))]
                raw = _utf8(numbers)
                writer.send(_Job(first, numbers, raw, *packer.pack(raw, rows, first), [], rows))
                bar.update(len(rows))
            writer.close()
    finally:
        writer.stop()
    return {**reader.params.to_extra(), "subword_checksum": writer.digest.hexdigest(),
            **_write_bloom(d.client, keys, version, reader.count)}


def _write_bloom(r: redis.Redis, keys: Keys, version: int, count: int) -> dict[str, str]:
    """Write the Bloom filter of the ``count`` tokens of ``version`` (read back from its
    index->token chunks: what readers will be served); return its metadata fields."""
    bloom = _vocabulary_filter(r, keys, version, count, BloomParams.sized(count))
    r.set(keys.bloom(version), bloom.to_bytes())
    return bloom.params_with_checksum().to_extra()


def _vocabulary_filter(r: redis.Redis, keys: Keys, version: int, count: int,
                       params: BloomParams) -> BloomFilter:
    """The Bloom filter (sized by ``params``) of the tokens listed by the index->token
    chunks of ``version``'s ``count`` tokens, read 64 chunks per round trip."""
    bloom = BloomFilter(params)
    chunks = -(-count // I2K_CHUNK)
    for first in range(0, chunks, 64):
        for raw in r.mget([keys.i2k(version, c) for c in range(first, min(first + 64, chunks))]):
            if raw:
                bloom.add(bytes(raw).split(b"\n"))
    return bloom


def _check_ngrams(reader: FastTextReader, rows: np.ndarray, first: int, dtype: str) -> None:
    """Raise LoadError for a NaN/inf bucket value, or one too large for float16."""
    with np.errstate(over="ignore"):
        finite = np.isfinite(rows.astype(np.float16) if dtype == "float16" else rows)
    if not finite.all():
        row, col = np.argwhere(~finite)[0]
        hint = ("does not fit in float16 (max 65504): load it as float32"
                if np.isfinite(rows[row, col]) else "is not a finite float32 number")
        raise LoadError(f"{reader.source}: n-gram bucket {first + int(row)}: value "
                        f"{rows[row, col]} (field {col + 1}) {hint}")


def _ngram_bytes(r: redis.Redis, keys: Keys, meta: Meta) -> int:
    """Bytes of a fastText version's n-gram rows (a sample of their keys x their number)
    and of its vocabulary filter."""
    params = SubwordParams.from_extra(meta.extra)
    if params is None:
        return 0
    with r.pipeline(transaction=False) as pipe:
        for bucket in range(0, params.bucket, max(1, params.bucket // MEMORY_SAMPLE)):
            pipe.memory_usage(keys.ngram(meta.version, bucket))
        pipe.memory_usage(keys.bloom(meta.version))
        *replies, bloom = pipe.execute()
    sizes = [s for s in replies if s is not None]
    return (int(sum(sizes) / len(sizes) * params.bucket) if sizes else 0) + (bloom or 0)


def _verify_subwords(d: Deployment, keys: Keys, meta: Meta, check: _TokenCheck) -> None:
    """:func:`verify` of a fastText version: every n-gram bucket's value (present, its
    length, its stored bucket number, finite floats), their checksum against the one the
    loader stored, keys past the last bucket, and the vocabulary filter (present, length,
    checksum, and equal to the filter of the model's tokens). Problems go to ``check``."""
    params = SubwordParams.from_extra(meta.extra)
    if params is None:
        return
    version, codec = meta.version, check.codec
    prefix = keys.ngram_prefix(version)
    expected = meta.extra.get("subword_checksum")
    digest = checksum_digest(expected or "")
    for first in range(0, params.bucket, I2K_CHUNK):
        numbers = [b"%d" % b for b in range(first, min(first + I2K_CHUNK, params.bucket))]
        values = d.mget([prefix + n for n in numbers])
        good = [i for i, v in enumerate(values) if v is not None and len(v) == codec.size]
        for i, value in enumerate(values):
            if value is None:
                check.problem(f"n-gram bucket {first + i}: no row stored (missing, or its key "
                              f"is not a string)")
            elif len(value) != codec.size:
                check.problem(f"n-gram bucket {first + i}: value has {len(value)} bytes, "
                              f"expected {codec.size}")
        rec = codec.records([bytes(values[i]) for i in good])
        finite = np.isfinite(rec["v"]).reshape(len(good), -1).all(axis=1).tolist()
        for i, at, ok in zip(good, rec["i"].tolist(), finite, strict=True):
            if at != first + i:
                check.problem(f"n-gram bucket {first + i}: value carries bucket {at} "
                              f"(overwritten or copied from another key)")
            elif not ok:
                check.problem(f"n-gram bucket {first + i}: value holds NaN or infinite floats")
        digest.update(_checksum_input([numbers[i] for i in good],
                                      [bytes(values[i]) for i in good], codec.payload))
    if expected and digest.hexdigest() != expected:
        check.problem(f"n-gram rows: checksum {digest.hexdigest()[:16]} differs from the one "
                      f"stored at load ({expected[:16]}): a value was changed in place")
    extra = [k for k in d.client.scan_iter(match=prefix + b"*", count=SCAN_COUNT)
             if not (k[len(prefix):].isdigit() and int(k[len(prefix):]) < params.bucket)]
    if extra:
        shown = ", ".join(repr(k.decode("utf-8", "replace")) for k in extra[:5])
        check.problem(f"n-gram rows: {len(extra)} key(s) past the model's {params.bucket} "
                      f"buckets: {shown}")
    _verify_bloom(d.client, keys, meta, check)


def _verify_bloom(r: redis.Redis, keys: Keys, meta: Meta, check: _TokenCheck) -> None:
    """The vocabulary filter part of :func:`_verify_subwords`."""
    params = BloomParams.from_extra(meta.extra)
    if params is None:
        return  # loaded before vectorstore wrote filters: readers use two round trips
    key = keys.bloom(meta.version)
    try:
        stored = BloomFilter.stored(params, r.get(key), f"vocabulary filter {key}")
    except (CorruptValueError, redis.ResponseError) as exc:
        check.problem(str(exc))
        return
    built = _vocabulary_filter(r, keys, meta.version, meta.count, params)
    lost = np.unpackbits(np.frombuffer(built.to_bytes(), np.uint8)
                         & ~np.frombuffer(stored.to_bytes(), np.uint8)).sum()
    if lost:
        check.problem(f"vocabulary filter {key}: {lost} bit(s) of the model's tokens are not "
                      f"set (those tokens would be served their subword vectors): reload "
                      f"the model")


# If KEYS[1] (the lock) holds ARGV[1] (our name): write the metadata hash KEYS[2] (fields in
# ARGV[3:]) and point the alias KEYS[3] at version ARGV[2], in one step. The keys share the
# model's hash slot (keys.py), so this works on a cluster as on one server.
_PUBLISH = ("if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end "
            "redis.call('HSET', KEYS[2], unpack(ARGV, 3)) "
            "redis.call('SET', KEYS[3], ARGV[2]) return 1")


def _publish(r: redis.Redis, keys: Keys, meta: Meta, lock: Lock) -> None:
    """Mark ``meta``'s version ready and point the alias at it, if we still hold the lock;
    then list the model (the models set is in another slot: a crash in between leaves the
    model served but unlisted until its next load)."""
    fields = [x for pair in meta.to_hash().items() for x in pair]
    if not r.eval(_PUBLISH, 3, keys.lock, keys.meta(meta.version), keys.current,
                  lock.owner, meta.version, *fields):
        raise lock.lost()
    r.sadd(keys.models, keys.name)


def _lock(r: redis.Redis, keys: Keys) -> Lock:
    """The loader lock of ``keys``' model (LoadInProgressError while another process loads)."""
    return Lock(r, keys.lock, f"model {keys.name!r}", "loaded", LoadInProgressError,
                ttl_ms=LOCK_TTL_MS)


def _delete_version(r: redis.Redis, keys: Keys, version: int) -> int:
    """Delete every key of ``version`` and unregister it; return the number deleted."""
    deleted = 0
    batch: list[bytes] = []
    for pattern in keys.version_patterns(version):
        for key in r.scan_iter(match=pattern, count=SCAN_COUNT):
            batch.append(key)
            if len(batch) >= SCAN_COUNT:
                deleted += r.unlink(*batch)
                batch.clear()
    if batch:
        deleted += r.unlink(*batch)
    r.srem(keys.versions, version)
    return deleted


def _remove_leftovers(r: redis.Redis, keys: Keys) -> None:
    """Delete every version but the current one (call with the lock held)."""
    current = _replaceable_version(r, keys)
    for version in sorted(int(v) for v in r.smembers(keys.versions)):
        if version != current:
            logger.info("model %s: removing leftover version %s", keys.name, version)
            _delete_version(r, keys, version)


# --- reading ------------------------------------------------------------------------


def _current_version(r: redis.Redis, keys: Keys) -> int | None:
    """The version the alias points to; CorruptValueError if it holds no version number."""
    try:
        raw = r.get(keys.current)
    except redis.ResponseError as exc:  # WRONGTYPE
        raise CorruptValueError(f"model {keys.name!r}: its alias {keys.current} is "
                                f"unreadable ({exc}): reload or drop the model") from None
    if raw is None:
        return None
    text = bytes(raw).decode("utf-8", "replace")
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        raise CorruptValueError(f"model {keys.name!r}: its alias {keys.current} holds "
                                f"{text[:40]!r}, not a version number: reload or drop the model")
    return int(text)


def _replaceable_version(r: redis.Redis, keys: Keys) -> int | None:
    """The current version for a load or drop, which replace a corrupt alias (None then)."""
    try:
        return _current_version(r, keys)
    except CorruptValueError as exc:
        logger.warning("%s (replacing it)", exc)
        return None


def _current_meta(r: redis.Redis, keys: Keys) -> Meta:
    version = _current_version(r, keys)
    if version is None:
        raise ModelNotFoundError(f"no model named {keys.name!r} under prefix {keys.prefix!r}")
    try:
        raw = r.hgetall(keys.meta(version))
    except redis.ResponseError as exc:  # WRONGTYPE
        raise CorruptValueError(f"model {keys.name!r}: its metadata {keys.meta(version)} is "
                                f"unreadable ({exc})") from None
    if not raw:
        raise CorruptValueError(f"model {keys.name!r}: its alias {keys.current} points to "
                                f"version {version}, which has no metadata "
                                f"({keys.meta(version)}): reload or drop the model")
    meta = Meta.from_hash(raw)
    if meta.version != version:
        raise CorruptValueError(f"model {keys.name!r}: the metadata of version {version} says "
                                f"version {meta.version}")
    return meta


def _memory_estimate(r: redis.Redis, keys: Keys, meta: Meta) -> int:
    """Bytes of ``meta``'s version: sampled vector keys x count, plus structure keys."""
    chunks = -(-meta.count // I2K_CHUNK)
    structure = [keys.meta(meta.version), *read_status(r.execute_command, keys, meta.version).keys]
    structure += [keys.i2k(meta.version, c) for c in range(chunks)]
    picked = sorted({c * max(chunks - 1, 0) // 7 for c in range(8)})  # 8 chunks, evenly spread
    names = TokenKeys.of(keys, meta)
    sample: list[bytes | str] = []
    for raw in r.mget([keys.i2k(meta.version, c) for c in picked]):
        tokens = raw.decode().split("\n") if raw else []
        step = max(1, len(tokens) * len(picked) // MEMORY_SAMPLE)
        sample += names(tokens[::step])
    with r.pipeline(transaction=False) as pipe:
        for key in [*sample, *structure]:
            pipe.memory_usage(key)
        sizes = pipe.execute()
    vector_sizes = [s for s in sizes[:len(sample)] if s is not None]
    per_vector = sum(vector_sizes) / len(vector_sizes) if vector_sizes else 0
    return (int(per_vector * meta.count) + sum(s or 0 for s in sizes[len(sample):])
            + _ngram_bytes(r, keys, meta))
