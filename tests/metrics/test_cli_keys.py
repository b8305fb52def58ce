"""``metrics keys create|list|revoke``: in-process through ``metrics.cli.main``, and once as a real subprocess."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from metrics.api.app import create_app
from metrics.api.audit import close_audit_logs
from metrics.api.keys import close_key_stores
from metrics.settings import Settings
from tests.metrics.conftest import Cli

REPO = Path(__file__).resolve().parents[2]
TOKEN_RE = re.compile(r"mk_([0-9a-f]{12})_[A-Za-z0-9_\-]{43}")


@pytest.fixture(autouse=True)
def _fresh_state() -> Iterator[None]:
    yield
    close_key_stores()
    close_audit_logs()


@pytest.fixture
def cli(cli: Cli) -> Cli:
    """``metrics keys ARGS...``."""
    return lambda *args: cli("keys", *args)


def test_create_prints_the_key_alone_on_the_last_line(cli: Cli) -> None:
    result = cli("create", "--role", "writer", "--name", "ingest-bot")
    assert result.code == 0
    match = TOKEN_RE.fullmatch(result.last_line)
    assert match is not None
    assert match.group(1) in result.out.splitlines()[0]  # the message names the key id
    assert "not shown again" in result.out


def test_list_shows_the_keys_but_never_a_secret(cli: Cli) -> None:
    tokens = [cli("create", "--role", role, "--name", f"{role}-key").last_line for role in ("reader", "admin")]
    key_ids = [TOKEN_RE.fullmatch(t).group(1) for t in tokens]  # type: ignore[union-attr]
    assert cli("revoke", key_ids[0]).code == 0
    table = cli("list")
    assert table.code == 0
    for header in ("id", "name", "role", "created", "last used", "revoked"):
        assert header in table.out
    reader_row = next(line for line in table.out.splitlines() if key_ids[0] in line)
    assert "reader-key" in reader_row
    assert "never" in reader_row
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ\s*\S*\s*$", reader_row)  # a revocation time
    assert "2 keys" in table.out
    listed = json.loads(cli("list", "--format", "json").out)
    assert [(k["key_id"], k["role"], k["revoked_at"] is not None) for k in listed] == [
        (key_ids[0], "reader", True),
        (key_ids[1], "admin", False),
    ]
    for token in tokens:
        secret = token.split("_", 2)[2]
        assert secret not in table.out
        assert secret not in json.dumps(listed)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("revoke", "000000000000"), 1, "no such key"),
        (("create", "--role", "root", "--name", "x"), 2, "root"),
        (("create", "--role", "reader"), 2, "--name"),
        (("create", "--role", "reader", "--name", "  "), 1, "name"),
        (("list", "--format", "xml"), 1, "--format"),
    ],
)
def test_bad_input_is_refused_with_a_message(cli: Cli, args: tuple[str, ...], code: int, message: str) -> None:
    result = cli(*args)
    assert result.code == code
    assert message in result.err
    assert "Traceback" not in result.err


def test_keys_help_lists_the_commands(cli: Cli) -> None:
    result = cli("--help")
    assert result.code == 0
    for command in ("create", "list", "revoke"):
        assert command in result.out


@pytest.mark.integration
def test_a_key_created_by_the_command_works_against_the_api_and_stops_when_revoked(data_dir: Path) -> None:
    def metrics(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "metrics", "--data-dir", str(data_dir), "keys", *args],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO,
            env={**os.environ, "COLUMNS": "200"},
            check=False,
        )

    created = metrics("create", "--role", "writer", "--name", "ops bot")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip().splitlines()[-1]
    key_id = TOKEN_RE.fullmatch(token).group(1)  # type: ignore[union-attr]
    body = {"metrics": [{"metric_id": "cli.keys", "value": 1.0}]}
    with TestClient(create_app(Settings(data_dir=data_dir)), raise_server_exceptions=False) as client:
        assert client.post("/api/v1/metrics", json=body, headers={"X-API-Key": token}).status_code == 200
        assert metrics("revoke", key_id).returncode == 0
        refused = client.post("/api/v1/metrics", json=body, headers={"X-API-Key": token})
    assert refused.status_code == 401
    listed = metrics("list")
    assert "ops bot" in listed.stdout
    assert token not in listed.stdout
