"""Tests of the async Python API (metrics.system) on a real lake in a temporary folder."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import polars as pl
import pyarrow as pa
import pytest

from metrics import MetricDataPoint, MetricType, get_metrics_system
from metrics.errors import ConfigError, MetricsError, UnsupportedStorageError, ValidationError
from metrics.system import MetricsSystem

KEY_TAGS = {"key_type": "encryption", "algorithm": "AES-256"}


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """METRICS_DATA_DIR points at a fresh folder; a long flush period so only stop() (or a query) flushes."""
    folder = tmp_path / "data"
    monkeypatch.setenv("METRICS_DATA_DIR", str(folder))
    monkeypatch.setenv("METRICS_FLUSH_SECONDS", "3600")
    return folder


@pytest.fixture
def new_york(monkeypatch: pytest.MonkeyPatch) -> Iterator[ZoneInfo]:
    """The process runs in America/New_York for the test; the previous zone is restored afterwards."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        yield ZoneInfo("America/New_York")
    finally:
        monkeypatch.undo()
        time.tzset()


def sample_files(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "lake" / "samples").rglob("*.parquet"))


def test_the_spec_usage_verbatim(data_dir: Path) -> None:
    async def main() -> tuple[pl.DataFrame, pl.DataFrame]:
        metrics = get_metrics_system("lake")
        await metrics.start()
        try:
            await metrics.collect_metric(
                MetricDataPoint(
                    metric_id="crypto.key.access_count",
                    value=42.0,
                    metric_type=MetricType.COUNTER,
                    tags={"key_type": "encryption", "algorithm": "AES-256"},
                )
            )
            df = await metrics.query_metrics(
                metric_pattern="crypto.key.*", start_time=datetime.now() - timedelta(hours=1)
            )
            agg = await metrics.query_aggregated(
                metric_pattern="crypto.key.*",
                aggregation="avg",
                interval="1h",
                start_time=datetime.now() - timedelta(hours=1),
            )
        finally:
            await metrics.stop()
        return df, agg

    df, agg = asyncio.run(main())
    assert df.columns == ["ts", "metric", "value", "type", "tags", "series_id"]
    assert df.height == 1  # read-your-writes: visible before any timed flush
    row = df.row(0, named=True)
    assert row["metric"] == "crypto.key.access_count"
    assert row["value"] == 42.0
    assert row["type"] == "counter"
    assert row["tags"] == '{"algorithm":"AES-256","key_type":"encryption"}'
    assert abs(datetime.now(UTC) - row["ts"]) < timedelta(minutes=5)
    assert agg.columns == ["ts", "metric", "series_id", "tags", "value"]
    assert agg.get_column("value").to_list() == [42.0]
    assert agg.get_column("metric").to_list() == ["crypto.key.access_count"]
    assert sample_files(data_dir)  # stored in the lake under METRICS_DATA_DIR


def test_collect_metrics_points_dicts_and_spec_batch(data_dir: Path) -> None:
    moment = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)

    async def main() -> dict[str, Any]:
        async with get_metrics_system("lake") as metrics:
            points = await metrics.collect_metrics(
                [
                    MetricDataPoint(metric_id="crypto.key.ops", value=float(i), timestamp=moment + timedelta(seconds=i))
                    for i in range(3)
                ]
            )
            dicts = await metrics.collect_metrics(
                [
                    {
                        "metric_id": "crypto.key.age_days",
                        "value": 12,
                        "metric_type": "gauge",
                        "timestamp": (moment + timedelta(seconds=i)).isoformat().replace("+00:00", "Z"),
                        "tags": {"key_id": f"k{i}"},
                    }
                    for i in range(2)
                ]
            )
            batch = await metrics.collect_metrics(
                {
                    "metrics": [
                        {"metric_id": "crypto.kms.calls", "value": 1.5, "timestamp": moment.isoformat()},
                        {"metric_id": "bad name!", "value": 1.0},
                        {"metric_id": "crypto.kms.calls"},
                        {"metric_id": "crypto.kms.calls", "value": "many"},
                        {"metric_id": "crypto.kms.calls", "value": 2.5, "metric_type": "timer"},
                        {"metric_id": "crypto.kms.calls", "value": 3.5, "tags": {"k": 5}},
                        {"metric_id": "crypto.kms.calls", "value": float("inf")},
                        {"metric_id": "crypto.kms.calls", "value": 4.5, "timestamp": "yesterday-ish"},
                        {"metric_id": "crypto.kms.calls", "value": 5.5, "timestamp": moment.timestamp() + 1},
                    ]
                }
            )
            found = await metrics.query_metrics(
                "crypto.*", moment - timedelta(minutes=1), moment + timedelta(minutes=1)
            )
        return {"points": points, "dicts": dicts, "batch": batch, "found": found}

    out = asyncio.run(main())
    assert (out["points"].stored, out["points"].rejected) == (3, [])
    assert (out["dicts"].stored, out["dicts"].rejected) == (2, [])
    batch = out["batch"]
    assert batch.stored == 2
    reasons = {r.index: r.reason for r in batch.rejected}
    assert sorted(reasons) == [1, 2, 3, 4, 5, 6, 7]
    expected_fragments = {
        1: "metric",
        2: "value",
        3: "value",
        4: "type",
        5: "tags",
        6: "infinite",
        7: "timestamp",
    }
    for index, fragment in expected_fragments.items():
        assert fragment in reasons[index], (index, reasons[index])
    assert batch.to_dict()["rejected"] == 7
    found = out["found"]
    counts = dict(found.group_by("metric").len().iter_rows())
    assert counts == {"crypto.key.ops": 3, "crypto.key.age_days": 2, "crypto.kms.calls": 2}
    calls = found.filter(pl.col("metric") == "crypto.kms.calls").sort("ts")
    assert calls.get_column("value").to_list() == [1.5, 5.5]
    assert calls.get_column("ts").to_list() == [moment, moment + timedelta(seconds=1)]
    ages = found.filter(pl.col("metric") == "crypto.key.age_days").sort("ts")
    assert ages.get_column("tags").to_list() == ['{"key_id":"k0"}', '{"key_id":"k1"}']


@pytest.mark.parametrize("batch", [{"metrics": "nope"}, {"points": []}, {}])
def test_collect_metrics_rejects_a_malformed_spec_batch(data_dir: Path, batch: dict[str, Any]) -> None:
    async def main() -> None:
        async with get_metrics_system("lake") as metrics:
            await metrics.collect_metrics(batch)

    with pytest.raises(ValidationError, match="metrics"):
        asyncio.run(main())


def test_collect_frame_polars_and_arrow(data_dir: Path) -> None:
    moment = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    frame = pl.DataFrame(
        {
            "ts": [moment, moment + timedelta(seconds=10)],
            "metric": ["crypto.key.ops", "crypto.key.ops"],
            "value": [1.0, 2.0],
            "type": ["counter", "counter"],
            "key_id": ["k1", "k1"],
        }
    )
    table = pa.table(
        {
            "timestamp": pa.array([moment, moment + timedelta(seconds=10)], type=pa.timestamp("us", tz="UTC")),
            "metric_id": ["crypto.key.age", "crypto.key.age"],
            "value": [5.0, float("nan")],
            "metric_type": ["gauge", "gauge"],
            "key_id": ["k2", "k2"],
        }
    )

    async def main() -> tuple[Any, Any, pl.DataFrame]:
        async with get_metrics_system("lake") as metrics:
            first = await metrics.collect_frame(frame)
            second = await metrics.collect_frame(table)
            found = await metrics.query_metrics("crypto.key.*", moment - timedelta(minutes=1))
        return first, second, found

    first, second, found = asyncio.run(main())
    assert (first.stored, first.rejected) == (2, [])
    assert second.stored == 1
    assert [(r.index, "NaN" in r.reason) for r in second.rejected] == [(1, True)]
    assert found.select("metric", "value", "tags").sort("metric", "value").rows() == [
        ("crypto.key.age", 5.0, '{"key_id":"k2"}'),
        ("crypto.key.ops", 1.0, '{"key_id":"k1"}'),
        ("crypto.key.ops", 2.0, '{"key_id":"k1"}'),
    ]


def test_sql_latest_and_concurrent_collects(data_dir: Path) -> None:
    async def main() -> tuple[list[Any], pl.DataFrame, pl.DataFrame]:
        async with get_metrics_system("lake") as metrics:
            results = await asyncio.gather(
                *(
                    metrics.collect_metric(
                        MetricDataPoint(metric_id="crypto.key.access_count", value=float(i), tags={"n": str(i % 4)})
                    )
                    for i in range(20)
                )
            )
            counted = await metrics.sql(
                "SELECT metric, count(*) AS n FROM samples WHERE metric = ? GROUP BY metric",
                ["crypto.key.access_count"],
            )
            latest = await metrics.latest("crypto.*")
        return results, counted, latest

    results, counted, latest = asyncio.run(main())
    assert [r.stored for r in results] == [1] * 20
    assert counted.rows() == [("crypto.key.access_count", 20)]
    assert latest.height == 4
    assert sorted(latest.get_column("tags").to_list()) == [f'{{"n":"{i}"}}' for i in range(4)]


def test_naive_datetimes_are_local_time(data_dir: Path, new_york: ZoneInfo) -> None:
    # A time New York's clocks showed (30 minutes ago could fall in the hour skipped in spring)
    naive = (datetime.now(UTC) - timedelta(minutes=30)).astimezone(new_york).replace(tzinfo=None, microsecond=0)
    expected = naive.replace(tzinfo=new_york).astimezone(UTC)
    assert expected != naive.replace(tzinfo=UTC)
    utc_text = (datetime.now(UTC) - timedelta(minutes=3)).replace(microsecond=0)

    async def main() -> dict[str, pl.DataFrame]:
        async with get_metrics_system("lake") as metrics:
            await metrics.collect_metric(MetricDataPoint(metric_id="tz.point", value=1.0, timestamp=naive))
            await metrics.collect_metrics([{"metric_id": "tz.dict", "value": 2.0, "timestamp": naive}])
            # naive ISO text (as in files and JSON batches) is UTC
            text = utc_text.replace(tzinfo=None).isoformat()
            await metrics.collect_metrics([{"metric_id": "tz.text", "value": 3.0, "timestamp": text}])
            local_window = await metrics.query_metrics(
                "tz.*", naive - timedelta(minutes=1), naive + timedelta(minutes=1)
            )
            utc_window = await metrics.query_metrics(
                "tz.*",
                naive.replace(tzinfo=UTC) - timedelta(minutes=1),
                naive.replace(tzinfo=UTC) + timedelta(minutes=1),
            )
            everything = await metrics.query_metrics("tz.*", datetime.now() - timedelta(hours=1))
        return {"local": local_window, "utc": utc_window, "all": everything}

    found = asyncio.run(main())
    local = found["local"].sort("metric")
    assert local.get_column("metric").to_list() == ["tz.dict", "tz.point"]
    assert local.get_column("ts").to_list() == [expected, expected]
    assert found["utc"].height == 0
    text = found["all"].filter(pl.col("metric") == "tz.text")
    assert text.height == 1
    assert text.item(0, "ts") == utc_text


def test_unsupported_storage_names_the_storage_and_the_allowed_ones(data_dir: Path) -> None:
    with pytest.raises(UnsupportedStorageError) as caught:
        get_metrics_system("redis")
    message = str(caught.value)
    assert "'redis'" in message
    assert "lake" in message
    assert isinstance(caught.value, ConfigError)
    assert isinstance(caught.value, MetricsError)


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m.collect_metric(MetricDataPoint(metric_id="a.b", value=1.0)),
        lambda m: m.collect_metrics([{"metric_id": "a.b", "value": 1.0}]),
        lambda m: m.collect_frame(pl.DataFrame({"ts": [datetime.now(UTC)], "metric": ["a.b"], "value": [1.0]})),
        lambda m: m.query_metrics("*"),
        lambda m: m.query_aggregated("*"),
        lambda m: m.latest(),
        lambda m: m.sql("SELECT 1"),
    ],
    ids=["collect_metric", "collect_metrics", "collect_frame", "query_metrics", "query_aggregated", "latest", "sql"],
)
def test_using_the_system_before_start_or_after_stop_raises(data_dir: Path, call: Any) -> None:
    metrics = get_metrics_system("lake")
    with pytest.raises(MetricsError, match="not started"):
        asyncio.run(call(metrics))

    async def after_stop() -> None:
        await metrics.start()
        await metrics.stop()
        await call(metrics)

    with pytest.raises(MetricsError, match="not started"):
        asyncio.run(after_stop())


def test_stop_flushes_so_a_new_system_sees_the_data(data_dir: Path) -> None:
    moment = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=2)

    async def write() -> None:
        metrics = get_metrics_system("lake")
        await metrics.start()
        result = await metrics.collect_metrics(
            [
                MetricDataPoint(metric_id="crypto.key.ops", value=float(i), timestamp=moment + timedelta(seconds=i))
                for i in range(3)
            ]
        )
        assert result.stored == 3
        assert sample_files(data_dir) == []  # acknowledged: in the WAL, not yet in Parquet
        await metrics.stop()
        assert len(sample_files(data_dir)) == 1

    async def read() -> tuple[pl.DataFrame, int]:
        metrics = get_metrics_system("lake")
        await metrics.start()
        try:
            replayed = metrics.store.recovery.rows
            found = await metrics.query_metrics("crypto.*", moment - timedelta(minutes=1))
        finally:
            await metrics.stop()
        return found, replayed

    asyncio.run(write())
    found, replayed = asyncio.run(read())
    assert replayed == 0  # nothing came back from a WAL: stop() wrote it
    assert found.get_column("value").to_list() == [0.0, 1.0, 2.0]


def test_stop_is_idempotent_and_start_twice_keeps_one_store(data_dir: Path) -> None:
    async def main() -> None:
        metrics = MetricsSystem(get_metrics_system("lake").settings)
        await metrics.start()
        store = metrics.store
        await metrics.start()
        assert metrics.store is store
        await metrics.stop()
        await metrics.stop()

    asyncio.run(main())


def test_overrides_and_explicit_settings(tmp_path: Path, data_dir: Path) -> None:
    other = tmp_path / "other"
    assert get_metrics_system("lake").settings.data_dir == data_dir
    assert get_metrics_system("lake", data_dir=other).settings.data_dir == other
    assert get_metrics_system("lake").settings.flush_seconds == 3600.0


def test_forecast_of_a_pattern(data_dir: Path) -> None:
    async def main() -> pl.DataFrame:
        metrics = get_metrics_system(storage="lake", train_workers=1)
        await metrics.start()
        try:
            now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
            points = [
                MetricDataPoint(
                    metric_id="app.queue_depth",
                    value=10.0 + hour % 24,
                    timestamp=now - timedelta(hours=72 - hour),
                    tags={"host": "h1"},
                )
                for hour in range(72)
            ]
            await metrics.collect_metrics(points)
            return await metrics.forecast("app.queue_depth", horizon=6)
        finally:
            await metrics.stop()

    found = asyncio.run(main())
    assert found.height == 6
    assert found["metric"].unique().to_list() == ["app.queue_depth"]
    assert (found["lower_80"] <= found["upper_80"]).all()
