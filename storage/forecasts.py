"""The ``forecasts`` table: each forecast run's future points per series, with intervals and the method used.

Rows are appended one Parquet file per day of ``created_at`` (the run), so a
run's forecasts land together; :func:`latest_forecasts` reads the newest
run's rows of each series.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import polars as pl
import pyarrow as pa

from storage.store import MetricStore

TABLE = "forecasts"
FORECAST_SCHEMA = pa.schema(
    [
        pa.field("metric", pa.string(), nullable=False),
        pa.field("series_id", pa.int64(), nullable=False),
        pa.field("tags", pa.string(), nullable=False),
        pa.field("ts", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("yhat", pa.float64(), nullable=False),
        pa.field("lower_80", pa.float64(), nullable=False),
        pa.field("upper_80", pa.float64(), nullable=False),
        pa.field("lower_95", pa.float64(), nullable=False),
        pa.field("upper_95", pa.float64(), nullable=False),
        pa.field("model", pa.string(), nullable=False),
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)
# Spelled out rather than converted from the Arrow schema: polars' Arrow conversion imports pandas.
POLARS_SCHEMA: dict[str, pl.DataType] = {
    "metric": pl.String(),
    "series_id": pl.Int64(),
    "tags": pl.String(),
    "ts": pl.Datetime("us", "UTC"),
    "yhat": pl.Float64(),
    "lower_80": pl.Float64(),
    "upper_80": pl.Float64(),
    "lower_95": pl.Float64(),
    "upper_95": pl.Float64(),
    "model": pl.String(),
    "created_at": pl.Datetime("us", "UTC"),
}


def forecast_frame(rows: Sequence[dict[str, Any]], created_at: datetime) -> pl.DataFrame:
    """Rows (the table's columns but ``created_at``; ``ts`` in µs) as a frame of the table's schema."""
    columns = {name: [row[name] for row in rows] for name in POLARS_SCHEMA if name != "created_at"}
    frame = pl.DataFrame(
        {
            name: pl.Series(values, dtype=pl.Int64 if name == "ts" else POLARS_SCHEMA[name])
            for name, values in columns.items()
        }
    )
    return frame.with_columns(
        pl.col("ts").cast(pl.Datetime("us", "UTC")),
        pl.lit(created_at).cast(pl.Datetime("us", "UTC")).alias("created_at"),
    )


def write_forecasts(store: MetricStore, frame: pl.DataFrame) -> int:
    """Append forecast rows to the lake (one file for the run's day); return how many."""
    if frame.is_empty():
        return 0
    frame = frame.select(list(POLARS_SCHEMA)).sort("metric", "series_id", "ts")
    day = frame["created_at"][0].date()
    store.lake.write(TABLE, day, frame.to_arrow().cast(FORECAST_SCHEMA))
    store.engine.refresh_views()
    return frame.height


def latest_forecasts(store: MetricStore, pattern: str = "*") -> pl.DataFrame:
    """The newest run's forecast rows of every series whose metric matches a glob, by metric, series and time."""
    if not store.lake.files(TABLE):
        return pl.DataFrame(schema=POLARS_SCHEMA)
    where = "metric GLOB ?" if any(c in pattern for c in "*?[") else "metric = ?"
    columns = ", ".join(POLARS_SCHEMA)
    return store.sql(
        f"SELECT {columns} FROM forecasts WHERE {where} "
        "QUALIFY created_at = max(created_at) OVER (PARTITION BY series_id) ORDER BY metric, series_id, ts",
        [pattern],
    )
