"""PII protection: sensitive tag values become keyed pseudonyms before the WAL and the lake, on every ingest path."""

from __future__ import annotations

import hashlib
import hmac
import json
import stat
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cramjam
import polars as pl
import pytest
from fastapi.testclient import TestClient

from metrics.api.app import create_app
from metrics.api.audit import close_audit_logs
from metrics.api.keys import close_key_stores
from metrics.cli import main
from metrics.model import MetricDataPoint, prepare_points, series_id
from metrics.pii import PII_KEY_FILE, PREFIX, Pseudonymiser, load_secret, pseudonym, pseudonymise
from metrics.settings import Settings
from storage.store import MetricStore

SECRET = "pii-test-secret"
RAW = {"user": "alice.smith@example.com", "source_ip": "198.51.100.23", "caller": "arn:aws:iam::1234:user/bob"}
CONTROL = "control-host-visible-7"  # a tag value that is not PII: it must be found where the raw values are not


@pytest.fixture(autouse=True)
def _fresh_state() -> Iterator[None]:
    yield
    close_key_stores()
    close_audit_logs()


def settings_for(tmp_path: Path, **overrides: Any) -> Settings:
    # No compression: a raw value would be visible to a byte search of the files.
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "compression": "none",
        "flush_seconds": 0.1,
        "pii_secret": SECRET,
    }
    return Settings(**{**values, **overrides})


def expected(value: str, secret: str = SECRET) -> str:
    return PREFIX + hmac.new(secret.encode(), value.encode(), hashlib.sha256).hexdigest()[:16]


def stored_bytes(settings: Settings, folder: str) -> bytes:
    return b"".join(p.read_bytes() for p in (settings.data_dir / folder).rglob("*") if p.is_file())


# -- the function -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("tags", "keys", "result"),
    [
        ({"user": "alice"}, ("user",), {"user": expected("alice")}),
        ({"user": "alice", "host": "web-1"}, ("user",), {"user": expected("alice"), "host": "web-1"}),
        ({"host": "web-1"}, ("user",), {"host": "web-1"}),
        ({"user": expected("alice")}, ("user",), {"user": expected("alice")}),  # already a pseudonym: unchanged
        ({"user": ""}, ("user",), {"user": expected("")}),
        ({"User": "alice"}, ("user",), {"User": "alice"}),  # tag names match exactly
        ({"user": "alice"}, (), {"user": "alice"}),
    ],
)
def test_pseudonymise_tags(tags: dict[str, str], keys: tuple[str, ...], result: dict[str, str]) -> None:
    assert pseudonymise(tags, keys, SECRET.encode()) == result


def test_pseudonyms_are_keyed_stable_and_idempotent() -> None:
    first = pseudonym("alice", b"k1")
    assert first == pseudonym("alice", b"k1")
    assert first != pseudonym("alice", b"k2")
    assert first != pseudonym("alicf", b"k1")
    assert pseudonym(first, b"k2") == first
    assert len(first) == len(PREFIX) + 16


def test_a_frame_gets_new_tags_new_series_ids_and_lake_order(tmp_path: Path) -> None:
    moment = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    points = [
        MetricDataPoint("login.count", float(i), timestamp=moment + timedelta(seconds=i), tags={"user": user})
        for i, user in enumerate(["zed", "amy", "bob", "amy", "zed"])
    ] + [MetricDataPoint("login.count", 9.0, timestamp=moment, tags={"host": "h"})]
    prepared = prepare_points(points, now=datetime.now(UTC), retention_days=30)
    frame = Pseudonymiser(["user"], SECRET.encode()).batch(prepared).frame
    tags = [json.loads(t) for t in frame.get_column("tags").cast(pl.String).to_list()]
    assert {t.get("user") for t in tags} == {None, expected("zed"), expected("amy"), expected("bob")}
    ids = frame.get_column("series_id").to_list()
    assert ids == [series_id(m, t) for m, t in zip(frame["metric"].cast(pl.String), tags, strict=True)]
    assert frame.equals(frame.sort(pl.col("metric").cast(pl.String), "series_id", "ts"))
    assert frame.schema == prepared.frame.schema
    assert sorted(frame.get_column("value").to_list()) == sorted(prepared.frame.get_column("value").to_list())


def test_a_shuffled_frame_is_rewritten_to_the_same_result_the_slower_way() -> None:
    moment = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)
    points = [
        MetricDataPoint(f"m{i % 3}", float(i), timestamp=moment + timedelta(seconds=i), tags={"user": f"u{i % 7}"})
        for i in range(200)
    ] + [MetricDataPoint("m1", 1.0, timestamp=moment, tags={"host": "plain"})]
    prepared = prepare_points(points, now=datetime.now(UTC), retention_days=30).frame
    worker = Pseudonymiser(["user"], SECRET.encode())
    fast = worker.frame(prepared)
    shuffled = prepared.sample(fraction=1.0, shuffle=True, seed=3)
    assert worker.frame(shuffled).equals(fast)  # not grouped by series: the sorting rewrite
    assert fast.equals(fast.sort(pl.col("metric").cast(pl.String), "series_id", "ts"))


def test_a_frame_without_pii_is_returned_as_it_is() -> None:
    frame = pl.DataFrame({"metric": ["a"], "series_id": [1], "tags": ['{"host":"x","users":"n"}']})
    assert Pseudonymiser(["user"], b"k").frame(frame) is frame


@pytest.mark.parametrize(
    ("filters", "result"),
    [
        (None, None),
        ({"host": "a"}, {"host": "a"}),
        ({"user": "alice"}, {"user": expected("alice")}),
        ({"user": ["alice", "bob"], "host": "a"}, {"user": [expected("alice"), expected("bob")], "host": "a"}),
        ({"user": expected("alice")}, {"user": expected("alice")}),
    ],
)
def test_query_filters_are_pseudonymised_the_same_way(filters: Any, result: Any) -> None:
    assert Pseudonymiser(["user"], SECRET.encode()).filters(filters) == result


# -- the secret -------------------------------------------------------------------------------------------------
def test_without_a_configured_secret_one_is_generated_once_and_kept_private(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, pii_secret=None)
    first = load_secret(settings)
    path = settings.state_dir / PII_KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_secret(settings) == first
    assert len(first) >= 32
    assert [p.name for p in path.parent.iterdir()] == [PII_KEY_FILE]  # no temporary left behind


def test_the_key_file_is_made_only_when_a_pii_tag_arrives(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, pii_secret=None)
    with MetricStore(settings) as store:
        store.ingest_points([MetricDataPoint("a.b", 1.0, tags={"host": "h"})])
        assert not (settings.state_dir / PII_KEY_FILE).exists()
        store.ingest_points([MetricDataPoint("a.b", 1.0, tags={"user": "u"})])
    assert (settings.state_dir / PII_KEY_FILE).exists()


# -- every ingest path ------------------------------------------------------------------------------------------
def _points() -> list[MetricDataPoint]:
    moment = datetime.now(UTC) - timedelta(minutes=2)
    return [MetricDataPoint("auth.logins", 1.0, timestamp=moment, tags={**RAW, "host": CONTROL})]


def via_python_api(settings: Settings, tmp_path: Path) -> None:
    with MetricStore(settings).open(background_flush=False) as store:
        store.ingest_points(_points())
        _check_wal(settings)


def via_frame(settings: Settings, tmp_path: Path) -> None:
    frame = pl.DataFrame(
        {"ts": [datetime.now(UTC) - timedelta(minutes=2)], "metric": ["auth.logins"], "value": [1.0]}
        | {k: [v] for k, v in {**RAW, "host": CONTROL}.items()}
    )
    with MetricStore(settings).open(background_flush=False) as store:
        store.ingest_frame(frame)
        _check_wal(settings)


def via_cli_ingest(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "logins.csv"
    stamp = (datetime.now(UTC) - timedelta(minutes=2)).isoformat()
    header = ["metric", "timestamp", "value", *RAW, "host"]
    path.write_text(",".join(header) + "\n" + ",".join(["auth.logins", stamp, "1", *RAW.values(), CONTROL]) + "\n")
    assert main(["--data-dir", str(settings.data_dir), "ingest", str(path)]) == 0


def via_http_json(settings: Settings, tmp_path: Path) -> None:
    body = {"metrics": [point.to_dict() for point in _points()]}
    with TestClient(create_app(settings)) as client:
        assert client.post("/api/v1/metrics", json=body).json()["stored"] == 1
        _check_wal(settings)


def via_remote_write(settings: Settings, tmp_path: Path) -> None:
    from metrics.api import remote_pb2 as pb

    labels = [pb.Label(name="__name__", value="auth_logins")]
    labels += [pb.Label(name=k, value=v) for k, v in sorted({**RAW, "host": CONTROL}.items())]
    stamp = int((datetime.now(UTC) - timedelta(minutes=2)).timestamp() * 1000)
    message = pb.WriteRequest(
        timeseries=[pb.TimeSeries(labels=labels, samples=[pb.Sample(value=1.0, timestamp=stamp)])]
    )
    headers = {
        "content-type": "application/x-protobuf",
        "content-encoding": "snappy",
        "x-prometheus-remote-write-version": "0.1.0",
    }
    body = bytes(cramjam.snappy.compress_raw(message.SerializeToString()))
    with TestClient(create_app(settings)) as client:
        response = client.post("/api/v1/write", content=body, headers=headers)
        assert response.status_code == 200, response.text
        assert response.json()["stored"] == 1
        _check_wal(settings)


def _check_wal(settings: Settings) -> None:
    """While the rows are still only in the write-ahead log, it holds pseudonyms."""
    wal = stored_bytes(settings, "wal")
    assert CONTROL.encode() in wal  # the search works on these files
    for value in RAW.values():
        assert value.encode() not in wal


PATHS: dict[str, Callable[[Settings, Path], None]] = {
    "python api": via_python_api,
    "bulk frame": via_frame,
    "cli ingest": via_cli_ingest,
    "http json": via_http_json,
    "remote write": via_remote_write,
}


@pytest.mark.parametrize("path", list(PATHS))
def test_raw_values_never_reach_the_wal_or_the_lake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    monkeypatch.setenv("METRICS_PII_SECRET", SECRET)  # the command line reads its settings from the environment
    monkeypatch.setenv("METRICS_COMPRESSION", "none")
    # Flushed only at close: the rows stay in the write-ahead log long enough to search it.
    settings = settings_for(tmp_path, insecure_dev=True, flush_seconds=3600, intelligent_batching=False)
    PATHS[path](settings, tmp_path)
    lake = stored_bytes(settings, "lake")
    assert CONTROL.encode() in lake
    for value in RAW.values():
        assert value.encode() not in lake
        assert expected(value).encode() in lake
    with MetricStore(settings, read_only=True) as store:
        found = store.query_metrics("auth*", tags={"user": RAW["user"]})  # the raw value still finds the series
    assert found.height == 1
    assert json.loads(found.get_column("tags")[0])["user"] == expected(RAW["user"])
    everything = stored_bytes(settings, "")
    for value in RAW.values():
        assert value.encode() not in everything


def test_a_value_already_pseudonymised_is_stored_as_it_is(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    already = expected("carol", "another-deployments-secret")
    with MetricStore(settings) as store:
        store.ingest_points([MetricDataPoint("auth.logins", 1.0, tags={"user": already})])
        found = store.query_metrics("auth*", start=datetime.now(UTC) - timedelta(hours=1))
    assert json.loads(found.get_column("tags")[0]) == {"user": already}
