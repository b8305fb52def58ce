"""The ``anomalies`` table: one row per scored sample worth keeping, written by the scorer and the key collector.

Rows are appended one Parquet file per day of ``ts``. A row written twice
(a crash between write and checkpoint) has the same score, and
:func:`read_anomalies` keeps one per (metric, series, ts): the highest score,
with the detector and model version that gave it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import polars as pl
import pyarrow as pa

from storage.store import MetricStore

TABLE = "anomalies"
ANOMALY_SCHEMA = pa.schema(
    [
        pa.field("metric", pa.string(), nullable=False),
        pa.field("series_id", pa.int64(), nullable=False),
        pa.field("ts", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("tags", pa.string(), nullable=False),
        pa.field("value", pa.float64(), nullable=False),
        pa.field("score", pa.float64(), nullable=False),
        pa.field("is_anomaly", pa.bool_(), nullable=False),
        pa.field("detector", pa.string(), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("scored_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)


# Spelled out rather than converted from ANOMALY_SCHEMA: polars' Arrow conversion imports pandas (0.8 s at start-up).
POLARS_SCHEMA: dict[str, pl.DataType] = {
    "metric": pl.String(),
    "series_id": pl.Int64(),
    "ts": pl.Datetime("us", "UTC"),
    "tags": pl.String(),
    "value": pl.Float64(),
    "score": pl.Float64(),
    "is_anomaly": pl.Boolean(),
    "detector": pl.String(),
    "model_version": pl.String(),
    "scored_at": pl.Datetime("us", "UTC"),
}


ROW_COLUMNS = ("metric", "series_id", "ts", "tags", "value", "score", "is_anomaly", "detector", "model_version")


def anomaly_frame(rows: Sequence[tuple[Any, ...]], scored_at: datetime) -> pl.DataFrame:
    """Rows of (metric, series_id, ts µs, tags, value, score, is_anomaly, detector, model_version) as a frame."""
    columns: list[Sequence[Any]] = list(zip(*rows, strict=True)) if rows else [() for _ in ROW_COLUMNS]
    frame = pl.DataFrame(
        {
            name: pl.Series(values, dtype=pl.Int64 if name == "ts" else POLARS_SCHEMA[name])
            for name, values in zip(ROW_COLUMNS, columns, strict=True)
        }
    )
    return frame.with_columns(
        pl.col("ts").cast(pl.Datetime("us", "UTC")),
        pl.lit(scored_at).cast(pl.Datetime("us", "UTC")).alias("scored_at"),
    )


def write_anomalies(store: MetricStore, frame: pl.DataFrame) -> int:
    """Append anomaly rows (the ``anomalies`` table's columns) to the lake, one file per day; return how many."""
    if frame.is_empty():
        return 0
    frame = frame.select(list(POLARS_SCHEMA)).sort("metric", "series_id", "ts")
    for (day,), part in frame.group_by(frame["ts"].dt.date(), maintain_order=True):
        store.lake.write(TABLE, day, part.to_arrow().cast(ANOMALY_SCHEMA))
    store.engine.refresh_views()
    return frame.height


def read_anomalies(store: MetricStore, pattern: str, start: datetime, end: datetime, threshold: float) -> pl.DataFrame:
    """Stored anomalies of metrics matching a glob in [start, end) scoring at least ``threshold``, newest first."""
    if not store.lake.files(TABLE):
        return pl.DataFrame(schema=POLARS_SCHEMA)
    where = "metric GLOB ?" if any(c in pattern for c in "*?[") else "metric = ?"
    frame = store.sql(
        "SELECT metric, series_id, ts, any_value(tags) AS tags, any_value(value) AS value, max(score) AS score, "
        "bool_or(is_anomaly) AS is_anomaly, arg_max(detector, score) AS detector, "
        "arg_max(model_version, score) AS model_version, max(scored_at) AS scored_at "
        f"FROM anomalies WHERE {where} AND ts >= ? AND ts < ? AND score >= ? "
        "GROUP BY metric, series_id, ts ORDER BY score DESC, ts DESC",
        [pattern, start, end, threshold],
    )
    return frame
