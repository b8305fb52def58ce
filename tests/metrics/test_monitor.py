"""The spec's monitoring API: ``await health_monitor.add_target(target)``, key collection and the keys report."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

import metrics
from metrics import get_metrics_system
from metrics.api.audit import close_audit_logs, read_audit
from metrics.errors import ValidationError
from metrics.monitor import HealthMonitor, MonitoringTarget
from metrics.settings import Settings
from tests.exposition import ExpositionServer, Route

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "keylogs"


def test_add_check_and_remove_a_target(settings: Settings) -> None:
    async def scenario(port: int) -> tuple[list[str], list[str], list[str]]:
        health_monitor = HealthMonitor(settings)
        await health_monitor.add_target(
            MonitoringTarget(
                target_id="api",
                name="API",
                target_type="http",
                endpoint="127.0.0.1",
                port=port,
                health_endpoint="/health",
                expected_status_code=200,
                expected_response_time_ms=1000,
            )
        )
        registered = [target.target_id for target in await health_monitor.targets()]
        summary = await health_monitor.check()
        assert await health_monitor.remove_target("api") is True
        assert await health_monitor.remove_target("api") is False
        return (
            registered,
            [result.state for result in summary.results],
            [t.target_id for t in await health_monitor.targets()],
        )

    with ExpositionServer({"/health": Route(b"ok\n")}) as server:
        registered, states, after = asyncio.run(scenario(server.port))
    assert (registered, states, after) == (["api"], ["up"], [])
    close_audit_logs()
    actions = [(entry["action"], entry["outcome"]) for entry in read_audit(settings.state_dir / "audit.log")]
    assert actions == [
        ("health_targets.add", "ok"),
        ("health_targets.remove", "ok"),
        ("health_targets.remove", "not_found"),
    ]


def test_a_target_added_in_one_process_is_checked_by_another(settings: Settings) -> None:
    with ExpositionServer({"/health": Route(b"ok\n")}) as server:
        target = MonitoringTarget("api", "API", "http", "127.0.0.1", server.port)
        asyncio.run(HealthMonitor(settings).add_target(target))
        code = (
            "import json, sys; from pathlib import Path; from metrics.settings import Settings; "
            "from tasks.collect.health import run_health_checks; "
            f"s = run_health_checks(Settings(data_dir=Path({str(settings.data_dir)!r}))); "
            "print(json.dumps(s.counts))"
        )
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(done.stdout) == {"up": 1, "degraded": 0, "down": 0}


def test_the_metrics_system_collects_key_events_and_reports_the_estate(tmp_path: Path) -> None:
    async def scenario() -> tuple[int, int, dict[str, object]]:
        async with get_metrics_system("lake", data_dir=tmp_path / "data") as system:
            first = await system.collect_key_events("vault", [FIXTURES / "vault" / "audit.log"])
            again = await system.collect_key_events("vault", [FIXTURES / "vault" / "audit.log"])
            report = await system.keys_report()
            assert isinstance(system.health_monitor, HealthMonitor)
            assert system.health_monitor is system.health_monitor
        return first.events, again.events, report

    first, again, report = asyncio.run(scenario())
    assert (first, again) == (14, 0)
    keys = {key["key_ref"]: key for key in report["keys"]}  # type: ignore[attr-defined]
    assert keys["vault:transit/orders"]["state"] == "deleted"
    assert keys["vault:crypto/payments"]["location"] == "crypto"


def test_the_public_names_resolve() -> None:
    assert metrics.MonitoringTarget is MonitoringTarget
    assert metrics.HealthMonitor is HealthMonitor


def test_bad_targets_fail_at_construction() -> None:
    with pytest.raises(ValidationError, match="port"):
        MonitoringTarget("x", "x", "http", "h", 70_000)
