"""Streaming readers of word-vector files and in-memory gensim models.

A reader yields :class:`Batch` es of at most ``batch_size`` records and never
holds the whole file. Formats:

``word2vec-binary``
    ``"count dim\\n"``, then per record the token's UTF-8 bytes, a space, and
    ``dim`` little-endian float32 (an optional ``"\\n"`` may follow a vector).
``word2vec-text`` / ``fasttext-vec``
    ``"count dim"``, then one ``"token v1 ... vdim"`` line per record.
``glove``
    no header; a line's LAST ``dim`` fields are numbers and the token is
    everything before them, so tokens may contain spaces. ``dim`` comes from
    the first line (its trailing numeric fields).
``fasttext-bin``
    Facebook's fastText binary model (``.bin``), with its n-gram buckets:
    :mod:`vectorstore.fasttext` (``auto`` knows it by its magic number).
``auto``
    a first line of two integers is a header, else the file is GloVe; after a
    header, the file is text if the first record parses as text, else binary.
    A first line of two or three numbers that is not a valid header (``-300
    16``, ``300 16.0``, ``300 16 0``) is refused as a bad header rather than
    read as a GloVe record (``--format glove`` reads such a file as GloVe).

Sanity checks beyond the line syntax: a header's dimension is at most
:data:`MAX_DIM` and its count at most :data:`MAX_COUNT` (the stored index is a
uint32); a GloVe file's dimension is the most common number of trailing
numeric fields over its first lines, so a first line of another width (a broken
header) is refused with its line number; a text file whose last line has no
``"\n"`` is loaded with a warning, since its last number may have been cut.

Text blocks are cut from the memory-mapped file (from 1 MiB reads if it is
compressed) and parsed by polars' CSV reader on :data:`PARSERS` threads of the
reader's own, while the caller writes the previous block; lines polars would
read otherwise than the line-by-line Python parser fall back to it (see
:func:`_parse_polars`, :meth:`TextReader._parse_mixed`). Binary records are found
by regular expressions, a whole batch at once (see :meth:`BinaryReader._regular`).

``.gz`` and ``.bz2`` files (recognised by their magic bytes) are read
transparently. Problems raise :class:`~vectorstore.errors.LoadError` naming the
file and the line (text) or record (binary).

>>> with open_vectors(TEST_DATA / "lee_fasttext.vec", limit=5) as reader:  # doctest: +SKIP
...     print(reader.fmt, reader.count, reader.dim)
...     for tokens, vectors, first in reader:
...         print(tokens, vectors.shape, first)
word2vec-text 5 10
['the', 'to', 'of', 'in', 'and'] (5, 10) 0
"""
from __future__ import annotations

import bz2
import functools
import gzip
import io
import logging
import mmap
import os
import re
import zlib
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from typing import Any, NamedTuple, TypeVar

import numpy as np

from .errors import LoadError

logger = logging.getLogger(__name__)

FORMATS = ("auto", "word2vec-binary", "word2vec-text", "fasttext-vec", "glove",
           "fasttext-bin")  # fasttext-bin: vectorstore.fasttext
DEFAULT_BATCH = 1000
MAX_DIM = 100_000  # real models have 25-4096; a larger header is a corrupt one
MAX_COUNT = 2**32 - 1  # a stored vector carries its index as a uint32
GLOVE_SNIFF_LINES = 64  # lines whose widths decide a GloVe file's dimension

_SNIFF_BYTES = 1 << 16
# Threads parsing text blocks, so up to PARSERS + 1 blocks (~28 MB each at 300-d: text,
# polars' float64 columns, float32 rows; ~125 MB more peak RSS than 1000-line blocks) are in
# flight: on 2 cores, loading 300k lines of a 300-d .vec file ran at 55-60k vectors/s with
# 1, 63-65k with 2, 68-71k with 3 or 4, 69-70k with 6 (same CPU seconds: more blocks in
# flight keep both cores busy); word2vec text 60-65k -> 65-69k, GloVe 54k -> 55-56k.
PARSERS = 4
# Lines per polars parse, handed on batch_size at a time. A parse has a fixed cost
# (~1 ms for polars to plan 301 columns, ~0.5 ms to convert them), ~1.5 us a line at
# 1000 lines: 300k-line word2vec text loads, alternated 4 times, 71-78k vectors/s with
# 1000-line parses, 77-83k with 4000 (the parser threads' CPU 1.4 -> 1.2 s per 200k).
PARSE_LINES = 4000
_CHUNK_BYTES = 1 << 20
_MAX_TOKEN_BYTES = 1 << 16
_HEADER_RE = re.compile(rb"\s*(\d+)\s+(\d+)\s*")
_NUMERIC_BYTES = b"0123456789+-.eEnNaAiIfFtTyY \t\r"


_R = TypeVar("_R", bound="Reader")


class Batch(NamedTuple):
    """Consecutive records: tokens, their float32 vectors (n x dim), index of the first."""

    tokens: list[str]
    vectors: np.ndarray
    first: int


class Reader:
    """Batches of one source; iterate once, then :meth:`close` (or use ``with``).

    Attributes:
        source: the file's absolute path, or a description of an in-memory model.
        fmt: the format actually read (never ``"auto"``).
        dim: vector dimension.
        count: number of records that will be yielded, or None when the format
            has no header (GloVe); already capped by ``limit``.
    """

    source: str
    fmt: str
    dim: int
    count: int | None

    def __init__(self, limit: int | None, batch_size: int) -> None:
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.limit = limit
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[Batch]:
        for batch in self._batches():
            _check_batch(self, batch)
            yield batch

    def _batches(self) -> Iterator[Batch]:
        raise NotImplementedError

    def locate(self, record: int) -> str:
        """Where record ``record`` (0-based) is, e.g. ``"line 12"`` or ``"record 11"``."""
        raise NotImplementedError

    def error(self, record: int, message: str) -> LoadError:
        """A LoadError naming the source and where record ``record`` (0-based) is."""
        return LoadError(f"{self.where(record)}: {message}")

    def where(self, record: int) -> str:
        """``"<source>, line 12"``: the source and the place of record ``record``."""
        return f"{self.source}, {self.locate(record)}"

    def close(self) -> None:
        """Release the file, if any."""

    def __enter__(self: _R) -> _R:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_vectors(source: Any, fmt: str = "auto", *, limit: int | None = None,
                 batch_size: int = DEFAULT_BATCH) -> Reader:
    """A reader for ``source``: a file path, or an in-memory gensim ``KeyedVectors``.

    Args:
        source: path of a (possibly .gz/.bz2) vector file, or a ``KeyedVectors``.
        fmt: one of :data:`FORMATS`; ignored for a ``KeyedVectors``.
        limit: stop after this many records.
        batch_size: records per batch.

    >>> reader = open_vectors(kv)            # doctest: +SKIP
    >>> reader.fmt, reader.count
    ('gensim', 2000)
    """
    if hasattr(source, "index_to_key") and hasattr(source, "vectors"):
        return KeyedVectorsReader(source, limit=limit, batch_size=batch_size)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")
    path = os.path.abspath(os.fspath(source))
    if fmt == "auto":
        fmt = sniff(path)
    if fmt == "fasttext-bin":  # Facebook's binary model, with n-gram buckets
        from .fasttext import FastTextReader
        return FastTextReader(path, limit=limit, batch_size=batch_size)
    if fmt == "word2vec-binary":
        return BinaryReader(path, limit=limit, batch_size=batch_size)
    return TextReader(path, fmt, limit=limit, batch_size=batch_size)


def open_file(path: str) -> io.BufferedIOBase:
    """``path`` opened for binary reading, decompressing gzip or bzip2 by magic bytes."""
    try:
        with open(path, "rb") as f:
            magic = f.read(3)
        if magic[:2] == b"\x1f\x8b":
            return gzip.open(path, "rb")
        if magic == b"BZh":
            return bz2.open(path, "rb")
        return open(path, "rb")
    except OSError as exc:
        raise LoadError(f"cannot read {path}: {exc.strerror or exc}") from None


def sniff(path: str) -> str:
    """The format of the file at ``path``, detected from its content."""
    head = b""
    with open_file(path) as f, suppress(OSError, EOFError, zlib.error):
        # a damaged file is sniffed on what can be read; its reader reports where it breaks
        while len(head) < _SNIFF_BYTES and (piece := f.read(4096)):
            head += piece
    from .fasttext import looks_like_fasttext  # here: it imports this module
    if looks_like_fasttext(head):
        return "fasttext-bin"
    first, _, rest = head.partition(b"\n")
    header = _HEADER_RE.fullmatch(first)
    if not header:
        fields = first.decode("utf-8", "replace").split()
        if 2 <= len(fields) <= 3 and all(map(_is_number, fields)):
            # "-300 16", "300 16.0", "300 16 0": a header gone wrong, not a GloVe record
            _parse_header(first, path, hint="; if it is a GloVe record, give the format glove")
        return "glove"
    return "word2vec-text" if _looks_like_text(rest, int(header[2])) else "word2vec-binary"


def _looks_like_text(data: bytes, dim: int) -> bool:
    """True if ``data`` starts with a text record: a token, then numbers on one line."""
    line = data.partition(b"\n")[0]
    _, space, values = line.partition(b" ")
    fields = values.split()
    return (bool(space) and len(fields) >= min(dim, 2)
            and not values.translate(None, _NUMERIC_BYTES))


def _mapped(f: io.BufferedIOBase) -> mmap.mmap | None:
    """All of ``f`` memory-mapped if it is a plain file (not decompressed, not empty), else
    None. Blocks are then copied once from the page cache; reading 1 MiB chunks and
    joining them into blocks copied twice (~0.3 CPU-s more per 200k lines of 300-d)."""
    if not isinstance(f, io.BufferedReader):
        return None
    try:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):  # empty, or not a regular file
        return None
    mapped.madvise(mmap.MADV_SEQUENTIAL)
    return mapped


def _read(f: io.BufferedIOBase, n: int, where: str) -> bytes:
    """``f.read(n)``, turning decompression and I/O failures into a LoadError at ``where``."""
    try:
        return f.read(n)
    except (OSError, EOFError, zlib.error) as exc:
        raise _unreadable(where, exc) from None


def _unreadable(where: str, exc: Exception) -> LoadError:
    return LoadError(f"{where}: cannot read the file from here on: it is truncated or "
                     f"corrupt ({exc})")


def _parse_header(line: bytes, path: str, hint: str = "") -> tuple[int, int]:
    """``(count, dim)`` from a word2vec header line, within :data:`MAX_COUNT`/:data:`MAX_DIM`."""
    m = _HEADER_RE.fullmatch(line)
    shown = line[:80].decode("utf-8", "replace").strip()
    if not m or int(m[2]) < 1:
        raise LoadError(f"{path}, line 1: bad header {shown!r}: expected 'count dim' "
                        f"(two integers, dim >= 1){hint}")
    count, dim = int(m[1]), int(m[2])
    if dim > MAX_DIM:
        raise LoadError(f"{path}, line 1: bad header {shown!r}: dimension {dim} is larger than "
                        f"{MAX_DIM:,} (a corrupt header?)")
    if count > MAX_COUNT:
        raise LoadError(f"{path}, line 1: bad header {shown!r}: count {count} is more than "
                        f"{MAX_COUNT:,} vectors (a corrupt header?)")
    return count, dim


def _cap(count: int, limit: int | None) -> int:
    return count if limit is None else min(count, limit)


class BinaryReader(Reader):
    """Records of a word2vec binary file."""

    fmt = "word2vec-binary"
    count: int

    def __init__(self, path: str, *, limit: int | None = None,
                 batch_size: int = DEFAULT_BATCH) -> None:
        super().__init__(limit, batch_size)
        self.source = path
        self._file = open_file(path)
        try:
            header = self._file.readline(1024)
            self._offset = len(header)  # of the buffer's first byte in the decompressed stream
            total, self.dim = _parse_header(header.rstrip(b"\r\n"), path)
            self.header_count = total
            self.count = _cap(total, limit)
            self._buf = _read(self._file, _CHUNK_BYTES, self.where(0))
            if self.count and _looks_like_text(self._buf, self.dim):
                raise self.error(0, "this is a text file, not word2vec binary: "
                                    "use format 'word2vec-text' or 'auto'")
        except BaseException:
            self._file.close()
            raise

    def locate(self, record: int) -> str:
        return f"record {record + 1}"

    def close(self) -> None:
        self._file.close()

    def _refill(self, buf: bytes, pos: int, record: int) -> bytes:
        """The unread part of ``buf`` plus enough of the file to hold record ``record``."""
        buf = buf[pos:]
        self._offset += pos
        while True:
            space = buf.find(b" ", 0, _MAX_TOKEN_BYTES)
            if space >= 0 and space + 1 + self.dim * 4 <= len(buf):
                return buf
            if space < 0 and len(buf) >= _MAX_TOKEN_BYTES:
                raise self.error(record, f"no space within {_MAX_TOKEN_BYTES} bytes from byte "
                                 f"{self._offset}: not a word2vec binary file")
            more = _read(self._file, _CHUNK_BYTES, self.where(record))
            if not more and not buf.strip(b"\n"):
                raise self.error(record, f"the file ends before this record: it has {record} "
                                 f"records but its header says {self.header_count} (truncated)")
            if not more:
                raise self.error(record, f"the record starting at byte {self._offset} is cut "
                                 f"short by the end of the file (truncated)")
            buf += more

    def _batches(self) -> Iterator[Batch]:
        buf, pos, eof = self._buf, 0, False
        self._buf = b""
        for first in range(0, self.count, self.batch_size):
            want = min(self.batch_size, self.count - first)
            if not eof and len(buf) - pos < want * (self.dim * 4 + 2) + _MAX_TOKEN_BYTES:
                more = _read(self._file, max(_CHUNK_BYTES, 2 * want * (self.dim * 4 + 32)),
                             self.where(first))
                self._offset += pos
                buf, pos, eof = buf[pos:] + more, 0, not more
            raw, matrix, pos = self._regular(buf, pos, want)
            if len(raw) < want:  # the buffer's end, or an unusual record: one by one
                vectors: list[memoryview] = []
                buf, pos = self._irregular(buf, pos, first + len(raw), first + want, raw,
                                           vectors)
                rest = np.frombuffer(b"".join(vectors), dtype="<f4").reshape(-1, self.dim)
                matrix = np.concatenate([matrix, rest]) if len(matrix) else rest
            yield Batch(self._decode(raw, first), matrix, first)

    def _regular(self, buf: bytes, pos: int, want: int) -> tuple[list[bytes], np.ndarray, int]:
        """Tokens, vectors and end of the usual records among the next ``want``.

        Two regular expressions work in C: one matches the run of usual records
        from ``pos`` (an optional ``"\\n"``, a token without space or newline, a
        space, the vector), the other lists the run's tokens; their lengths give
        where each vector is, and one numpy gather copies them all. A Python loop
        over the records took ~0.65 CPU-s per 200k x 300; this, ~0.15.
        """
        vbytes = self.dim * 4
        run = _record_run(vbytes, want).match(buf, pos)
        if run is None:
            return [], np.empty((0, self.dim), dtype="<f4"), pos
        raw = _record_token(vbytes).findall(buf, pos, run.end())  # with their "\n", if any
        ends = pos + np.cumsum(np.fromiter(map(len, raw), np.int64, len(raw)) + (1 + vbytes))
        windows = np.lib.stride_tricks.sliding_window_view(np.frombuffer(buf, np.uint8), vbytes)
        tokens = list(filter(None, b"\n".join(raw).split(b"\n")))  # tokens are not empty
        return tokens, windows[ends - vbytes].view("<f4"), run.end()

    def _irregular(self, buf: bytes, pos: int, start: int, stop: int, raw: list[bytes],
                   vectors: list[Any]) -> tuple[bytes, int]:
        """Append records ``start``..``stop`` read one by one to ``raw`` and ``vectors``."""
        vbytes, view, find, size = self.dim * 4, memoryview(buf), buf.find, len(buf)
        for record in range(start, stop):
            space = find(b" ", pos, pos + _MAX_TOKEN_BYTES)
            end = space + 1 + vbytes
            if space < 0 or end > size:
                buf, pos = self._refill(buf, pos, record), 0
                view, find, size = memoryview(buf), buf.find, len(buf)
                space = find(b" ")
                end = space + 1 + vbytes
            # the C tool ends each vector with "\n": it shows up before the next token
            raw.append(buf[pos:space].lstrip(b"\n"))
            vectors.append(view[space + 1:end])
            pos = end
        return buf, pos

    def _decode(self, raw: list[bytes], first: int) -> list[str]:
        try:
            tokens = b"\n".join(raw).decode("utf-8").split("\n")  # one decode per batch
        except UnicodeDecodeError:
            for i, t in enumerate(raw):
                try:
                    t.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise self.error(first + i, f"token {t!r} is not valid UTF-8 "
                                     f"({exc.reason} at byte {exc.start})") from None
            raise
        if len(tokens) != len(raw):  # a token holds a newline: refused by _check_batch
            return [t.decode("utf-8") for t in raw]
        return tokens


@functools.lru_cache(maxsize=8)
def _record_token(vbytes: int) -> re.Pattern[bytes]:
    """A usual word2vec binary record of ``vbytes`` vector bytes; its group: the
    token and the ``"\\n"`` before it, if any."""
    return re.compile(rb"(\n?[^ \n]{1,%d}) (?s:.{%d})" % (_MAX_TOKEN_BYTES // 2, vbytes))


@functools.lru_cache(maxsize=8)
def _record_run(vbytes: int, count: int) -> re.Pattern[bytes]:
    """Up to ``count`` consecutive usual records (see :func:`_record_token`)."""
    return re.compile(rb"(?:\n?[^ \n]{1,%d} (?s:.{%d})){1,%d}"
                      % (_MAX_TOKEN_BYTES // 2, vbytes, count))


class TextReader(Reader):
    """Records of a text file: word2vec/fastText (with header) or GloVe (without)."""

    def __init__(self, path: str, fmt: str, *, limit: int | None = None,
                 batch_size: int = DEFAULT_BATCH) -> None:
        super().__init__(limit, batch_size)
        if fmt not in ("word2vec-text", "fasttext-vec", "glove"):
            raise ValueError(f"not a text format: {fmt!r}")
        self.source, self.fmt = path, fmt
        self._file = open_file(path)
        self._map = _mapped(self._file)  # a plain file: all of it, without read copies
        # read ahead (the mapped file, or chunks of the file); where the next line is
        self._buf: bytes | mmap.mmap = self._map or b""
        self._pos, self._eof = 0, self._map is not None
        self._header_lines = 0 if fmt == "glove" else 1
        self._mixed = False  # the last block had lines of unusual shape (see _parse_mixed)
        try:
            if fmt == "glove":
                head, n = self._take(GLOVE_SNIFF_LINES, 0)
                if self._buf is self._map:  # read again as records
                    self._pos = 0
                else:
                    self._buf, self._pos = head + self._buf[self._pos:], 0
                self.dim = self._glove_dim(_split_lines(head))
                self.count = None
            else:
                header, n = self._take(1, -1)
                total, self.dim = _parse_header(header.rstrip(b"\r\n"), path)
                self.header_count = total
                self.count = _cap(total, limit)
        except BaseException:
            self.close()
            raise

    def locate(self, record: int) -> str:
        return f"line {record + self._header_lines + 1}"

    def close(self) -> None:
        self._buf = b""
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:  # a view of an interrupted _take, held by its traceback:
                pass  # the pages are unmapped when the last view is freed
            self._map = None
        self._file.close()

    def _take(self, n: int, record: int) -> tuple[bytes, int]:
        """Up to ``n`` lines in one bytes (the last may lack its ``"\\n"`` at the end of
        the file), the first holding record ``record`` (-1: the header), and their number.

        Blocks are cut from large reads and copied once: iterating over the file's
        lines took ~0.8 CPU-s per 200k lines of 300 numbers, this ~0.25.
        """
        pieces: list[memoryview] = []
        buf, pos, found = self._buf, self._pos, 0
        while True:
            end, find = pos, buf.find
            while found < n and (newline := find(b"\n", end)) >= 0:
                end, found = newline + 1, found + 1
            if found == n:
                pieces.append(memoryview(buf)[pos:end])
                pos = end
                break
            if pos < len(buf):
                pieces.append(memoryview(buf)[pos:])
            buf, pos = (b"" if self._eof else _read(self._file, _CHUNK_BYTES,
                                                    self.where(record))), 0
            if not buf:  # the end of the file
                self._eof = True
                found += bool(pieces) and pieces[-1][-1] != ord("\n")  # a last line without it
                break
        self._buf, self._pos = buf, pos
        return (bytes(pieces[0]) if len(pieces) == 1 else b"".join(pieces)), found

    def _glove_dim(self, head: list[bytes]) -> int:
        """The most common number of trailing numeric fields (after a token) of ``head``.

        The most common, not the first line's: a broken header such as ``300 16 0``
        then fails as line 1 of the wrong width instead of making every line a
        2-dimensional record whose token is most of the line.
        """
        if not head:
            return 1
        widths = [_glove_width(line) for line in self._decode(head, 0) if line.strip()]
        if not widths or not widths[0]:
            raise self.error(0, "not a GloVe line (a token followed by numbers) nor a "
                                "word2vec header ('count dim')")
        return Counter(widths).most_common(1)[0][0] or widths[0]

    def _batches(self) -> Iterator[Batch]:
        # The next blocks are parsed on PARSERS threads (polars releases the GIL)
        # while the caller handles this one, so reading, parsing and writing
        # overlap. Errors keep the file's order: a block's parse error comes
        # before a truncation found when reading the blocks after it.
        with ThreadPoolExecutor(PARSERS, thread_name_prefix="vectorstore parser") as parser:
            ahead: deque[tuple[Future[tuple[list[str], np.ndarray]], bytes, int, int]] = deque()
            blocks, end = self._blocks(), None
            while True:
                try:
                    block, n, first = next(blocks)
                except StopIteration:
                    break
                except LoadError as exc:  # truncated or unreadable: after the blocks before it
                    end = exc
                    break
                ahead.append((parser.submit(self._parse, block, n, first), block, n, first))
                if len(ahead) > PARSERS:
                    yield from self._parsed(*ahead.popleft())
            while ahead:
                yield from self._parsed(*ahead.popleft())
            if end is not None:
                raise end

    def _parsed(self, parsing: Future[tuple[list[str], np.ndarray]], block: bytes, n: int,
                first: int) -> Iterator[Batch]:
        tokens, vectors = parsing.result()
        if not block.endswith(b"\n"):
            self._warn_unterminated(first + n - 1, block[block.rfind(b"\n") + 1:])
        for start in range(0, n, self.batch_size):
            end = start + self.batch_size
            yield Batch(tokens[start:end], vectors[start:end], first + start)

    def _blocks(self) -> Iterator[tuple[bytes, int, int]]:
        """The lines of each parse (:data:`PARSE_LINES`, whole batches), their number and
        the index of the first record."""
        total = self.count if self.count is not None else self.limit
        size, first = self.batch_size * max(1, PARSE_LINES // self.batch_size), 0
        while total is None or first < total:
            want = size if total is None else min(size, total - first)
            block, n = self._take(want, first)
            if n:
                yield block, n, first
                first += n
            if n < want:
                if self.count is not None:
                    raise self.error(first, f"the file ends before this line: it has {first} "
                                     f"records but its header says {self.header_count} "
                                     f"(truncated)")
                return

    def _warn_unterminated(self, record: int, line: bytes) -> None:
        """Warn that the file ends without ``"\\n"``: record ``record``'s last number may be cut."""
        last = line.rsplit(None, 1)[-1].decode("utf-8", "replace")
        logger.warning("%s: the file ends without a newline after %r: if the file was cut "
                       "short (truncated download?), that last value may be incomplete",
                       self.where(record), last)

    def _decode(self, raw: list[bytes], first: int) -> list[str]:
        try:
            lines = b"".join(raw).decode("utf-8").split("\n")
        except UnicodeDecodeError:
            for i, line in enumerate(raw):
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise self.error(first + i, f"invalid UTF-8 ({exc.reason} at byte "
                                     f"{exc.start} of the line)") from None
            raise
        return lines[:len(raw)]

    def _parse(self, block: bytes, n: int, first: int) -> tuple[list[str], np.ndarray]:
        """Tokens and vectors of the ``n`` lines of ``block``: polars for the usual lines,
        Python for the rest.

        Lines of the usual shape (``token v1 ... vdim``, one space apart, a trailing
        space allowed) are parsed by :func:`_parse_regular`; if some are not, the
        usual ones still are, and the others (GloVe tokens with spaces, irregular
        spacing) go line by line. Any doubt (a bad value, NaN, a short line) sends
        the whole block to :meth:`_parse_slowly`, whose errors name the line.
        """
        parsed = None if self._mixed else _parse_regular(block, n, self.dim)
        if parsed is None and n > 1:
            parsed = self._parse_mixed(block, n, first)
        return parsed if parsed is not None else self._parse_slowly(_split_lines(block), first)

    def _parse_mixed(self, block: bytes, n: int,
                     first: int) -> tuple[list[str], np.ndarray] | None:
        """Usual lines by polars, the others one by one; None if a usual line is bad.

        polars reads the whole block leniently (:func:`_parse_polars`): a line of
        another shape comes back as a row with a null, parsed again line by line. A
        line with more fields whose extra ones are numbers (a GloVe token such as
        ``"top 10"``) reads as a usual row cut short: the spaces of the block then do
        not add up, and the unusual lines are found by counting spaces
        (:func:`_unusual_lines`) and left out of a second polars parse. Once a block
        had unusual lines, the next blocks start here rather than with a strict
        parse that fails at the first of them. GloVe blocks with one spaced token in
        1000 lines, in a loader's parser threads: finding those lines ~0.4 us a line,
        counting spaces ~0.6-0.8, where cutting the lines out of a copy took ~1.8
        (300k-line loads alternated 4 times: 71-76k -> 78-83k vectors/s).
        """
        spaces = self.dim + _trailing_space(block[:block.find(b"\n") + 1])
        lenient = _parse_polars(block, n, self.dim, lenient=True)
        if lenient is not None:
            tokens, vectors, odd = lenient
            lines = _lines_at(block, odd)
            if _count_spaces(block) == (n - len(odd)) * spaces + sum(
                    line.count(b" ") for line in lines):
                self._mixed = bool(odd)
                for i, line in zip(odd, lines):
                    (tokens[i],), vectors[i] = self._parse_slowly([line], first + i)
                return tokens, vectors
        ends = _line_ends(block)
        unusual = _unusual_lines(block, ends, spaces)
        self._mixed = 0 < len(unusual) < n
        if not unusual:
            return _parse_regular(block, n, self.dim)
        if len(unusual) == n:
            return None
        view, pieces, start = memoryview(block), [], 0
        for i in unusual:
            pieces.append(view[start:ends[i - 1] if i else 0])
            start = ends[i]
        pieces.append(view[start:])
        parsed = _parse_regular(b"".join(pieces), n - len(unusual), self.dim)
        if parsed is None:
            return None
        tokens = parsed[0]
        usual = np.ones(n, dtype=bool)
        usual[unusual] = False
        vectors = np.empty((n, self.dim), dtype=np.float32)
        vectors[usual] = parsed[1]
        for i in unusual:  # few: insert in order
            line = block[ends[i - 1] if i else 0:ends[i]]
            (token,), vectors[i] = self._parse_slowly([line], first + i)
            tokens.insert(i, token)
        return tokens, vectors

    def _parse_slowly(self, raw: list[bytes], first: int) -> tuple[list[str], np.ndarray]:
        """Line by line, for irregular spacing, GloVe tokens with spaces, and errors."""
        dim, glove = self.dim, self.fmt == "glove"
        tokens, vectors = [], np.empty((len(raw), dim), dtype=np.float32)
        for i, line in enumerate(self._decode(raw, first)):
            if glove:
                token, fields = _glove_split(line, dim)
            else:
                token, _, rest = line.rstrip().partition(" ")
                fields = rest.split()
            if len(fields) != dim:
                cut = ("" if raw[i].endswith(b"\n")
                       else " (the file ends inside this line: truncated?)")
                if glove and first + i == 0 and all(map(_is_number, line.split())):
                    cut += " (a broken word2vec header? it must be 'count dim')"
                raise self.error(first + i, f"wrong number of values: expected {dim}, "
                                 f"found {len(fields)}{cut}")
            values = _numbers(" ".join(fields))
            if values is None or values.size != dim:
                bad = next((f for f in fields if not _is_number(f)), " ".join(fields))
                hint = f" (GloVe lines end with {dim} numbers)" if glove else ""
                raise self.error(first + i, f"non-numeric value {bad!r}{hint}")
            tokens.append(token)
            vectors[i] = values
        return tokens, vectors


def _split_lines(block: bytes) -> list[bytes]:
    """The lines of ``block``, each with its ``"\\n"`` (the last one may have none)."""
    lines = block.split(b"\n")
    last = lines.pop()
    return [line + b"\n" for line in lines] + ([last] if last else [])


def _line_ends(block: bytes) -> list[int]:
    """Where each line of ``block`` ends (after its ``"\\n"``, if any)."""
    ends, find, pos = [], block.find, 0
    while (newline := find(b"\n", pos)) >= 0:
        pos = newline + 1
        ends.append(pos)
    if pos < len(block):
        ends.append(len(block))
    return ends


def _lines_at(block: bytes, rows: list[int]) -> list[bytes]:
    """Lines ``rows`` (ascending) of ``block``, each with its ``"\\n"`` if it has one.

    >>> _lines_at(b"a 1\\nb 2\\nc 3", [1, 2])
    [b'b 2\\n', b'c 3']
    """
    lines, find, start, row = [], block.find, 0, 0
    for wanted in rows:
        while row < wanted:
            start, row = find(b"\n", start) + 1, row + 1
        lines.append(block[start:find(b"\n", start) + 1 or len(block)])
    return lines


def _count_spaces(block: bytes, step: int = 1 << 18) -> int:
    """How many ``" "`` ``block`` holds: numpy's, ~5x faster than ``bytes.count``, a
    ``step`` at a time so that the comparison stays in cache (0.6 us a 300-d line where
    a whole 4000-line block took 0.8).

    >>> _count_spaces(b"a 1 2\\nb 3 4\\n", step=4)
    4
    """
    data = np.frombuffer(block, dtype=np.uint8)
    return sum(int(np.count_nonzero(data[start:start + step] == ord(" ")))
               for start in range(0, len(data), step))


def _unusual_lines(block: bytes, ends: list[int], spaces: int) -> list[int]:
    """The lines of ``block`` (ending at ``ends``) that do not hold ``spaces`` spaces.

    Found by halving: a range of lines holding as many spaces as its usual lines
    would is passed whole, so a block with one unusual line costs a few counts
    (numpy's, ~6x faster than ``bytes.count``). Rarely, a line with too few
    spaces hides one with too many: polars then refuses the block and the caller
    reads it line by line.

    >>> _unusual_lines(b"a 1\\nb c 2\\nd 3\\n", [4, 10, 14], 1)
    [1]
    """
    is_space = np.frombuffer(block, dtype=np.uint8) == ord(" ")
    starts, found = [0, *ends[:-1]], []
    pending = [(0, len(ends))] if ends else []
    while pending:
        lo, hi = pending.pop()
        if np.count_nonzero(is_space[starts[lo]:ends[hi - 1]]) == (hi - lo) * spaces:
            continue
        if hi - lo == 1:
            found.append(lo)
        else:
            pending += [((lo + hi) // 2, hi), (lo, (lo + hi) // 2)]  # the lower half first
    return found


def _parse_regular(block: bytes, n: int, dim: int) -> tuple[list[str], np.ndarray] | None:
    """Tokens and vectors of the ``n`` lines of ``block`` shaped ``token v1 ... vdim``, or
    None if one is not (see :func:`_parse_polars`)."""
    parsed = _parse_polars(block, n, dim)
    return None if parsed is None or parsed[2] else (parsed[0], parsed[1])


def _parse_polars(block: bytes, n: int, dim: int, *,
                  lenient: bool = False) -> tuple[list[Any], np.ndarray, list[int]] | None:
    """Tokens and vectors of the ``n`` lines of ``block`` and the rows of lines not shaped
    ``token v1 ... vdim``, whose token and values are then wrong (None if polars refuses
    the block, which it does for any such line unless ``lenient``).

    polars' CSV reader (Rust, fast-float) parses 300-d lines at ~75-90k lines/s on one
    core of the development machine; measured on the same blocks: pyarrow's CSV
    reader ~42-54k/s, ``np.loadtxt`` ~52k/s, ``np.fromstring`` (used before) ~38k/s,
    fastnumbers ~30-35k/s, polars or pyarrow splitting the lines into strings cast
    to floats ~46k/s, orjson on the lines rewritten as JSON arrays ~21-25k/s,
    gensim ~5.6k/s. polars takes ~45 ns per number and this function ~70% of a text
    load's CPU (the loader's threads, measured per thread): the text loaders' floor
    (a process pool would add copies, not cores). Values are read as float64 and then
    rounded to float32, as gensim does, so the result is bit-identical to it.
    Unusual rows (the caller parses their lines in Python) for what polars reads
    otherwise than the line-by-line parser would: a short line (polars fills it
    with nulls), an empty line, a NaN or inf, a value that is not a number. A line
    with more fields is refused, or, leniently, cut short: only the number of
    spaces in the block shows it (the caller counts them). None for a block with a
    byte-order mark (polars drops it), a ``"\\r"`` that does not end a line
    (polars drops it at the end of a field), invalid UTF-8. Other whitespace needs
    no scan of the block (it cost ~0.2 CPU-s per 200k lines): in a token both
    parsers keep it, and a value holding it is not a number to polars except a
    leading tab, which Python's split drops as well (the property test checks
    that polars' blocks equal Python's).
    """
    import polars as pl  # imported here: the other commands of the CLI do not pay for it

    if (block.startswith(b"\xef\xbb\xbf")
            or (b"\r" in block and block.count(b"\r") != block.count(b"\r\n"))):
        return None
    first_end = block.find(b"\n")
    trailing = _trailing_space(block[:first_end] if first_end >= 0 else block)
    try:
        frame = pl.read_csv(block, has_header=False, separator=" ", quote_char=None,
                            schema=_schema(dim, trailing), ignore_errors=lenient,
                            truncate_ragged_lines=lenient,
                            extra_columns="ignore" if lenient else None)
    except (pl.exceptions.PolarsError, ValueError):
        return None
    if frame.height != n:
        return None
    tokens = frame.get_column("token").to_list()
    # Column by column into the rows of the transposed matrix, then one transposing copy:
    # ~1.5 us per 300-d line where DataFrame.to_numpy() and astype took ~2.9.
    columns = np.empty((dim, n), dtype=np.float32)
    with np.errstate(over="ignore"):  # 1e39 becomes inf, refused below
        for row, column in zip(columns, frame.get_columns()[1:dim + 1]):
            row[:] = column.to_numpy()
    vectors = np.ascontiguousarray(columns.T)
    unusual = ~np.isfinite(vectors).all(axis=1)  # a null value is NaN here
    if None in tokens:
        unusual |= np.array([token is None for token in tokens])
    if trailing:
        unusual |= frame.get_column("_").is_not_null().to_numpy()
    return tokens, vectors, np.flatnonzero(unusual).tolist()


@functools.lru_cache(maxsize=8)
def _schema(dim: int, trailing: bool) -> dict[str, Any]:
    """polars columns of a text line: the token, ``dim`` float64, the empty field after a
    trailing space (fastText and the word2vec C tool end lines with ``" \\n"``)."""
    import polars as pl

    schema: dict[str, Any] = {"token": pl.String, **{f"v{i}": pl.Float64 for i in range(dim)}}
    if trailing:
        schema["_"] = pl.String
    return schema


def _glove_width(line: str) -> int:
    """How many numbers end a GloVe ``line`` (split as :func:`_glove_split` does)."""
    fields = line.rstrip().split(" ")[1:]
    return _numeric_tail(fields if all(fields) else line.split()[1:])


def _glove_split(line: str, dim: int) -> tuple[str, list[str]]:
    """Token and value fields of a GloVe ``line``: the last ``dim`` fields one space apart,
    as GloVe writes them and gensim reads them (``"a\\t 1"`` -> ``"a\\t"``); else, for
    irregular spacing, the last ``dim`` whitespace-separated fields (``"a  b\\t1"`` ->
    ``"a  b"``). A line starting with a space has an empty token (refused), as in gensim.
    """
    head, *fields = line.rstrip().rsplit(" ", dim)
    if not line.startswith(" ") and len(fields) == dim and all(fields):
        values = _numbers(" ".join(fields))
        if values is not None and values.size == dim:
            return head, fields
    token, *fields = line.rsplit(None, dim) or [""]
    return ("" if line.startswith(" ") else token), fields


def _trailing_space(line: bytes) -> bool:
    return line.rstrip(b"\r\n").endswith(b" ")


def _numbers(text: str) -> np.ndarray | None:
    """The whitespace-separated float32 numbers of ``text``, or None if one is not a number."""
    try:
        return np.fromstring(text, dtype=np.float32, sep=" ")
    except ValueError:
        return None


def _numeric_tail(fields: list[str]) -> int:
    """How many of ``fields``, counted from the end, are numbers."""
    return next((n for n, f in enumerate(reversed(fields)) if not _is_number(f)), len(fields))


def _is_number(field: str) -> bool:
    values = _numbers(field)
    return values is not None and values.size == 1


class KeyedVectorsReader(Reader):
    """Records of an in-memory gensim ``KeyedVectors``, in index order."""

    fmt = "gensim"
    count: int

    def __init__(self, kv: Any, *, limit: int | None = None,
                 batch_size: int = DEFAULT_BATCH) -> None:
        super().__init__(limit, batch_size)
        self.kv = kv
        self.source = f"<in-memory {type(kv).__name__}>"
        self.dim = int(kv.vector_size)
        self.count = _cap(len(kv.index_to_key), limit)

    def locate(self, record: int) -> str:
        return f"index {record}"

    def _batches(self) -> Iterator[Batch]:
        for first in range(0, self.count, self.batch_size):
            end = min(first + self.batch_size, self.count)
            tokens = self.kv.index_to_key[first:end]
            for i, token in enumerate(tokens):
                if not isinstance(token, str):
                    raise self.error(first + i, f"key {token!r} is a {type(token).__name__}, "
                                     f"not a str")
            vectors = np.asarray(self.kv.vectors[first:end], dtype=np.float32)
            yield Batch(list(tokens), vectors, first)


def _check_batch(reader: Reader, batch: Batch) -> None:
    """Raise LoadError for an empty or duplicate token, a newline in one, or NaN/inf."""
    tokens, vectors, first = batch
    if "" in tokens:
        raise reader.error(first + tokens.index(""), "empty token")
    if "\n" in "".join(tokens):
        i = next(i for i, token in enumerate(tokens) if "\n" in token)
        raise reader.error(first + i, f"token {tokens[i]!r} contains a newline")
    if len(set(tokens)) != len(tokens):
        seen: dict[str, int] = {}
        for i, token in enumerate(tokens):
            if token in seen:
                raise reader.error(first + i, f"duplicate token {token!r} "
                                   f"(first at {reader.locate(first + seen[token])})")
            seen[token] = i
    finite = np.isfinite(vectors)
    if not finite.all():
        row, col = np.argwhere(~finite)[0]
        raise reader.error(first + int(row), f"value {vectors[row, col]} (field {col + 1}) "
                           f"is not a finite float32 number")
