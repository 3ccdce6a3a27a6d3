"""Property-based tests of the file readers: mutated files give a clear error or gensim's result.

Each example takes a small valid file (word2vec binary, word2vec text, GloVe),
applies one to three mutations (truncation, bit flip, byte replaced, inserted
or deleted, a lying header) and checks that:

- the reader raises :class:`LoadError` naming the file, or yields a model; no
  other exception ever escapes, whatever the format asked (``auto`` too);
- when both the reader and gensim's ``load_word2vec_format`` accept the bytes,
  tokens and vectors are identical;
- :func:`vectorstore.loader.load` of the same file into a real Redis fails
  with the same LoadError and leaves no key at all (nothing published, no
  staging version, no lock, no counter), or publishes exactly what the reader read.

The example count is bounded (``max_examples``, 100 fixed examples per format)
so that CI stays fast; ``VECTORSTORE_FUZZ_EXAMPLES=5000`` runs more, at random.
"""
from __future__ import annotations

import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from conftest import synthetic_kv
from gensim.models import KeyedVectors
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vectorstore import readers
from vectorstore.errors import LoadError
from vectorstore.keys import I2K_CHUNK, Keys
from vectorstore.loader import load
from vectorstore.readers import open_vectors
from vectorstore.server import EmbeddedRedis

# CI runs a fixed set of examples; VECTORSTORE_FUZZ_EXAMPLES=5000 searches further, at random
EXAMPLES = int(os.environ.get("VECTORSTORE_FUZZ_EXAMPLES", "100"))
TOKENS = ["the", "a:b", "héllo", "日本", "{x}", "w#1", "a\u00a0b", "last"]
HEADERS = [b"", b"8", b"0 4", b"8 0", b"9 4", b"7 4", b"8 5", b"8 3", b"-8 4", b"8 4.0", b"8e0 4",
           b"+8 4", b"8 4 0", b"8  4", b"99999999999 4", b"8 1000000000", b"4 8", b"x 4"]
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                derandomize="VECTORSTORE_FUZZ_EXAMPLES" not in os.environ,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


def base_files() -> dict[str, bytes]:
    """Valid files of one small model, as gensim writes them (GloVe: without the header)."""
    kv = synthetic_kv(count=len(TOKENS), dim=4, tokens=TOKENS)
    kv.vectors[1, 2] = np.float32(1.0977302)  # digits that a cut can shorten
    out = {}
    with tempfile.TemporaryDirectory() as directory:
        for fmt in ("word2vec-binary", "word2vec-text"):
            path = Path(directory, fmt)
            kv.save_word2vec_format(str(path), binary=fmt == "word2vec-binary")
            out[fmt] = path.read_bytes()
    out["glove"] = out["word2vec-text"].split(b"\n", 1)[1]
    return out


BASES = base_files()


@st.composite
def mutated(draw: st.DrawFn, fmt: str) -> bytes:
    """The base file of ``fmt`` with one to three mutations."""
    data = bytearray(BASES[fmt])
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["truncate", "flip", "replace", "insert", "delete",
                                     "header"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "truncate":
            del data[at:]
        elif kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "replace" and data:
            data[at] = draw(st.sampled_from(b" \n\t\r0.-e9x\x00\xff"))
        elif kind == "insert":
            data[at:at] = draw(st.sampled_from([b" ", b"\n", b"0", b".", b"-", b"\xc3",
                                                b"nan", b"1e39", b"the 1 2 3 4\n"]))
        elif kind == "delete" and data:
            del data[at:at + draw(st.integers(1, 8))]
        elif kind == "header":
            lie = draw(st.sampled_from(HEADERS))
            if fmt == "glove":
                data[0:0] = lie + b"\n"
            else:
                data[:data.find(b"\n")] = lie
    return bytes(data)


def read(path: Path, fmt: str) -> tuple[list[str], np.ndarray] | LoadError:
    """What the reader makes of ``path``: tokens and vectors, or the LoadError it raised."""
    try:
        with open_vectors(path, fmt) as reader:
            tokens: list[str] = []
            vectors = [np.empty((0, reader.dim), np.float32)]
            for batch in reader:
                tokens += batch.tokens
                vectors.append(batch.vectors)
            return tokens, np.vstack(vectors)
    except LoadError as exc:
        assert str(exc).startswith(f"{path}"), exc
        return exc


def gensim_read(path: Path, fmt: str) -> KeyedVectors | None:
    """gensim's model of ``path``, or None if gensim refuses it (or makes a key of None or
    vectors of dimension 0, as its GloVe reader does of lines shorter than the first)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            kv = KeyedVectors.load_word2vec_format(
                str(path), binary=fmt == "word2vec-binary", no_header=fmt == "glove")
    except Exception:  # gensim refuses it in its own ways; only its successes are compared
        return None
    return kv if kv.vector_size and all(isinstance(k, str) for k in kv.index_to_key) else None


@pytest.fixture(scope="module")
def redis_client() -> Iterator[redis.Redis]:
    with EmbeddedRedis() as server:
        client = redis.Redis.from_url(server.url)
        yield client
        client.close()


def check(data: bytes, fmt: str, directory: Path, client: redis.Redis) -> None:
    path = directory / "model.data"
    path.write_bytes(data)
    ours = read(path, fmt)
    if not isinstance(ours, LoadError):
        expected = gensim_read(path, fmt)
        if expected is not None:
            assert ours[0] == expected.index_to_key
            np.testing.assert_array_equal(ours[1], expected.vectors)
    auto = read(path, "auto")  # never anything but a LoadError or a model
    if fmt != "glove" and not isinstance(ours, LoadError) and not isinstance(auto, LoadError):
        assert auto[0] == ours[0]

    client.flushall()
    logging.disable(logging.WARNING)  # the warning of a file without its last newline
    try:
        if isinstance(ours, LoadError) or not ours[0]:
            with pytest.raises(LoadError) as error:
                load(path, "fz", client=client, fmt=fmt, progress=False, grace=0)
            if isinstance(ours, LoadError):
                assert str(error.value) == str(ours)
            assert client.keys("*") == []
        else:
            meta = load(path, "fz", client=client, fmt=fmt, progress=False, grace=0)
            keys = Keys("fz")
            chunks = client.mget([keys.i2k(meta.version, c)
                                  for c in range(-(-meta.count // I2K_CHUNK))])
            tokens = b"\n".join(map(as_bytes, chunks)).decode().split("\n")
            assert tokens == ours[0]
            values = list(map(as_bytes, client.mget([keys.token(meta.version, t)
                                                     for t in tokens])))
            np.testing.assert_array_equal(meta.codec().decode(values), ours[1])
    finally:
        logging.disable(logging.NOTSET)


def as_bytes(value: object) -> bytes:
    assert isinstance(value, bytes), value
    return value


def fuzz(fmt: str) -> Callable[..., None]:
    @FUZZ
    @given(data=mutated(fmt))
    def test(data: bytes, tmp_path_factory: pytest.TempPathFactory,
             redis_client: redis.Redis) -> None:
        check(data, fmt, tmp_path_factory.mktemp("fuzz", numbered=True), redis_client)
    return test


test_mutated_binary_files = fuzz("word2vec-binary")
test_mutated_text_files = fuzz("word2vec-text")
test_mutated_glove_files = fuzz("glove")


def test_unmutated_bases_match_gensim(tmp_path: Path, redis_client: redis.Redis) -> None:
    for fmt, data in BASES.items():
        check(data, fmt, tmp_path, redis_client)
        assert not isinstance(read(tmp_path / "model.data", fmt), LoadError)


FIELD = st.one_of(
    st.floats(width=32, allow_nan=False, allow_infinity=False).map(repr),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from(["0", "-0", "+1", ".5", "5.", "1e5", "1E-05", "1e39", "nan", "inf", "1_0",
                     "0x10", "", "\t1", "1\r", "\u00a01", "1.5f"]))
TOKEN = st.text(st.sampled_from(list("ab1.:#\t\r\v\x1c \u00a0\u3000\u2028é日\"'")), max_size=5)
# A block of up to 6 text lines (token, separator, 2-4 fields, line end) and its format
block_examples = given(
    rows=st.lists(st.tuples(TOKEN, st.lists(FIELD, min_size=2, max_size=4),
                            st.sampled_from([" ", "\t", "  "]),
                            st.sampled_from(["\n", " \n", "\r\n"])), min_size=1, max_size=6),
    fmt=st.sampled_from(["word2vec-text", "glove"]))


@settings(max_examples=EXAMPLES, deadline=None,
          derandomize="VECTORSTORE_FUZZ_EXAMPLES" not in os.environ)
@block_examples
def test_polars_blocks_read_like_the_line_by_line_parser(rows: list[tuple[str, list[str], str, str]],
                                                         fmt: str) -> None:
    """When polars accepts a block, its tokens and values are the Python parser's, bit for bit."""
    dim = 3
    lines = [(token + sep + " ".join(fields) + end).encode() for token, fields, sep, end in rows]
    fast = readers._parse_regular(b"".join(lines), len(lines), dim)
    if fast is None:
        return
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory, "m.txt")
        path.write_bytes(b"".join(lines) if fmt == "glove" else b"%d %d\n" % (len(lines), dim)
                         + b"".join(lines))
        with readers.TextReader(str(path), fmt) as reader:
            slow = reader._parse_slowly(lines, 0)
    assert fast[0] == slow[0]
    np.testing.assert_array_equal(fast[1], slow[1])


@settings(max_examples=EXAMPLES, deadline=None,
          derandomize="VECTORSTORE_FUZZ_EXAMPLES" not in os.environ)
@block_examples
def test_mixed_blocks_read_like_the_line_by_line_parser(rows: list[tuple[str, list[str], str, str]],
                                                         fmt: str) -> None:
    """A block read leniently by polars, its unusual lines again by Python (GloVe tokens
    with spaces, odd spacing, bad values), gives the Python parser's tokens and values
    bit for bit, or its error."""
    lines = [(token + sep + " ".join(fields) + end).encode() for token, fields, sep, end in rows]
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory, "m.txt")  # only opened: its one line sets the width, 3
        path.write_bytes(b"x 1 2 3\n" if fmt == "glove" else b"1 3\nx 1 2 3\n")
        with readers.TextReader(str(path), fmt) as reader:
            expected = _parsed_or_error(lambda: reader._parse_slowly(lines, 0))
            reader._mixed = True  # as after a block with unusual lines
            got = _parsed_or_error(lambda: reader._parse(b"".join(lines), len(lines), 0))
    assert got == expected


def _parsed_or_error(parse: Callable[[], tuple[list[str], np.ndarray]]) -> tuple[object, ...]:
    try:
        tokens, vectors = parse()
    except LoadError as exc:
        return ("error", str(exc))
    return (tokens, vectors.tobytes())
