"""docker-compose.yml must stay a valid deployment: Debian's docker-compose validates it
without a Docker engine."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests import services

ROOT = Path(__file__).resolve().parents[2]


def _compose(
    *args: str, password: str | None = "test-only", web_token: str | None = "test-only-token"
) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    if binary is None:
        services.missing("docker-compose", "install the Debian package docker-compose")
    env = {
        k: v for k, v in os.environ.items() if k not in ("POSTGRES_PASSWORD", "BULKMAIL_WEB_TOKEN")
    }
    if password is not None:
        env["POSTGRES_PASSWORD"] = password
    if web_token is not None:
        env["BULKMAIL_WEB_TOKEN"] = web_token
    return subprocess.run(
        [
            str(binary),
            "--project-directory",
            str(ROOT),
            "-f",
            str(ROOT / "docker-compose.yml"),
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
        cwd=ROOT,
    )


def test_compose_file_is_valid_and_has_every_service() -> None:
    checked = _compose("config", "-q")
    assert checked.returncode == 0, checked.stderr
    listed = _compose("config", "--services")
    assert set(listed.stdout.split()) == {
        "postgres",
        "redis",
        "migrate",
        "worker",
        "beat",
        "poller",
        "inbound",
        "web",
        "mailpit",
        "flower",
    }


def test_startup_order_is_enforced_by_health_checks() -> None:
    rendered = _compose("config").stdout
    assert rendered.count("condition: service_healthy") >= 4
    # worker, beat, poller, inbound and web wait for the migration.
    assert rendered.count("condition: service_completed_successfully") == 5
    assert "pg_isready" in rendered
    assert "redis-cli" in rendered


def test_no_password_is_baked_in() -> None:
    refused = _compose("config", "-q", password=None)
    assert refused.returncode != 0
    assert "set POSTGRES_PASSWORD in .env" in refused.stderr
    assert "test-only" not in (ROOT / "docker-compose.yml").read_text()
    # The dashboard listens beyond the container's loopback: it needs a token.
    refused = _compose("config", "-q", web_token=None)
    assert refused.returncode != 0
    assert "set BULKMAIL_WEB_TOKEN in .env" in refused.stderr
