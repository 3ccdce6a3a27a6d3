"""The ``vectorstore`` command: exit codes, messages, URL resolution, password redaction."""
from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner, Result
from conftest import TEST_DATA
from gensim.models import KeyedVectors

from vectorstore import RedisKeyedVectors
from vectorstore.cli import main
from vectorstore.keys import Keys
from vectorstore.server import free_port

LEE = TEST_DATA / "lee_fasttext.vec"
EUCLIDEAN = TEST_DATA / "euclidean_vectors.bin"


def run(*args: str, input: str | None = None, env: dict | None = None) -> Result:
    env = {"VECTORSTORE_URL": None, "REDIS_URL": None, **(env or {})}
    return CliRunner().invoke(main, list(args), input=input, env=env, catch_exceptions=False)


def assert_one_line_error(result: Result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def test_load_list_info_verify_drop(redis_url: str, client: redis.Redis) -> None:
    loaded = run("load", str(LEE), "--name", "lee", "--url", redis_url)
    assert loaded.exit_code == 0, loaded.output
    assert loaded.stdout.startswith("loaded lee version 1: 1762 vectors x 10 float32 "
                                    "(word2vec-text) in ")
    assert redis_url in loaded.stdout and "vectors/s" in loaded.stderr  # the progress bar

    half = run("--url", redis_url, "load", str(EUCLIDEAN), "--name", "euc", "--format",
               "word2vec-binary", "--dtype", "float16", "--limit", "100", "--batch-size", "7",
               "--no-progress")
    assert half.exit_code == 0 and half.stderr == "", half.output
    assert "loaded euc version 1: 100 vectors x 10 float16" in half.stdout

    listed = run("list", "--url", redis_url)
    assert [line.split("\t")[:3] for line in listed.stdout.splitlines()] == [
        ["euc", "version 1", "100 x 10 float16"], ["lee", "version 1", "1762 x 10 float32"]]

    shown = run("info", "lee", "--url", redis_url)
    assert shown.exit_code == 0
    fields = dict(line.split(":", 1) for line in shown.stdout.splitlines())
    assert {k: fields[k].strip() for k in ("name", "version", "dim", "count", "dtype", "format",
                                           "source", "other versions", "loading")} == {
        "name": "lee", "version": "1", "dim": "10", "count": "1762", "dtype": "float32",
        "format": "word2vec-text", "source": str(LEE), "other versions": "none", "loading": "no"}
    assert fields["memory"].strip().endswith("KiB (estimate)")

    checked = run("verify", "lee", "--url", redis_url)
    assert checked.exit_code == 0 and "lee version 1: ok (1762 vectors" in checked.stdout
    client.setrange(Keys("lee").token(1, "the"), 0, b"\x00\x00\x00\x00")
    tampered = run("verify", "lee", "--url", redis_url)
    assert tampered.exit_code == 1 and "MISMATCH" in tampered.stderr

    no_terminal = run("drop", "lee", "--url", redis_url, input="y\n")
    assert_one_line_error(no_terminal, "not dropping lee: there is no terminal to confirm on; "
                                       "pass --yes")
    assert client.exists("vs:{lee}#current")
    dropped = run("drop", "lee", "--yes", "--url", redis_url)
    assert dropped.exit_code == 0 and dropped.stdout.startswith("dropped lee (")
    assert dropped.stdout.endswith(f" keys) from {redis_url}\n")
    assert run("drop", "euc", "--yes", "--url", redis_url).exit_code == 0
    assert_one_line_error(run("drop", "lee", "--yes", "--url", redis_url),
                          "no model named 'lee'")
    empty = run("list", "--url", redis_url)
    assert empty.exit_code == 0 and empty.stdout == "" and "no models" in empty.stderr


def test_reload_with_index_is_searchable_as_soon_as_it_is_served(redis_url: str,
                                                                 client: redis.Redis) -> None:
    want = KeyedVectors.load_word2vec_format(str(LEE)).most_similar("the", topn=5)
    for version in (1, 2):
        loaded = run("load", str(LEE), "--name", "lee", "--index", "--quantization", "noquant",
                     "--no-progress", "--url", redis_url)
        assert loaded.exit_code == 0 and loaded.stderr == "", loaded.output
        assert f"index of lee version {version}: ready (noquant m=16 ef=200), " in loaded.stdout
        served = RedisKeyedVectors("lee", url=redis_url, exact=True)
        assert served.version == version
        got = served.most_similar("the", topn=5)
        assert [k for k, _ in got] == [k for k, _ in want]
    assert client.keys("vs:lee:1*") == []  # the old version went, and its index with it
    shown = run("info", "lee", "--url", redis_url)
    assert "other versions: none" in shown.stdout
    assert "index:          ready (noquant m=16 ef=200)" in shown.stdout
    bad = run("index", "lee", "--m", "3", "--url", redis_url)
    assert bad.exit_code == 2 and "'--m': 3 is not in the range 4<=x<=4096" in bad.stderr


def test_errors_are_one_line_with_exit_code_2(redis_url: str, tmp_path: Path,
                                              client: redis.Redis) -> None:
    bad = tmp_path / "bad.vec"
    bad.write_text("2 3\na 1 2 3\nb 1 2\n")
    assert_one_line_error(run("load", str(bad), "--name", "m", "--url", redis_url,
                              "--no-progress"), f"{bad}, line 3: wrong number of values")
    assert client.keys("*") == []
    assert_one_line_error(run("load", str(tmp_path / "nope.bin"), "--name", "m",
                              "--url", redis_url), "cannot read", "nope.bin")
    assert_one_line_error(run("info", "nope", "--url", redis_url), "no model named 'nope'")
    client.set("vs:{m}#lock", "elsewhere:1:x")
    assert_one_line_error(run("load", str(LEE), "--name", "m", "--url", redis_url),
                          "being loaded by elsewhere:1:x")

    usage = run("load", str(LEE), "--name", "bad:name", "--url", redis_url)
    assert usage.exit_code == 2 and "invalid model name" in usage.stderr
    assert run("load", str(LEE), "--url", redis_url).exit_code == 2  # --name is required


def test_unreachable_redis_and_password_redaction(tmp_path: Path) -> None:
    url = f"redis://user:s3cret@127.0.0.1:{free_port()}/0"
    for args in (["list"], ["load", str(LEE), "--name", "m", "--no-progress"]):
        result = run("--url", url, *args)
        assert_one_line_error(result, "cannot reach Redis at redis://user:***@127.0.0.1:")
        assert "s3cret" not in result.output


@pytest.fixture()
def acl_user(client: redis.Redis, redis_url: str) -> Iterator[str]:
    """URL of an ACL user with a password, on the session's Redis."""
    client.execute_command("ACL", "SETUSER", "loader", "on", ">s3cret", "~*", "&*", "+@all")
    yield redis_url.replace("redis://", "redis://loader:s3cret@")
    client.execute_command("ACL", "DELUSER", "loader")


def test_password_is_never_printed(acl_user: str) -> None:
    outputs = []
    for args in (["load", str(LEE), "--name", "m"], ["list"], ["info", "m"], ["verify", "m"],
                 ["drop", "m", "--yes"]):
        result = run(*args, env={"VECTORSTORE_URL": acl_user})
        assert result.exit_code == 0, result.output
        outputs.append(result.output)
    assert "redis://loader:***@127.0.0.1:" in outputs[0]  # load names where it loaded
    assert "redis://loader:***@127.0.0.1:" in outputs[4]  # drop too
    assert not any("s3cret" in out for out in outputs)

    wrong = run("list", "--url", acl_user.replace("s3cret", "wrong-pw"))
    assert_one_line_error(wrong, "redis://loader:***@")
    assert "wrong-pw" not in wrong.output


def _on_terminal(args: list[str], answer: str) -> tuple[int, str]:
    """Run ``vectorstore *args`` on a pseudo-terminal, type ``answer`` at its ``[y/N]``
    prompt; return its exit code and everything it printed."""
    main_fd, terminal = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "vectorstore.cli", *args], stdin=terminal,
                            stdout=terminal, stderr=terminal, close_fds=True)
    os.close(terminal)
    seen = b""
    try:
        while b"[y/N]" not in seen:
            ready, _, _ = select.select([main_fd], [], [], 30)
            assert ready, f"no prompt: {seen!r}"
            seen += os.read(main_fd, 4096)
        os.write(main_fd, answer.encode() + b"\n")
        while True:
            ready, _, _ = select.select([main_fd], [], [], 30)
            assert ready, f"no exit: {seen!r}"
            try:
                chunk = os.read(main_fd, 4096)
            except OSError:  # EIO: the program closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        return proc.wait(30), seen.decode().replace("\r\n", "\n")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(main_fd)


def test_drop_asks_on_a_terminal(redis_url: str, client: redis.Redis) -> None:
    assert run("load", str(LEE), "--name", "lee", "--no-progress", "--url", redis_url).exit_code == 0
    code, out = _on_terminal(["drop", "lee", "--url", redis_url], "n")
    assert code == 1 and f"Drop model lee and all its versions from {redis_url}? [y/N]: n" in out
    assert "Aborted!" in out and "Traceback" not in out and client.exists("vs:{lee}#current")
    code, out = _on_terminal(["drop", "lee", "--url", redis_url], "y")
    assert code == 0 and "dropped lee (" in out and not client.exists("vs:{lee}#current")
    assert run("load", str(LEE), "--name", "lee", "--no-progress", "--url", redis_url).exit_code == 0
    piped = subprocess.run([sys.executable, "-m", "vectorstore.cli", "drop", "lee", "--url",
                            redis_url], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=60)
    assert (piped.returncode, piped.stdout, piped.stderr) == (
        2, "", "error: not dropping lee: there is no terminal to confirm on; pass --yes\n")
    assert client.exists("vs:{lee}#current")


def test_url_comes_from_option_then_environment(redis_url: str) -> None:
    assert run("load", str(LEE), "--name", "m", "--no-progress",
               env={"VECTORSTORE_URL": redis_url}).exit_code == 0
    assert run("info", "m", env={"REDIS_URL": redis_url}).exit_code == 0
    dead = f"redis://127.0.0.1:{free_port()}/0"
    assert run("info", "m", env={"VECTORSTORE_URL": redis_url, "REDIS_URL": dead}).exit_code == 0
    assert run("info", "m", env={"VECTORSTORE_URL": dead}).exit_code == 2
    assert run("--url", dead, "info", "m", "--url", redis_url).exit_code == 0  # innermost wins
    assert run("--url", redis_url, "info", "m", env={"VECTORSTORE_URL": dead}).exit_code == 0


def _start_server(*args: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "vectorstore.cli", "server", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


@pytest.mark.parametrize("how,sig", [("port", signal.SIGTERM), ("unix", signal.SIGINT)])
def test_server_runs_until_signalled(tmp_path: Path, how: str, sig: signal.Signals) -> None:
    if how == "port":
        port = free_port()
        proc, url = _start_server("--port", str(port))
        assert url == f"redis://127.0.0.1:{port}/0"
    else:
        sock = str(tmp_path / "r.sock")
        proc, url = _start_server("--unix-socket", sock)
        assert url == f"unix://{sock}"
    try:
        assert redis.Redis.from_url(url).ping()
    finally:
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "stopped" in err and "Traceback" not in err
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()


def test_server_options_are_exclusive() -> None:
    result = run("server", "--port", "7000", "--unix-socket", "/tmp/x.sock")
    assert result.exit_code == 2 and "not both" in result.stderr


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).with_name("vectorstore")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "load" in result.stdout and "server" in result.stdout
