"""docker-compose.yml: its structure, and that the commands it runs exist.

No Docker engine runs here, so the file is checked, not started; the replica and Sentinel
commands of the ``replicas`` profile are run with the embedded Redis binary instead.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import redis
import yaml
from celery_helpers import wait_for
from click.testing import CliRunner

from vectorstore.cli import main as cli
from vectorstore.server import EmbeddedRedis, find_server, free_port

ROOT = Path(__file__).resolve().parents[1]


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_services_and_their_order() -> None:
    services = compose()["services"]
    assert set(services) == {"redis", "loader", "worker", "flower", "redis-replica-1",
                             "redis-replica-2", "sentinel-1", "sentinel-2", "sentinel-3"}
    assert services["redis"]["image"].startswith("redis:8")
    redis_cmd = services["redis"]["command"]
    assert redis_cmd[redis_cmd.index("--maxmemory-policy") + 1] == "noeviction"
    assert redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes"
    assert services["redis"]["healthcheck"]["test"][-1] == "ping"
    assert services["loader"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["worker"]["depends_on"]["loader"]["condition"] == "service_completed_successfully"
    assert services["loader"]["restart"] == "no"
    for name in ("loader", "worker"):
        env = services[name]["environment"]
        assert {"VECTORSTORE_URL", "VECTORSTORE_MODEL", "CELERY_BROKER_URL"} <= set(env)
        assert services[name]["build"] == "."


def test_loader_command_exists_in_the_cli() -> None:
    cmd = compose()["services"]["loader"]["command"]
    assert cmd[:2] == ["vectorstore", "load"]
    # the same arguments parse (only --help short-circuits before connecting)
    result = CliRunner().invoke(cli, [*cmd[1:], "--help"])
    assert result.exit_code == 0, result.output
    for option in (a for a in cmd if a.startswith("--")):
        assert option in result.output


def test_worker_command_names_the_celery_app() -> None:
    cmd = compose()["services"]["worker"]["command"]
    assert cmd[:4] == ["celery", "-A", "tasks", "worker"]
    assert any(a.startswith("--autoscale=") for a in cmd)
    import tasks

    names = set(tasks.app.tasks)
    assert {"tasks.vectorize_document", "tasks.vectorize_documents", "tasks.embed_document"} <= names


def test_dockerfile_installs_what_the_services_run() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for path in ("vectorstore", "tasks", "celeryconfig.py", "pyproject.toml"):
        assert path in dockerfile
    assert "pip install" in dockerfile


def _replicas_profile() -> tuple[list[dict], list[dict]]:
    services = compose()["services"]
    replicas = [v for k, v in services.items() if k.startswith("redis-replica-")]
    sentinels = [v for k, v in services.items() if k.startswith("sentinel-")]
    return replicas, sentinels


def test_replicas_profile_is_optional_and_follows_redis() -> None:
    services = compose()["services"]
    replicas, sentinels = _replicas_profile()
    assert len(replicas) == 2 and len(sentinels) == 3
    for service in (*replicas, *sentinels):
        assert service["profiles"] == ["replicas"]
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
    for name in ("redis", "loader", "worker"):  # the default stack needs none of them
        assert "profiles" not in services[name]
        assert not {"redis-replica-1", "sentinel-1"} & set(services[name].get("depends_on", {}))
    command = replicas[0]["command"]
    assert command[command.index("--replicaof") + 1:command.index("--replicaof") + 3] == [
        "redis", "6379"]
    script = sentinels[0]["command"][-1]
    quorum = int(script.split("sentinel monitor vectorstore redis 6379 ")[1].split("'")[0])
    assert quorum == len(sentinels) // 2 + 1
    for name in ("loader", "worker"):
        env = services[name]["environment"]
        assert {"VECTORSTORE_READ_FROM", "VECTORSTORE_REPLICA_URLS", "CELERY_SENTINEL_MASTER"} <= set(env)
    header = (ROOT / "docker-compose.yml").read_text().split("services:")[0]
    for host in ("redis-replica-1", "redis-replica-2", "sentinel-1", "sentinel-2", "sentinel-3"):
        assert host in header and host in services


def test_replica_and_sentinel_commands_run_on_redis(tmp_path: Path) -> None:
    """The replica's arguments and the Sentinel's generated configuration, run with the
    embedded Redis (``redis`` resolved to a local primary)."""
    replicas, sentinels = _replicas_profile()
    with EmbeddedRedis(args=["--repl-diskless-sync-delay", "0"]) as primary:
        args = [a.replace("${REDIS_MAXMEMORY:-8gb}", "1gb") for a in replicas[0]["command"][1:]]
        at = args.index("--replicaof")
        args[at + 1:at + 3] = ["127.0.0.1", str(primary.port)]
        with EmbeddedRedis(args=args) as replica:
            wait_for(lambda: replica.client().info("replication")["master_link_status"] == "up",
                     what="the replica to link")
        port = free_port()
        script = (sentinels[0]["command"][-1]
                  .replace("port 26379", f"port {port}' 'bind 127.0.0.1")
                  .replace("vectorstore redis 6379", f"vectorstore 127.0.0.1 {primary.port}")
                  .replace("/tmp/sentinel.conf", str(tmp_path / "sentinel.conf"))
                  .replace("exec redis-server", f"exec {find_server()}"))
        sentinel = subprocess.Popen(["sh", "-c", script], cwd=tmp_path,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            client = redis.Redis(port=port, socket_timeout=2, decode_responses=True)
            state = wait_for(lambda: _sentinel_master(client), what="the sentinel to answer")
            assert (state["ip"], state["port"], state["quorum"]) == ("127.0.0.1", primary.port, 2)
            assert state["down-after-milliseconds"] == 5000
        finally:
            sentinel.terminate()
            sentinel.wait(10)


def _sentinel_master(client: redis.Redis) -> dict | None:
    try:
        return client.sentinel_master("vectorstore")
    except redis.ConnectionError:
        return None
