"""fastText binary models (issue 12): the reader, the loader, subword vectors served from a
real Redis and through a real Celery worker, all compared with gensim's
``load_facebook_vectors`` on the same file (bit for bit where gensim's arithmetic is
reproduced, else to 1e-6 relative)."""
from __future__ import annotations

import gzip
import logging
import re
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from celery_helpers import WorkerProcess
from conftest import TEST_DATA
from gensim.models.fasttext import FastTextKeyedVectors, load_facebook_vectors

from tasks import as_array
from tasks.client import client_app
from tasks.errors import InvalidOptionError
from vectorstore import RedisKeyedVectors
from vectorstore.bloom import checksum as bloom_checksum
from vectorstore.errors import CorruptValueError, LoadError
from vectorstore.fasttext import MAGIC, FastTextReader, looks_like_fasttext
from vectorstore.index import IndexOptions
from vectorstore.keys import Keys
from vectorstore.loader import info, load, verify
from vectorstore.readers import open_vectors, sniff
from vectorstore.server import EmbeddedRedis
from vectorstore.subword import NgramPlan, SubwordParams

FILES = ["lee_fasttext.bin", "lee_fasttext_new.bin", "toy-model.bin", "non_ascii_fasttext.bin",
         "crime-and-punishment.bin"]
OOV = ["unseenword", "landlord", "naïve", "Привет", "東京", "straße", "🙂", "emoji🙂👍", "é", "x",
       "a", "😀", "ab", "a:b", "{x}", "#tag", "vs:m:1:x", "q" * 500, "éü" * 200, ""]


@pytest.fixture(scope="module", autouse=True)
def _quiet_gensim() -> Iterator[None]:
    """gensim warns for every token without n-grams ("")."""
    logger = logging.getLogger("gensim.models.fasttext")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


@pytest.fixture(scope="module")
def gensim_models() -> dict[str, FastTextKeyedVectors]:
    return {f: load_facebook_vectors(str(TEST_DATA / f)) for f in FILES}


def doc_for(g: FastTextKeyedVectors, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [g.index_to_key[i] for i in rng.integers(0, len(g), 30)] + OOV


def assert_close(a: np.ndarray, b: np.ndarray) -> None:
    """Equal to float32 rounding: |a - b| <= 1e-6 * |b| (elementwise, scaled by the row)."""
    assert a.shape == b.shape and a.dtype == np.float32
    scale = np.maximum(np.abs(b).max(axis=-1, keepdims=True), 1e-30)
    assert (np.abs(a - b) <= 1e-6 * scale).all(), np.abs(a - b).max()


# --- reader --------------------------------------------------------------------------

@pytest.mark.parametrize("name", FILES)
def test_reader_yields_gensims_vectors_bit_for_bit(name: str, gensim_models: dict) -> None:
    g = gensim_models[name]
    with open_vectors(TEST_DATA / name, batch_size=100) as reader:
        assert isinstance(reader, FastTextReader) and reader.fmt == "fasttext-bin"
        assert (reader.dim, reader.count) == (g.vector_size, len(g))
        assert reader.params == SubwordParams(g.min_n, g.max_n, g.bucket)
        batches = list(reader)
        ngrams = np.concatenate([rows for _, rows in reader.ngram_rows(37)])
    assert [t for b in batches for t in b.tokens] == g.index_to_key
    assert [b.first for b in batches] == list(range(0, len(g), 100))
    assert np.array_equal(np.concatenate([b.vectors for b in batches]), g.vectors)
    assert np.array_equal(ngrams, g.vectors_ngrams)


def test_gzipped_model_streams_and_limit_caps_the_words(tmp_path: Path, gensim_models: dict
                                                        ) -> None:
    g = gensim_models["crime-and-punishment.bin"]
    path = tmp_path / "cap.bin.gz"
    with open(TEST_DATA / "crime-and-punishment.bin", "rb") as src, gzip.open(path, "wb") as dst:
        shutil.copyfileobj(src, dst)
    assert sniff(str(path)) == "fasttext-bin"
    with open_vectors(path, limit=50) as reader:
        assert isinstance(reader, FastTextReader)
        vectors = np.concatenate([b.vectors for b in reader])
        ngrams = np.concatenate([rows for _, rows in reader.ngram_rows()])
    assert np.array_equal(vectors, g.vectors[:50]) and np.array_equal(ngrams, g.vectors_ngrams)


def test_auto_detects_old_and_new_format_and_nothing_else() -> None:
    for name in [*FILES, "pang_lee_polarity_fasttext.bin"]:
        assert sniff(str(TEST_DATA / name)) == "fasttext-bin", name
    for name, fmt in [("lee_fasttext.vec", "word2vec-text"), ("word2vec_pre_kv_c", "word2vec-text"),
                      ("euclidean_vectors.bin", "word2vec-binary")]:
        assert sniff(str(TEST_DATA / name)) == fmt, name
    assert not looks_like_fasttext(b"3000000 300\n" + bytes(60))
    assert not looks_like_fasttext(b"the 0.1 0.2 0.3\n" * 5)


def _new_format_offsets(data: bytes) -> tuple[int, int]:
    """(offset of the quant_input flag, offset of the matrix floats) of a new-format file."""
    with FastTextReader(str(TEST_DATA / "crime-and-punishment.bin")) as reader:
        matrix = reader.header.matrix
    assert struct.unpack_from("<i", data)[0] == MAGIC
    return matrix - 17, matrix


@pytest.mark.parametrize("case, message", [
    ("empty", "ends inside the header"),
    ("cut header", "ends inside the header"),
    ("cut vocabulary", "ends inside vocabulary entry"),
    ("cut matrix", "ends inside the input matrix"),
    ("wrong magic", "not a fastText binary model"),
    ("future version", "format version 13 is not supported"),
    ("quantized", "quantized fastText model (.ftz), which is not supported"),
    ("wrong matrix shape", "the input matrix is"),
    ("text file", "not a fastText binary model"),
])
def test_bad_files_fail_naming_the_file_and_load_nothing(case: str, message: str, tmp_path: Path,
                                                         client: redis.Redis) -> None:
    data = (TEST_DATA / "crime-and-punishment.bin").read_bytes()
    quant, matrix = _new_format_offsets(data)
    bad = {
        "empty": b"",
        "cut header": data[:30],
        "cut vocabulary": data[:quant - 200],
        "cut matrix": data[:matrix + 1000],
        "wrong magic": b"\x00\x00\x00\x00" + data[4:],
        "future version": data[:4] + struct.pack("<i", 13) + data[8:],
        "quantized": data[:quant] + b"\x01" + data[quant + 1:],
        "wrong matrix shape": data[:quant + 1] + struct.pack("<q", 7) + data[quant + 9:],
        "text file": (TEST_DATA / "lee_fasttext.vec").read_bytes(),
    }[case]
    path = tmp_path / f"{case.replace(' ', '-')}.ftz"
    path.write_bytes(bad)
    with pytest.raises(LoadError, match=re.escape(message)) as err:
        load(path, "ft", client=client, fmt="fasttext-bin", progress=False)
    assert str(path) in str(err.value)
    assert client.dbsize() == 0
    if case == "cut matrix":  # auto detects it too, and a gzipped copy fails the same way
        gz = tmp_path / "cut.bin.gz"
        gz.write_bytes(gzip.compress(bad))
        with pytest.raises(LoadError, match=re.escape(message)):
            load(gz, "ft", client=client, progress=False)
        assert client.dbsize() == 0


def test_supervised_models_are_refused() -> None:
    with pytest.raises(LoadError, match="supervised fastText model"):
        open_vectors(TEST_DATA / "pang_lee_polarity_fasttext.bin")


def test_bad_word_midway_leaves_nothing(client: redis.Redis) -> None:
    """cp852_fasttext.bin's words are not UTF-8; the second one fails after a batch is written."""
    with pytest.raises(LoadError, match=r"cp852_fasttext.bin, vocabulary word 2: .*not valid UTF-8"):
        load(TEST_DATA / "cp852_fasttext.bin", "ft", client=client, batch_size=1, progress=False)
    assert client.dbsize() == 0


# --- served from Redis ---------------------------------------------------------------

@pytest.fixture(scope="module")
def server() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as s:
        yield s


@pytest.fixture(scope="module")
def loaded(server: EmbeddedRedis) -> str:
    """Every file of FILES loaded under its own name, the Lee model with an index; the Lee
    model's .vec (no subwords) as ``lee-vec``."""
    for name in FILES:
        load(TEST_DATA / name, _model(name), url=server.url, progress=False,
             index=IndexOptions("noquant") if name == "lee_fasttext.bin" else None)
    load(TEST_DATA / "lee_fasttext.vec", "lee-vec", url=server.url, progress=False)
    return server.url


def _model(name: str) -> str:
    return name.removesuffix(".bin").replace("_", "-")


@pytest.mark.parametrize("cache_bytes", [0, 1 << 20], ids=["nocache", "cache"])
@pytest.mark.parametrize("name", FILES)
def test_vectors_equal_gensim_bit_for_bit(name: str, cache_bytes: int, loaded: str,
                                          gensim_models: dict) -> None:
    g = gensim_models[name]
    kv = RedisKeyedVectors(_model(name), url=loaded, cache_bytes=cache_bytes)
    assert kv.subwords == SubwordParams(g.min_n, g.max_n, g.bucket)
    doc = doc_for(g)
    for _ in range(2):  # the second time from the cache
        assert np.array_equal(kv[doc], g[doc])
        for token in doc:
            assert np.array_equal(kv[token], g[token]), token
            assert np.array_equal(kv.get_vector(token, norm=True), g.get_vector(token, norm=True))
            assert token in kv  # every str has a vector, as in gensim
            assert (token in kv.key_to_index) == (token in g.key_to_index)
            assert kv.has_index_for(token) == g.has_index_for(token)
    for pre in (True, False):
        for post in (True, False):
            weights = np.linspace(-1, 2, len(doc)).astype(np.float32).tolist()
            assert np.array_equal(kv.get_mean_vector(doc, weights, pre, post),
                                  g.get_mean_vector(doc, weights, pre, post))
    found = kv.lookup(doc, oov="subword")
    assert found.missing == [i for i, t in enumerate(doc) if t not in g.key_to_index]
    assert np.array_equal(found.vectors, g[doc])
    assert kv.lookup(doc, oov="zero").missing == found.missing
    with pytest.raises(KeyError, match="unseenword"):
        kv.get_index("unseenword")


def test_subword_lookup_is_one_round_trip(loaded: str, gensim_models: dict) -> None:
    """Vocabulary and OOV tokens in one MGET (the alias first): the vocabulary filter tells
    the OOV ones, whose n-gram rows ride along; a false positive of the filter costs more."""
    r = redis.Redis.from_url(loaded)
    g = gensim_models["lee_fasttext.bin"]
    kv = RedisKeyedVectors("lee-fasttext", url=loaded, cache_bytes=0)
    kv.lookup(["the"], oov="subword")  # metadata and vocabulary filter read
    bloom = kv._bloom(kv._current())
    assert bloom is not None
    oov = [t for t in OOV if t not in g.key_to_index]
    assert len(oov) > 15 and not bloom.might_contain(oov).any()
    candidates = [f"fp{i}" for i in range(100_000)]  # a false positive of the filter
    false_positive = candidates[int(np.argmax(bloom.might_contain(candidates)))]
    assert bloom.might_contain([false_positive]).all() and false_positive not in g.key_to_index

    def trips(tokens: list[str]) -> tuple[int, int]:
        """(round trips, MGETs) of one lookup, whose vectors must be gensim's."""
        before = kv.stats()["round_trips"]
        mget = r.info("commandstats").get("cmdstat_mget", {}).get("calls", 0)
        found = kv.lookup(tokens, oov="subword")
        assert np.array_equal(found.vectors, g[tokens])
        assert found.missing == [i for i, t in enumerate(tokens) if t not in g.key_to_index]
        return (int(kv.stats()["round_trips"] - before),
                int(r.info("commandstats")["cmdstat_mget"]["calls"] - mget))

    vocab = g.index_to_key[:100]
    rng = np.random.default_rng(1)
    doc = [str(t) for t in rng.permutation(vocab[:50] + oov * 3)]
    assert trips(vocab) == (1, 1)
    assert trips(doc) == (1, 1)  # every OOV token's n-gram rows in the tokens' MGET
    assert trips(oov) == (1, 1)
    assert trips(doc + [false_positive]) == (3, 2)  # + EXISTS, + its n-grams' MGET
    kv = RedisKeyedVectors("lee-fasttext", url=loaded)  # with the caches of tokens and n-grams
    kv.prewarm()  # the vocabulary's most frequent tokens and the filter, as a worker has them
    assert trips(doc) == (1, 1)
    assert trips(doc) == (0, 0)  # known OOV tokens, their n-grams cached: no round trip
    assert trips(vocab[:60] + ["unseenwords"]) == (1, 1)
    assert trips(vocab[:60] + [false_positive]) == (3, 2)
    assert trips(vocab[:60] + [false_positive]) == (0, 0)  # known missing, n-grams cached
    assert trips(["unseenwordz", "the", false_positive]) == (1, 1)  # only the new token


def test_model_without_filter_reads_ngrams_in_a_second_mget(client: redis.Redis,
                                                            gensim_models: dict) -> None:
    """A fastText model loaded before vectorstore wrote vocabulary filters."""
    g = gensim_models["lee_fasttext.bin"]
    meta = load(TEST_DATA / "lee_fasttext.bin", "ft", client=client, progress=False)
    keys = Keys("ft")
    client.delete(keys.bloom(meta.version))
    client.hdel(keys.meta(meta.version), "bloom_hash", "bloom_bits", "bloom_hashes",
                "bloom_checksum")
    kv = RedisKeyedVectors("ft", client=client, cache_bytes=0)
    doc = g.index_to_key[:20] + ["unseenword", "Привет"]
    kv.lookup(["the"], oov="subword")
    before = kv.stats()["round_trips"]
    assert np.array_equal(kv.lookup(doc, oov="subword").vectors, g[doc])
    assert kv.stats()["round_trips"] - before == 3  # MGET, EXISTS of the OOV tokens, MGET
    assert kv._bloom(kv._current()) is None


def test_reload_between_lookups_is_seen_by_the_mget(client: redis.Redis,
                                                    gensim_models: dict) -> None:
    """The alias is the first key of the MGET that carries the n-gram rows too."""
    g = gensim_models["lee_fasttext.bin"]
    load(TEST_DATA / "crime-and-punishment.bin", "ft", client=client, progress=False)
    kv = RedisKeyedVectors("ft", client=client, cache_bytes=0, refresh=3600)
    kv.lookup(["the"], oov="subword")
    meta = load(TEST_DATA / "lee_fasttext.bin", "ft", client=client, progress=False, grace=0)
    doc = g.index_to_key[:20] + ["unseenword", "Привет"]
    assert np.array_equal(kv.lookup(doc, oov="subword").vectors, g[doc])
    assert kv.version == meta.version


@pytest.mark.parametrize("case, message", [
    ("short", r"vocabulary filter vs:\{ft\}:\d+#bloom holds 10 bytes instead of 3524"),
    ("altered", "does not match the checksum stored with it"),
    ("missing", "is missing or not a string"),
    ("retyped", "is missing or not a string"),
])
def test_corrupt_filter_is_a_clear_error(case: str, message: str, client: redis.Redis) -> None:
    meta = load(TEST_DATA / "lee_fasttext.bin", "ft", client=client, progress=False)
    key = Keys("ft").bloom(meta.version)
    stored = client.get(key)
    assert isinstance(stored, bytes) and len(stored) == 3524
    if case == "short":
        client.set(key, stored[:10])
    elif case == "altered":
        client.set(key, stored[:100] + bytes([stored[100] ^ 0x10]) + stored[101:])
    else:
        client.delete(key)
        if case == "retyped":
            client.hset(key, "a", "b")
    kv = RedisKeyedVectors("ft", client=client)
    with pytest.raises(CorruptValueError, match=message):
        kv.lookup(["the", "unseenword"], oov="subword")
    with pytest.raises(CorruptValueError, match=message):
        kv["unseenword"]


def test_plan_deduplicates_buckets_across_tokens() -> None:
    params = SubwordParams(3, 6, 2_000_000)
    plan = NgramPlan(["running", "runner", "running", "é😀"], params)
    assert len(plan.buckets) == len(set(plan.buckets))
    assert set(plan.buckets) == {b for t in ["running", "runner", "é😀"] for b in params.buckets(t)}
    assert plan.counts.tolist() == [len(params.buckets(t))
                                    for t in ["running", "runner", "running", "é😀"]]


def test_most_similar_of_oov_words_equals_gensim(loaded: str, gensim_models: dict) -> None:
    g = gensim_models["lee_fasttext.bin"]
    kv = RedisKeyedVectors("lee-fasttext", url=loaded)
    for query in ["unseenword", "governmentt", "Привет", ["government", "unseenword"]]:
        assert kv.most_similar(query, topn=10, exact=True) == g.most_similar(query, topn=10)
        approx = [t for t, _ in kv.most_similar(query, topn=10)]
        assert len(set(approx) & {t for t, _ in g.most_similar(query, topn=10)}) >= 8
    assert kv.most_similar(positive=["king", "qwzx"], negative=["unseen"], topn=5, exact=True) \
        == g.most_similar(positive=["king", "qwzx"], negative=["unseen"], topn=5)
    assert kv.similarity("unseenword", "war") == g.similarity("unseenword", "war")
    assert kv.n_similarity(["qqqq", "war"], ["peace"]) == g.n_similarity(["qqqq", "war"], ["peace"])


def test_models_without_subwords_refuse_oov_subword(loaded: str) -> None:
    kv = RedisKeyedVectors("lee-vec", url=loaded)
    assert kv.subwords is None and "unseenword" not in kv
    with pytest.raises(ValueError, match="oov='subword' needs a fastText model"):
        kv.lookup(["the", "unseenword"], oov="subword")
    with pytest.raises(KeyError):
        kv["unseenword"]


def test_metadata_float16_reload_and_memory(client: redis.Redis) -> None:
    path = TEST_DATA / "lee_fasttext.bin"
    g = load_facebook_vectors(str(path))
    meta = load(path, "ft", client=client, progress=False, grace=0)
    assert meta.extra["format"] == "fasttext-bin"
    assert {k: meta.extra[k] for k in ("subword_hash", "subword_minn", "subword_maxn",
                                       "subword_buckets")} \
        == {"subword_hash": "fasttext", "subword_minn": "3", "subword_maxn": "6",
            "subword_buckets": "1000"}
    keys = Keys("ft")
    ngram_keys = set(client.scan_iter(match=keys.ngram_prefix(meta.version) + b"*"))
    assert len(ngram_keys) == 1000
    float32_bytes = info("ft", client=client).bytes_used
    assert float32_bytes > (len(g) + 1000) * 10 * 4  # the n-gram rows are counted
    meta16 = load(path, "ft", client=client, progress=False, grace=0, dtype="float16")
    assert not any(client.scan_iter(match=keys.ngram_prefix(meta.version) + b"*"))  # old version gone
    kv = RedisKeyedVectors("ft", client=client)
    doc = doc_for(g)
    np.testing.assert_allclose(kv[doc], g[doc], rtol=2e-3, atol=2e-3)
    assert kv.meta.version == meta16.version
    assert info("ft", client=client).bytes_used < float32_bytes


# --- verify ----------------------------------------------------------------------------

@pytest.fixture()
def ft(client: redis.Redis) -> tuple[redis.Redis, Keys, int]:
    meta = load(TEST_DATA / "lee_fasttext.bin", "ft", client=client, progress=False)
    assert verify("ft", client=client).ok
    return client, Keys("ft"), meta.version


@pytest.mark.parametrize("case, message", [
    ("deleted", "n-gram bucket 17: no row stored (missing, or its key is not a string)"),
    ("retyped", "n-gram bucket 17: no row stored (missing, or its key is not a string)"),
    ("short", "n-gram bucket 17: value has 3 bytes, expected 44"),
    ("moved", "n-gram bucket 17: value carries bucket 18 (overwritten or copied"),
    ("nan", "n-gram bucket 17: value holds NaN or infinite floats"),
    ("changed", "n-gram rows: checksum"),
    ("extra", "n-gram rows: 2 key(s) past the model's 1000 buckets"),
    ("filter deleted", "vocabulary filter vs:{ft}:1#bloom is missing"),
    ("filter short", "vocabulary filter vs:{ft}:1#bloom holds 2 bytes instead of 3524"),
    ("filter altered", "vocabulary filter vs:{ft}:1#bloom does not match the checksum"),
    ("filter emptied", "bit(s) of the model's tokens are not set"),
])
def test_verify_names_what_is_wrong_with_ngrams_and_filter(
        case: str, message: str, ft: tuple[redis.Redis, Keys, int]) -> None:
    client, keys, version = ft
    key, bloom = keys.ngram(version, 17), keys.bloom(version)
    value, other, raw = client.mget([key, keys.ngram(version, 18), bloom])
    assert isinstance(value, bytes) and isinstance(other, bytes) and isinstance(raw, bytes)
    if case == "deleted":
        client.delete(key)
    elif case == "retyped":
        client.delete(key)
        client.rpush(key, b"x")
    elif case == "short":
        client.set(key, b"abc")
    elif case == "moved":
        client.set(key, other)
    elif case == "nan":
        client.set(key, np.full(10, np.nan, "<f4").tobytes() + value[-4:])
    elif case == "changed":
        client.set(key, np.float32(1.5).tobytes() + value[4:])
    elif case == "extra":
        client.set(keys.ngram(version, 1000), value)
        client.set(keys.ngram_prefix(version) + b"x", value)
    elif case == "filter deleted":
        client.delete(bloom)
    elif case == "filter short":
        client.set(bloom, b"ab")
    elif case == "filter altered":
        client.setrange(bloom, 5, b"\xff")
    else:  # a filter missing a vocabulary word's bits, its checksum updated to match
        raw = bytes(8) + raw[8:]
        client.set(bloom, raw)
        client.hset(keys.meta(version), "bloom_checksum", bloom_checksum(raw))
    result = verify("ft", client=client)
    assert not result.ok
    assert any(message in p for p in result.problems), result.problems
    if case in ("nan", "changed"):
        assert any("n-gram rows: checksum" in p for p in result.problems)


# --- through a real worker -------------------------------------------------------------

def test_tasks_with_oov_subword_equal_gensim(server: EmbeddedRedis, loaded: str, tmp_path: Path,
                                              gensim_models: dict) -> None:
    g = gensim_models["lee_fasttext.bin"]
    docs = [doc_for(g, seed) for seed in range(3)]
    with EmbeddedRedis() as broker, \
            WorkerProcess("ft", broker.url, server.url, tmp_path, args=("--concurrency=1",),
                          env={"VECTORSTORE_MODEL": "lee-fasttext"}):
        app = client_app(broker.url)
        try:
            got = app.send_task("tasks.vectorize_document", [docs[0]], {"oov": "subword"}
                                ).get(timeout=30)
            assert np.array_equal(as_array(got), g[docs[0]])
            assert got["oov"] == [t for t in docs[0] if t not in g.key_to_index]
            default = app.send_task("tasks.vectorize_document", [docs[0]]).get(timeout=30)
            assert np.array_equal(as_array(default), g[docs[0]])  # a fastText model: subword
            assert default["missing"] == got["missing"]
            zero = app.send_task("tasks.vectorize_document", [docs[0]], {"oov": "zero"}
                                 ).get(timeout=30)
            assert zero["missing"] == got["missing"] and not as_array(zero)[got["missing"]].any()
            assert np.array_equal(np.delete(as_array(zero), got["missing"], axis=0),
                                  np.delete(g[docs[0]], got["missing"], axis=0))
            plain = app.send_task("tasks.vectorize_document", [docs[0]], {"model": "lee-vec"}
                                  ).get(timeout=30)  # no n-grams: the default is zero rows
            assert plain["missing"] == got["missing"] and not as_array(plain)[got["missing"]].any()
            both = app.send_task("tasks.vectorize_documents", [docs[:2]]).get(timeout=30)
            for d, result in zip(docs, both):
                assert np.array_equal(as_array(result), g[d])
            batch = app.send_task("tasks.vectorize_documents", [docs],
                                  {"oov": "subword", "max_len": 64, "normalize": True}
                                  ).get(timeout=30)
            for d, matrix in zip(docs, as_array(batch), strict=True):
                want = np.array([g.get_vector(t, norm=True) if g.get_vector(t).any()
                                 else np.zeros(g.vector_size, np.float32) for t in d])
                assert_close(matrix[:len(d)], want)
                assert matrix.shape == (64, g.vector_size) and not matrix[len(d):].any()
            mean = app.send_task("tasks.embed_document", [docs[1]]).get(timeout=30)
            assert_close(as_array(mean), g.get_mean_vector(docs[1]))
            with pytest.raises(InvalidOptionError, match="oov='subword' needs a fastText"):
                app.send_task("tasks.vectorize_document", [["the"]],
                              {"oov": "subword", "model": "lee-vec"}).get(timeout=30)
        finally:
            app.close()
