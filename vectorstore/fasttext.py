"""Facebook's fastText binary format (``cc.en.300.bin``), read without loading the model.

This is the format gensim's ``load_facebook_vectors`` reads. Layout (native
little-endian, from gensim's ``_fasttext_bin`` and fastText's sources)::

    magic 793712314 (int32), version <= 12 (int32)      new format only
    dim ws (int32)                                      new format only
    epoch min_count neg word_ngrams loss model bucket minn maxn lr_update_rate (int32)
    t (float64)
    size nwords nlabels (int32), ntokens (int64)
    pruneidx_size (int64)                               new format only
    size x (word bytes, 0x00, count int64, type int8)
    pruneidx_size x (int32, int32)                      new format only
    quant_input (bool)                                  new format only
    rows dim (int64), rows x dim float32: nwords word rows, then bucket n-gram rows
    (the output matrix follows; it is not read)

The old format (gensim's ``lee_fasttext.bin``) starts with ``dim ws`` where the
new one has its magic number. :class:`FastTextReader` parses the header and
the vocabulary as a stream, maps the input matrix (``numpy.memmap``, so the
loader's own memory does not grow with the model; the kernel pages the file
in) and yields the vocabulary's vectors as gensim computes them (the word's
row combined with its n-grams' rows, :mod:`vectorstore.subword`), then hands
the n-gram rows to the loader. A compressed file (``.bin.gz``) is first
decompressed, up to the end of the input matrix, into an unlinked temporary
file (``TMPDIR``: room for ``(nwords + bucket) x dim x 4`` bytes is needed),
since the words' vectors need random access to the n-gram rows.

Not supported, with a LoadError saying so: quantized models (``.ftz``) and
supervised models (classifiers, whose vocabulary holds labels).

>>> with FastTextReader(str(TEST_DATA / "crime-and-punishment.bin")) as r:   # doctest: +SKIP
...     print(r.dim, r.count, r.params)
...     tokens, vectors, first = next(iter(r))
5 291 SubwordParams(minn=3, maxn=6, bucket=100)
"""
from __future__ import annotations

import io
import logging
import os
import struct
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, cast

import numpy as np

from .errors import LoadError
from .readers import DEFAULT_BATCH, MAX_COUNT, MAX_DIM, Batch, Reader, open_file
from .subword import NgramPlan, SubwordParams

logger = logging.getLogger(__name__)

MAGIC = 793712314
MAX_VERSION = 12
SNIFF_BYTES = 56  # the old format's header: 12 int32 + one float64, and some slack
_NEW_ARGS = struct.Struct("<12id")  # dim ws, then the same fields as _OLD_ARGS
_OLD_ARGS = struct.Struct("<10id")  # epoch min_count neg word_ngrams loss model bucket minn maxn lr_update_rate t
_SUPERVISED = 3  # args.model: 1 cbow, 2 skipgram, 3 supervised
_CHUNK = 1 << 20
_MAX_WORD_BYTES = 1 << 16


@dataclass(frozen=True)
class Header:
    """What the reader needs from a fastText binary's header and dictionary."""

    version: int | None  # None: the old format, without magic number and version
    dim: int
    model: int
    bucket: int
    minn: int
    maxn: int
    nwords: int
    entries: int  # offset of the first dictionary entry (the decompressed stream's)
    matrix: int  # offset of the input matrix's first float


def looks_like_fasttext(head: bytes) -> bool:
    """True if ``head`` (the file's first bytes, decompressed) starts a fastText binary.

    Either fastText's magic number, or an old-format header whose fields all
    have plausible values (which text and word2vec files never have).
    """
    if len(head) >= 4 and struct.unpack_from("<i", head)[0] == MAGIC:
        return True
    if len(head) < 8 + _OLD_ARGS.size:
        return False
    dim, ws = struct.unpack_from("<2i", head)
    epoch, min_count, neg, ngrams, loss, model, bucket, minn, maxn, lr_rate, t = \
        _OLD_ARGS.unpack_from(head, 8)
    return (1 <= dim <= MAX_DIM and 0 < ws < 10_000 and 0 < epoch < 1_000_000
            and 0 <= min_count and 0 <= neg < 10_000 and 0 < ngrams < 100
            and 1 <= loss <= 4 and 1 <= model <= 3 and 0 <= bucket <= 1 << 30
            and 0 <= minn <= 100 and 0 <= maxn <= 100 and 0 < lr_rate and 0 <= t <= 1)


class _Stream:
    """Sequential parsing of a binary file: exact reads, 0-terminated words, offsets.

    Everything read from ``f`` is also written to ``copy``, if given.
    """

    def __init__(self, f: IO[bytes], source: str, start: int = 0,
                 copy: IO[bytes] | None = None) -> None:
        self.f, self.source, self.copy = f, source, copy
        self.buf, self.pos, self.offset = b"", 0, start  # offset of buf[0] in the stream

    def tell(self) -> int:
        return self.offset + self.pos

    def _more(self, what: str) -> None:
        try:
            chunk = self.f.read(_CHUNK)
        except (OSError, EOFError, zlib.error) as exc:
            raise LoadError(f"{self.source}: cannot read {what}: the file is truncated or "
                            f"corrupt ({exc})") from None
        if not chunk:
            raise LoadError(f"{self.source}: the file ends inside {what} (byte {self.tell()}): "
                            f"it is truncated")
        if self.copy is not None:
            _spool_write(self.copy, chunk, self.source)
        self.offset += self.pos
        self.buf, self.pos = self.buf[self.pos:] + chunk, 0

    def take(self, n: int, what: str) -> bytes:
        while len(self.buf) - self.pos < n:
            self._more(what)
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def word(self, what: str) -> bytes:
        """Bytes up to the next 0x00, which is consumed."""
        while (end := self.buf.find(b"\0", self.pos)) < 0:
            if len(self.buf) - self.pos > _MAX_WORD_BYTES:
                raise LoadError(f"{self.source}: {what} (byte {self.tell()}) has no end within "
                                f"{_MAX_WORD_BYTES} bytes: the file is corrupt")
            self._more(what)
        out = self.buf[self.pos:end]
        self.pos = end + 1
        return out


def read_header(stream: _Stream) -> Header:
    """Parse the header and dictionary of a fastText binary from the start of ``stream``."""
    source = stream.source
    first = stream.take(8, "the header")
    magic, version = struct.unpack("<2i", first)
    if magic == MAGIC:
        if not 1 <= version <= MAX_VERSION:
            raise LoadError(f"{source}: fastText format version {version} is not supported "
                            f"(this reader knows versions up to {MAX_VERSION})")
        dim, _ws, _epoch, _mc, _neg, _wn, _loss, model, bucket, minn, maxn, _lr, _t = \
            _NEW_ARGS.unpack(stream.take(_NEW_ARGS.size, "the header"))
        new: int | None = version
    else:
        head = first + stream.take(_OLD_ARGS.size, "the header")
        if not looks_like_fasttext(head):
            raise LoadError(f"{source}: not a fastText binary model: it does not start with "
                            f"fastText's magic number {MAGIC} (found {magic}), nor with a "
                            f"plausible old-format header")
        dim = magic
        _epoch, _mc, _neg, _wn, _loss, model, bucket, minn, maxn, _lr, _t = \
            _OLD_ARGS.unpack(head[8:])
        new = None
    if not 1 <= dim <= MAX_DIM:
        raise LoadError(f"{source}: bad header: dimension {dim} is not between 1 and "
                        f"{MAX_DIM:,} (a corrupt file?)")
    if bucket < 0 or minn < 0 or maxn < 0:
        raise LoadError(f"{source}: bad header: bucket={bucket}, minn={minn}, maxn={maxn}")
    size, nwords, nlabels = struct.unpack("<3i", stream.take(12, "the vocabulary's header"))
    stream.take(8, "the vocabulary's header")  # ntokens
    prune = struct.unpack("<q", stream.take(8, "the vocabulary's header"))[0] if new else -1
    if nwords < 0 or nlabels < 0 or size != nwords + nlabels or nwords > MAX_COUNT:
        raise LoadError(f"{source}: bad vocabulary header: {size} entries, {nwords} words, "
                        f"{nlabels} labels (a corrupt file?)")
    entries = stream.tell()
    for i in range(size):
        stream.word(f"vocabulary entry {i + 1} of {size}")
        stream.take(9, f"vocabulary entry {i + 1} of {size}")
    if prune > 0:
        stream.take(8 * prune, "the vocabulary's pruning index")
    if new and stream.take(1, "the matrix header") != b"\0":
        raise LoadError(f"{source}: this is a quantized fastText model (.ftz), which is not "
                        f"supported: load the model's .bin or .vec file instead")
    if model == _SUPERVISED or nlabels:
        raise LoadError(f"{source}: this is a supervised fastText model (a classifier, "
                        f"{nlabels} labels), which is not supported: only unsupervised "
                        f"word-vector models (cbow, skipgram) are")
    rows, cols = struct.unpack("<2q", stream.take(16, "the matrix header"))
    if rows != nwords + bucket or cols != dim:
        raise LoadError(f"{source}: the input matrix is {rows} x {cols}, expected "
                        f"{nwords} words + {bucket} buckets = {nwords + bucket} rows of "
                        f"dimension {dim} (a corrupt file?)")
    return Header(new, dim, model, bucket, minn, maxn, nwords, entries, stream.tell())


class FastTextReader(Reader):
    """The vocabulary (gensim's vectors) and n-gram rows of a fastText binary model.

    Attributes:
        header: the parsed :class:`Header`.
        params: the model's :class:`~vectorstore.subword.SubwordParams`, or None
            if it has no n-gram buckets (trained with ``-maxn 0``).
    """

    fmt = "fasttext-bin"
    count: int

    def __init__(self, path: str, *, limit: int | None = None,
                 batch_size: int = DEFAULT_BATCH) -> None:
        super().__init__(limit, batch_size)
        self.source = path
        raw = cast(IO[bytes], open_file(path))
        compressed = not isinstance(raw, io.BufferedReader)
        self._file: IO[bytes] = raw
        try:
            if compressed:
                self._file = _temporary(path)
            self.header = read_header(_Stream(raw, path, copy=self._file if compressed else None))
            if compressed:
                _spool_rest(raw, self._file, self.header, path)
                raw.close()
            self._matrix = self._map()
        except BaseException:
            raw.close()
            self._file.close()
            raise
        h = self.header
        self.dim = h.dim
        self.count = h.nwords if limit is None else min(h.nwords, limit)
        self.params = SubwordParams(h.minn, h.maxn, h.bucket) if h.bucket else None

    def _map(self) -> np.ndarray:
        h = self.header
        need = h.matrix + (h.nwords + h.bucket) * h.dim * 4
        size = os.fstat(self._file.fileno()).st_size
        if size < need:
            raise LoadError(f"{self.source}: the file ends inside the input matrix: it needs "
                            f"{need} bytes ({h.nwords} words + {h.bucket} buckets x {h.dim} "
                            f"floats from byte {h.matrix}), the file has {size} (truncated)")
        return np.memmap(self._file, dtype="<f4", mode="r", offset=h.matrix,
                         shape=(h.nwords + h.bucket, h.dim))

    def __enter__(self) -> FastTextReader:
        return self

    def locate(self, record: int) -> str:
        return f"vocabulary word {record + 1}"

    def close(self) -> None:
        self.__dict__.pop("_matrix", None)
        self._file.close()

    def _batches(self) -> Iterator[Batch]:
        self._file.seek(self.header.entries)
        stream = _Stream(self._file, self.source, start=self.header.entries)
        for first in range(0, self.count, self.batch_size):
            n = min(self.batch_size, self.count - first)
            raw = []
            for i in range(first, first + n):
                raw.append(stream.word(self.locate(i)))
                if stream.take(9, self.locate(i))[8] != 0:
                    raise self.error(i, "a label where a word was expected (a corrupt file?)")
            tokens = self._decode(raw, first)
            own = np.array(self._matrix[first:first + n], dtype=np.float32)
            if self.params is None:
                yield Batch(tokens, own, first)
                continue
            plan = NgramPlan(tokens, self.params)
            yield Batch(tokens, plan.words(self.ngram_rows_of(plan.buckets), own), first)

    def _decode(self, raw: list[bytes], first: int) -> list[str]:
        tokens = []
        for i, word in enumerate(raw):
            try:
                tokens.append(word.decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise self.error(first + i, f"word {word!r} is not valid UTF-8 ({exc.reason} "
                                 f"at byte {exc.start})") from None
        return tokens

    def ngram_rows_of(self, buckets: list[int]) -> np.ndarray:
        """The float32 rows of ``buckets``, in that order (read in file order)."""
        at = np.asarray(buckets, dtype=np.int64)
        order = np.argsort(at)
        rows = np.empty((len(at), self.dim), dtype=np.float32)
        rows[order] = self._matrix[self.header.nwords + at[order]]
        return rows

    def ngram_rows(self, batch_size: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """``(first bucket, float32 rows)`` of every n-gram bucket, in batches."""
        step = batch_size or self.batch_size
        base, total = self.header.nwords, self.header.bucket
        for first in range(0, total, step):
            yield first, np.array(self._matrix[base + first:base + min(first + step, total)],
                                  dtype=np.float32)


def _temporary(path: str) -> IO[bytes]:
    try:
        return tempfile.TemporaryFile(prefix="vectorstore-fasttext-")
    except OSError as exc:
        raise LoadError(f"{path}: cannot create a temporary file to decompress the model "
                        f"into ({exc})") from None


def _spool_write(f: IO[bytes], data: bytes, source: str) -> None:
    try:
        f.write(data)
    except OSError as exc:
        raise LoadError(f"{source}: cannot decompress the model into a temporary file in "
                        f"{tempfile.gettempdir()} ({exc.strerror or exc}): free space there, "
                        f"set TMPDIR, or decompress the file first") from None


def _spool_rest(raw: IO[bytes], spool: IO[bytes], header: Header, source: str) -> None:
    """Copy the rest of the input matrix from the decompressed ``raw`` to ``spool``."""
    need = header.matrix + (header.nwords + header.bucket) * header.dim * 4
    spool.seek(0, os.SEEK_END)
    logger.info("%s: decompressing %d bytes into a temporary file", source, need)
    left = need - spool.tell()
    try:
        while left > 0:
            chunk = raw.read(min(left, 16 * _CHUNK))
            if not chunk:
                break
            _spool_write(spool, chunk, source)
            left -= len(chunk)
    except (OSError, EOFError, zlib.error) as exc:
        raise LoadError(f"{source}: cannot read the input matrix: the file is truncated or "
                        f"corrupt ({exc})") from None
    spool.flush()
