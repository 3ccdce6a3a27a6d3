"""verify: every missing, retyped, overwritten, moved, non-finite or extra token key is named."""
from __future__ import annotations

import numpy as np
import pytest
import redis
from click.testing import CliRunner
from conftest import synthetic_kv

from vectorstore import RedisKeyedVectors
from vectorstore.cli import main
from vectorstore.errors import CorruptValueError
from vectorstore.keys import Keys
from vectorstore.loader import drop, load, verify

K = Keys("m")


def token_key(token: str) -> bytes:
    return K.token(1, token)


def value(vector: list[float], index: int) -> bytes:
    return np.asarray(vector, "<f4").tobytes() + index.to_bytes(4, "little")


@pytest.fixture()
def model(client: redis.Redis) -> redis.Redis:
    load(synthetic_kv(count=2100, dim=4), "m", client=client, progress=False)
    assert verify("m", client=client).ok
    return client


def test_every_damaged_token_is_named(model: redis.Redis) -> None:
    r = model
    r.delete(token_key("w7"))
    r.delete(token_key("w8"))
    r.hset(token_key("w8"), "a", "b")
    r.delete(token_key("w9"))
    r.rpush(token_key("w9"), "x")
    r.set(token_key("w10"), np.random.default_rng(1).bytes(20))  # right length, random
    r.set(token_key("w11"), value([1, 2, np.nan, 4], 11))
    r.set(token_key("w1025"), value([1, np.inf, 3, 4], 1025))
    r.set(token_key("w12"), r.get(token_key("w13")))  # a value moved to another key
    r.set(token_key("w14"), b"short")
    r.set(token_key("intruder"), r.get(token_key("w0")))  # served for an OOV word
    r.set(token_key("stray"), b"x")
    result = verify("m", client=r)
    assert not result.ok and result.found_count == result.expected_count == 2100
    assert result.found_checksum != result.expected_checksum
    assert result.problems[:8] == [
        "token 'w7' (index 7): no vector stored",
        "token 'w8' (index 8): the key is a hash, not a string (retyped)",
        "token 'w9' (index 9): the key is a list, not a string (retyped)",
        f"token 'w10' (index 10): value carries index "
        f"{int.from_bytes(r.get(token_key('w10'))[-4:], 'little')}: it is not this token's "
        f"(overwritten or copied from another key)",
        "token 'w11' (index 11): value nan (field 3) is not finite",
        "token 'w12' (index 12): value carries index 13: it is not this token's "
        "(overwritten or copied from another key)",
        "token 'w14' (index 14): value has 5 bytes, expected 20",
        "token 'w1025' (index 1025): value inf (field 2) is not finite",
    ]
    assert sorted(result.problems[8:]) == [  # in SCAN order
        f"key {k!r} is not a token of the model (not in its index->token chunks); "
        f"it would be served for {k.split(':')[-1]!r}" for k in ("vs:m:1:intruder", "vs:m:1:stray")]


def test_a_float_changed_in_place_shows_in_the_checksum(model: redis.Redis) -> None:
    model.setrange(token_key("w1500"), 5, b"\x7f")
    result = verify("m", client=model)
    assert not result.ok and result.problems == []
    assert result.found_checksum != result.expected_checksum


def test_damaged_index_to_token_chunks_are_named(model: redis.Redis) -> None:
    model.delete(K.i2k(1, 1))
    model.set(K.i2k(1, 2), b"w2048\nw2049")
    model.set(K.i2k(1, 3), b"extra")
    result = verify("m", client=model)
    assert result.found_count == 1024 + 2
    assert result.problems == [
        "index->token chunk 1 (indexes 1024-2047): missing",
        "index->token chunk 2 (indexes 2048-2099): holds 2 tokens, expected 52",
        "index->token chunk 3 exists, but the metadata counts 2100 tokens (3 chunks)",
    ]
    model.delete(K.i2k(1, 0))
    model.hset(K.i2k(1, 0), "a", "b")
    assert verify("m", client=model).problems[0].startswith(
        "index->token chunk 0 (indexes 0-1023): unreadable (WRONGTYPE")


@pytest.mark.parametrize("alias", [b"abc", b"-1", b"0", b"\xff", b"99"])
def test_a_corrupt_alias_is_a_clear_error_and_a_reload_repairs_it(
        model: redis.Redis, redis_url: str, alias: bytes) -> None:
    model.set(K.current, alias)
    with pytest.raises(CorruptValueError, match=r"model 'm': its alias vs:{m}#current "):
        verify("m", client=model)
    result = CliRunner().invoke(main, ["verify", "m", "--url", redis_url])
    assert result.exit_code == 2 and result.exception is None or \
        isinstance(result.exception, SystemExit), result.output
    assert "error: model 'm': its alias vs:{m}#current" in result.output
    assert "Traceback" not in result.output
    kv = synthetic_kv(count=30, dim=4)
    load(kv, "m", client=model, progress=False, grace=0)
    assert verify("m", client=model).ok
    np.testing.assert_array_equal(RedisKeyedVectors("m", client=model)["w3"], kv["w3"])
    model.set(K.current, alias)
    assert drop("m", client=model) > 0
    assert model.keys("vs:m:*") == [] and not model.exists(K.current)


def test_a_retyped_alias_is_a_clear_error(model: redis.Redis) -> None:
    model.delete(K.current)
    model.hset(K.current, "a", "b")
    with pytest.raises(CorruptValueError, match=r"its alias vs:{m}#current is unreadable"):
        verify("m", client=model)
