"""``metrics collect cloudtrail|vault|health`` and ``metrics keys-report`` in-process."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from metrics.auditgen import cloudtrail_records, write_cloudtrail
from tests.exposition import ExpositionServer, Route
from tests.metrics.conftest import Cli

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "keylogs"
NOW = datetime.now(UTC)


def test_collect_cloudtrail_prints_the_new_events_last(cli: Cli, tmp_path: Path) -> None:
    write_cloudtrail(tmp_path / "ct", cloudtrail_records(NOW - timedelta(minutes=20), NOW, events=60, seed=2))
    first = cli("collect", "cloudtrail", str(tmp_path / "ct"))
    assert first.code == 0, first.err
    new = int(first.last_line)
    assert new > 60
    assert f"{new:,} new events (0 seen before, 0 problems)" in first.out
    again = cli("collect", "cloudtrail", str(tmp_path / "ct"), "--json")
    assert json.loads(again.last_line)["events"] == 0


def test_collect_vault_reports_skipped_records(cli: Cli, tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    shutil.copyfile(FIXTURES / "vault" / "audit.log", log)
    with log.open("a") as handle:
        handle.write("{broken\n")
    result = cli("collect", "vault", str(log))
    assert result.code == 0, result.err
    assert result.last_line == "14"
    assert f"skipped {log}:31: invalid JSON" in result.err


def test_a_missing_path_is_an_error_not_a_traceback(cli: Cli, tmp_path: Path) -> None:
    result = cli("collect", "cloudtrail", str(tmp_path / "nowhere"))
    assert result.code == 1
    assert result.error_lines == [f"Error: {tmp_path / 'nowhere'}: no such file or folder"]


def test_keys_report_as_table_and_json(cli: Cli) -> None:
    empty = cli("keys-report")
    assert empty.code == 0
    assert "no keys yet" in empty.out
    assert cli("collect", "cloudtrail", str(FIXTURES / "cloudtrail")).code == 0
    table = cli("keys-report")
    assert table.code == 0, table.err
    assert "Keys (5)" in table.out
    assert "rotation_overdue" in table.out
    report = json.loads(cli("keys-report", "--format", "json").out)
    assert report["summary"]["keys"] == 5
    assert report["summary"]["by_state"]["deleted"] == 1
    assert {v["policy"] for v in report["violations"]} == {"rotation_overdue"}  # the calls themselves are years old
    opened = json.loads(cli("keys-report", "--format", "json", "--open").out)
    assert all(v["open"] for v in opened["violations"])
    bad = cli("keys-report", "--format", "xml")
    assert bad.error_lines == ["Error: --format: 'xml' is not one of table, json"]


def test_collect_health_without_and_with_targets(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    result = cli("collect", "health")
    assert result.code == 0
    assert "no health targets" in result.out
    with ExpositionServer({"/health": Route(b"ok\n")}) as server:
        target = {
            "target_id": "api",
            "name": "API",
            "target_type": "http",
            "endpoint": "127.0.0.1",
            "port": server.port,
        }
        monkeypatch.setenv("METRICS_HEALTH_TARGETS", json.dumps([target]))
        table = cli("collect", "health")
        data = json.loads(cli("collect", "health", "--json").last_line)
    assert table.code == 0, table.err
    assert "1 up, 0 degraded, 0 down; 4 samples stored" in table.out
    assert data["results"][0]["state"] == "up"
    monkeypatch.setenv("METRICS_HEALTH_TARGETS", "[{]")
    broken = cli("collect", "health")
    assert broken.code == 1
    assert broken.error_lines[0].startswith("Error: METRICS_HEALTH_TARGETS: not valid JSON")


def test_help_lists_the_new_commands(cli: Cli) -> None:
    result = cli("--help")
    assert "collect" in result.out
    assert "keys-report" in result.out
    assert "Example:" in cli("collect", "vault", "--help").out
