"""Dashboard panels over a real lake: alignment, top lines, anomalies on the line, forecasts, rollups, tables."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import orjson
import polars as pl
import pytest

from metrics.model import canonical_tags, series_id
from metrics.settings import Settings
from metrics.web.boards import DASHBOARDS, FILTER_TAGS, SYSTEM, Dashboard, Panel, Query, dashboard
from metrics.web.panels import MAX_POINTS, STEPS, Window, panel_sql, step_for
from metrics.web.sources import SOURCES, panel_data
from storage.aggregate import AGGREGATIONS
from storage.anomalies import anomaly_frame, write_anomalies
from storage.forecasts import forecast_frame, write_forecasts
from storage.store import MetricStore

TS = pl.Datetime("us", "UTC")
HOSTS = {"web-1": 10.0, "web-2": 50.0, "web-3": 90.0}  # CPU level per host


@pytest.mark.parametrize(
    ("length", "step"),
    [
        (timedelta(minutes=15), 10),
        (timedelta(hours=1), 15),
        (timedelta(hours=6), 120),
        (timedelta(hours=24), 600),
        (timedelta(days=7), 3600),
        (timedelta(days=30), 10800),
        (timedelta(days=400), 86400),
    ],
)
def test_the_bucket_follows_the_range(length: timedelta, step: int) -> None:
    assert step_for(length) == step
    assert length.total_seconds() / step <= MAX_POINTS or step == STEPS[-1]


def test_every_dashboard_is_well_formed() -> None:
    assert list(DASHBOARDS) == ["system", "security", "keys", "performance", "alerts"]
    for board in DASHBOARDS.values():
        ids = [panel.id for panel in board.panels]
        assert len(ids) == len(set(ids)), board.name
        assert set(board.filters) <= set(FILTER_TAGS)
        for panel in board.panels:
            if panel.source == "lake":
                assert panel.queries, panel.id
            else:
                assert not panel.queries, panel.id
                assert panel.source in SOURCES or panel.source.startswith("alerts."), panel.id
            for query in panel.queries:
                assert query.aggregation in AGGREGATIONS, (panel.id, query)
                assert set(query.filters or ()) <= set(board.filters)
    assert dashboard("keys").panel("inventory").kind == "table"


@pytest.fixture
def cpu_store(store: MetricStore, now: datetime) -> MetricStore:
    """Three hosts of CPU (flat at their level) and a counter of events with gaps, over the last 2 hours."""
    stamps = [now - timedelta(seconds=10 * i) for i in range(720, 0, -1)]
    rows = [
        {"ts": ts, "metric": "system.cpu.usage_total", "value": level, "type": "gauge", "host": host}
        for host, level in HOSTS.items()
        for ts in stamps
    ]
    frame = pl.DataFrame(rows, schema_overrides={"ts": TS})
    store.ingest_frame(frame)
    store.flush()
    return store


def window(now: datetime, length: timedelta) -> Window:
    return Window.of(now - length, now)


def test_lines_are_aligned_and_the_largest_are_shown(cpu_store: MetricStore, settings: Settings, now: datetime) -> None:
    board = Dashboard("t", "T", "", ("host",), ())
    panel = Panel("cpu", "CPU", "timeseries", (Query("system.cpu.usage_total", "avg", ("host",)),), top=2)
    data = panel_data(cpu_store, settings, board, panel, window(now, timedelta(hours=1)), {})
    assert data["kind"] == "timeseries"
    assert data["interval"] == "15s"
    assert [line["label"] for line in data["series"]] == ["web-2", "web-3"]  # the two busiest, by name
    assert data["hidden"] == 1
    assert data["x"] == sorted(data["x"])
    assert all(len(line["values"]) == len(data["x"]) for line in data["series"])
    assert {v for v in data["series"][1]["values"] if v is not None} == {90.0}
    assert data["points"] == sum(v is not None for line in data["series"] for v in line["values"])
    only = panel_data(cpu_store, settings, board, panel, window(now, timedelta(hours=1)), {"host": ["web-1"]})
    assert [line["label"] for line in only["series"]] == ["web-1"]


def test_anomalies_sit_on_their_line_and_forecasts_follow_the_range(
    cpu_store: MetricStore, settings: Settings, now: datetime
) -> None:
    tags = canonical_tags({"host": "web-3"})
    sid = series_id("system.cpu.usage_total", tags)
    at = now - timedelta(minutes=20)
    micros = int(at.timestamp() * 1_000_000)
    write_anomalies(
        cpu_store,
        anomaly_frame([("system.cpu.usage_total", sid, micros, tags, 90.0, 0.97, True, "zscore", "v1")], now),
    )
    ahead = [now + timedelta(minutes=10 * i) for i in range(1, 7)]
    rows = [
        {
            "metric": "system.cpu.usage_total",
            "series_id": sid,
            "tags": tags,
            "ts": int(ts.timestamp() * 1_000_000),
            "yhat": 91.0,
            "lower_80": 85.0,
            "upper_80": 97.0,
            "lower_95": 80.0,
            "upper_95": 99.0,
            "model": "ets",
        }
        for ts in ahead
    ]
    write_forecasts(cpu_store, forecast_frame(rows, now))
    panel = Panel(
        "cpu",
        "CPU",
        "timeseries",
        (Query("system.cpu.usage_total", "avg", ("host",)),),
        anomalies=True,
        forecast=True,
    )
    data = panel_data(cpu_store, settings, SYSTEM, panel, window(now, timedelta(hours=1)), {})
    (mark,) = data["anomalies"]
    assert (mark["label"], mark["y"], mark["score"]) == ("web-3", 90.0, 0.97)
    assert mark["x"] % 15 == 0
    assert data["extra"]["anomalies"][data["x"].index(mark["x"])] == 90.0
    assert data["forecast"] == {"label": "web-3"}
    future = [x for x, y in zip(data["x"], data["extra"]["forecast yhat"], strict=True) if y is not None]
    assert future == [int(ts.timestamp()) for ts in ahead if ts <= now + timedelta(minutes=30)]
    measured = [x for x, v in zip(data["x"], data["series"][0]["values"], strict=True) if v is not None]
    assert min(future) > max(measured)
    # filtered to another host: no marker, no forecast
    other = panel_data(cpu_store, settings, SYSTEM, panel, window(now, timedelta(hours=1)), {"host": ["web-1"]})
    assert other["anomalies"] == []
    assert other["forecast"] is None


def test_counters_drop_the_filling_bucket_and_events_fill_gaps_with_zero(
    store: MetricStore, settings: Settings, now: datetime
) -> None:
    stamps = [now - timedelta(minutes=m) for m in (50, 49, 30, 29, 1)]
    frame = pl.DataFrame(
        {"ts": stamps, "metric": "crypto.key.unauthorized_access", "value": [1.0, 3.0, 3.0, 6.0, 7.0]},
        schema_overrides={"ts": TS},
    ).with_columns(type=pl.lit("counter"), key_id=pl.lit("k1"))
    store.ingest_frame(frame)
    store.flush()
    board = dashboard("security")
    data = panel_data(store, settings, board, board.panel("unauthorized"), window(now, timedelta(hours=1)), {})
    (line,) = data["series"]
    values = [v for v in line["values"] if v is not None]
    assert sum(values) == 6.0
    assert values.count(0.0) >= len(values) - 3  # buckets without samples count no events
    assert len(values) == len(data["x"])
    ranking = panel_data(store, settings, board, board.panel("principals"), window(now, timedelta(hours=1)), {})
    assert ranking == {**ranking, "kind": "bars", "labels": ["no principal"], "values": [6.0]}


def test_a_30_day_view_reads_the_hourly_rollups_and_agrees_with_raw(
    store: MetricStore, settings: Settings, now: datetime
) -> None:
    now -= timedelta(minutes=(now.minute - 30) % 60)  # half past: raw samples after the last full hour
    start = now - timedelta(days=29)
    stamps = pl.datetime_range(start, now, timedelta(minutes=5), eager=True, time_zone="UTC")
    frame = pl.DataFrame({"ts": stamps.cast(TS)}).with_columns(
        metric=pl.lit("system.disk.usage_percent"),
        value=(pl.int_range(pl.len()) % 100).cast(pl.Float64),
        type=pl.lit("gauge"),
        host=pl.lit("db-1"),
    )
    store.ingest_frame(frame)
    store.flush()
    store.compact(validate=False)
    board = dashboard("system")
    month = Window.of(now - timedelta(days=30), now)
    assert month.interval == "10800s"
    text = panel_sql(store, board, board.panel("disk"), month, {})
    assert "rollups_1h" in text
    assert "FROM samples" in text  # the raw tail after the last full hour
    data = panel_data(store, settings, board, board.panel("disk"), month, {})
    raw = store.query_aggregated(
        "system.disk.usage_percent", "max", month.interval, month.start, month.end, ["host"], use_rollups=False
    )
    assert data["series"][0]["values"] == list(raw.get_column("value").to_list())
    pasted = store.sql(text)
    assert pasted.get_column("value").to_list() == raw.get_column("value").to_list()


def test_key_and_alert_tables(settings: Settings, tmp_path: Path, now: datetime) -> None:
    from metrics.auditgen import write_demo_logs
    from tasks.collect.keys import collect_key_events

    logs = write_demo_logs(tmp_path / "demo", now=now, hours=2)
    collect_key_events(settings, "cloudtrail", [logs.cloudtrail])
    board = dashboard("keys")
    chosen: dict[str, list[str]] = {}
    store = MetricStore(settings, read_only=True)
    try:
        month = window(now, timedelta(hours=2))
        states = panel_data(store, settings, board, board.panel("by_state"), month, chosen)
        inventory = panel_data(store, settings, board, board.panel("inventory"), month, chosen)
        rotations = panel_data(store, settings, board, board.panel("rotations"), month, chosen)
        algorithm = inventory["rows"][0][inventory["columns"].index("algorithm")]
        narrowed = panel_data(store, settings, board, board.panel("inventory"), month, {"algorithm": [algorithm]})
        alerts = dashboard("alerts")
        active = panel_data(store, settings, alerts, alerts.panel("active"), month, chosen)
        trend = panel_data(store, settings, alerts, alerts.panel("trend"), month, chosen)
        sql = panel_sql(store, alerts, alerts.panel("resolve"), month, chosen)
        ledger_sql = panel_sql(store, board, board.panel("inventory"), month, chosen)
    finally:
        store.close()
    assert states["kind"] == "bars"
    assert sum(states["values"]) == len(inventory["rows"]) > 3
    assert inventory["columns"][0] == "key_id"
    assert rotations["flag"] == "overdue"
    days = [row[rotations["columns"].index("days_since_rotation")] for row in rotations["rows"]]
    assert days == sorted(days, reverse=True)
    assert {row[inventory["columns"].index("algorithm")] for row in narrowed["rows"]} == {algorithm}
    assert active["rows"] == []
    assert active["action"] == "acknowledge"
    assert trend["points"] == 0
    assert "FROM alert_events" in sql
    assert ledger_sql.startswith("-- Key inventory: read from the key ledger")
    assert orjson.loads(orjson.dumps(inventory)) == inventory  # JSON-ready as it is


def test_a_rate_s_filling_bucket_is_a_rate_over_its_elapsed_part(
    store: MetricStore, settings: Settings, now: datetime
) -> None:
    """A counter rising 1/s: complete buckets read 1.0; the bucket still filling is not a dip."""
    base = now - timedelta(minutes=10)
    stamps = [base - timedelta(seconds=s) for s in range(3600, -50, -10)]  # up to base + 40 s
    frame = pl.DataFrame(
        {"ts": stamps, "value": [float((ts - stamps[0]).total_seconds()) for ts in stamps]},
        schema_overrides={"ts": TS},
    ).with_columns(metric=pl.lit("application.ingest.samples"), type=pl.lit("counter"), host=pl.lit("api-1"))
    store.ingest_frame(frame)
    store.flush()
    board = dashboard("performance")
    filling = Window.of(base - timedelta(minutes=50), base + timedelta(seconds=45))
    data = panel_data(store, settings, board, board.panel("ingest"), filling, {})
    values = [v for v in data["series"][0]["values"] if v is not None]
    assert values[1:-1] == pytest.approx([1.0] * (len(values) - 2))
    assert 0.95 < values[-1] < 1.25  # 50 counted over the 45 s elapsed, not over 60 s (0.83)
    early = Window.of(base - timedelta(minutes=50), base + timedelta(seconds=20))
    data = panel_data(store, settings, board, board.panel("ingest"), early, {})
    assert data["x"][-1] == int((base - timedelta(minutes=1)).timestamp())  # 20 s of 60: left out
