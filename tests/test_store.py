"""RedisKeyedVectors against gensim in memory, on a real Redis."""
from __future__ import annotations

import multiprocessing
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import redis
from conftest import TEST_DATA, synthetic_kv
from gensim.models import KeyedVectors

from vectorstore import ModelNotFoundError, ReadOnlyError, RedisKeyedVectors, StoreUnavailableError, VectorStoreError
from vectorstore.index import IndexOptions
from vectorstore.keys import Keys
from vectorstore.loader import load
from vectorstore.server import EmbeddedRedis

ODD = ["a:b", "{x}", "#hash", "naïve", "東京", "emoji🙂", "a b", "vs:m:1:x", "-", "0"]


@pytest.fixture()
def model(redis_url: str) -> KeyedVectors:
    kv = synthetic_kv(3000, 24, tokens=ODD + [f"w{i}" for i in range(3000 - len(ODD))])
    load(kv, "m", url=redis_url, progress=False, grace=0)
    return kv


@pytest.fixture(params=[0, 1 << 20], ids=["nocache", "cache"])
def rkv(request: pytest.FixtureRequest, redis_url: str, model: KeyedVectors) -> RedisKeyedVectors:
    return RedisKeyedVectors("m", url=redis_url, cache_bytes=request.param)


def commands(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {k[len("cmdstat_"):]: v["calls"] for k, v in stats.items()}


def test_single_and_batch_lookups_equal_gensim(rkv: RedisKeyedVectors, model: KeyedVectors) -> None:
    rng = np.random.default_rng(0)
    for _ in range(5):
        doc = [model.index_to_key[i] for i in rng.integers(0, len(model), 50)] + ODD
        assert np.array_equal(rkv[doc], model[doc])
        assert rkv[doc].dtype == np.float32
    for token in ODD:
        assert np.array_equal(rkv[token], model[token])
        assert rkv.get_index(token) == model.get_index(token)
    assert np.array_equal(rkv[5], model[5])
    assert np.array_equal(rkv.get_vector("w7", norm=True), model.get_vector("w7", norm=True))


def test_metadata_and_index_api(rkv: RedisKeyedVectors, model: KeyedVectors) -> None:
    assert len(rkv) == len(model) and rkv.vector_size == model.vector_size
    assert rkv.index_to_key[0] == model.index_to_key[0]
    assert rkv.index_to_key[-1] == model.index_to_key[-1]
    assert rkv.index_to_key[1000:1100:3] == model.index_to_key[1000:1100:3]
    assert list(rkv.index_to_key) == model.index_to_key
    assert rkv.key_to_index["naïve"] == model.key_to_index["naïve"]
    assert "東京" in rkv and "nope" not in rkv and 5 in rkv and 10**6 not in rkv
    assert rkv.has_index_for("a b") and not rkv.has_index_for("ab")
    assert rkv.get_index("nope", default=-1) == -1
    with pytest.raises(KeyError, match="nope"):
        rkv.get_index("nope")
    with pytest.raises(IndexError):
        rkv.index_to_key[len(model)]
    meta = rkv.meta
    assert (meta.dim, meta.dtype, meta.count, meta.state) == (24, "float32", 3000, "ready")
    assert meta.checksum and meta.created_at > 0


def test_oov_policies(rkv: RedisKeyedVectors, model: KeyedVectors) -> None:
    doc = ["w1", "zzz", "w2", "zzz", "qq"]
    with pytest.raises(KeyError, match="zzz"):
        rkv[doc]
    zero = rkv.lookup(doc, oov="zero")
    assert zero.missing == [1, 3, 4]
    assert np.array_equal(zero.vectors[[0, 2]], model[["w1", "w2"]])
    assert not zero.vectors[[1, 3, 4]].any()
    skip = rkv.lookup(doc, oov="skip")
    assert np.array_equal(skip.vectors, model[["w1", "w2"]]) and skip.missing == [1, 3, 4]
    # again, now that the cache (if any) knows these tokens are missing
    assert rkv.lookup(doc, oov="skip").missing == [1, 3, 4]
    assert rkv.lookup([], oov="zero").vectors.shape == (0, 24)
    with pytest.raises(ValueError, match="oov"):
        rkv.lookup(doc, oov="ignore")
    with pytest.raises(TypeError, match="tokens must be str"):
        rkv.lookup(["w1", 3.5])


@pytest.mark.parametrize("kwargs", [
    {}, {"pre_normalize": False}, {"post_normalize": True}, {"weights": [1, -2, 0.5, 3]},
])
def test_mean_vector_matches_gensim(rkv: RedisKeyedVectors, model: KeyedVectors, kwargs: dict) -> None:
    keys = ["w1", "naïve", "missing", 7]
    assert np.array_equal(rkv.get_mean_vector(keys, **kwargs), model.get_mean_vector(keys, **kwargs))
    arr = [model["w3"], "w4"]
    assert np.array_equal(rkv.get_mean_vector(arr), model.get_mean_vector(arr))
    with pytest.raises(KeyError, match="missing"):
        rkv.get_mean_vector(keys, ignore_missing=False)
    with pytest.raises(ValueError):
        rkv.get_mean_vector([])


def test_batch_is_one_redis_command(redis_url: str, model: KeyedVectors, client: redis.Redis) -> None:
    for cache_bytes in (0, 1 << 20):
        kv = RedisKeyedVectors("m", url=redis_url, cache_bytes=cache_bytes, refresh=60)
        kv.lookup(["w1999"])  # connected, metadata read
        doc = [f"w{i}" for i in range(0, 2000, 7)] + ["zzz"]
        before = commands(client)
        kv.lookup(doc, oov="zero")
        after = commands(client)
        # one MGET; the OOV token "zzz" costs one EXISTS (is its key of another type?)
        assert {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)} == {
            "mget": 1, "exists": 1, "info": 1}
        if cache_bytes:  # prewarmed (the whole model fits): no command at all
            assert kv.prewarm() == 3000
            kv.lookup(doc, oov="zero")  # "zzz" is remembered as absent
            before = commands(client)
            kv.lookup(doc, oov="zero")
            assert commands(client)["mget"] == before["mget"]


def test_writing_methods_are_refused(rkv: RedisKeyedVectors) -> None:
    for call in (lambda: rkv.add_vector("x", np.zeros(24)), lambda: rkv.save("/tmp/x"),
                 lambda: rkv.__setitem__("x", np.zeros(24)),
                 lambda: RedisKeyedVectors.load_word2vec_format("x.bin")):
        with pytest.raises(ReadOnlyError, match="vectorstore load"):
            call()
    with pytest.raises(VectorStoreError, match="not in memory"):
        _ = rkv.vectors


def test_unknown_model(redis_url: str) -> None:
    with pytest.raises(ModelNotFoundError, match="no model named 'ghost'"):
        RedisKeyedVectors("ghost", url=redis_url)["x"]
    with pytest.raises(ValueError, match="invalid model name"):
        RedisKeyedVectors("bad:name", url=redis_url)


def test_float16_halves_payload_and_returns_float32(redis_url: str, client: redis.Redis) -> None:
    kv = synthetic_kv(500, 40)
    load(kv, "h", url=redis_url, dtype="float16", progress=False)
    rkv = RedisKeyedVectors("h", url=redis_url)
    got = rkv[kv.index_to_key]
    assert got.dtype == np.float32
    assert np.array_equal(got, kv.vectors.astype(np.float16).astype(np.float32))
    assert len(client.get(Keys("h").token(rkv.version, "w1"))) == 40 * 2 + 4


def test_gensim_bundled_file(redis_url: str) -> None:
    path = TEST_DATA / "lee_fasttext.vec"
    load(str(path), "lee", url=redis_url, progress=False)
    want = KeyedVectors.load_word2vec_format(str(path))
    rkv = RedisKeyedVectors("lee", url=redis_url)
    assert len(rkv) == len(want)
    assert np.array_equal(rkv[want.index_to_key], want.vectors)


def test_version_flip_invalidates_cache(redis_url: str, model: KeyedVectors) -> None:
    rkv = RedisKeyedVectors("m", url=redis_url, refresh=0.2)
    doc = ["w1", "w2", "naïve"]
    assert np.array_equal(rkv[doc], model[doc])
    old = rkv.version
    new = synthetic_kv(3000, 24, seed=9, tokens=ODD + [f"w{i}" for i in range(3000 - len(ODD))])
    load(new, "m", url=redis_url, progress=False, grace=0.5)
    time.sleep(0.3)
    assert rkv.version > old
    assert np.array_equal(rkv[doc], new[doc])


READER = textwrap.dedent("""
    import sys, time, numpy as np
    from vectorstore import RedisKeyedVectors
    kv = RedisKeyedVectors("m", url=sys.argv[1], refresh=0.2)
    end = time.monotonic() + float(sys.argv[2])
    print("ready", flush=True)
    while time.monotonic() < end:
        v = kv[["w1", "w2"]]
        print(kv.version, float(v[0, 0]), float(v[1, 0]), flush=True)
""")


def test_alias_flip_while_another_process_reads(redis_url: str, model: KeyedVectors) -> None:
    proc = subprocess.Popen([sys.executable, "-c", READER, redis_url, "4"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    time.sleep(0.5)
    new = synthetic_kv(3000, 24, seed=5, tokens=ODD + [f"w{i}" for i in range(3000 - len(ODD))])
    load(new, "m", url=redis_url, progress=False, grace=1.0)
    flipped = time.monotonic()
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    old_vals = (float(model["w1"][0]), float(model["w2"][0]))
    new_vals = (float(new["w1"][0]), float(new["w2"][0]))
    seen = [tuple(map(float, line.split()[1:])) for line in out.split("\n") if line]
    assert all(s in (old_vals, new_vals) for s in seen)  # never a mix, never garbage
    assert seen[0] == old_vals and seen[-1] == new_vals
    assert flipped < time.monotonic()


def _read_in_child(kv: RedisKeyedVectors, queue: multiprocessing.Queue[list[float]]) -> None:
    queue.put(kv[["w1", "w2"]][:, 0].tolist())


def test_fork_safe(redis_url: str, model: KeyedVectors) -> None:
    kv = RedisKeyedVectors("m", url=redis_url)
    kv["w1"]  # the parent has connected and cached before forking
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_read_in_child, args=(kv, queue)) for _ in range(3)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=20) for _ in procs]
    for p in procs:
        p.join(10)
    assert results == [model[["w1", "w2"]][:, 0].tolist()] * 3


def test_acl_user_and_unix_socket(tmp_path, model: KeyedVectors) -> None:
    sock = str(tmp_path / "r.sock")
    with EmbeddedRedis(unix_socket=sock) as server:
        admin = redis.Redis.from_url(server.url)
        # the users the README recommends: a read-only worker, a read-write loader
        admin.execute_command("ACL", "SETUSER", "reader", "on", ">s3cret", "~vs:*", "-@all",
                              "+@read", "+vsim", "+client|setinfo")
        admin.execute_command("ACL", "SETUSER", "loader", "on", ">l0ader", "~vs:*", "~vs#*",
                              "+@all", "-@dangerous", "+info")
        load(model, "m", url=f"unix://loader:l0ader@{sock}", progress=False, index=IndexOptions())
        url = f"unix://reader:s3cret@{sock}"
        kv = RedisKeyedVectors("m", url=url)
        assert np.array_equal(kv[["w1", "naïve"]], model[["w1", "naïve"]])
        assert [k for k, _ in kv.most_similar("w1", topn=3, exact=True)] == [
            k for k, _ in model.most_similar("w1", topn=3)]
        assert "s3cret" not in repr(kv)
        with pytest.raises(redis.AuthenticationError):
            RedisKeyedVectors("m", url=f"unix://reader:wrong@{sock}")["w1"]
        with pytest.raises(redis.ResponseError, match="no permissions"):
            redis.Redis.from_url(url).set("vs:x", 1)  # the reader cannot write


def test_dropped_connection_is_retried_and_outage_reported(model: KeyedVectors) -> None:
    server = EmbeddedRedis().start()
    try:
        load(model, "m", url=server.url, progress=False)
        kv = RedisKeyedVectors("m", url=server.url, cache_bytes=0, refresh=60)
        assert np.array_equal(kv["w1"], model["w1"])
        admin = redis.Redis.from_url(server.url)
        assert admin.client_kill_filter(_type="normal", skipme=True) >= 1
        assert np.array_equal(kv["w2"], model["w2"])  # reconnected transparently
    finally:
        server.stop()
    t0 = time.monotonic()
    with pytest.raises(StoreUnavailableError, match=f"127.0.0.1:{server.port}.*unreachable"):
        kv["w3"]
    assert time.monotonic() - t0 < 30  # a bounded number of retries
