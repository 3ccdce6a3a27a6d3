"""No output shows any part of a password: ``redact()``, ``repr`` of a store, the CLI's
errors and the store's errors, for passwords holding ``@ / : # % ?`` and spaces, written raw
or percent-encoded, in the userinfo or as ``?password=``, with redis://, rediss:// and
unix:// URLs. A URL that redis-py would misread (raw ``/``, ``?`` or ``#``) is refused with
a clear error instead of being sent to a wrong host."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
from click.testing import CliRunner, Result
from conftest import TEST_DATA

from vectorstore import RedisKeyedVectors, VectorStoreError
from vectorstore import connection as connection_module
from vectorstore.cli import main
from vectorstore.connection import connect, redact
from vectorstore.server import free_port

# Each fragment of every password is one of these, so no output may contain any of them.
PIECES = ("zQ1", "xW2", "yE3", "vR4", "uT5", "tY6", "sU7", "rI8")
PASSWORDS = [f"zQ1{c}xW2" for c in "@/:#%? "] + ["zQ1%41xW2",
                                                 "zQ1@xW2/yE3:vR4#uT5%tY6?sU7 rI8"]
FORMS = ("userinfo", "userinfo-encoded", "query", "query-encoded")


def url_of(scheme: str, where: str, password: str, form: str) -> str:
    """``scheme://`` URL of ``where`` (``host:port/db`` or a socket path) with ``password``."""
    pw = quote(password, safe="") if form.endswith("encoded") else password
    if form.startswith("userinfo"):
        return f"{scheme}://u:{pw}@{where}"
    return f"{scheme}://{where}?username=u&password={pw}"


def unreachable(tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    """(url, where, form) of servers that do not exist, for every password and form."""
    port = free_port()
    for scheme, where in [("redis", f"127.0.0.1:{port}/0"), ("rediss", f"127.0.0.1:{port}/0"),
                          ("unix", f"{tmp_path}/none.sock")]:
        for password in PASSWORDS:
            for form in FORMS:
                yield url_of(scheme, where, password, form), where, form


def leaks(text: str) -> list[str]:
    return [piece for piece in PIECES if piece in text]


@pytest.fixture()
def no_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail at the first refused connection (the matrix has 120 unreachable URLs)."""
    monkeypatch.setattr(connection_module, "RETRIES", 0)


def test_redact_hides_every_piece_and_keeps_where(tmp_path: Path) -> None:
    for url, where, form in unreachable(tmp_path):
        shown = redact(url)
        assert leaks(shown) == [] and "***" in shown, (url, shown)
        assert where.split(":")[0].split("?")[0] in shown, (url, shown)
        if form == "userinfo-encoded":
            assert shown == url.split("://")[0] + f"://u:***@{where}"
        if form == "query-encoded":
            assert shown == url.split("://")[0] + f"://{where}?username=u&password=***"
    assert redact("redis://u:p@ss/w:rd@db:6379/2?x=1") == "redis://u:***@db:6379/2?x=1"
    assert redact("unix:///s.sock?db=1&password=p:a/s?s&x=2") == "unix:///s.sock?db=1&password=***&x=2"
    assert redact("redis://h:6379/0") == "redis://h:6379/0"
    assert redact("unix:///tmp/a@b.sock") == "unix:///tmp/a@b.sock"  # no password there


def test_repr_of_a_store_never_shows_the_password(tmp_path: Path) -> None:
    for url, _, _ in unreachable(tmp_path):
        kv = RedisKeyedVectors("m", url=url)
        assert leaks(repr(kv)) == [] and "***" in repr(kv), repr(kv)
        if "%2F" in url or "/" not in url.split("@")[0].split("://")[1]:  # parsed as written
            try:
                given = RedisKeyedVectors("m", client=connect(url))
            except VectorStoreError:
                continue
            assert leaks(repr(given)) == [], repr(given)


def test_store_errors_never_show_the_password(tmp_path: Path, no_retries: None) -> None:
    for url, _, _ in unreachable(tmp_path):
        with pytest.raises(VectorStoreError) as info:
            RedisKeyedVectors("m", url=url)["w1"]
        assert leaks(str(info.value)) == [], (url, str(info.value))
        assert "unreachable" in str(info.value) or "percent-encode" in str(info.value)


def assert_safe_error(result: Result, url: str) -> None:
    assert result.exit_code == 2, (url, result.output)
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.output
    assert leaks(result.output) == [], (url, result.output)


def test_cli_errors_never_show_the_password(tmp_path: Path, no_retries: None) -> None:
    for url, _, _ in unreachable(tmp_path):
        result = CliRunner().invoke(main, ["list", "--url", url], catch_exceptions=False)
        assert_safe_error(result, url)
        assert "cannot reach Redis at " in result.stderr or "percent-encode" in result.stderr
    worst = url_of("redis", f"127.0.0.1:{free_port()}/0", PASSWORDS[-1], "userinfo-encoded")
    misread = url_of("redis", f"127.0.0.1:{free_port()}/0", "zQ1/xW2", "userinfo")
    for url in (worst, misread):
        for args in (["load", str(TEST_DATA / "lee_fasttext.vec"), "--name", "m"], ["info", "m"],
                     ["list"], ["verify", "m"], ["index", "m"], ["drop", "m", "--yes"]):
            for command_line in ([*args, "--url", url], ["--url", url, *args]):
                result = CliRunner().invoke(main, command_line, catch_exceptions=False)
                assert_safe_error(result, url)
            result = CliRunner().invoke(main, args, env={"VECTORSTORE_URL": url},
                                        catch_exceptions=False)
            assert_safe_error(result, url)


def outcome(password: str, form: str) -> str:
    """What a URL with ``password`` written in ``form`` does against a server that has it."""
    if form.endswith("encoded"):
        return "works"
    if "#" in password or (form == "userinfo" and ("/" in password or "?" in password)):
        return "refused"  # redis-py would read another host, port or database
    if "%41" in password:
        return "wrong password"  # a raw '%41' is percent-decoded to 'A', as URLs are
    return "works"


def test_real_server_takes_every_password_that_can_be_written(redis_url: str,
                                                              client: redis.Redis) -> None:
    where = redis_url.split("://")[1]
    seen = set()
    try:
        for password in PASSWORDS:
            client.execute_command("ACL", "SETUSER", "u", "reset", "on", f">{password}", "~*",
                                   "+@all")
            for form in FORMS:
                url = url_of("redis", where, password, form)
                try:
                    connect(url).set("k", "v")
                    got = "works"
                except VectorStoreError as exc:
                    got = "refused"
                    assert "percent-encode" in str(exc) and leaks(str(exc)) == [], str(exc)
                except redis.AuthenticationError as exc:
                    got = "wrong password"
                    assert leaks(str(exc)) == [], str(exc)
                assert got == outcome(password, form), (password, form)
                seen.add(got)
                wrong = url.replace("xW2", "xW9")
                result = CliRunner().invoke(main, ["list", "--url", wrong], catch_exceptions=False)
                assert_safe_error(result, wrong)
    finally:
        client.execute_command("ACL", "DELUSER", "u")
    assert seen == {"works", "refused", "wrong password"}
