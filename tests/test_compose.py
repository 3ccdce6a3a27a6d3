"""docker-compose.yml: its structure, and that the commands it runs exist.

No Docker engine runs here, so the file is checked, not started.
"""
from __future__ import annotations

from pathlib import Path

import yaml
from click.testing import CliRunner

from vectorstore.cli import main as cli

ROOT = Path(__file__).resolve().parents[1]


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_services_and_their_order() -> None:
    services = compose()["services"]
    assert set(services) == {"redis", "loader", "worker", "flower"}
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
