"""Loader: exact round trips, atomic publishing, clean failures, locking, verify/info/drop."""
from __future__ import annotations

import bz2
import gzip
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from conftest import TEST_DATA, synthetic_kv
from gensim.models import KeyedVectors

from vectorstore import RedisKeyedVectors, loader
from vectorstore.codec import Meta
from vectorstore.errors import LoadError, LoadInProgressError, ModelNotFoundError
from vectorstore.index import IndexOptions, read_status
from vectorstore.keys import I2K_CHUNK, Keys
from vectorstore.loader import drop, info, list_models, load, verify

SPECIAL_TOKENS = ["plain", "a:b", "{tag}", "#hash", "vs:x:1:y", "x#meta", "x#i2k:0", "*?[]",
                  "héllo", "日本語", "emoji🙂", "Ünïcödé:{#}", "tab\there", "trailing:"]


def stored(client: redis.Redis, name: str,
           prefix: str = "vs") -> tuple[list[str], np.ndarray, Meta]:
    """Tokens, vectors and metadata of the served version, read from the raw keys."""
    keys = Keys(name, prefix)
    version = int(client.get(keys.current))
    meta = Meta.from_hash(client.hgetall(keys.meta(version)))
    tokens: list[str] = []
    for chunk in range(-(-meta.count // I2K_CHUNK)):
        tokens += client.get(keys.i2k(version, chunk)).decode().split("\n")
    values = client.mget([keys.token(version, t) for t in tokens])
    codec = meta.codec()
    assert codec.decode_indexes(values).tolist() == list(range(len(tokens)))
    return tokens, codec.decode(values), meta


def version_keys(client: redis.Redis, name: str, version: int) -> list[bytes]:
    return [key for pattern in Keys(name).version_patterns(version)
            for key in client.scan_iter(match=pattern, count=5000)]


def assert_same(client: redis.Redis, name: str, kv: KeyedVectors) -> Meta:
    tokens, vectors, meta = stored(client, name)
    assert tokens == kv.index_to_key
    np.testing.assert_array_equal(vectors, kv.vectors)
    return meta


def write_binary(path: Path, records: list[tuple[bytes, Any]], dim: int,
                 count: int | None = None, newline: bool = True) -> Path:
    """A word2vec binary file, written by hand so that it can be broken on purpose."""
    out = [f"{len(records) if count is None else count} {dim}\n".encode()]
    for token, vector in records:
        out.append(token + b" " + np.asarray(vector, "<f4").tobytes() + (b"\n" if newline else b""))
    path.write_bytes(b"".join(out))
    return path


# --- round trips --------------------------------------------------------------------


@pytest.mark.parametrize("name,binary,no_header", [
    ("lee_fasttext.vec", False, False),
    ("crime-and-punishment.vec", False, False),
    ("EN.1-10.cbow1_wind5_hs0_neg10_size300_smpl1e-05.txt", False, False),
    ("euclidean_vectors.bin", True, False),
    ("poincare_vectors.bin", True, False),
    ("high_precision.kv.bin", True, False),
    ("test_glove.txt", False, True),
])
def test_bundled_files_round_trip(client: redis.Redis, name: str, binary: bool,
                                  no_header: bool) -> None:
    path = TEST_DATA / name
    meta = load(path, "m", client=client, progress=False)
    expected = KeyedVectors.load_word2vec_format(str(path), binary=binary, no_header=no_header)
    assert assert_same(client, "m", expected) == meta
    assert (meta.count, meta.dim, meta.dtype, meta.state) == (
        len(expected), expected.vector_size, "float32", "ready")
    assert meta.source == str(path)
    assert verify("m", client=client).ok


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "text"])
@pytest.mark.parametrize("compress", ["", "gz", "bz2"])
def test_synthetic_round_trip_with_special_tokens(client: redis.Redis, tmp_path: Path,
                                                  binary: bool, compress: str) -> None:
    kv = synthetic_kv(count=2500, dim=24, tokens=SPECIAL_TOKENS + [f"w{i}" for i in range(2500)])
    path = tmp_path / "m.data"  # compression is recognised by content, not by name
    kv.save_word2vec_format(str(path), binary=binary)
    pack = {"": bytes, "gz": gzip.compress, "bz2": bz2.compress}[compress]
    path.write_bytes(pack(path.read_bytes()))
    meta = load(path, "special", client=client, progress=False, batch_size=300)
    assert meta.extra["format"] == ("word2vec-binary" if binary else "word2vec-text")
    assert_same(client, "special", kv)
    assert verify("special", client=client).ok


def test_keyed_vectors_source_and_store_read_back(redis_url: str, client: redis.Redis) -> None:
    kv = synthetic_kv(count=3000, dim=16, tokens=SPECIAL_TOKENS + [f"w{i}" for i in range(3000)])
    load(kv, "mem", url=redis_url, progress=False)
    assert_same(client, "mem", kv)
    store = pytest.importorskip("vectorstore.store")
    served = store.RedisKeyedVectors("mem", url=redis_url)
    assert len(served) == len(kv)
    np.testing.assert_array_equal(served["a:b"], kv["a:b"])
    np.testing.assert_array_equal(served[SPECIAL_TOKENS], kv[SPECIAL_TOKENS])
    for i in (0, 5, 1023, 1024, 2999):
        assert served.index_to_key[i] == kv.index_to_key[i]
        assert served.get_index(kv.index_to_key[i]) == i


def test_glove_tokens_with_spaces(client: redis.Redis, tmp_path: Path) -> None:
    path = tmp_path / "g.txt"
    path.write_text("new york 1 2\nthe 3 4\n. . . 5 6\n", encoding="utf-8")
    load(path, "g", client=client, progress=False)
    tokens, vectors, _ = stored(client, "g")
    assert tokens == ["new york", "the", ". . ."]
    np.testing.assert_array_equal(vectors, [[1, 2], [3, 4], [5, 6]])


def test_limit(client: redis.Redis) -> None:
    path = TEST_DATA / "euclidean_vectors.bin"
    meta = load(path, "m", client=client, progress=False, limit=1500)
    expected = KeyedVectors.load_word2vec_format(str(path), binary=True, limit=1500)
    assert meta.count == 1500
    assert_same(client, "m", expected)


def test_float16_values_are_gensims_rounded(client: redis.Redis) -> None:
    path = TEST_DATA / "lee_fasttext.vec"
    meta = load(path, "half", client=client, progress=False, dtype="float16")
    expected = KeyedVectors.load_word2vec_format(str(path))
    tokens, vectors, _ = stored(client, "half")
    assert meta.dtype == "float16" and tokens == expected.index_to_key
    np.testing.assert_array_equal(vectors, expected.vectors.astype(np.float16).astype(np.float32))
    assert verify("half", client=client).ok


def test_float16_overflow_is_refused(client: redis.Redis) -> None:
    kv = synthetic_kv(count=10, dim=4)
    kv.vectors[6, 2] = 1e5
    with pytest.raises(LoadError, match=r"index 6: value 100000.0 \(field 3\) does not fit "
                                        r"in float16"):
        load(kv, "half", client=client, progress=False, dtype="float16")
    assert client.keys("*") == []


def test_progress_bar(client: redis.Redis, capsys: pytest.CaptureFixture) -> None:
    load(TEST_DATA / "lee_fasttext.vec", "m", client=client, progress=True)
    assert "vectors/s" in capsys.readouterr().err
    load(TEST_DATA / "lee_fasttext.vec", "n", client=client, progress=False)
    assert capsys.readouterr().err == ""


# --- bad files ----------------------------------------------------------------------


def _v(*values: float) -> np.ndarray:
    return np.array(values, np.float32)


GOOD = [(b"a", _v(1, 2)), (b"b", _v(3, 4))]
W16 = b"".join(b"w%d " % i + b" ".join(b"%d.25" % j for j in range(16)) + b"\n" for i in range(5))
BAD_HEADERS = [b"300 16 0", b"-300 16", b"300 16.0", b"3e2 16", b"+300 16"]
BAD_FILES = [
    *[(f"auto-header {h.decode()}", "t.vec", h + b"\n" + W16, "auto",
       rf"line 1: bad header '{re.escape(h.decode())}': expected 'count dim'")
      for h in BAD_HEADERS],
    *[(f"glove-header {h.decode()}", "t.vec", h + b"\n" + W16, "glove",
       r"line 1: wrong number of values: expected 16, found \d \(a broken word2vec header")
      for h in BAD_HEADERS],
    ("auto-header-4-fields", "t.vec", b"300 16 0 1\n" + W16, "auto",
     r"line 1: wrong number of values: expected 16, found 3 \(a broken word2vec header"),
    ("header-dim-huge", "t.vec", b"5 1000000000\n" + W16, "auto",
     r"line 1: bad header '5 1000000000': dimension 1000000000 is larger than 100,000"),
    ("binary-header-dim-huge", "b.bin", b"1 1000000000\na " + bytes(8), "word2vec-binary",
     r"line 1: bad header '1 1000000000': dimension 1000000000 is larger than 100,000"),
    ("header-count-huge", "t.vec", b"5000000000 16\n" + W16, "auto",
     r"line 1: bad header '5000000000 16': count 5000000000 is more than 4,294,967,295"),
    # (id, file name, content or a function of the tmp dir, format, message pattern)
    ("text-truncated", "t.vec", b"4 3\na 1 2 3\nb 1 2 3\n", "auto",
     r"line 4: the file ends before this line: it has 2 records but its header says 4"),
    ("text-line-cut", "t.vec", b"2 3\na 1 2 3\nb 1 2", "auto",
     r"line 3: wrong number of values: expected 3, found 2 \(the file ends inside this line"),
    ("text-bad-header", "t.vec", b"two 3\na 1 2 3\n", "word2vec-text",
     r"line 1: bad header 'two 3'"),
    ("header-dim-0", "t.vec", b"1 0\na\n", "auto", r"line 1: bad header '1 0'"),
    ("too-few-values", "t.vec", b"2 3\na 1 2 3\nb 1 2\n", "auto",
     r"line 3: wrong number of values: expected 3, found 2$"),
    ("too-many-values", "t.vec", b"2 3\na 1 2 3\nb 1 2 3 4\n", "auto",
     r"line 3: wrong number of values: expected 3, found 4"),
    ("non-numeric", "t.vec", b"2 3\na 1 2 3\nb 1 x 3\n", "auto", r"line 3: non-numeric value 'x'"),
    ("nan", "t.vec", b"2 3\na 1 2 3\nb 1 nan 3\n", "auto",
     r"line 3: value nan \(field 2\) is not a finite"),
    ("inf", "t.vec", b"2 3\na 1 2 -inf\nb 1 2 3\n", "auto",
     r"line 2: value -inf \(field 3\) is not a finite"),
    ("overflow", "t.vec", b"2 3\na 1 2 3\nb 1e39 2 3\n", "auto",
     r"line 3: value inf \(field 1\) is not a finite float32"),
    ("text-utf8", "t.vec", b"2 3\na 1 2 3\n\xff\xfe 1 2 3\n", "auto",
     r"line 3: invalid UTF-8 \(invalid start byte at byte 0 of the line\)"),
    ("text-duplicate", "t.vec", b"3 3\na 1 2 3\nb 1 2 3\na 4 5 6\n", "auto",
     r"line 4: duplicate token 'a' \(first at line 2\)"),
    ("text-empty-token", "t.vec", b"2 3\na 1 2 3\n 1 2 3\n", "auto", r"line 3: empty token"),
    ("glove-short", "g.txt", b"a 1 2 3\n2012 1 2\n", "glove",
     r"line 2: wrong number of values: expected 3, found 2"),
    ("glove-empty-line", "g.txt", b"a 1 2 3\n\nb 1 2 3\n", "glove",
     r"line 2: wrong number of values: expected 3, found 0"),
    ("glove-non-numeric", "g.txt", b"a 1 2 3\nb 1 x 3\n", "glove",
     r"line 2: non-numeric value 'x' \(GloVe lines end with 3 numbers\)"),
    ("glove-not-glove", "g.txt", b"hello world\n", "auto", r"line 1: not a GloVe line"),
    ("empty-file", "e.txt", b"", "auto", r"e.txt: no vectors to load"),
    ("binary-truncated", "b.bin", lambda p: write_binary(p, GOOD, 2, count=3), "auto",
     r"record 3: the file ends before this record: it has 2 records but its header says 3"),
    ("binary-record-cut", "b.bin", lambda p: p.write_bytes(write_binary(p, GOOD, 2,
     newline=False).read_bytes()[:-3]), "auto",
     r"record 2: the record starting at byte 14 is cut short by the end of the file"),
    ("binary-bad-header", "b.bin", b"2 x\na " + bytes(8), "word2vec-binary",
     r"line 1: bad header '2 x'"),
    ("binary-nan", "b.bin", lambda p: write_binary(p, [GOOD[0], (b"b", _v(1, np.nan))], 2),
     "auto", r"record 2: value nan \(field 2\) is not a finite"),
    ("binary-utf8", "b.bin", lambda p: write_binary(p, [GOOD[0], (b"\xff", _v(1, 2))], 2),
     "auto", r"record 2: token b'\\xff' is not valid UTF-8"),
    ("binary-duplicate", "b.bin", lambda p: write_binary(p, [*GOOD, (b"a", _v(5, 6))], 2),
     "auto", r"record 3: duplicate token 'a' \(first at record 1\)"),
    ("binary-empty-token", "b.bin", lambda p: write_binary(p, [GOOD[0], (b"", _v(1, 2))], 2),
     "auto", r"record 2: empty token"),
    ("binary-newline-token", "b.bin", lambda p: write_binary(p, [GOOD[0], (b"x\ny", _v(1, 2))],
     2), "auto", r"record 2: token 'x\\ny' contains a newline"),
    ("text-as-binary", "t.vec", b"2 3\na 1 2 3\nb 1 2 3\n", "word2vec-binary",
     r"record 1: this is a text file, not word2vec binary"),
    ("gzip-truncated", "t.vec.gz", lambda p: p.write_bytes(gzip.compress(
     b"3000 3\n" + b"".join(b"w%d 1 2 3\n" % i for i in range(3000)))[:-200]), "auto",
     r"line \d+: cannot read the file from here on: it is truncated or corrupt"),
    ("gensim-truncated", TEST_DATA / "pretrained.vec", None, "auto",
     r"line 3: the file ends before this line: it has 1 records but its header says 3"),
    ("gensim-bad-utf8", TEST_DATA / "pang_lee_polarity_fasttext.vec", None, "auto",
     r"line 150: invalid UTF-8"),
]


@pytest.mark.parametrize("name,content,fmt,pattern", [c[1:] for c in BAD_FILES],
                         ids=[c[0] for c in BAD_FILES])
def test_bad_file_is_refused_and_leaves_nothing(client: redis.Redis, tmp_path: Path, name: Any,
                                                content: Any, fmt: str, pattern: str) -> None:
    path = Path(name) if isinstance(name, Path) else tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        content(path)
    with pytest.raises(LoadError) as error:
        load(path, "bad", client=client, fmt=fmt, progress=False)
    message = str(error.value)
    assert message.startswith(str(path)), message
    assert re.search(pattern, message), message
    assert client.keys("*") == []  # nothing published, no staging keys, no lock, no counter


@pytest.mark.parametrize("fmt", ["auto", "glove"])
def test_file_cut_inside_its_last_number_loads_with_a_warning(
        client: redis.Redis, tmp_path: Path, fmt: str, caplog: pytest.LogCaptureFixture) -> None:
    header = b"" if fmt == "glove" else b"2 3\n"
    path = tmp_path / "cut.txt"
    path.write_bytes(header + b"a 1 2 3\nb 4 5 1.097")  # was 1.0977302 before the cut
    with caplog.at_level(logging.WARNING, "vectorstore.readers"):
        load(path, "m", client=client, fmt=fmt, progress=False)
    line = 3 if header else 2
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}, line {line}: the file ends without a newline after '1.097': if the file was "
        f"cut short (truncated download?), that last value may be incomplete"]
    np.testing.assert_array_equal(stored(client, "m")[1], np.float32([[1, 2, 3], [4, 5, 1.097]]))
    caplog.clear()
    path.write_bytes(header + b"a 1 2 3\nb 4 5 1.097\n")
    load(path, "m", client=client, fmt=fmt, progress=False)
    assert caplog.records == []


def test_cli_shows_the_cut_file_warning(redis_url: str, tmp_path: Path) -> None:
    path = tmp_path / "cut.vec"
    path.write_bytes(b"2 3\na 1 2 3\nb 4 5 1.097")
    done = subprocess.run([sys.executable, "-m", "vectorstore.cli", "load", str(path), "--name",
                           "m", "--url", redis_url, "--no-progress"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"{path}, line 3: the file ends without a newline after '1.097'" in done.stderr
    assert "loaded m version 1: 2 vectors x 3" in done.stdout


def test_duplicate_across_batches_keeps_served_version(client: redis.Redis,
                                                       tmp_path: Path) -> None:
    good = synthetic_kv(count=50, dim=3)
    load(good, "m", client=client, progress=False)
    before = {k: client.dump(k) for k in client.keys("*") if not k.endswith(b"#seq")}
    path = tmp_path / "dup.vec"
    path.write_text("6 2\na 1 2\nb 1 2\nc 1 2\nd 1 2\nb 3 4\ne 1 2\n")
    with pytest.raises(LoadError, match=r"dup.vec, line 6: duplicate token 'b' "
                                        r"\(first at line 3\)"):
        load(path, "m", client=client, progress=False, batch_size=2, grace=0)
    after = {k: client.dump(k) for k in client.keys("*") if not k.endswith(b"#seq")}
    assert after == before
    assert_same(client, "m", good)


# --- versions, locking, interruption ------------------------------------------------


def test_reload_flips_to_new_version_and_deletes_old(client: redis.Redis) -> None:
    first, second = synthetic_kv(count=1500, seed=1), synthetic_kv(count=1200, seed=2)
    assert load(first, "m", client=client, progress=False).version == 1
    meta = load(second, "m", client=client, progress=False, grace=0)
    assert meta.version == 2 and client.get("vs:{m}#current") == b"2"
    assert_same(client, "m", second)
    assert version_keys(client, "m", 1) == []
    assert client.smembers("vs:{m}#versions") == {b"2"}
    assert list_models(client=client) == ["m"]


def test_old_version_survives_the_grace_period(client: redis.Redis) -> None:
    load(synthetic_kv(count=100, seed=1), "m", client=client, progress=False)
    old_keys = len(version_keys(client, "m", 1))
    loading = threading.Thread(target=load, args=(synthetic_kv(count=100, seed=2), "m"),
                               kwargs=dict(client=client, progress=False, grace=1.0))
    loading.start()
    deadline = time.monotonic() + 10
    while client.get("vs:{m}#current") != b"2" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert client.get("vs:{m}#current") == b"2"
    assert len(version_keys(client, "m", 1)) == old_keys  # readers of v1 still served
    loading.join()
    assert version_keys(client, "m", 1) == []


def test_leftovers_of_a_dead_load_are_removed(client: redis.Redis) -> None:
    load(synthetic_kv(count=100), "m", client=client, progress=False)
    client.incr("vs:{m}#seq")
    client.sadd("vs:{m}#versions", 2)  # what a SIGKILLed loader leaves behind
    client.mset({"vs:m:2:x": b"junk", "vs:{m}:2#i2k:0": b"x", "vs:{m}:2#meta": b"?"})
    assert load(synthetic_kv(count=10), "m", client=client, progress=False, grace=0).version == 3
    assert version_keys(client, "m", 2) == [] and version_keys(client, "m", 1) == []
    assert client.smembers("vs:{m}#versions") == {b"3"}


def _holder(pid: int) -> str:
    return f"{socket.gethostname()}:{pid}:0123"


def test_lock_of_a_live_loader_is_respected(client: redis.Redis) -> None:
    client.set("vs:{m}#lock", _holder(os.getpid()), px=15000)
    with pytest.raises(LoadInProgressError, match=rf"being loaded by {_holder(os.getpid())}"):
        load(synthetic_kv(count=10), "m", client=client, progress=False)
    client.set("vs:{m}#lock", "elsewhere:1:0123", px=15000)  # another host: cannot tell, wait
    with pytest.raises(LoadInProgressError, match="elsewhere:1:0123"):
        drop("m", client=client)
    assert client.keys("*") == [b"vs:{m}#lock"]


def test_lock_of_a_dead_loader_is_taken_over(client: redis.Redis) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    client.set("vs:{m}#lock", _holder(dead.pid), px=15000)
    assert load(synthetic_kv(count=10), "m", client=client, progress=False).count == 10
    assert client.get("vs:{m}#lock") is None


class _Sabotaged:
    """A KeyedVectors look-alike whose vectors hand the lock to someone else when read."""

    def __init__(self, client: redis.Redis) -> None:
        kv = synthetic_kv(count=3000, dim=8)
        self.index_to_key, self.vector_size, self.vectors = kv.index_to_key, 8, self
        self._vectors, self._client = kv.vectors, client

    def __getitem__(self, rows: slice) -> np.ndarray:
        self._client.set("vs:{m}#lock", "thief:1:x")
        return self._vectors[rows]


def test_publish_requires_the_lock(client: redis.Redis) -> None:
    with pytest.raises(LoadInProgressError, match="lost lock vs:{m}#lock"):
        load(_Sabotaged(client), "m", client=client, progress=False)
    assert client.keys("*") == [b"vs:{m}#lock"]


class _Slow:
    """A KeyedVectors look-alike that takes ``delay`` seconds per batch of vectors."""

    def __init__(self, delay: float) -> None:
        self.kv, self.delay = synthetic_kv(count=500, dim=8), delay
        self.index_to_key, self.vector_size, self.vectors = self.kv.index_to_key, 8, self

    def __getitem__(self, rows: slice) -> np.ndarray:
        time.sleep(self.delay)
        return self.kv.vectors[rows]


def test_lock_is_renewed_during_a_long_load(client: redis.Redis,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loader, "LOCK_TTL_MS", 300)  # renewed every 0.1 s
    slow = _Slow(delay=0.2)  # 5 batches: the load outlives the TTL three times over
    assert load(slow, "m", client=client, progress=False, batch_size=100).count == 500
    assert_same(client, "m", slow.kv)


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300k x 100 word2vec binary file (~125 MB): a load takes a few seconds."""
    n, dim = 300_000, 100
    vectors = np.random.default_rng(0).normal(size=(n, dim)).astype("<f4")
    rows = vectors.tobytes()
    path = tmp_path_factory.mktemp("big") / "big.bin"
    with open(path, "wb") as f:
        f.write(f"{n} {dim}\n".encode())
        f.write(b"".join(b"tok%d " % i + rows[i * dim * 4:(i + 1) * dim * 4] for i in range(n)))
    return path


def _start_cli_load(redis_url: str, path: Path, name: str, *options: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-X", "faulthandler", "-m", "vectorstore.cli", "--url", redis_url,
         "load", str(path), "--name", name, "--no-progress", *options],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(proc: subprocess.Popen, timeout: float = 60) -> bytes:
    """The stderr of ``proc`` once it exits; if it hangs, fail with its threads' stacks."""
    try:
        return proc.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack
        raise AssertionError(f"loader still running after {timeout} s:\n"
                             f"{proc.communicate()[1].decode(errors='replace')}") from None


def _wait_until_loading(client: redis.Redis, name: str, version: int, proc: subprocess.Popen,
                        at_least: int = 20_000) -> None:
    """Return once the loader has written ``at_least`` vectors of ``version``."""
    deadline = time.monotonic() + 60
    pattern = Keys(name).version_patterns(version)
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if client.exists(Keys(name).meta(version)) and client.dbsize() > at_least:
            return
        time.sleep(0.005)
    raise AssertionError(f"no keys matching {pattern} appeared")


@pytest.fixture()
def served(client: redis.Redis) -> KeyedVectors:
    kv = synthetic_kv(count=700, dim=100)
    load(kv, "m", client=client, progress=False)
    return kv


def test_sigkilled_load_is_invisible_and_cleaned_by_the_next(
        client: redis.Redis, redis_url: str, big_file: Path, served: KeyedVectors) -> None:
    proc = _start_cli_load(redis_url, big_file, "m")
    _wait_until_loading(client, "m", 2, proc)
    proc.kill()
    proc.communicate()
    assert client.get("vs:{m}#current") == b"1"
    assert_same(client, "m", served)
    assert verify("m", client=client).ok
    assert len(version_keys(client, "m", 2)) > 10_000  # staging data left behind, unseen

    meta = load(big_file, "m", client=client, progress=False, grace=0)  # takes the dead lock
    assert (meta.version, meta.count) == (3, 300_000)
    assert verify("m", client=client).ok
    assert version_keys(client, "m", 1) == [] and version_keys(client, "m", 2) == []
    assert client.smembers("vs:{m}#versions") == {b"3"}
    # tokens, i2k chunks, and meta, current, seq, versions, models
    assert client.dbsize() == 300_000 + -(-300_000 // I2K_CHUNK) + 5


def test_interrupted_load_cleans_up(client: redis.Redis, redis_url: str, big_file: Path,
                                    served: KeyedVectors) -> None:
    before = set(client.keys("*"))
    proc = _start_cli_load(redis_url, big_file, "m")
    _wait_until_loading(client, "m", 2, proc)
    proc.send_signal(signal.SIGINT)
    err = _finish(proc)
    assert proc.returncode == 1 and b"Aborted" in err, err
    assert b"Traceback" not in err
    assert set(client.keys("*")) == before  # staging version and lock gone
    assert_same(client, "m", served)


def test_second_loader_is_refused_while_one_runs(client: redis.Redis, redis_url: str,
                                                 big_file: Path, served: KeyedVectors) -> None:
    proc = _start_cli_load(redis_url, big_file, "m")
    try:
        _wait_until_loading(client, "m", 2, proc, at_least=1000)
        holder = f"{socket.gethostname()}:{proc.pid}:"
        with pytest.raises(LoadInProgressError, match=rf"being loaded by {holder}"):
            load(served, "m", client=client, progress=False)
        assert info("m", client=client).loading.startswith(holder)
    finally:
        proc.send_signal(signal.SIGINT)
        _finish(proc)
    assert_same(client, "m", served)


# --- the index, built before the alias flips ----------------------------------------


def same_answer(got: list[tuple[str, float]], want: list[tuple[str, float]]) -> bool:
    """Same keys in the same order, scores within 1e-5 (gensim's most_similar lists)."""
    return ([k for k, _ in got] == [k for k, _ in want]
            and np.allclose([s for _, s in got], [s for _, s in want], atol=1e-5, rtol=0))


def test_reload_with_index_answers_similarity_without_a_gap(redis_url: str,
                                                            client: redis.Redis) -> None:
    first, second = synthetic_kv(3000, 16, seed=1), synthetic_kv(3000, 16, seed=2)
    load(first, "m", url=redis_url, progress=False, index=IndexOptions())
    old, new = first.most_similar("w5", topn=5), second.most_similar("w5", topn=5)
    assert not same_answer(old, new)
    poller = RedisKeyedVectors("m", url=redis_url, refresh=0, exact=True)
    seen: list[Any] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            try:
                got = poller.most_similar("w5", topn=5)
            except Exception as exc:  # IndexNotReadyError above all
                errors.append(exc)
                return
            seen.append("old" if same_answer(got, old) else "new" if same_answer(got, new)
                        else got)

    thread = threading.Thread(target=poll)
    thread.start()
    try:
        meta = load(second, "m", url=redis_url, progress=False, grace=0.5,
                    index=IndexOptions("noquant", m=8))
        served = RedisKeyedVectors("m", url=redis_url, exact=True)  # right after load()
        for key in ("w0", "w5", "w2999"):
            assert same_answer(served.most_similar(key, topn=10),
                               second.most_similar(key, topn=10))
    finally:
        stop.set()
        thread.join()
    assert errors == []
    assert seen[0] == "old" and seen[-1] == "new"
    assert set(seen) == {"old", "new"}, [s for s in seen if s not in ("old", "new")][:3]
    assert "old" not in seen[seen.index("new"):]  # never back once flipped
    status = read_status(client.execute_command, Keys("m"), meta.version)
    assert (meta.version, status.state, status.params) == (2, "ready", "noquant m=8 ef=200")
    assert version_keys(client, "m", 1) == [] and client.keys("*vset-*") == []
    assert verify("m", client=client).ok


def test_lock_is_renewed_during_a_long_index_build(client: redis.Redis,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loader, "LOCK_TTL_MS", 300)  # renewed every 0.1 s
    kv = synthetic_kv(5000, 16)  # one builder adds ~3k/s: the build outlives the TTL ~5 times
    meta = load(kv, "m", client=client, progress=False, index=IndexOptions(workers=1))
    status = read_status(client.execute_command, Keys("m"), meta.version)
    assert status.ready and status.done == 5000
    assert client.get("vs:{m}#lock") is None
    assert_same(client, "m", kv)


def test_failing_index_build_publishes_nothing(redis_url: str, client: redis.Redis) -> None:
    kv = synthetic_kv(2000, 16, seed=1)
    load(kv, "m", client=client, progress=False, index=IndexOptions())
    before = {k: client.dump(k) for k in client.keys("*") if not k.endswith(b"#seq")}
    # room for the new vectors (~1.2 MB), not for their index (~6 MB)
    client.config_set("maxmemory", client.info("memory")["used_memory"] + 3_000_000)
    try:
        with pytest.raises(redis.OutOfMemoryError):
            load(synthetic_kv(8000, 16, seed=2), "m", client=client, progress=False,
                 index=IndexOptions())
    finally:
        client.config_set("maxmemory", 0)
    after = {k: client.dump(k) for k in client.keys("*") if not k.endswith(b"#seq")}
    assert after == before  # no staging vectors, index or lock left; version 1 untouched
    served = RedisKeyedVectors("m", url=redis_url, exact=True)
    assert served.version == 1
    assert same_answer(served.most_similar("w5"), kv.most_similar("w5"))


def test_interrupted_index_build_cleans_up(client: redis.Redis, redis_url: str,
                                           tmp_path: Path) -> None:
    kv = synthetic_kv(2000, 16, seed=1)
    load(kv, "m", client=client, progress=False, index=IndexOptions())
    before = set(client.keys("*"))
    path = tmp_path / "new.bin"
    synthetic_kv(12_000, 16, seed=2).save_word2vec_format(str(path), binary=True)
    proc = _start_cli_load(redis_url, path, "m", "--index")
    deadline = time.monotonic() + 60
    while int(client.hget(Keys("m").meta(2), "index_done") or 0) < I2K_CHUNK:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    err = _finish(proc)
    assert proc.returncode == 1 and b"Aborted" in err, err
    assert b"Traceback" not in err
    assert set(client.keys("*")) == before  # staging version, partial index and locks gone
    served = RedisKeyedVectors("m", url=redis_url, exact=True)
    assert served.version == 1
    assert same_answer(served.most_similar("w5"), kv.most_similar("w5"))


def test_reload_without_index_warns_that_similarity_goes(client: redis.Redis,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    kv = synthetic_kv(300, 8)
    load(kv, "m", client=client, progress=False, index=IndexOptions())
    with caplog.at_level(logging.WARNING, logger="vectorstore.loader"):
        load(kv, "m", client=client, progress=False, grace=0)
    assert "served version 1 has a similarity index" in caplog.text
    assert "vectorstore index m" in caplog.text


# --- verify, info, list, drop -------------------------------------------------------


def test_verify_detects_tampering(client: redis.Redis) -> None:
    load(synthetic_kv(count=2100, dim=8), "m", client=client, progress=False)
    good = verify("m", client=client)
    assert good.ok and good.found_count == good.expected_count == 2100
    assert good.found_checksum == good.expected_checksum != ""

    client.setrange(Keys("m").token(1, "w1500"), 5, b"\x7f")  # one flipped byte of a float
    tampered = verify("m", client=client)
    assert not tampered.ok and tampered.problems == []
    assert tampered.found_checksum != tampered.expected_checksum

    client.delete(Keys("m").token(1, "w7"))
    client.set(Keys("m").token(1, "w8"), b"short")
    problems = verify("m", client=client).problems
    assert problems == ["token 'w7' (index 7): no vector stored",
                        "token 'w8' (index 8): value has 5 bytes, expected 36"]


def test_info_list_and_memory_estimate(client: redis.Redis) -> None:
    assert list_models(client=client) == []
    before = client.info("memory")["used_memory"]
    load(synthetic_kv(count=5000, dim=50), "b", client=client, progress=False)
    used = client.info("memory")["used_memory"] - before
    load(synthetic_kv(count=10, dim=3), "a", client=client, progress=False)
    assert list_models(client=client) == ["a", "b"]
    m = info("b", client=client)
    assert (m.name, m.meta.version, m.meta.dim, m.meta.count, m.meta.dtype) == (
        "b", 1, 50, 5000, "float32")
    assert m.versions == [1] and m.loading is None
    assert m.meta.source == "<in-memory KeyedVectors>" and m.meta.created_at > time.time() - 60
    assert 0.8 * used < m.bytes_used < 1.2 * used, (m.bytes_used, used)
    with pytest.raises(ModelNotFoundError):
        info("nope", client=client)


def test_drop(client: redis.Redis) -> None:
    load(synthetic_kv(count=100), "m", client=client, progress=False)
    load(synthetic_kv(count=100), "keep", client=client, progress=False)
    kept = set(client.keys("vs:keep*")) | set(client.keys("vs:{keep}*"))
    assert drop("m", client=client) == 100 + 1 + 1 + 2  # tokens, i2k, meta, current+versions
    assert set(client.keys("*")) == kept | {b"vs#models", b"vs:{m}#seq"}
    assert list_models(client=client) == ["keep"]
    with pytest.raises(ModelNotFoundError):
        drop("m", client=client)
    # the counter stays: a reload never reuses a version a reader may have cached
    assert load(synthetic_kv(count=5), "m", client=client, progress=False).version == 2


def test_names_are_validated(client: redis.Redis) -> None:
    with pytest.raises(ValueError, match="invalid model name"):
        load(synthetic_kv(count=5), "bad:name", client=client, progress=False)
    with pytest.raises(ValueError, match="unsupported dtype"):
        load(synthetic_kv(count=5), "m", client=client, progress=False, dtype="int8")


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_packed_batches_are_hiredis_bytes_and_the_checksum_input(dtype: str) -> None:
    """The loader's own MSETNX packing equals hiredis', its hash input the checksum definition."""
    import hiredis

    from vectorstore.codec import Codec

    codec = Codec(5, dtype)
    tokens = SPECIAL_TOKENS + ["x" * 300, "y" * 9, "z"]
    raw = [t.encode() for t in tokens]
    vectors = np.random.default_rng(0).normal(size=(len(raw), 5)).astype(np.float32)
    packer = loader._Packer(b"vs:m:3:", codec)
    for first in (0, 4_000_000_000):
        command, hashed = packer.pack(raw, vectors, first)
        values = codec.encode(vectors, start=first)
        assert command == hiredis.pack_command(
            ("MSETNX", *[v for t, value in zip(raw, values, strict=True)
                         for v in (b"vs:m:3:" + t, value)]))
        assert hashed == b"".join(t + b"\n" + v[:codec.payload]
                                  for t, v in zip(raw, values, strict=True))
    assert loader._utf8(tokens) == raw


def test_checksum_is_sha256_of_tokens_and_vectors(client: redis.Redis, tmp_path: Path) -> None:
    """Per record, in order: token, "\\n", stored vector bytes. A model whose checksum is
    the blake2b of the same bytes (loaded before SHA-256) still verifies, and a vector
    changed in place still shows in it."""
    import hashlib

    kv = synthetic_kv(count=2500, dim=24, tokens=SPECIAL_TOKENS + [f"w{i}" for i in range(2500)])
    path = tmp_path / "m.bin"
    kv.save_word2vec_format(str(path), binary=True)
    for dtype in ("float32", "float16"):
        meta = load(path, "sum", client=client, progress=False, batch_size=333, dtype=dtype,
                    grace=0)
        digests = [hashlib.sha256(), hashlib.blake2b()]
        for token, vector in zip(kv.index_to_key, kv.vectors, strict=True):
            stored = vector.astype({"float32": "<f4", "float16": "<f2"}[dtype]).tobytes()
            for digest in digests:
                digest.update(token.encode() + b"\n" + stored)
        assert meta.checksum == digests[0].hexdigest()
        assert verify("sum", client=client).ok
        keys = Keys("sum")
        client.hset(keys.meta(meta.version), "checksum", digests[1].hexdigest())
        result = verify("sum", client=client)
        assert result.ok and result.found_checksum == digests[1].hexdigest()
    token_key = keys.token(meta.version, "w7")
    value = bytearray(client.get(token_key))
    value[0] ^= 1
    client.set(token_key, bytes(value))
    result = verify("sum", client=client)
    assert not result.ok and result.found_checksum != digests[1].hexdigest()
