"""Rollups: per-series 1-minute and 1-hour summaries (count, sum, min, max, first, last, increase).

Each rollup row summarises one series in one bucket. ``increase`` is the
counter increase between consecutive samples *inside* the bucket (a drop is a
reset: the increase is then the new value); the step from the previous bucket's
last sample to this bucket's first is added at query time from ``first`` and
the previous ``last``, so rollups of any width combine exactly with raw samples.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date

import polars as pl
import pyarrow as pa

from storage.encoding import decoded_sql, encode_decimal_columns
from storage.lake import COMPACTED_PREFIX, Lake, LakeFile

ROLLUP_TABLES = {"rollups_1m": 60, "rollups_1h": 3600}

ROLLUP_SCHEMA = pa.schema(
    [
        pa.field("metric", pa.string(), nullable=False),
        pa.field("series_id", pa.int64(), nullable=False),
        pa.field("ts", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("count", pa.int64(), nullable=False),
        pa.field("sum", pa.float64(), nullable=False),
        pa.field("min", pa.float64(), nullable=False),
        pa.field("max", pa.float64(), nullable=False),
        pa.field("first", pa.float64(), nullable=False),
        pa.field("last", pa.float64(), nullable=False),
        pa.field("last_ts", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("increase", pa.float64(), nullable=False),
    ]
)


# Columns stored as exact decimals where a series allows (min/max/first/last are sample values;
# sums and increases of decimals are rarely exact decimals in binary floating point).
ENCODED_COLUMNS = ["min", "max", "first", "last"]
STORED_ROLLUP_SCHEMA = pa.schema(
    [
        *(field for field in ROLLUP_SCHEMA if field.name not in ENCODED_COLUMNS),
        *(
            part
            for name in ENCODED_COLUMNS
            for part in (
                pa.field(name, pa.float64()),
                pa.field(f"{name}_int", pa.int64()),
                pa.field(f"{name}_scale", pa.int8()),
            )
        ),
    ]
)
# How a reader gets each rollup column back in DuckDB.
ROLLUP_SQL = {name: decoded_sql(name) if name in ENCODED_COLUMNS else name for name in ROLLUP_SCHEMA.names}


def stored_rollup(rollup: pl.DataFrame) -> pa.Table:
    """A rollup frame in its stored layout (exact-decimal series as scaled integers)."""
    stored = encode_decimal_columns(rollup, ENCODED_COLUMNS).to_arrow()
    return stored.select(STORED_ROLLUP_SCHEMA.names).cast(STORED_ROLLUP_SCHEMA)


def counter_step(value: pl.Expr, previous: pl.Expr) -> pl.Expr:
    """Increase from ``previous`` to ``value``; a drop is a counter reset (increase = value)."""
    delta = value - previous
    return pl.when(previous.is_null()).then(0.0).when(delta >= 0).then(delta).otherwise(value)


def build_rollup(samples: pl.DataFrame, width_seconds: int) -> pl.DataFrame:
    """Summarise samples (any order) into one row per (series, bucket of ``width_seconds``)."""
    width_us = width_seconds * 1_000_000
    bucketed = (
        samples.lazy()
        .with_columns(
            pl.col("metric").cast(pl.String),
            ((pl.col("ts").dt.epoch("us") // width_us) * width_us).alias("_bucket"),
        )
        .sort("series_id", "ts")
    )
    stepped = bucketed.with_columns(
        counter_step(pl.col("value"), pl.col("value").shift(1)).over("series_id", "_bucket").alias("_step")
    )
    out = (
        stepped.group_by("series_id", "_bucket")
        .agg(
            pl.col("metric").first(),
            pl.len().cast(pl.Int64).alias("count"),
            pl.col("value").sum().alias("sum"),
            pl.col("value").min().alias("min"),
            pl.col("value").max().alias("max"),
            pl.col("value").first().alias("first"),
            pl.col("value").last().alias("last"),
            pl.col("ts").last().alias("last_ts"),
            pl.col("_step").sum().alias("increase"),
        )
        .with_columns(pl.col("_bucket").cast(pl.Datetime("us")).dt.replace_time_zone("UTC").alias("ts"))
        .sort("metric", "series_id", "ts")
        .select(ROLLUP_SCHEMA.names)
        .collect()
    )
    return out


def rollup_name(generation: str) -> str:
    """File name of the rollup built from compacted generation ``generation``."""
    return f"{COMPACTED_PREFIX}{generation}.parquet"


def covered_days(lake: Lake, table: str, days: list[date]) -> set[date]:
    """Days whose rollups in ``table`` cover every sample file of the day.

    A day is covered when all its sample files are compacted and exactly the
    same compacted generations have rollups. New raw files arriving after
    compaction make the day uncovered until the next compaction.
    """
    if not days:
        return set()
    first, last = min(days), max(days)
    return set(days) & covered_by(lake.files("samples", first, last), lake.files(table, first, last))


def covered_by(sample_files: Iterable[LakeFile], rollup_files: Iterable[LakeFile]) -> set[date]:
    """The days of ``sample_files`` whose files are all compacted and exactly matched by ``rollup_files``."""
    samples: dict[date, set[str]] = {}
    rollups: dict[date, set[str]] = {}
    for by_day, found in ((samples, sample_files), (rollups, rollup_files)):
        for item in found:
            by_day.setdefault(item.day, set()).add(item.name)
    return {
        day
        for day, names in samples.items()
        if all(name.startswith(COMPACTED_PREFIX) for name in names) and rollups.get(day) == names
    }
