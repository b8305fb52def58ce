"""``/metrics`` (Prometheus exposition) and the ``application.api.*`` self-metrics of the real app."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from remote_write_requests import HEADERS, STALE_NAN, body

from metrics.api import create_app
from metrics.api.keys import close_key_stores, create_key
from metrics.api.selfmetrics import SelfMetrics
from metrics.api.telemetry import OTHER_REASON, REASON_CATEGORIES, UNMATCHED, reason_category
from metrics.errors import ConfigError, StorageError
from metrics.settings import Settings
from storage.store import MetricStore
from tests.storage.test_cache import days_of_samples

FAMILIES = {
    "metrics_http_requests",
    "metrics_http_request_duration_seconds",
    "metrics_query_duration_seconds",
    "metrics_ingested_samples",
    "metrics_rejected_samples",
    "metrics_remote_write_stale_markers",
    "metrics_wal_bytes",
    "metrics_writer_buffered_rows",
    "metrics_writer_last_flush_seconds",
    "metrics_writer_flush_seconds",
    "metrics_writer_rows_written",
    "metrics_writer_bytes_written",
    "metrics_writer_files_written",
    "metrics_query_cache_hits",
    "metrics_query_cache_misses",
    "metrics_query_cache_bytes",
    "process_cpu_seconds",
}


@pytest.fixture(autouse=True)
def _close_keys() -> Iterator[None]:
    yield
    close_key_stores()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", insecure_dev=True, flush_seconds=3600)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


def scrape(
    client: TestClient, headers: dict[str, str] | None = None
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics`` by (sample name, sorted labels)."""
    response = client.get("/metrics", headers=headers or {})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def point(i: int, **overrides: Any) -> dict[str, Any]:
    moment = datetime.now(UTC) - timedelta(seconds=30 - i)
    return {"metric_id": "api.test", "value": float(i), "timestamp": moment.isoformat(), **overrides}


def test_the_families_exist(client: TestClient) -> None:
    response = client.get("/metrics")
    names = {family.name for family in text_string_to_metric_families(response.text)}
    assert names >= FAMILIES


def test_the_figures_follow_the_requests(client: TestClient) -> None:
    before = scrape(client)
    batch = [point(0), point(1), point(2, value="high"), point(3, timestamp="2001-01-01T00:00:00Z")]
    assert client.post("/api/v1/metrics", json={"metrics": batch}).json()["stored"] == 2
    now_ms = int(time.time() * 1000) - 1000
    remote = [({"__name__": "up", "job": "x"}, [(1.0, now_ms), (STALE_NAN, now_ms + 1)])]
    assert client.post("/api/v1/write", content=body(remote), headers=HEADERS).json()["stored"] == 1
    assert client.get("/api/v1/query", params={"metric_pattern": "api.*", "start_time": "1h"}).status_code == 200
    assert client.get("/no/such/page/123").status_code == 404
    after = scrape(client)

    def grew(name: str, by: float, **labels: str) -> None:
        assert value(after, name, **labels) - value(before, name, **labels) == by, (name, labels)

    grew("metrics_http_requests_total", 1, route="/api/v1/metrics", method="POST", status="200")
    grew("metrics_http_requests_total", 1, route="/api/v1/write", method="POST", status="200")
    grew("metrics_http_requests_total", 1, route="/api/v1/query", method="GET", status="200")
    grew("metrics_http_requests_total", 1, route=UNMATCHED, method="GET", status="404")  # never the raw path
    grew("metrics_http_requests_total", 1, route="/metrics", method="GET", status="200")  # the first scrape
    assert not any("/no/such" in str(labels) for _, labels in after)
    grew("metrics_http_request_duration_seconds_count", 1, route="/api/v1/write", method="POST")
    grew("metrics_query_duration_seconds_count", 1, method="GET")
    grew("metrics_ingested_samples_total", 2, route="/api/v1/metrics")
    grew("metrics_ingested_samples_total", 1, route="/api/v1/write")
    grew("metrics_rejected_samples_total", 1, route="/api/v1/metrics", reason="value")
    grew("metrics_rejected_samples_total", 1, route="/api/v1/metrics", reason="timestamp_too_old")
    grew("metrics_remote_write_stale_markers_total", 1)
    # the query flushed the buffer: a flush was observed, with its rows and bytes
    assert value(after, "metrics_writer_flush_seconds_count") >= 1
    assert value(after, "metrics_writer_rows_written_total") >= 3
    assert value(after, "metrics_writer_bytes_written_total") > 0
    assert value(after, "metrics_writer_last_flush_seconds") > 0


def test_wal_size_and_buffered_rows_until_a_flush(client: TestClient) -> None:
    assert client.post("/api/v1/metrics", json={"metrics": [point(1), point(2)]}).status_code == 200
    buffered = scrape(client)
    assert value(buffered, "metrics_wal_bytes") > 0
    assert value(buffered, "metrics_writer_buffered_rows") == 2
    client.app.state.store.flush()  # type: ignore[attr-defined]
    flushed = scrape(client)
    assert value(flushed, "metrics_writer_buffered_rows") == 0
    assert (
        value(flushed, "metrics_writer_flush_seconds_count")
        == value(buffered, "metrics_writer_flush_seconds_count") + 1
    )


def test_the_query_cache_series_follow_the_cache(client: TestClient) -> None:
    store: MetricStore = client.app.state.store  # type: ignore[attr-defined]
    end = (datetime.now(UTC) - timedelta(days=1)).replace(hour=12, minute=0, second=0, microsecond=0)
    store.ingest_frame(days_of_samples(end))
    store.flush()
    store.compact(validate=False)
    for _ in range(3):  # a 30-day chart, refreshed twice
        assert store.query_aggregated("cpu.usage", "avg", "3h", end - timedelta(days=30), end).height > 0
    samples = scrape(client)
    assert value(samples, "metrics_query_cache_misses_total") == 1
    assert value(samples, "metrics_query_cache_hits_total") == 2
    assert value(samples, "metrics_query_cache_bytes") > 0
    assert value(scrape(client), "metrics_query_cache_hits_total") == 2  # a scrape adds only what is new


def test_openmetrics_when_the_scraper_asks(client: TestClient) -> None:
    response = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")


def test_metrics_need_the_reader_role(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    _, reader = create_key(settings, "prometheus-scrape", "reader")
    _, writer = create_key(settings, "prometheus-write", "writer")
    with TestClient(create_app(settings)) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": f"Bearer {writer}"}).status_code == 403
        assert (
            "metrics_http_requests_total" in client.get("/metrics", headers={"Authorization": f"Bearer {reader}"}).text
        )


def test_each_apps_registry_is_its_own(tmp_path: Path) -> None:
    first = Settings(data_dir=tmp_path / "one", insecure_dev=True)
    second = Settings(data_dir=tmp_path / "two", insecure_dev=True)
    with TestClient(create_app(first)) as one, TestClient(create_app(second)) as two:
        for _ in range(3):
            one.get("/health")
        assert value(scrape(one), "metrics_http_requests_total", route="/health", method="GET", status="200") == 3
        assert value(scrape(two), "metrics_http_requests_total", route="/health", method="GET", status="200") == 0


@pytest.mark.parametrize(
    ("reason", "category"),
    [
        ("metric: missing", "metric_name"),
        ("tags: 40 tags, at most 32 allowed", "tags"),
        ("labels: 'job' appears more than once", "tags"),
        ("type: unknown metric type 'x'; allowed: counter", "type"),
        ("value: NaN is only allowed for summary metrics", "value_nan"),
        ("value: infinite values are not allowed", "value_infinite"),
        ("value: expected a number, got 'high'", "value"),
        ("timestamp: more than 600 s in the future", "timestamp_future"),
        ("timestamp: older than the retention period (90 days)", "timestamp_too_old"),
        ("timestamp: missing or unparseable", "timestamp"),
        ("something new", OTHER_REASON),
    ],
)
def test_rejection_reasons_fall_into_few_categories(reason: str, category: str) -> None:
    assert reason_category(reason) == category
    assert len({c for _, c in REASON_CATEGORIES} | {OTHER_REASON}) <= 12


# -- self-metrics in the lake ---------------------------------------------------------------------------------------
def self_metric_rows(store: MetricStore) -> pl.DataFrame:
    frame = store.query_metrics("application.api.*")
    tags = pl.Struct({"route": pl.String, "method": pl.String, "host": pl.String})
    return frame.with_columns(pl.col("metric").cast(pl.String), pl.col("tags").str.json_decode(tags).alias("tag"))


def test_self_metrics_land_in_the_lake_after_the_interval(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", insecure_dev=True, self_metrics_interval=0.2)
    with TestClient(create_app(settings)) as client:
        for _ in range(5):
            assert client.get("/health").status_code == 200
        assert client.get("/nowhere").status_code == 404
        store: MetricStore = client.app.state.store  # type: ignore[attr-defined]
        deadline = time.monotonic() + 15
        rows = self_metric_rows(store)
        while rows.filter(pl.col("metric") == "application.api.response_time").height < 2:
            assert time.monotonic() < deadline, "no self-metrics after 15 s"
            time.sleep(0.1)
            rows = self_metric_rows(store)
    routes = set(rows.get_column("tag").struct.field("route").to_list())
    assert {"/health", UNMATCHED} <= routes
    assert set(rows.get_column("tag").struct.field("host").to_list()) == {SelfMetrics(1).host}
    first = rows.filter(pl.col("tag").struct.field("route") == UNMATCHED).sort("ts")
    by_metric = {row["metric"]: row["value"] for row in first.iter_rows(named=True)}
    assert by_metric["application.api.client_error_rate"] == 1.0
    assert by_metric["application.api.error_rate"] == 0.0
    assert by_metric["application.api.request_rate"] > 0
    assert by_metric["application.api.response_time"] > 0


def test_the_last_interval_is_stored_at_shutdown(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", insecure_dev=True, self_metrics_interval=3600)
    with TestClient(create_app(settings)) as client:
        for _ in range(7):
            client.get("/health")
    store = MetricStore(settings, read_only=True).open()
    try:
        rows = self_metric_rows(store).filter(pl.col("tag").struct.field("route") == "/health")
    finally:
        store.close()
    assert set(rows.get_column("metric").to_list()) == {
        "application.api.response_time",
        "application.api.request_rate",
        "application.api.error_rate",
        "application.api.client_error_rate",
    }


def test_the_accumulator_writes_per_interval_not_per_request(store: MetricStore) -> None:
    clock = [100.0]
    self_metrics = SelfMetrics(10, host="h1", clock=lambda: clock[0])
    for i in range(1000):
        self_metrics.record("/api/v1/query", "GET", 500 if i % 10 == 0 else 200, 0.002)
    self_metrics.record("/health", "GET", 200, 0.001)
    clock[0] += 10
    rows_before = store.writer.stats.rows_written + store.writer.buffered_rows
    assert self_metrics.flush(store) == 10  # 2 routes x 4 figures, the auth-failure and ingest counters, one write
    assert store.writer.stats.rows_written + store.writer.buffered_rows == rows_before + 10
    frame = self_metric_rows(store).filter(pl.col("tag").struct.field("route") == "/api/v1/query")
    figures = {row["metric"]: row["value"] for row in frame.iter_rows(named=True)}
    assert figures["application.api.request_rate"] == pytest.approx(100.0)
    assert figures["application.api.error_rate"] == pytest.approx(0.1)
    assert figures["application.api.client_error_rate"] == 0.0
    assert figures["application.api.response_time"] == pytest.approx(0.002)
    clock[0] += 10
    idle = self_metrics.collect()  # a quiet interval: known routes report a zero rate, nothing else
    assert {(p["metric_id"], p["value"]) for p in idle} == {
        ("application.api.request_rate", 0.0),
        ("application.api.auth_failures", 0.0),
        ("application.ingest.samples", 0.0),
    }
    assert len(idle) == 4


def test_refused_credentials_count_in_a_cumulative_counter() -> None:
    self_metrics = SelfMetrics(10, host="h1")
    for status in (401, 401, 403, 200, 401):
        self_metrics.record("/api/v1/query", "GET", status, 0.001)
    first = {p["metric_id"]: p for p in self_metrics.collect()}["application.api.auth_failures"]
    assert (first["value"], first["metric_type"], first["tags"]["host"]) == (3.0, "counter", "h1")
    self_metrics.record("/api/v1/query", "GET", 401, 0.001)
    second = {p["metric_id"]: p for p in self_metrics.collect()}["application.api.auth_failures"]
    assert second["value"] == 4.0  # cumulative, so increase() over a window counts the refusals


def test_accepted_samples_count_in_a_cumulative_counter() -> None:
    self_metrics = SelfMetrics(10, host="h1")
    self_metrics.record("/api/v1/metrics", "POST", 200, 0.001, ingested=500)
    self_metrics.record("/api/v1/metrics", "POST", 422, 0.001, ingested=0)
    first = {p["metric_id"]: p for p in self_metrics.collect()}["application.ingest.samples"]
    assert (first["value"], first["metric_type"], first["tags"]["host"]) == (500.0, "counter", "h1")
    self_metrics.record("/api/v1/write", "POST", 204, 0.001, ingested=25)
    second = {p["metric_id"]: p for p in self_metrics.collect()}["application.ingest.samples"]
    assert second["value"] == 525.0


def test_a_server_error_counts_as_a_500_and_in_the_error_rate(client: TestClient) -> None:
    def explode() -> None:
        raise RuntimeError("boom")

    client.app.add_api_route("/explode", explode)  # type: ignore[attr-defined]
    assert client.get("/explode").status_code == 500
    samples = scrape(client)
    assert value(samples, "metrics_http_requests_total", route="/explode", method="GET", status="500") == 1
    telemetry = client.app.state.telemetry  # type: ignore[attr-defined]
    figures = {
        (p["metric_id"], p["tags"]["route"]): p["value"]
        for p in telemetry.self_metrics.collect()
        if p["tags"].get("route") == "/explode"
    }
    assert figures[("application.api.error_rate", "/explode")] == 1.0
    assert figures[("application.api.client_error_rate", "/explode")] == 0.0


def test_a_failing_lake_does_not_stop_the_self_metrics(
    store: MetricStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = store.ingest_points
    calls: list[int] = []

    def flaky(points: Any) -> Any:
        calls.append(len(points))
        if len(calls) == 1:
            raise StorageError("disk full")
        return real(points)

    monkeypatch.setattr(store, "ingest_points", flaky)
    self_metrics = SelfMetrics(0.05, host="h1")
    self_metrics.start(store)
    try:
        deadline = time.monotonic() + 10
        while self_metrics.samples_written == 0:
            self_metrics.record("/health", "GET", 200, 0.001)
            assert time.monotonic() < deadline, "the thread stopped after the first failure"
            time.sleep(0.02)
    finally:
        self_metrics.stop()
    assert "storing self-metrics failed" in caplog.text
    assert len(calls) >= 2


def test_a_multiprocess_directory_must_exist_and_be_set_before_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"PROMETHEUS_MULTIPROC_DIR=.*no such directory"):
        create_app(Settings(data_dir=tmp_path / "data", prometheus_multiproc_dir=tmp_path / "missing"))
    (tmp_path / "here").mkdir()
    with pytest.raises(ConfigError, match="must be in the environment before the process starts"):
        create_app(Settings(data_dir=tmp_path / "data", prometheus_multiproc_dir=tmp_path / "here"))


def test_odd_methods_and_paths_do_not_grow_the_labels(client: TestClient) -> None:
    for i in range(5):
        client.request(f"BREW{i}", f"/pot/{i}")
    samples = scrape(client)
    labels = {dict(key[1]).get("method") for key in samples if key[0] == "metrics_http_requests_total"}
    assert not any(str(label).startswith("BREW") for label in labels)
    assert value(samples, "metrics_http_requests_total", route=UNMATCHED, method="other", status="404") == 5
