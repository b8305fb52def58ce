"""How sample values are laid out in Parquet: doubles, or exact decimals as scaled integers.

Parquet has no float codec like Gorilla's XOR, but most monitoring values are
exact decimals (counters, gauges rounded to a few digits). Compaction stores
such a series as ``value_int`` (int64 mantissa) and ``value_scale`` (decimal
exponent), which delta-encode to about a byte per sample; other series keep a
``value`` double (byte-stream-split). The choice is per series and lossless:
a series is converted only when ``value_int / 10**value_scale`` gives back every
value bit for bit. Every reader goes through :data:`VALUE_SQL` (DuckDB) or
:func:`decode_values` (polars), so nobody sees the layout.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa

MAX_SCALE = 6
_POWERS = [10.0**e for e in range(MAX_SCALE + 1)]
_EXACT_LIMIT = 2**53  # integers beyond this are not exact doubles

STORED_COLUMNS = ("metric", "series_id", "ts", "value", "value_int", "value_scale", "type", "tags")
STORED_SCHEMA = pa.schema(
    [
        pa.field("metric", pa.string(), nullable=False),
        pa.field("series_id", pa.int64(), nullable=False),
        pa.field("ts", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("value", pa.float64()),
        pa.field("value_int", pa.int64()),
        pa.field("value_scale", pa.int8()),
        pa.field("type", pa.string(), nullable=False),
        pa.field("tags", pa.string(), nullable=False),
    ]
)


def plain_values(frame: pl.DataFrame) -> pl.DataFrame:
    """Stored layout with every value as a double (what writers flush)."""
    return frame.with_columns(
        pl.lit(None, dtype=pl.Int64).alias("value_int"), pl.lit(None, dtype=pl.Int8).alias("value_scale")
    ).select(STORED_COLUMNS)


def decimal_values(frame: pl.DataFrame) -> pl.DataFrame:
    """Stored layout with each exact-decimal series as scaled integers (what compaction writes)."""
    return encode_decimal_columns(frame, ["value"]).select(STORED_COLUMNS)


def encode_decimal_columns(frame: pl.DataFrame, columns: list[str]) -> pl.DataFrame:
    """Store each float column's exact-decimal series as ``<col>_int`` and ``<col>_scale`` (``<col>`` null there)."""
    series = frame.get_column("series_id").to_numpy()
    encoded: list[pl.Series] = []
    for column in columns:
        values = frame.get_column(column).to_numpy()
        usable, mantissas, scales = _decimal_form(values, series)
        as_int = pl.Series(usable)
        encoded += [
            pl.select(pl.when(as_int).then(None).otherwise(frame.get_column(column))).to_series().alias(column),
            pl.select(pl.when(as_int).then(pl.Series(mantissas))).to_series().alias(f"{column}_int"),
            pl.select(pl.when(as_int).then(pl.Series(scales)).cast(pl.Int8)).to_series().alias(f"{column}_scale"),
        ]
    return frame.with_columns(encoded)


def _decimal_form(values: np.ndarray, series: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: whether its series is stored as integers, the mantissa and the series' decimal scale."""
    scale_of_row = np.full(len(values), -1, dtype=np.int8)
    mantissa = np.zeros(len(values), dtype=np.int64)
    undecided = np.ones(len(values), dtype=bool)
    finite = np.isfinite(values)
    for exponent, power in enumerate(_POWERS):
        candidate = np.zeros(len(values))
        with np.errstate(over="ignore", invalid="ignore"):  # huge values overflow to inf: not exact
            np.round(values * power, out=candidate)
            exact = (
                finite
                & (np.abs(candidate) < _EXACT_LIMIT)
                & (candidate / power == values)
                & ~((candidate == 0) & np.signbit(values))  # -0.0 has no integer form
            )
        take = undecided & exact
        scale_of_row[take] = exponent
        mantissa[take] = candidate[take].astype(np.int64)
        undecided &= ~exact
        if not undecided.any():
            break
    # One scale per series: the largest any of its rows needs, if every row has one.
    per_series = (
        pl.DataFrame({"series_id": series, "scale": scale_of_row})
        .group_by("series_id")
        .agg(pl.col("scale").min().alias("lowest"), pl.col("scale").max().alias("scale"))
    )
    joined = pl.DataFrame({"series_id": series}).join(per_series, on="series_id", how="left", maintain_order="left")
    series_scale = np.maximum(joined.get_column("scale").to_numpy(), 0).astype(np.int64)
    candidate_rows = joined.get_column("lowest").to_numpy() >= 0
    with np.errstate(over="ignore", invalid="ignore"):
        final = mantissa * 10 ** (series_scale - np.minimum(scale_of_row.astype(np.int64), series_scale))
        decoded = final.astype(np.float64) / np.asarray(_POWERS)[series_scale]
        row_ok = candidate_rows & (np.abs(final) < _EXACT_LIMIT) & (decoded == values)
    # A series is stored as integers only when every one of its rows decodes exactly.
    verdict = pl.DataFrame({"series_id": series, "ok": row_ok}).group_by("series_id").agg(pl.col("ok").all())
    usable = (
        pl.DataFrame({"series_id": series})
        .join(verdict, on="series_id", how="left", maintain_order="left")
        .get_column("ok")
        .to_numpy()
    )
    return usable, final, series_scale


def decode_values(frame: pl.DataFrame) -> pl.DataFrame:
    """Give a frame read from the lake back its plain float columns (every ``<col>_int``/``<col>_scale`` pair)."""
    encoded = [c[: -len("_int")] for c in frame.columns if c.endswith("_int") and f"{c[:-4]}_scale" in frame.columns]
    if not encoded:
        return frame
    decoded = []
    for column in encoded:
        power = pl.col(f"{column}_scale").replace_strict(
            list(range(len(_POWERS))), _POWERS, default=None, return_dtype=pl.Float64
        )
        decoded.append(pl.coalesce(pl.col(column), pl.col(f"{column}_int").cast(pl.Float64) / power).alias(column))
    return frame.with_columns(decoded).drop([f"{c}_{part}" for c in encoded for part in ("int", "scale")])


def decoded_sql(column: str) -> str:
    """DuckDB expression giving back a float column stored with :func:`encode_decimal_columns`."""
    powers = ", ".join(repr(p) for p in _POWERS)
    return f"coalesce({column}, {column}_int::DOUBLE / [{powers}][{column}_scale + 1])"


# DuckDB expression giving back the value (the list indexed by the scale holds exact powers of ten).
VALUE_SQL = decoded_sql("value")
