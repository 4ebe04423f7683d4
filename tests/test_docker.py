"""docker/: the compose file validates with the Compose client (no engine is needed), and keeps its promises."""

import re
import secrets
import shutil
import subprocess

import pytest
import yaml

from conftest import REPO

DOCKER = REPO / "docker"
SECRETS = ("POSTGRES_PASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY", "S3_ACCESS_KEY",
           "S3_SECRET_KEY")


def compose_client() -> list[str] | None:
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


needs_compose = pytest.mark.skipif(compose_client() is None, reason="no Docker Compose client installed")


def env_file(tmp_path, **overrides) -> str:
    text = (DOCKER / ".env.example").read_text()
    values = {name: secrets.token_urlsafe(16) for name in SECRETS} | overrides
    for name, value in values.items():
        text = re.sub(rf"^{name}=.*$", f"{name}={value}", text, flags=re.M)
    path = tmp_path / ".env"
    path.write_text(text)
    return str(path)


def compose(env: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*compose_client(), "--env-file", env, "-f", str(DOCKER / "docker-compose.yml"), *args],
                          capture_output=True, text=True, timeout=120)


@needs_compose
def test_compose_file_validates_and_binds_to_loopback(tmp_path):
    env = env_file(tmp_path)
    assert compose(env, "config", "-q").returncode == 0
    config = yaml.safe_load(compose(env, "config").stdout)
    services = config["services"]
    assert {"postgres", "seaweedfs", "mlflow", "optuna-dashboard", "driver", "worker"} <= set(services)
    published = [p for s in services.values() for p in s.get("ports", [])]
    assert published and all(str(p).startswith("127.0.0.1:") or p.get("host_ip") == "127.0.0.1"
                             for p in published if p)
    for role in ("driver", "worker"):
        command = services[role]["command"]  # Compose v1 keeps the string, v2 splits it
        assert (command if isinstance(command, list) else command.split())[:3] == ["tune", "--role", role]
    assert services["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert all("healthcheck" in services[s] for s in ("postgres", "seaweedfs", "mlflow"))


@needs_compose
@pytest.mark.parametrize("secret", SECRETS)
def test_compose_refuses_an_empty_secret(tmp_path, secret):
    result = compose(env_file(tmp_path, **{secret: ""}), "config", "-q")
    assert result.returncode != 0 and secret in result.stderr


def test_no_secret_is_written_into_the_stack():
    # Every password, key or secret in the compose file is a ${...} reference to .env.
    text = (DOCKER / "docker-compose.yml").read_text()
    for line in text.splitlines():
        match = re.match(r"\s*(\w*(PASSWORD|SECRET|ACCESS_KEY)\w*):\s*(\S.*)$", line)
        if match:
            assert match.group(3).startswith("${"), line
    assert "password1234" not in text
    example = (DOCKER / ".env.example").read_text()
    assert all(re.search(rf"^{name}=$", example, flags=re.M) for name in SECRETS)  # left empty on purpose
    assert "--allowed-hosts" in (DOCKER / "mlflow-entrypoint.sh").read_text()
    assert "--app-name basic-auth" in (DOCKER / "mlflow-entrypoint.sh").read_text()


def test_the_server_image_pins_an_mlflow_release_after_the_server_cves():
    [version] = re.findall(r"mlflow\[auth\]==([\d.]+)", (DOCKER / "mlflow.Dockerfile").read_text())
    assert tuple(int(v) for v in version.split(".")) >= (3, 11, 0)  # CVE-2026-2614 (3.10.0), CVE-2026-2651 (3.11.0)
