"""Collecting key events end to end: every event counted exactly once across reruns, re-deliveries and crashes."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from metrics.auditgen import cloudtrail_records, vault_entries, write_cloudtrail, write_vault
from metrics.settings import Settings
from storage.store import MetricStore
from tasks.collect.keys import collect_key_events, key_source
from tasks.keys.ledger import KeyLedger
from tasks.keys.report import keys_report

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "keylogs"
PROJECT = Path(__file__).resolve().parents[3]
NOW = datetime.now(UTC)


@pytest.fixture
def key_settings(settings: Settings) -> Settings:
    from dataclasses import replace

    return replace(settings, security_interval=60.0)


def cloudtrail_logs(folder: Path, *, events: int = 400, minutes: int = 40, seed: int = 3) -> list[Path]:
    records = cloudtrail_records(NOW - timedelta(minutes=minutes), NOW - timedelta(minutes=1), events=events, seed=seed)
    return write_cloudtrail(folder, records)


def lake_totals(settings: Settings, pattern: str = "crypto.key.%") -> dict[str, float]:
    """Per counter metric, the sum over series of each series' last (cumulative) value."""
    store = MetricStore(settings, read_only=True)
    try:
        frame = store.sql(
            "SELECT metric, sum(last) AS total FROM (SELECT metric, series_id, arg_max(value, ts) AS last "
            "FROM samples WHERE metric LIKE ? AND type = 'counter' GROUP BY ALL) GROUP BY metric",
            [pattern],
        )
        duplicates = store.sql("SELECT count(*) - count(DISTINCT (series_id, ts)) AS d FROM samples").item()
    finally:
        store.close()
    assert duplicates == 0, "a (series, ts) was written twice"
    return dict(frame.iter_rows())


def test_a_log_set_is_counted_once_across_reruns_and_redeliveries(key_settings: Settings, tmp_path: Path) -> None:
    logs = tmp_path / "cloudtrail"
    files = cloudtrail_logs(logs)
    first = collect_key_events(key_settings, "cloudtrail", [logs])
    assert first.problems == 0
    assert first.events == first.records > 400  # usage plus the estate's lifecycle events
    assert first.samples > 0
    assert first.rejected == 0
    totals = lake_totals(key_settings)
    # The legacy key's creation, 400 days old, is in the inventory but older than the retention period:
    # it counts nowhere else.
    assert totals["crypto.key.access_count"] == first.events - 1
    again = collect_key_events(key_settings, "cloudtrail", [logs])
    assert (again.events, again.duplicates, again.records) == (0, 0, 0)  # nothing new was read at all
    copies = logs / "redelivered"
    copies.mkdir()
    for path in files[:5]:
        shutil.copyfile(path, copies / ("again-" + path.name))
    redelivered = collect_key_events(key_settings, "cloudtrail", [logs])
    assert redelivered.events == 0
    assert redelivered.duplicates == sum(len(json.loads(gzip.decompress(p.read_bytes()))["Records"]) for p in files[:5])
    assert lake_totals(key_settings) == totals


def test_new_files_and_appended_lines_add_only_their_events(key_settings: Settings, tmp_path: Path) -> None:
    audit = tmp_path / "vault" / "audit.log"
    write_vault(audit, vault_entries(NOW - timedelta(minutes=50), NOW - timedelta(minutes=30), requests=100))
    first = collect_key_events(key_settings, "vault", [audit.parent])
    write_vault(
        audit,
        vault_entries(NOW - timedelta(minutes=29), NOW - timedelta(minutes=1), requests=50, seed=99, lifecycle=False),
    )
    second = collect_key_events(key_settings, "vault", [audit.parent])
    assert second.events == 50
    assert lake_totals(key_settings)["crypto.key.access_count"] == first.events + second.events


def kill_during_delivery(settings: Settings, logs: Path, point: str) -> None:
    """Run a collection in a child process that SIGKILLs itself at ``point`` of the first lake write."""
    script = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from metrics.settings import Settings
        from storage.store import MetricStore
        from tasks.collect.keys import collect_key_events
        original = MetricStore.ingest_frame
        def die(self, *args, **kwargs):
            if {point!r} == "after-ack":
                original(self, *args, **kwargs)  # acknowledged: in the WAL, not yet in Parquet
            os.kill(os.getpid(), signal.SIGKILL)
        MetricStore.ingest_frame = die
        collect_key_events(Settings(data_dir=Path({str(settings.data_dir)!r}), security_interval=60.0),
                           "cloudtrail", [Path({str(logs)!r})])
        """
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=PROJECT, capture_output=True, timeout=120, check=False)
    assert done.returncode == -9, done.stderr.decode()


@pytest.mark.integration
@pytest.mark.parametrize("point", ["before-write", "after-ack"])
def test_a_run_killed_while_writing_loses_and_duplicates_nothing(
    key_settings: Settings, tmp_path: Path, point: str
) -> None:
    logs = tmp_path / "cloudtrail"
    cloudtrail_logs(logs, events=300)
    reference = Settings(data_dir=tmp_path / "reference", security_interval=60.0)
    collect_key_events(reference, "cloudtrail", [logs])
    kill_during_delivery(key_settings, logs, point)
    assert KeyLedger(key_settings.state_dir).pending(), "the killed run left its batch in the outbox"
    recovered = collect_key_events(key_settings, "cloudtrail", [logs])
    assert recovered.events == 0  # the killed run had committed them: they are not read again
    assert (recovered.recovered > 0) is (point == "before-write")
    assert KeyLedger(key_settings.state_dir).pending() == []
    assert lake_totals(key_settings) == lake_totals(reference)


def test_malformed_files_are_reported_and_the_rest_processed(key_settings: Settings, tmp_path: Path) -> None:
    logs = tmp_path / "cloudtrail"
    cloudtrail_logs(logs, events=50)
    (logs / "broken.json.gz").write_bytes(gzip.compress(b'{"Records": [')[:-4])
    (logs / "lines.jsonl").write_text('{"eventSource": "kms.amazonaws.com"}\nnot json\n')
    summary = collect_key_events(key_settings, "cloudtrail", [logs])
    assert summary.events > 50
    assert summary.problems == 3
    assert f"{logs / 'broken.json.gz'}: truncated gzip file" in summary.problem_list
    assert f"{logs / 'lines.jsonl'}:1: eventName: missing" in summary.problem_list
    assert any(p.startswith(f"{logs / 'lines.jsonl'}:2: invalid JSON") for p in summary.problem_list)


def test_events_in_the_future_are_reported_not_counted(key_settings: Settings, tmp_path: Path) -> None:
    item = json.loads((FIXTURES / "cloudtrail" / "Decrypt.json").read_text())
    item["eventTime"] = (NOW + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    (tmp_path / "future.json").write_text(json.dumps({"Records": [item]}))
    summary = collect_key_events(key_settings, "cloudtrail", [tmp_path])
    assert summary.events == 0
    assert summary.problem_list == [f"{tmp_path / 'future.json'}: event {item['eventID']} is in the future: skipped"]


def documented_log(folder: Path) -> Path:
    """The documented CloudTrail examples as one delivered log file (their own 2021–2024 times)."""
    records = [json.loads(path.read_text()) for path in sorted((FIXTURES / "cloudtrail").glob("*.json"))]
    path = folder / "AWSLogs" / "111122223333_CloudTrail_us-east-1_20240101T0000Z_docs.json.gz"
    path.parent.mkdir(parents=True)
    path.write_bytes(gzip.compress(json.dumps({"Records": records}).encode()))
    return path


def test_the_documented_estate_in_the_inventory_and_report(key_settings: Settings, tmp_path: Path) -> None:
    documented_log(tmp_path)
    summary = collect_key_events(key_settings, "cloudtrail", [tmp_path])
    assert summary.events == 26  # 25 records, ReEncrypt counting twice
    assert summary.samples > 0  # gauges of today; the events themselves are older than the retention period
    report = keys_report(key_settings)
    keys = {key["key_id"]: key for key in report.keys}
    assert keys["0987dcba-09fe-87dc-65ba-ab0987654321"]["state"] == "deleted"
    assert keys["c0ffee00-1a2b-4c3d-8e4f-0123456789ab"]["state"] == "pending_import"
    assert keys["1234abcd-12ab-34cd-56ef-1234567890ab"]["last_rotated_at"] == "2024-10-29T17:21:03Z"
    assert keys["1234abcd-12ab-34cd-56ef-1234567890ab"]["rotation_enabled"] is True
    policies = {v["policy"] for v in report.violations}
    assert policies == {"rotation_overdue"}  # the calls are older than the retention period: history only
    assert report.summary["rotation_overdue"]  # rotations in 2024 are more than 365 days ago now
    assert "0987dcba-09fe-87dc-65ba-ab0987654321" not in report.summary["rotation_overdue"]  # deleted keys are exempt


def test_a_recent_use_of_a_disabled_key_is_a_violation(key_settings: Settings, tmp_path: Path) -> None:
    records = []
    for offset, name in ((30, "DisableKey"), (20, "Encrypt-DisabledException")):
        item = json.loads((FIXTURES / "cloudtrail" / f"{name}.json").read_text())
        item["eventTime"] = (NOW - timedelta(minutes=offset)).strftime("%Y-%m-%dT%H:%M:%SZ")
        records.append(item)
    (tmp_path / "recent.json").write_text(json.dumps({"Records": records}))
    summary = collect_key_events(key_settings, "cloudtrail", [tmp_path])
    assert summary.violations == 1
    (violation,) = keys_report(key_settings).violations
    assert (violation["policy"], violation["kind"], violation["count"]) == ("disabled_key_use", "event", 1)
    assert lake_totals(key_settings)["crypto.key.policy_violations"] == 1


def test_principals_and_addresses_never_reach_the_lake_or_the_state_in_the_clear(
    key_settings: Settings, tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    item = json.loads((FIXTURES / "cloudtrail" / "Decrypt-AccessDenied.json").read_text())
    item["eventTime"] = (NOW - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    logs.mkdir()
    (logs / "denied.json").write_text(json.dumps({"Records": [item]}))
    collect_key_events(key_settings, "cloudtrail", [logs])
    principal = item["userIdentity"]["arn"].encode()
    address = item["sourceIPAddress"].encode()
    for path in key_settings.data_dir.rglob("*"):
        if path.is_file() and path.suffix != ".parquet":
            data = path.read_bytes()
            assert principal not in data, path
            assert address not in data, path
    store = MetricStore(key_settings, read_only=True)
    try:
        tags = store.sql("SELECT DISTINCT tags FROM samples WHERE metric = 'crypto.key.unauthorized_access'").item()
        found = store.query_metrics(
            "crypto.key.unauthorized_access", NOW - timedelta(hours=1), NOW, {"principal": item["userIdentity"]["arn"]}
        )
    finally:
        store.close()
    assert '"principal":"hmac-sha256:' in tags
    assert found.height > 0  # filtering by the raw principal still finds its series


def test_an_unknown_source_is_refused(key_settings: Settings) -> None:
    from metrics.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown key-event source 'syslog'; known: cloudtrail, vault"):
        key_source(key_settings, "syslog")


def test_configured_paths_are_the_default(key_settings: Settings, tmp_path: Path) -> None:
    from dataclasses import replace

    cloudtrail_logs(tmp_path / "ct", events=20)
    configured = replace(key_settings, cloudtrail_paths=(str(tmp_path / "ct"),))
    assert collect_key_events(configured, "cloudtrail").events > 20


def test_events_held_for_a_bucket_not_begun_are_written_by_a_later_run(
    key_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dataclasses import replace

    import tasks.collect.keys as collector

    five_minutes = replace(key_settings, security_interval=300.0)
    template = json.loads((FIXTURES / "cloudtrail" / "Decrypt.json").read_text())
    start = int(datetime.now(UTC).timestamp()) // 300 * 300 - 300  # the previous bucket: all of it has passed
    clock = {"now": (start + 10) * 1_000_000_000}  # the runs' clock: 10 s into that bucket, then the next one
    monkeypatch.setattr(collector.time, "time_ns", lambda: clock["now"])

    def drop(name: str, seconds: int) -> None:
        item = {**template, "eventID": f"{name}-{seconds}"}
        item["eventTime"] = datetime.fromtimestamp(start + seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        (tmp_path / f"{name}.json").write_text(json.dumps({"Records": [item]}))

    drop("first", 1)
    collect_key_events(five_minutes, "cloudtrail", [tmp_path])  # writes the current bucket
    drop("late", 0)  # a second event of that bucket, delivered after it was written
    clock["now"] += 10_000_000_000
    collect_key_events(five_minutes, "cloudtrail", [tmp_path])  # held: the next bucket has not begun
    assert lake_totals(five_minutes)["crypto.key.decryption_ops"] == 1
    clock["now"] = (start + 310) * 1_000_000_000
    summary = collect_key_events(five_minutes, "cloudtrail", [tmp_path])  # no new event: the held one is due
    assert summary.events == 0
    assert lake_totals(five_minutes)["crypto.key.decryption_ops"] == 2


def test_collecting_another_folder_keeps_the_positions_of_this_one(key_settings: Settings, tmp_path: Path) -> None:
    cloudtrail_logs(tmp_path / "scheduled", events=30)
    (tmp_path / "by-hand").mkdir()
    first = collect_key_events(key_settings, "cloudtrail", [tmp_path / "scheduled"])
    collect_key_events(key_settings, "cloudtrail", [tmp_path / "by-hand"])
    collect_key_events(key_settings, "cloudtrail", [tmp_path / "missing-mount"])
    again = collect_key_events(key_settings, "cloudtrail", [tmp_path / "scheduled"])
    assert first.records > 0
    assert (again.records, again.duplicates) == (0, 0)  # nothing was read again


def test_chunks_give_the_same_counts_as_one_batch(
    key_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tasks.collect.keys as collector

    cloudtrail_logs(tmp_path / "ct", events=200, minutes=20)
    whole = Settings(data_dir=tmp_path / "whole", security_interval=60.0)
    collect_key_events(whole, "cloudtrail", [tmp_path / "ct"])
    monkeypatch.setattr(collector, "CHUNK_EVENTS", 7)
    chunked = collect_key_events(key_settings, "cloudtrail", [tmp_path / "ct"])
    assert chunked.events > 200
    assert lake_totals(key_settings) == lake_totals(whole)


def test_a_new_caller_of_an_established_key_and_a_use_after_months_are_key_access_anomalies(
    key_settings: Settings, tmp_path: Path
) -> None:
    from storage.anomalies import read_anomalies

    template = json.loads((FIXTURES / "cloudtrail" / "Decrypt.json").read_text())

    def call(name: str, when: datetime, caller: str) -> dict[str, object]:
        item = json.loads(json.dumps(template))
        item["eventID"] = name
        item["eventTime"] = when.strftime("%Y-%m-%dT%H:%M:%SZ")
        item["userIdentity"]["arn"] = caller
        return item

    alice, mallory = "arn:aws:iam::111122223333:user/Alice", "arn:aws:iam::111122223333:user/Mallory"
    old = [call(f"old-{i}", NOW - timedelta(days=80 - i), alice) for i in range(3)]  # the key's usual caller
    (tmp_path / "history.json").write_text(json.dumps({"Records": old}))
    collect_key_events(key_settings, "cloudtrail", [tmp_path])
    fresh = [call("back", NOW - timedelta(hours=2), alice), call("new", NOW - timedelta(hours=1), mallory)]
    (tmp_path / "today.json").write_text(json.dumps({"Records": fresh}))
    summary = collect_key_events(key_settings, "cloudtrail", [tmp_path])
    assert summary.access_anomalies == 2
    store = MetricStore(key_settings, read_only=True)
    try:
        found = read_anomalies(store, "crypto.key.access_count", NOW - timedelta(days=1), NOW, 0.5)
    finally:
        store.close()
    reasons = sorted(json.loads(tags)["novel"] for tags in found["tags"])
    assert reasons == ["principal", "use after 77 days"]
    assert set(found["detector"]) == {"key_novelty"}
    assert mallory not in "".join(found["tags"])  # the new principal is shown pseudonymised
