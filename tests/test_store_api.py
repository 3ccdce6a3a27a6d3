"""gensim's read-only KeyedVectors API on RedisKeyedVectors, compared with gensim 4.4 in memory."""
from __future__ import annotations

import multiprocessing
import operator
import pickle
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import redis
from conftest import synthetic_kv
from gensim.models import KeyedVectors

from vectorstore import ReadOnlyError, RedisKeyedVectors, VectorStoreError
from vectorstore.errors import NotInMemoryError, NotPicklableError
from vectorstore.loader import load


@pytest.fixture()
def model(redis_url: str, tmp_path: Path) -> KeyedVectors:
    """gensim's model as load_word2vec_format reads it (counts = len - index), also in Redis."""
    path = tmp_path / "m.txt"
    synthetic_kv(1500, 16, tokens=[f"w{i}" for i in range(1500)]).save_word2vec_format(str(path))
    load(str(path), "m", url=redis_url, progress=False)
    return KeyedVectors.load_word2vec_format(str(path))


@pytest.fixture(params=[0, 1 << 20], ids=["nocache", "cache"])
def rkv(request: pytest.FixtureRequest, redis_url: str, model: KeyedVectors) -> RedisKeyedVectors:
    return RedisKeyedVectors("m", url=redis_url, cache_bytes=request.param)


def same_kv(got: KeyedVectors, want: KeyedVectors) -> None:
    assert type(got) is KeyedVectors
    assert got.index_to_key == want.index_to_key and got.key_to_index == want.key_to_index
    assert got.vectors.dtype == want.vectors.dtype and np.array_equal(got.vectors, want.vectors)
    assert got.vector_size == want.vector_size and got.next_index == want.next_index
    assert got.expandos.keys() == want.expandos.keys()
    for attr in want.expandos:
        assert got.expandos[attr].dtype == want.expandos[attr].dtype
        assert np.array_equal(got.expandos[attr], want.expandos[attr])


@pytest.mark.parametrize("copy_vecattrs", [False, True])
@pytest.mark.parametrize("keys", [
    ["w5", "nope", "w2", "w5", "w1499", "w0", "nope", "w2"],
    [],
    ["nope"],
    ["w3", 7, 3.5, -1, 10**6, "w7"],  # indexes are keys too, as in gensim
    (f"w{i}" for i in range(0, 1500, 3)),
])
def test_vectors_for_all_equals_gensim(rkv: RedisKeyedVectors, model: KeyedVectors, keys,
                                       copy_vecattrs: bool) -> None:
    keys = list(keys)
    for allow_inference in (True, False):
        same_kv(rkv.vectors_for_all(keys, allow_inference, copy_vecattrs),
                model.vectors_for_all(keys, allow_inference, copy_vecattrs))


def test_vectors_for_all_is_one_round_trip(redis_url: str, model: KeyedVectors,
                                           client: redis.Redis) -> None:
    kv = RedisKeyedVectors("m", url=redis_url, refresh=60)
    len(kv)
    before = client.info("commandstats")["cmdstat_mget"]["calls"]
    kv.vectors_for_all([f"w{i}" for i in range(500)] + ["zz"])
    assert client.info("commandstats")["cmdstat_mget"]["calls"] == before + 1


def test_get_vecattr_count(rkv: RedisKeyedVectors, model: KeyedVectors) -> None:
    for key in ("w0", "w1", "w777", "w1499", 12):
        assert rkv.get_vecattr(key, "count") == model.get_vecattr(key, "count")
    with pytest.raises(KeyError, match="nope"):
        rkv.get_vecattr("nope", "count")
    with pytest.raises(KeyError, match="only 'count'"):
        rkv.get_vecattr("w1", "sample_int")
    with pytest.raises(KeyError):  # gensim: KeyError too
        model.get_vecattr("w1", "sample_int")


def test_in_memory_attributes_are_attribute_errors(rkv: RedisKeyedVectors) -> None:
    assert not hasattr(rkv, "vectors")
    assert getattr(rkv, "norms", None) is None
    for call in (lambda: rkv.vectors, rkv.get_normed_vectors, rkv.init_sims, rkv.fill_norms):
        with pytest.raises(NotInMemoryError, match="not in memory") as err:
            call()
        assert isinstance(err.value, VectorStoreError) and isinstance(err.value, AttributeError)
    with pytest.raises(ReadOnlyError):
        rkv.unit_normalize_all()  # it writes


def test_index_to_key_compares_like_a_list(rkv: RedisKeyedVectors, model: KeyedVectors,
                                           redis_url: str) -> None:
    assert rkv.index_to_key == model.index_to_key
    assert model.index_to_key == rkv.index_to_key
    assert rkv.index_to_key == tuple(model.index_to_key)
    assert not rkv.index_to_key != model.index_to_key
    assert rkv.index_to_key != model.index_to_key[:-1]
    assert rkv.index_to_key != model.index_to_key[:-1] + ["other"]
    assert rkv.index_to_key != "w0w1" and rkv.index_to_key != 3
    assert rkv.index_to_key == RedisKeyedVectors("m", url=redis_url).index_to_key
    with pytest.raises(TypeError, match="unhashable"):
        hash(rkv.index_to_key)


def test_empty_batch_is_an_empty_matrix(rkv: RedisKeyedVectors, model: KeyedVectors) -> None:
    assert rkv[[]].shape == (0, 16) and rkv[[]].dtype == np.float32
    with pytest.raises(ValueError):  # gensim raises; the difference is documented
        model[[]]


def test_pickles_by_reference(rkv: RedisKeyedVectors, model: KeyedVectors) -> None:
    doc = ["w1", "w2", "w1499"]
    assert np.array_equal(rkv[doc], model[doc])  # connected, cache filled
    rkv.search_ef = 321
    blob = pickle.dumps(rkv)
    assert len(blob) < 1000 and model["w1"].tobytes() not in blob
    copy = pickle.loads(blob)
    assert type(copy) is RedisKeyedVectors and copy is not rkv
    assert (copy.name, copy.url, copy.keys, copy.cache_bytes, copy.refresh, copy.exact,
            copy.search_ef) == (rkv.name, rkv.url, rkv.keys, rkv.cache_bytes, rkv.refresh,
                                rkv.exact, 321)
    assert copy._view is None and copy._deployment is None  # connects on first use
    assert np.array_equal(copy[doc], model[doc])


def test_pickling_a_client_handle_says_to_use_url(redis_url: str, model: KeyedVectors) -> None:
    kv = RedisKeyedVectors("m", client=redis.Redis.from_url(redis_url))
    with pytest.raises(NotPicklableError, match="url="):
        pickle.dumps(kv)


DOCS = [[f"w{(7 * i + j) % 1500}" for j in range(20)] for i in range(12)]


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_multiprocessing_pool(rkv: RedisKeyedVectors, model: KeyedVectors, method: str) -> None:
    rkv["w1"]  # the parent is connected when the pool starts
    with multiprocessing.get_context(method).Pool(2) as pool:
        got = pool.starmap(operator.getitem, [(rkv, doc) for doc in DOCS])
        sims = pool.map(operator.methodcaller("similarity", "w1", "w2"), [rkv] * 2)
    for doc, matrix in zip(DOCS, got):
        assert np.array_equal(matrix, model[doc])
    assert sims == [model.similarity("w1", "w2")] * 2


def test_process_pool_executor(rkv: RedisKeyedVectors, model: KeyedVectors) -> None:
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as ex:
        got = list(ex.map(operator.getitem, [rkv] * len(DOCS), DOCS))
        small = ex.submit(rkv.vectors_for_all, ["w3", "zz", "w9"]).result()
    for doc, matrix in zip(DOCS, got):
        assert np.array_equal(matrix, model[doc])
    same_kv(small, model.vectors_for_all(["w3", "zz", "w9"]))
