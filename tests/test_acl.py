"""The README's ACL users (tests/acl_users.py), run as written on a Redis of this module's own:
the loader user loads, indexes, verifies and drops; the worker user reads, also after its
connections idled past the health-check interval (redis-py then PINGs them first), alone
and under Celery; Redis denies nothing either needs (``ACL LOG`` stays empty) and the
worker user can write nothing."""
from __future__ import annotations

import shlex
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from acl_users import LOADER_ACL, README_ACL, WORKER_ACL
from celery_helpers import WorkerProcess
from click.testing import CliRunner, Result
from conftest import TEST_DATA
from gensim.models import KeyedVectors

from tasks import as_array
from tasks.client import client_app
from vectorstore import RedisKeyedVectors
from vectorstore.cli import main
from vectorstore.server import EmbeddedRedis

LEE = TEST_DATA / "lee_fasttext.vec"
IDLE = 1.0  # VECTORSTORE_HEALTH_CHECK_INTERVAL in these tests
WORDS = ["the", "government", "fire", "Australia", "said"]


def user_url(server: EmbeddedRedis, line: str, db: int = 0) -> str:
    """URL of the user ``line`` creates (``ACL SETUSER name on >password ...``)."""
    _, _, name, _, password, *_ = shlex.split(line)
    return f"redis://{name}:{password[1:]}@127.0.0.1:{server.port}/{db}"


@pytest.fixture(scope="module")
def server() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as s:
        admin = redis.Redis.from_url(s.url)
        for line in README_ACL:
            assert admin.execute_command(*shlex.split(line)) == b"OK"
        admin.close()
        yield s


@pytest.fixture()
def admin(server: EmbeddedRedis) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(server.url, decode_responses=True)
    r.execute_command("ACL", "LOG", "RESET")
    yield r
    r.close()


@pytest.fixture()
def idle_health_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VECTORSTORE_HEALTH_CHECK_INTERVAL", str(IDLE))


def denied(admin: redis.Redis) -> list[str]:
    """What Redis refused since the test began, e.g. ``["ping (command)"]``."""
    return [f"{e['object']} ({e['reason']})" for e in admin.execute_command("ACL", "LOG")]


def pings(admin: redis.Redis) -> int:
    return admin.info("commandstats").get("cmdstat_ping", {}).get("calls", 0)


def cli(*args: str, url: str) -> Result:
    result = CliRunner().invoke(main, [*args, "--url", url], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def lee() -> KeyedVectors:
    return KeyedVectors.load_word2vec_format(str(LEE))


@pytest.fixture()
def loaded(server: EmbeddedRedis, admin: redis.Redis, idle_health_check: None) -> Iterator[str]:
    """Model ``lee`` loaded (twice: a reload replaces a version) and indexed by the loader
    user, with the short health-check interval; dropped by it at the end."""
    loader = user_url(server, LOADER_ACL)
    cli("load", str(LEE), "--name", "lee", "--no-progress", url=loader)
    cli("load", str(LEE), "--name", "lee", "--no-progress", "--index", url=loader)
    cli("index", "lee", "--quantization", "noquant", "--force", "--no-progress", url=loader)
    version = admin.get("vs:{lee}#current")
    assert isinstance(version, str)
    assert f"lee version {version}: ok" in cli("verify", "lee", url=loader).stdout
    shown = cli("info", "lee", url=loader).stdout
    assert "other versions: none" in shown and "index:          ready (noquant" in shown
    assert cli("list", url=loader).stdout.startswith(f"lee\tversion {version}\t")
    assert denied(admin) == []
    yield version
    assert "dropped lee" in cli("drop", "lee", "--yes", url=loader).stdout
    assert denied(admin) == []


def test_worker_user_reads_after_idling_past_the_health_check(server: EmbeddedRedis,
                                                              admin: redis.Redis, loaded: str,
                                                              lee: KeyedVectors) -> None:
    kv = RedisKeyedVectors("lee", url=user_url(server, WORKER_ACL), cache_bytes=0, refresh=0)
    for _ in range(2):
        before = pings(admin)
        assert np.array_equal(kv[WORDS], lee[WORDS])
        assert [k for k, _ in kv.most_similar("fire", topn=5, exact=True)] == [
            k for k, _ in lee.most_similar("fire", topn=5)]
        assert len(kv.most_similar("fire", topn=5)) == 5  # approximate (HNSW)
        time.sleep(IDLE * 1.5)
        assert np.array_equal(kv["fire"], lee["fire"])  # after idling: PING, then the lookup
        assert pings(admin) > before  # the health check ran, and was allowed
    assert denied(admin) == []

    other_db = redis.Redis.from_url(user_url(server, WORKER_ACL, db=1))
    assert other_db.ping() and other_db.get("vs:x") is None  # SELECT allowed
    worker = redis.Redis.from_url(user_url(server, WORKER_ACL))
    for command in (["SET", "vs:x", "1"], ["DEL", "vs:{lee}#current"], ["KEYS", "*"],
                    ["VADD", f"vs:{{lee}}:{loaded}#vset", "VALUES", "1", "0", "x"], ["FLUSHALL"],
                    ["GET", "other"]):
        with pytest.raises(redis.exceptions.NoPermissionError):
            worker.execute_command(*command)
    assert admin.get("vs:{lee}#current") == loaded
    assert len(denied(admin)) == 6
    admin.execute_command("ACL", "LOG", "RESET")


@pytest.mark.slow
def test_celery_worker_with_worker_user_survives_idle_pool(server: EmbeddedRedis,
                                                           admin: redis.Redis, loaded: str,
                                                           lee: KeyedVectors, tmp_path: Path) -> None:
    """The issue: after the pool idled past the health check, tasks failed on a NOPERM PING."""
    docs = [WORDS[i:] + WORDS[:i] for i in range(len(WORDS))]
    with EmbeddedRedis() as broker, \
            WorkerProcess("acl", broker.url, user_url(server, WORKER_ACL), tmp_path,
                          args=["--concurrency=2"],
                          env={"VECTORSTORE_MODEL": "lee",
                               "VECTORSTORE_HEALTH_CHECK_INTERVAL": str(IDLE)}):
        client = client_app(broker.url)
        for _ in range(3):
            before = pings(admin)
            results = [client.send_task("tasks.vectorize_document", [doc]) for doc in docs * 2]
            for doc, result in zip(docs * 2, results):
                assert np.array_equal(as_array(result.get(timeout=30)), lee[doc])
            time.sleep(IDLE * 2.5)
        assert pings(admin) > before
        client.close()
    assert denied(admin) == []
