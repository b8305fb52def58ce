"""The anomalies table: its two schemas agree, and rows round-trip through the lake keeping the best score."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl

from storage.anomalies import ANOMALY_SCHEMA, POLARS_SCHEMA, ROW_COLUMNS, anomaly_frame, read_anomalies, write_anomalies
from storage.store import MetricStore

T0 = datetime(2026, 11, 30, 23, 0, tzinfo=UTC)
US = 1_000_000


def _us(moment: datetime) -> int:
    return int(moment.timestamp() * US)


def test_the_polars_schema_spells_out_the_arrow_schema() -> None:
    assert list(POLARS_SCHEMA) == ANOMALY_SCHEMA.names
    assert dict(pl.from_arrow(ANOMALY_SCHEMA.empty_table()).schema) == POLARS_SCHEMA
    assert set(ROW_COLUMNS) == set(POLARS_SCHEMA) - {"scored_at"}


def test_an_empty_list_of_rows_is_an_empty_frame_of_the_table_s_columns() -> None:
    frame = anomaly_frame([], T0)
    assert frame.is_empty()
    assert dict(frame.schema) == POLARS_SCHEMA


def test_rows_round_trip_across_days_and_a_repeated_row_keeps_its_best_score(store: MetricStore) -> None:
    late = T0 + timedelta(hours=2)  # the next day: written to a second file
    rows = [
        ("cpu.usage", 1, _us(T0), '{"host":"a"}', 97.0, 0.9, True, "zscore", "v1"),
        ("cpu.usage", 1, _us(T0), '{"host":"a"}', 97.0, 0.95, True, "ensemble", "v2"),
        ("cpu.usage", 2, _us(late), '{"host":"b"}', 12.0, 0.4, False, "seasonal", "streaming"),
        ("mem.usage", 3, _us(late), '{"host":"a"}', 80.0, 0.99, True, "iforest", "v1"),
    ]
    assert write_anomalies(store, anomaly_frame(rows, T0 + timedelta(hours=3))) == 4
    assert len(store.lake.files("anomalies")) == 2

    found = read_anomalies(store, "cpu.*", T0, T0 + timedelta(days=1), 0.0)
    assert found.select("series_id", "score", "detector", "model_version", "is_anomaly").rows() == [
        (1, 0.95, "ensemble", "v2", True),
        (2, 0.4, "seasonal", "streaming", False),
    ]
    assert found["ts"].to_list() == [T0, late]
    assert found["tags"].to_list() == ['{"host":"a"}', '{"host":"b"}']


def test_reading_filters_by_metric_time_and_threshold(store: MetricStore) -> None:
    rows = [
        ("cpu.usage", 1, _us(T0 + timedelta(minutes=m)), "{}", 1.0, m / 10, m >= 5, "zscore", "v1") for m in range(10)
    ]
    write_anomalies(store, anomaly_frame(rows, T0))
    found = read_anomalies(store, "cpu.usage", T0 + timedelta(minutes=2), T0 + timedelta(minutes=8), 0.5)
    assert found["score"].to_list() == [0.7, 0.6, 0.5]
    assert read_anomalies(store, "mem.*", T0, T0 + timedelta(days=1), 0.0).is_empty()


def test_reading_an_empty_lake_gives_the_table_s_columns(store: MetricStore) -> None:
    found = read_anomalies(store, "*", T0, T0 + timedelta(days=1), 0.0)
    assert found.is_empty()
    assert dict(found.schema) == POLARS_SCHEMA
