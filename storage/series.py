"""The series catalog: one row per series (id, metric, type, canonical tags, first seen).

Writers append a small file to ``lake/series/`` whenever a flush brings series
they have not seen; compaction merges the files. Readers deduplicate by
``series_id``. A catalog file that cannot be read is moved to quarantine (it
holds no samples: every sample also carries its metric and tags), so one bad
file never makes the lake unusable.
"""

from __future__ import annotations

import logging

import polars as pl
import pyarrow as pa

from storage.lake import SERIES_TABLE, UNREADABLE_ERRORS, Lake

log = logging.getLogger(__name__)

SERIES_SCHEMA = pa.schema(
    [
        pa.field("series_id", pa.int64(), nullable=False),
        pa.field("metric", pa.string(), nullable=False),
        pa.field("type", pa.string(), nullable=False),
        pa.field("tags", pa.string(), nullable=False),
        pa.field("first_seen", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)
EMPTY_CATALOG = pl.DataFrame(
    schema={
        "series_id": pl.Int64,
        "metric": pl.String,
        "type": pl.String,
        "tags": pl.String,
        "first_seen": pl.Datetime("us", "UTC"),
    }
)


def read_catalog(lake: Lake) -> pl.DataFrame:
    """The whole catalog, one row per series; unreadable files are quarantined and skipped."""
    frames: list[pl.DataFrame] = []
    for path in lake.flat_files(SERIES_TABLE):
        try:
            frames.append(pl.read_parquet(path).select(SERIES_SCHEMA.names))
        except FileNotFoundError:
            continue  # merged away by a concurrent compaction: its rows are in the merged file
        except UNREADABLE_ERRORS as exc:
            lake.quarantine_file(path, SERIES_TABLE, exc)
    if not frames:
        return EMPTY_CATALOG
    return (
        pl.concat(frames, how="vertical_relaxed")
        .group_by("series_id")
        .agg(pl.col("metric").first(), pl.col("type").first(), pl.col("tags").first(), pl.col("first_seen").min())
        .sort("metric", "series_id")
    )


def catalog_table(frame: pl.DataFrame) -> pa.Table:
    """A catalog frame as an Arrow table in the stored schema."""
    return frame.to_arrow().select(SERIES_SCHEMA.names).cast(SERIES_SCHEMA)
