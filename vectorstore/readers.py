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
import gzip
import io
import itertools
import logging
import os
import re
import zlib
from collections import Counter
from collections.abc import Iterator
from contextlib import suppress
from typing import Any, NamedTuple

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
_CHUNK_BYTES = 1 << 20
_MAX_TOKEN_BYTES = 1 << 16
_HEADER_RE = re.compile(rb"\s*(\d+)\s+(\d+)\s*")
_NUMERIC_BYTES = b"0123456789+-.eEnNaAiIfFtTyY \t\r"
_FIELD_NOISE = ("  ", "\t", "\v", "\f", "\r")  # whitespace that breaks "one field per space"


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

    def __enter__(self) -> Reader:
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
        vbytes, buf, pos = self.dim * 4, self._buf, 0
        self._buf = b""
        view, find, size = memoryview(buf), buf.find, len(buf)
        for first in range(0, self.count, self.batch_size):
            raw: list[bytes] = []
            vectors: list[memoryview] = []
            add_token, add_vector = raw.append, vectors.append
            for record in range(first, min(first + self.batch_size, self.count)):
                space = find(b" ", pos, pos + _MAX_TOKEN_BYTES)
                end = space + 1 + vbytes
                if space < 0 or end > size:
                    buf, pos = self._refill(buf, pos, record), 0
                    view, find, size = memoryview(buf), buf.find, len(buf)
                    space = find(b" ")
                    end = space + 1 + vbytes
                add_token(buf[pos:space])
                add_vector(view[space + 1:end])
                pos = end
            matrix = np.frombuffer(b"".join(vectors), dtype="<f4").reshape(len(raw), self.dim)
            yield Batch(self._decode(raw, first), matrix, first)

    def _decode(self, raw: list[bytes], first: int) -> list[str]:
        # the C tool ends each vector with "\n": it shows up before the next token
        stripped = [t.lstrip(b"\n") for t in raw]
        try:
            return [t.decode("utf-8") for t in stripped]
        except UnicodeDecodeError:
            for i, t in enumerate(stripped):
                try:
                    t.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise self.error(first + i, f"token {t!r} is not valid UTF-8 "
                                     f"({exc.reason} at byte {exc.start})") from None
            raise


class TextReader(Reader):
    """Records of a text file: word2vec/fastText (with header) or GloVe (without)."""

    def __init__(self, path: str, fmt: str, *, limit: int | None = None,
                 batch_size: int = DEFAULT_BATCH) -> None:
        super().__init__(limit, batch_size)
        if fmt not in ("word2vec-text", "fasttext-vec", "glove"):
            raise ValueError(f"not a text format: {fmt!r}")
        self.source, self.fmt = path, fmt
        self._file = open_file(path)
        self._lines: Iterator[bytes] = iter(self._file)
        self._header_lines = 0 if fmt == "glove" else 1
        try:
            if fmt == "glove":
                head = self._next_lines(GLOVE_SNIFF_LINES, 0)
                self.dim = self._glove_dim(head)
                self._lines = itertools.chain(head, self._lines)
                self.count = None
            else:
                header = self._next_lines(1, -1)
                total, self.dim = _parse_header(header[0].rstrip(b"\r\n") if header else b"",
                                                path)
                self.header_count = total
                self.count = _cap(total, limit)
        except BaseException:
            self._file.close()
            raise

    def locate(self, record: int) -> str:
        return f"line {record + self._header_lines + 1}"

    def close(self) -> None:
        self._file.close()

    def _next_lines(self, n: int, record: int) -> list[bytes]:
        """Up to ``n`` lines, the first holding record ``record`` (-1: the header)."""
        try:
            return list(itertools.islice(self._lines, n))
        except (OSError, EOFError, zlib.error) as exc:
            raise _unreadable(self.where(record), exc) from None

    def _glove_dim(self, head: list[bytes]) -> int:
        """The most common number of trailing numeric fields (after a token) of ``head``.

        The most common, not the first line's: a broken header such as ``300 16 0``
        then fails as line 1 of the wrong width instead of making every line a
        2-dimensional record whose token is most of the line.
        """
        if not head:
            return 1
        widths = [_numeric_tail(line.split()[1:])
                  for line in self._decode(head, 0) if line.strip()]
        if not widths or not widths[0]:
            raise self.error(0, "not a GloVe line (a token followed by numbers) nor a "
                                "word2vec header ('count dim')")
        return Counter(widths).most_common(1)[0][0] or widths[0]

    def _batches(self) -> Iterator[Batch]:
        total = self.count if self.count is not None else self.limit
        first = 0
        while total is None or first < total:
            want = self.batch_size if total is None else min(self.batch_size, total - first)
            raw = self._next_lines(want, first)
            if raw:
                tokens, vectors = self._parse(raw, first)
                if not raw[-1].endswith(b"\n"):
                    self._warn_unterminated(first + len(raw) - 1, raw[-1])
                yield Batch(tokens, vectors, first)
                first += len(raw)
            if len(raw) < want:
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

    def _parse(self, raw: list[bytes], first: int) -> tuple[list[str], np.ndarray]:
        """Tokens and vectors of ``raw`` lines; values parsed by numpy in one call."""
        dim = self.dim
        tokens, rests = [], []
        for line in self._decode(raw, first):
            token, _, rest = line.rstrip().partition(" ")
            tokens.append(token)
            rests.append(rest)
        joined = " ".join(rests)
        # Fast path: when every field is exactly one space apart, numpy parses the
        # block at once and each line's field count was checked with str.count.
        if (all(r.count(" ") == dim - 1 for r in rests) and joined[:1] != " "
                and joined[-1:] != " " and not any(s in joined for s in _FIELD_NOISE)):
            flat = _numbers(joined)
            if flat is not None and flat.size == len(rests) * dim:
                return tokens, flat.reshape(len(rests), dim)
        return self._parse_slowly(raw, first)

    def _parse_slowly(self, raw: list[bytes], first: int) -> tuple[list[str], np.ndarray]:
        """Line by line, for irregular spacing, GloVe tokens with spaces, and errors."""
        dim, glove = self.dim, self.fmt == "glove"
        tokens, vectors = [], np.empty((len(raw), dim), dtype=np.float32)
        for i, line in enumerate(self._decode(raw, first)):
            if glove:
                token, *fields = line.rsplit(None, dim) or [""]
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
    for i, token in enumerate(tokens):
        if "\n" in token:
            raise reader.error(first + i, f"token {token!r} contains a newline")
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
