"""What a reader catches of bad data in Redis (values corrupted in place on a real server)."""
from __future__ import annotations

import numpy as np
import pytest
import redis
from conftest import synthetic_kv
from gensim.models import KeyedVectors

from vectorstore import CorruptValueError, RedisKeyedVectors
from vectorstore.codec import Codec
from vectorstore.keys import Keys
from vectorstore.loader import load

DIM = 8


@pytest.fixture()
def model(redis_url: str) -> KeyedVectors:
    kv = synthetic_kv(300, DIM)
    load(kv, "m", url=redis_url, progress=False)
    return kv


@pytest.fixture(params=[0, 1 << 20], ids=["nocache", "cache"])
def rkv(request: pytest.FixtureRequest, redis_url: str, model: KeyedVectors) -> RedisKeyedVectors:
    return RedisKeyedVectors("m", url=redis_url, cache_bytes=request.param)


def key(rkv: RedisKeyedVectors, token: str) -> bytes:
    return Keys("m").token(rkv.version, token)


def prewarm(rkv: RedisKeyedVectors):
    """``rkv.prewarm``, on a handle with a cache (a handle without one prewarms nothing)."""
    return RedisKeyedVectors("m", url=rkv.url, cache_bytes=1 << 20).prewarm


def value(vector: np.ndarray, index: int) -> bytes:
    return Codec(DIM).encode(np.asarray([vector], dtype=np.float32), start=index)[0]


@pytest.mark.parametrize("bad", [
    pytest.param(lambda v: value(np.full(DIM, np.nan), 5), id="nan"),
    pytest.param(lambda v: value(np.full(DIM, -np.inf), 5), id="inf"),
    pytest.param(lambda v: v[:-1], id="short"),
    pytest.param(lambda v: v + b"x", id="long"),
    pytest.param(lambda v: v[:-4] + (10**6).to_bytes(4, "little"), id="index-out-of-range"),
])
def test_corrupt_value_names_token_and_model(rkv: RedisKeyedVectors, client: redis.Redis,
                                             model: KeyedVectors, bad) -> None:
    client.set(key(rkv, "w5"), bad(client.get(key(rkv, "w5"))))
    for call in (lambda: rkv[["w1", "w5", "w7"]], lambda: rkv["w5"],
                 lambda: rkv.lookup(["w5", "zz"], oov="zero"), lambda: rkv.get_index("w5"),
                 lambda: rkv.vectors_for_all(["w5"]), prewarm(rkv)):
        with pytest.raises(CorruptValueError, match=r"model 'm' version \d+: .*'w5'.*verify m"):
            call()
    assert np.array_equal(rkv[["w1", "w7"]], model[["w1", "w7"]])  # the others are served


def test_random_bytes_are_caught(rkv: RedisKeyedVectors, client: redis.Redis) -> None:
    rng = np.random.default_rng(0)
    caught = 0
    for i in range(50):
        token = f"w{i}"
        good = client.get(key(rkv, token))
        client.set(key(rkv, token), rng.bytes(len(good)))
        try:
            rkv[token]
        except CorruptValueError as exc:
            assert repr(token) in str(exc)
            caught += 1
        client.set(key(rkv, token), good)
    assert caught >= 49  # NaN/inf (1 - (255/256)^8 per value) or index >= 300 (~1 - 1e-7)


def test_value_moved_to_another_token(rkv: RedisKeyedVectors, client: redis.Redis,
                                      model: KeyedVectors) -> None:
    client.set(key(rkv, "w5"), client.get(key(rkv, "w9")))
    # a lookup cannot tell (it reads w9's vector for w5: verify's job), but where the
    # reader knows the token's index, it checks the stored one
    with pytest.raises(CorruptValueError, match="'w5' holds index 9 where the model has it at 5"):
        prewarm(rkv)()


def test_key_of_another_type_is_not_oov(rkv: RedisKeyedVectors, client: redis.Redis,
                                        model: KeyedVectors) -> None:
    client.delete(key(rkv, "w5"))
    client.hset(key(rkv, "w5"), "f", "v")
    for call in (lambda: rkv.lookup(["w1", "w5"], oov="zero"), lambda: "w5" in rkv,
                 lambda: rkv.vectors_for_all(["w5", "w6"]), prewarm(rkv)):
        with pytest.raises(CorruptValueError, match="'w5'"):
            call()
    # a real OOV token is still just missing, and remembered without another check
    assert rkv.lookup(["w1", "zz"], oov="zero").missing == [1]
    assert rkv.lookup(["w1", "zz"], oov="zero").missing == [1]


def test_deleted_token_key_reads_as_oov_but_prewarm_sees_it(rkv: RedisKeyedVectors,
                                                           client: redis.Redis) -> None:
    client.delete(key(rkv, "w5"))
    assert rkv.lookup(["w5"], oov="zero").missing == [0]  # documented: verify names it
    with pytest.raises(CorruptValueError, match="'w5' holds nothing"):
        prewarm(rkv)()


@pytest.mark.parametrize("corrupt", [
    pytest.param(lambda c: c.set("vs:{m}#current", "abc"), id="alias-abc"),
    pytest.param(lambda c: c.set("vs:{m}#current", "0"), id="alias-0"),
    pytest.param(lambda c: (c.delete("vs:{m}#current"), c.hset("vs:{m}#current", "a", "1")),
                 id="alias-hash"),
])
def test_corrupt_alias_is_named(rkv: RedisKeyedVectors, client: redis.Redis, corrupt) -> None:
    rkv["w1"]
    corrupt(client)
    rkv._checked = -float("inf")  # as after the refresh period
    with pytest.raises(CorruptValueError, match="vs:{m}#current"):
        rkv["w1"]
    with pytest.raises(CorruptValueError, match="vs:{m}#current"):  # a fresh handle too
        RedisKeyedVectors("m", url=rkv.url)["w1"]


def test_corrupt_metadata_is_named(rkv: RedisKeyedVectors, client: redis.Redis) -> None:
    version = rkv.version
    client.hset(f"vs:{{m}}:{version}#meta", "dim", "abc")
    with pytest.raises(CorruptValueError, match=f"vs:{{m}}:{version}#meta"):
        RedisKeyedVectors("m", url=rkv.url)["w1"]
    client.delete(f"vs:{{m}}:{version}#meta")
    client.set(f"vs:{{m}}:{version}#meta", "x")
    with pytest.raises(CorruptValueError, match=f"vs:{{m}}:{version}#meta is not a hash"):
        RedisKeyedVectors("m", url=rkv.url)["w1"]


@pytest.mark.parametrize("corrupt", [
    pytest.param(lambda c, k: c.set(k, b"\xff\xfe"), id="not-utf8"),
    pytest.param(lambda c, k: c.set(k, b"a\nb"), id="short"),
    pytest.param(lambda c, k: c.delete(k), id="deleted"),
    pytest.param(lambda c, k: (c.delete(k), c.rpush(k, "x")), id="list"),
])
def test_corrupt_index_chunk_is_named(rkv: RedisKeyedVectors, client: redis.Redis,
                                      corrupt) -> None:
    chunk = Keys("m").i2k(rkv.version, 0)
    corrupt(client, chunk)
    with pytest.raises(CorruptValueError, match=chunk):
        rkv.index_to_key[3]
