"""Tests of storage.encoding: exact-decimal series stored as scaled integers, losslessly (property-based)."""

from __future__ import annotations

import math
import struct
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from storage.encoding import MAX_SCALE, STORED_COLUMNS, VALUE_SQL, decimal_values, decode_values, plain_values
from storage.lake import write_parquet

BASE = datetime(2024, 6, 1, tzinfo=UTC)
NEGATIVE_NAN = struct.unpack("<d", struct.pack("<Q", 0xFFF8_0000_0000_0001))[0]
LIMIT = 2**53


def sample_frame(values: list[float], series: list[int] | None = None) -> pl.DataFrame:
    """Sample columns for ``values``; ``series`` gives each row's series (default: all one series)."""
    ids = series if series is not None else [7] * len(values)
    return pl.DataFrame(
        {
            "metric": [f"enc.m{s}" for s in ids],
            "series_id": pl.Series(ids, dtype=pl.Int64),
            "ts": pl.Series([BASE + timedelta(seconds=i) for i in range(len(values))], dtype=pl.Datetime("us", "UTC")),
            "value": pl.Series(values, dtype=pl.Float64),
            "type": ["gauge"] * len(values),
            "tags": [f'{{"s":"{s}"}}' for s in ids],
        }
    )


def bits(series: pl.Series) -> np.ndarray:
    return series.to_numpy().astype(np.float64).view(np.int64)


def assert_bit_identical(actual: pl.Series, expected: pl.Series) -> None:
    assert actual.dtype == pl.Float64
    assert actual.null_count() == 0
    assert np.array_equal(bits(actual), bits(expected)), (actual.to_list(), expected.to_list())


# -- strategies ---------------------------------------------------------------------------------

SPECIAL = [0.0, -0.0, math.nan, NEGATIVE_NAN, math.inf, -math.inf, 1e308, -1e308, 5e-324, 2.0**53, 2.0**53 - 1]
any_float = st.one_of(
    st.floats(),  # NaN, infinities, subnormals, huge and tiny values included
    st.sampled_from(SPECIAL),
    st.integers(-(2**60), 2**60).map(float),  # integers, some beyond exact-double range
    st.integers(-(10**12), 10**12).map(lambda k: k / 100),  # 2-decimal values
    st.integers(-(10**12), 10**12).map(lambda k: k / 10**MAX_SCALE),
    st.integers(-(10**12), 10**12).map(lambda k: k / 10 ** (MAX_SCALE + 1)),  # one digit too many
)
rows = st.lists(st.tuples(st.integers(0, 3), any_float), max_size=60)

two_decimal = st.integers(-(10**12), 10**12).map(lambda k: k / 100)
small_integer = st.integers(-(10**12), 10**12).map(float)
exact_rows = st.lists(st.tuples(st.integers(0, 3), st.one_of(two_decimal, small_integer)), min_size=1, max_size=60)


# -- properties -----------------------------------------------------------------------------------


@hsettings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows)
def test_decimal_round_trip_is_bit_identical(data: list[tuple[int, float]]) -> None:
    frame = sample_frame([v for _, v in data], [s for s, _ in data])
    stored = decimal_values(frame)

    assert tuple(stored.columns) == STORED_COLUMNS
    assert stored.height == frame.height
    decoded = decode_values(stored)
    assert decoded.columns == frame.columns
    assert_bit_identical(decoded.get_column("value"), frame.get_column("value"))
    assert decoded.drop("value").equals(frame.drop("value"))

    # Each row is stored one way only, and each series one way with one scale.
    value_set = stored.get_column("value").is_not_null()
    int_set = stored.get_column("value_int").is_not_null()
    assert (value_set ^ int_set).all()
    assert (stored.get_column("value_scale").is_not_null() == int_set).all()
    per_series = stored.group_by("series_id").agg(
        pl.col("value").is_null().n_unique().alias("layouts"),
        pl.col("value_scale").n_unique().alias("scales"),
        pl.col("value_scale").max().alias("scale"),
    )
    assert (per_series.get_column("layouts") == 1).all()
    assert (per_series.get_column("scales") == 1).all()
    assert per_series.get_column("scale").drop_nulls().is_between(0, MAX_SCALE).all()
    assert (stored.get_column("value_int").drop_nulls().abs() < LIMIT).all()


@hsettings(max_examples=200, deadline=None)
@given(exact_rows)
def test_two_decimal_and_integer_series_are_stored_as_integers(data: list[tuple[int, float]]) -> None:
    frame = sample_frame([v for _, v in data], [s for s, _ in data])
    stored = decimal_values(frame)
    assert stored.get_column("value").null_count() == stored.height  # no double left
    assert stored.get_column("value_int").null_count() == 0
    assert stored.get_column("value_scale").is_between(0, 2).all()
    assert_bit_identical(decode_values(stored).get_column("value"), frame.get_column("value"))


@hsettings(max_examples=100, deadline=None)
@given(rows)
def test_plain_values_keeps_doubles(data: list[tuple[int, float]]) -> None:
    frame = sample_frame([v for _, v in data], [s for s, _ in data])
    stored = plain_values(frame)
    assert tuple(stored.columns) == STORED_COLUMNS
    assert stored.schema["value_int"] == pl.Int64
    assert stored.schema["value_scale"] == pl.Int8
    assert stored.get_column("value_int").null_count() == stored.height
    assert stored.get_column("value_scale").null_count() == stored.height
    assert_bit_identical(stored.get_column("value"), frame.get_column("value"))
    assert_bit_identical(decode_values(stored).get_column("value"), frame.get_column("value"))


# -- table-driven layout cases ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "layout", "scale"),
    [
        ([1.0, 2.0, -3.0], "int", 0),
        ([0.0, 5.0], "int", 0),
        ([12.34, 0.5, 7.0], "int", 2),
        ([2.0**53 - 1, 1.0], "int", 0),
        ([1.5, 0.1234567], "double", None),  # 7 decimals: beyond MAX_SCALE
        ([2.0**53, 1.0], "double", None),  # not below the exact-integer limit
        ([1.0, -0.0], "double", None),  # -0.0 has no integer form
        ([1.0, math.nan], "double", None),
        ([1.0, math.inf], "double", None),
        ([0.1 + 0.2, 1.0], "double", None),
        ([1e15, 0.5], "double", None),  # the mantissa at the series' scale would pass 2**53
        ([5e-324], "double", None),
    ],
)
def test_layout_per_series(values: list[float], layout: str, scale: int | None) -> None:
    stored = decimal_values(sample_frame(values))
    if layout == "int":
        assert scale is not None
        assert stored.get_column("value").null_count() == len(values)
        assert stored.get_column("value_scale").to_list() == [scale] * len(values)
        mantissas = stored.get_column("value_int").to_list()
        assert mantissas == [round(v * 10**scale) for v in values]
    else:
        assert stored.get_column("value_int").null_count() == len(values)
        assert stored.get_column("value_scale").null_count() == len(values)
    assert_bit_identical(decode_values(stored).get_column("value"), sample_frame(values).get_column("value"))


@pytest.mark.parametrize(
    ("values", "scale"),
    [([1.0, 0.001], 3), ([0.1, 0.123456], 6), ([0.5, 0.0001], 4), ([7.0, 0.25, 0.125], 3)],
)
def test_series_mixing_scales_three_or_more_apart_are_stored_as_integers(values: list[float], scale: int) -> None:
    stored = decimal_values(sample_frame(values))
    assert stored.get_column("value_scale").to_list() == [scale] * len(values)
    assert stored.get_column("value_int").to_list() == [round(v * 10**scale) for v in values]


@pytest.mark.parametrize("value", [1e303, -1e308, 1.7976931348623157e308])
def test_huge_values_encode_quietly(value: float) -> None:
    frame = sample_frame([value, 1.0])
    stored = decimal_values(frame)
    assert_bit_identical(decode_values(stored).get_column("value"), frame.get_column("value"))


def test_the_layout_is_chosen_per_series() -> None:
    frame = sample_frame([1.25, 2.5, 0.1 + 0.2, 3.0, -0.0, 4.0], [1, 1, 2, 2, 3, 4])
    stored = decimal_values(frame)
    as_int = dict(
        stored.group_by("series_id").agg(pl.col("value_int").is_not_null().all()).sort("series_id").iter_rows()
    )
    assert as_int == {1: True, 2: False, 3: False, 4: True}
    assert_bit_identical(decode_values(stored).get_column("value"), frame.get_column("value"))


def test_empty_frame() -> None:
    stored = decimal_values(sample_frame([]))
    assert stored.height == 0
    assert tuple(stored.columns) == STORED_COLUMNS
    assert decode_values(stored).height == 0


def test_decode_leaves_frames_without_the_stored_layout_alone() -> None:
    frame = sample_frame([1.0, 2.0])
    assert decode_values(frame) is frame


# -- through Parquet: polars and DuckDB readers agree -------------------------------------------------------


@hsettings(max_examples=25, deadline=None)
@given(rows.filter(bool))
def test_parquet_round_trip_through_both_readers(tmp_path_factory: pytest.TempPathFactory, data: list) -> None:
    frame = sample_frame([v for _, v in data], [s for s, _ in data])
    path = Path(tmp_path_factory.mktemp("enc")) / "c.parquet"
    write_parquet(decimal_values(frame).to_arrow(), path)

    read = decode_values(pl.read_parquet(path))
    assert_bit_identical(read.get_column("value"), frame.get_column("value"))

    con = duckdb.connect()
    try:
        via_sql = con.sql(f"SELECT {VALUE_SQL} AS value FROM read_parquet('{path}')").pl().get_column("value")
    finally:
        con.close()
    expected = frame.get_column("value").to_numpy()
    got = via_sql.to_numpy()
    nan = np.isnan(expected)
    assert np.array_equal(np.isnan(got), nan)  # DuckDB may canonicalise NaN payloads; a NaN stays a NaN
    assert np.array_equal(got[~nan].view(np.int64), expected[~nan].view(np.int64))
