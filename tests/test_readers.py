"""Readers: every format parses exactly like gensim, streams in batches, detects formats."""
from __future__ import annotations

import bz2
import gzip
import re
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from conftest import TEST_DATA, synthetic_kv
from gensim.models import KeyedVectors

from vectorstore.errors import LoadError
from vectorstore.readers import FORMATS, Batch, open_vectors, sniff

# gensim's bundled files that gensim itself loads: (file, detected format)
BUNDLED = [
    ("lee_fasttext.vec", "word2vec-text"),
    ("crime-and-punishment.vec", "word2vec-text"),  # Cyrillic tokens
    ("toy-model.vec", "word2vec-text"),
    ("high_precision.kv.txt", "word2vec-text"),
    ("word2vec_pre_kv_c", "word2vec-text"),
    ("EN.1-10.cbow1_wind5_hs0_neg10_size300_smpl1e-05.txt", "word2vec-text"),
    ("euclidean_vectors.bin", "word2vec-binary"),
    ("poincare_vectors.bin", "word2vec-binary"),
    ("high_precision.kv.bin", "word2vec-binary"),  # no "\n" between records
    ("test_glove.txt", "glove"),
]
SPECIAL_TOKENS = ["plain", "a:b", "{tag}", "#hash", "vs:x:1:y", "x#meta", "héllo", "日本語",
                  "emoji🙂", "Ünïcödé:{#}", "tab\there", "back\\slash"]


def read_all(reader) -> tuple[list[str], np.ndarray]:
    tokens: list[str] = []
    vectors = []
    with reader:
        for batch in reader:
            tokens += batch.tokens
            vectors.append(batch.vectors)
    return tokens, np.vstack(vectors) if vectors else np.empty((0, reader.dim), np.float32)


def gensim_load(path: Path, fmt: str) -> KeyedVectors:
    return KeyedVectors.load_word2vec_format(str(path), binary=fmt == "word2vec-binary",
                                             no_header=fmt == "glove")


def special_kv() -> KeyedVectors:
    return synthetic_kv(count=len(SPECIAL_TOKENS) + 300, dim=16,
                        tokens=SPECIAL_TOKENS + [f"w{i}" for i in range(300)])


def save(kv: KeyedVectors, path: Path, binary: bool, compress: str = "") -> Path:
    """``kv`` in word2vec format at ``path``, gzip- or bzip2-compressed if asked."""
    plain = path.with_name(path.name + ".plain")
    kv.save_word2vec_format(str(plain), binary=binary)
    data = plain.read_bytes()
    plain.unlink()
    path.write_bytes({"": data, "gz": gzip.compress(data), "bz2": bz2.compress(data)}[compress])
    return path


@pytest.mark.parametrize("name,fmt", BUNDLED)
def test_bundled_files_match_gensim(name: str, fmt: str) -> None:
    path = TEST_DATA / name
    assert sniff(str(path)) == fmt
    reader = open_vectors(path)
    assert reader.fmt == fmt
    tokens, vectors = read_all(reader)
    expected = gensim_load(path, fmt)
    assert tokens == expected.index_to_key
    assert vectors.dtype == np.float32
    np.testing.assert_array_equal(vectors, expected.vectors)
    assert reader.count == (None if fmt == "glove" else len(tokens))
    assert reader.dim == expected.vector_size


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "text"])
@pytest.mark.parametrize("compress", ["", "gz", "bz2"])
def test_synthetic_roundtrip_with_special_tokens(tmp_path: Path, binary: bool,
                                                 compress: str) -> None:
    kv = special_kv()
    # a misleading extension: compression is recognised by magic bytes
    path = save(kv, tmp_path / "model.data", binary, compress)
    reader = open_vectors(path)
    assert reader.fmt == ("word2vec-binary" if binary else "word2vec-text")
    assert reader.count == len(kv)
    tokens, vectors = read_all(reader)
    assert tokens == kv.index_to_key
    np.testing.assert_array_equal(vectors, kv.vectors)  # gensim writes text losslessly


def test_explicit_formats_and_fasttext_alias(tmp_path: Path) -> None:
    kv = special_kv()
    text = save(kv, tmp_path / "m.vec", binary=False)
    binary = save(kv, tmp_path / "m.bin", binary=True)
    for fmt in ("word2vec-text", "fasttext-vec"):
        reader = open_vectors(text, fmt)
        assert reader.fmt == fmt
        assert read_all(reader)[0] == kv.index_to_key
    np.testing.assert_array_equal(read_all(open_vectors(binary, "word2vec-binary"))[1],
                                  kv.vectors)


def test_glove_tokens_may_contain_spaces(tmp_path: Path) -> None:
    path = tmp_path / "glove.txt"
    path.write_text("new york 0.5 -1 2.25\n"
                    "the 1 2 3\n"
                    ". . . 4 5 6\n"
                    "2012 7 8 9\n"
                    "a  b\t10 11 12\n", encoding="utf-8")
    reader = open_vectors(path)
    assert (reader.fmt, reader.dim, reader.count) == ("glove", 3, None)
    tokens, vectors = read_all(reader)
    assert tokens == ["new york", "the", ". . .", "2012", "a  b"]
    np.testing.assert_array_equal(vectors, np.array(
        [[0.5, -1, 2.25], [1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11, 12]], np.float32))


def test_glove_dimension_is_the_common_width_of_the_first_lines(tmp_path: Path) -> None:
    """A first token ending in a number does not change the dimension of the file."""
    path = tmp_path / "glove.txt"
    path.write_text("route 66 1 2 3\nthe 4 5 6\nof 7 8 9\n", encoding="utf-8")
    reader = open_vectors(path)
    assert (reader.fmt, reader.dim) == ("glove", 3)
    assert read_all(reader)[0] == ["route 66", "the", "of"]


def test_low_dimensional_glove_with_a_numeric_first_token_needs_its_format(
        tmp_path: Path) -> None:
    path = tmp_path / "glove.txt"
    path.write_text("2012 0.5\nthe 0.25\n", encoding="utf-8")
    with pytest.raises(LoadError, match=r"line 1: bad header '2012 0.5'.* give the format glove"):
        open_vectors(path)
    tokens, vectors = read_all(open_vectors(path, "glove"))
    assert tokens == ["2012", "the"]
    np.testing.assert_array_equal(vectors, [[0.5], [0.25]])


def test_irregular_spacing_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "w.txt"
    path.write_bytes(b"3 2\r\nx 1  2 \r\ny 1\t2\r\nz 3 4\n")
    tokens, vectors = read_all(open_vectors(path))
    assert tokens == ["x", "y", "z"]
    np.testing.assert_array_equal(vectors, np.array([[1, 2], [1, 2], [3, 4]], np.float32))


def test_limit_caps_the_count(tmp_path: Path) -> None:
    kv = special_kv()
    for binary in (True, False):
        path = save(kv, tmp_path / f"m{binary}", binary)
        reader = open_vectors(path, limit=5)
        assert reader.count == 5
        assert read_all(reader)[0] == kv.index_to_key[:5]
        assert open_vectors(path, limit=10**9).count == len(kv)
    glove = TEST_DATA / "test_glove.txt"
    assert read_all(open_vectors(glove, limit=7))[0] == gensim_load(glove, "glove").index_to_key[:7]


@pytest.mark.parametrize("batch_size", [1, 7, 1000])
def test_batches_are_consecutive_and_bounded(batch_size: int) -> None:
    path = TEST_DATA / "euclidean_vectors.bin"
    batches = list(open_vectors(path, batch_size=batch_size))
    assert all(isinstance(b, Batch) and len(b.tokens) <= batch_size for b in batches)
    assert [b.first for b in batches] == list(range(0, 2747, batch_size))
    assert all(b.vectors.shape == (len(b.tokens), 10) for b in batches)


@pytest.mark.parametrize("batch_size", [7, 1000, 5000])
def test_text_batches_are_consecutive_and_match_gensim(tmp_path: Path, batch_size: int) -> None:
    """Text parsed in blocks on parser threads comes back in order, batch_size at a time."""
    path = save(synthetic_kv(count=9001, dim=4), tmp_path / "m", False)
    batches = list(open_vectors(path, batch_size=batch_size))
    assert [b.first for b in batches] == list(range(0, 9001, batch_size))
    assert all(len(b.tokens) == len(b.vectors) <= batch_size for b in batches)
    tokens, vectors = read_all(open_vectors(path, batch_size=batch_size))
    expected = gensim_load(path, "word2vec-text")
    assert tokens == expected.index_to_key
    np.testing.assert_array_equal(vectors, expected.vectors)


@pytest.mark.parametrize("fmt", ["word2vec-text", "glove"])
def test_an_interrupt_while_cutting_a_block_leaves_with_the_interrupt(tmp_path: Path,
                                                                      fmt: str) -> None:
    """Ctrl-C while a block is cut from the mapped file: the interrupt comes out of the
    ``with``, not a BufferError from closing a map its traceback still holds views of."""
    path = save(synthetic_kv(count=3000, dim=4), tmp_path / "m", False)
    if fmt == "glove":
        path.write_bytes(path.read_bytes().split(b"\n", 1)[1])

    def interrupt_in_take(frame, event, arg):  # a signal handler raising at a line of _take
        if event == "call" and frame.f_code.co_name == "_take" and frame.f_locals["record"] >= 0:
            return interrupt_with_pieces
        return None

    def interrupt_with_pieces(frame, event, arg):
        if event == "line" and frame.f_locals.get("pieces"):
            raise KeyboardInterrupt
        return interrupt_with_pieces

    with pytest.raises(KeyboardInterrupt):
        with open_vectors(path, fmt, batch_size=1000) as reader:
            sys.settrace(interrupt_in_take)
            try:
                for _ in reader:
                    pass
            finally:
                sys.settrace(None)
    assert reader._map is None and reader._file.closed


def test_keyed_vectors_source() -> None:
    kv = special_kv()
    reader = open_vectors(kv, batch_size=100, limit=250)
    assert (reader.fmt, reader.dim, reader.count) == ("gensim", 16, 250)
    tokens, vectors = read_all(reader)
    assert tokens == kv.index_to_key[:250]
    np.testing.assert_array_equal(vectors, kv.vectors[:250])


def test_reader_streams_large_files_in_small_memory(tmp_path: Path) -> None:
    """A reader holds a batch and a few read-ahead chunks, never the file."""
    n, dim = 40000, 100
    rows = np.random.default_rng(0).normal(size=(n, dim)).astype("<f4").tobytes()
    path = tmp_path / "big.bin"
    path.write_bytes(f"{n} {dim}\n".encode() + b"".join(
        b"w%d " % i + rows[i * dim * 4:(i + 1) * dim * 4] for i in range(n)))
    tracemalloc.start()
    try:
        for _ in open_vectors(path, batch_size=100):
            pass
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < path.stat().st_size / 3, peak


def test_format_names_are_validated() -> None:
    assert "auto" in FORMATS
    with pytest.raises(ValueError, match="unknown format"):
        open_vectors(TEST_DATA / "lee_fasttext.vec", "csv")
    with pytest.raises(ValueError, match="batch_size"):
        open_vectors(TEST_DATA / "lee_fasttext.vec", batch_size=0)


@pytest.mark.parametrize("batch_size", [1, 7, 1000])
def test_binary_records_of_every_shape_match_gensim(tmp_path: Path, batch_size: int) -> None:
    """Usual records (read by regular expressions) and unusual ones (one by one) mixed,
    across buffer refills: "\\n" after a vector or not, "\\n\\n" before a token, tokens
    longer than the fast path takes, vector bytes holding spaces and newlines."""
    dim = 64
    rng = np.random.default_rng(3)
    count = 6000  # ~1.6 MB: more than one read of the file
    tokens = [f"t{i}" + "é" * int(rng.integers(0, 4)) for i in range(count)]
    tokens[5], tokens[4000] = "L" * 40_000, "M" * 33_000
    vectors = rng.normal(size=(count, dim)).astype("<f4")
    vectors[7] = np.frombuffer(b" \n \n" * dim, "<f4")  # bytes of a vector: spaces, newlines
    parts = [f"{count} {dim}\n".encode()]
    for i, token in enumerate(tokens):
        lead = b"\n\n" if i % 997 == 3 else b"\n" if i % 3 == 0 and i else b""
        parts.append(lead + token.encode() + b" " + vectors[i].tobytes())
    path = tmp_path / "mixed.bin"
    path.write_bytes(b"".join(parts))
    expected = KeyedVectors.load_word2vec_format(str(path), binary=True)
    assert expected.index_to_key == tokens
    got_tokens, got = read_all(open_vectors(path, batch_size=batch_size))
    assert got_tokens == tokens
    np.testing.assert_array_equal(got, expected.vectors)
    limited, _ = read_all(open_vectors(path, batch_size=batch_size, limit=4001))
    assert limited == tokens[:4001]


def test_binary_reader_errors_name_the_record_after_usual_ones(tmp_path: Path) -> None:
    dim = 4
    def records(names: range) -> bytes:
        return b"".join(b"w%d " % i + np.arange(dim, dtype="<f4").tobytes() for i in names)

    cases = {
        b"5\xff ": "record 51: token b'5\\xff' is not valid UTF-8",
        b"\n\nw1 ": "record 51: duplicate token 'w1' (first at record 2)",
        b"a\nb ": "record 51: token 'a\\nb' contains a newline",
        b" ": "record 51: empty token",
    }
    for bad, message in cases.items():
        path = tmp_path / "bad.bin"
        path.write_bytes(b"60 4\n" + records(range(50)) + bad + np.zeros(dim, "<f4").tobytes()
                         + records(range(100, 109)))
        with pytest.raises(LoadError, match=re.escape(message)):
            read_all(open_vectors(path, batch_size=100))


@pytest.mark.parametrize("every", [3, 700])
@pytest.mark.parametrize("batch_size", [1, 64, 1000])
def test_glove_blocks_with_spaced_tokens_dense_or_rare(tmp_path: Path, every: int,
                                                       batch_size: int) -> None:
    """Blocks mixing usual lines (polars) with spaced tokens (line by line), in order."""
    dim, count = 20, 3000
    vectors = np.random.default_rng(5).normal(size=(count, dim)).astype(np.float32)
    tokens = [f"w{i} x" if i % every == 1 else f"w{i}" for i in range(count)]
    tokens[2] = "new  york"  # two spaces: only the line-by-line parser reads it
    tokens[1500] = "w1500 7"  # looks like a usual line up to its second field
    path = tmp_path / "glove.txt"
    path.write_text("".join(f"{t} {' '.join(map(repr, v.tolist()))}{' ' if i % 5 else ''}\n"
                            for i, (t, v) in enumerate(zip(tokens, vectors, strict=True))),
                    encoding="utf-8")
    got_tokens, got = read_all(open_vectors(path, "glove", batch_size=batch_size))
    assert got_tokens == tokens
    np.testing.assert_array_equal(got, vectors)
