"""The ``alert_events`` table: every alert state change (pending, firing, resolved, inactive), for history and trends.

One Parquet file per evaluation cycle that changed something, in the day of
the change; the ``alert_events`` view reads them all (``metrics sql "SELECT
status, count(*) FROM alert_events GROUP BY ALL"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import polars as pl
import pyarrow as pa

from storage.store import MetricStore

TABLE = "alert_events"
EVENT_SCHEMA = pa.schema(
    [
        pa.field("ts", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("alert_id", pa.string(), nullable=False),
        pa.field("rule_id", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("previous", pa.string(), nullable=False),
        pa.field("priority", pa.string(), nullable=False),
        pa.field("series", pa.string(), nullable=False),
        pa.field("labels", pa.string(), nullable=False),
        pa.field("value", pa.float64()),
        pa.field("threshold", pa.float64()),
        pa.field("active_at", pa.timestamp("us", tz="UTC")),
    ]
)
POLARS_SCHEMA: dict[str, pl.DataType] = {
    "ts": pl.Datetime("us", "UTC"),
    "alert_id": pl.String(),
    "rule_id": pl.String(),
    "status": pl.String(),
    "previous": pl.String(),
    "priority": pl.String(),
    "series": pl.String(),
    "labels": pl.String(),
    "value": pl.Float64(),
    "threshold": pl.Float64(),
    "active_at": pl.Datetime("us", "UTC"),
}


def write_alert_events(store: MetricStore, rows: Sequence[dict[str, Any]], moment: datetime) -> int:
    """Append state changes (dicts of the table's columns but ``ts``; ``active_at`` in µs) at ``moment``."""
    if not rows:
        return 0
    columns = {name: [row.get(name) for row in rows] for name in POLARS_SCHEMA if name != "ts"}
    frame = pl.DataFrame(
        {
            name: pl.Series(values, dtype=pl.Int64 if name == "active_at" else POLARS_SCHEMA[name])
            for name, values in columns.items()
        }
    ).with_columns(
        pl.col("active_at").cast(pl.Datetime("us", "UTC")),
        pl.lit(moment).cast(pl.Datetime("us", "UTC")).alias("ts"),
    )
    frame = frame.select(list(POLARS_SCHEMA)).sort("rule_id", "alert_id")
    store.lake.write(TABLE, moment.date(), frame.to_arrow().cast(EVENT_SCHEMA))
    store.engine.refresh_views()
    return frame.height


def read_alert_events(store: MetricStore, since: datetime, rule_id: str | None = None) -> pl.DataFrame:
    """State changes since ``since`` (of one rule, or all), newest first."""
    if not store.lake.files(TABLE):
        return pl.DataFrame(schema=POLARS_SCHEMA)
    where, params = ("ts >= ?", [since]) if rule_id is None else ("ts >= ? AND rule_id = ?", [since, rule_id])
    return store.sql(f"SELECT {', '.join(POLARS_SCHEMA)} FROM alert_events WHERE {where} ORDER BY ts DESC", params)
