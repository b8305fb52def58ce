"""The Great Expectations quality gate for compaction batches (storage.validate), run against real GX."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metrics.errors import ValidationError
from storage.validate import REASON_COLUMN, ValidationOutcome, check_schema, quarantine, validate_batch

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
SCHEMA: dict[str, pl.DataType] = {
    "metric": pl.String(),
    "series_id": pl.Int64(),
    "ts": pl.Datetime("us", "UTC"),
    "value": pl.Float64(),
    "type": pl.String(),
    "tags": pl.String(),
}
ALL_GOOD = [
    {"metric": "cpu.usage_pct", "series_id": 1, "ts": T0, "value": 12.5, "type": "gauge", "tags": '{"host":"h1"}'},
    {"metric": "disk.percent", "series_id": 2, "ts": T0, "value": 100.0, "type": "gauge", "tags": '{"host":"h1"}'},
    {"metric": "net.bytes", "series_id": 3, "ts": T0, "value": 150.0, "type": "counter", "tags": '{"host":"h1"}'},
    {"metric": "req.latency", "series_id": 4, "ts": T0, "value": -3.0, "type": "histogram", "tags": "{}"},
    {"metric": "rpc.time", "series_id": 5, "ts": T0, "value": 0.5, "type": "summary", "tags": '{"q":"0.99"}'},
    {"metric": "cpu.usage_pct", "series_id": 1, "ts": T0 + timedelta(seconds=10), "value": 0.0, "type": "gauge",
     "tags": '{"host":"h1"}'},
]  # fmt: skip

Edit = Callable[[list[dict[str, Any]]], None]

PERCENT = "value out of range 0-100 for percent metric"
FUTURE = "ts more than 600 s in the future"
UNKNOWN_TYPE = "unknown type (allowed: counter, gauge, histogram, summary)"
DUPLICATE = "duplicate (series_id, ts); an earlier row was kept"


def frame_of(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """A batch with the sample schema from row dicts."""
    return pl.DataFrame(rows, schema=SCHEMA)


def edited(edit: Edit) -> pl.DataFrame:
    """The clean batch with ``edit`` applied to a copy of its rows."""
    rows = [dict(r) for r in ALL_GOOD]
    edit(rows)
    return frame_of(rows)


def setter(index: int, **values: Any) -> Edit:
    """An edit that sets columns of one row."""
    return lambda rows: rows[index].update(values)


def appender(**overrides: Any) -> Edit:
    """An edit that appends a copy of the first row with some columns changed."""
    return lambda rows: rows.append({**rows[0], **overrides})


def assert_partition(frame: pl.DataFrame, outcome: ValidationOutcome, bad_positions: list[int]) -> None:
    """good + bad split ``frame`` exactly at ``bad_positions``, in order, with the input dtypes."""
    keep = [i for i in range(frame.height) if i not in set(bad_positions)]
    assert outcome.good.schema == frame.schema
    assert outcome.bad.schema == {**frame.schema, REASON_COLUMN: pl.String()}
    assert outcome.good.equals(frame[keep], null_equal=True)
    assert outcome.bad.drop(REASON_COLUMN).equals(frame[bad_positions], null_equal=True)
    assert outcome.failed_rows == len(bad_positions)
    assert outcome.report["good_rows"] == len(keep)
    assert outcome.report["bad_rows"] == len(bad_positions)


def expectation(report: dict[str, Any], key: str) -> dict[str, Any]:
    (entry,) = [e for e in report["expectations"] if e["key"] == key]
    return entry


# --------------------------------------------------------------------------- clean batch and report


def test_a_clean_batch_passes_whole() -> None:
    frame = frame_of(ALL_GOOD)
    outcome = validate_batch(frame, now=T0)

    assert_partition(frame, outcome, [])
    report = outcome.report
    assert report["success"] is True
    assert report["evaluated_rows"] == frame.height
    assert report["percent_metrics"] == 2
    assert report["run_seconds"] >= report["gx_validate_seconds"] > 0
    assert json.loads(json.dumps(report)) == report  # JSON-serialisable as is
    names = [e["name"] for e in report["expectations"]]
    assert names == [
        "expect_table_columns_to_match_set",
        *["expect_column_values_to_not_be_null"] * 6,
        "expect_column_values_to_be_between",
        "expect_column_values_to_be_between",
        "expect_column_values_to_be_in_set",
        "expect_compound_columns_to_be_unique",
    ]
    for entry in report["expectations"]:
        assert entry["success"] is True
        assert entry["unexpected_count"] == 0
        assert entry["quarantined"] == 0
    assert expectation(report, "schema")["observed_columns"] == sorted(SCHEMA)


def test_categorical_columns_are_accepted_and_kept() -> None:
    frame = edited(setter(1, value=150.0)).with_columns(
        pl.col("metric").cast(pl.Categorical),
        pl.col("type").cast(pl.Enum(["counter", "gauge", "histogram", "summary"])),
    )
    outcome = validate_batch(frame, now=T0)

    assert_partition(frame, outcome, [1])
    assert outcome.good.schema["metric"] == pl.Categorical()
    assert outcome.bad["reason"].to_list() == [PERCENT]


# --------------------------------------------------------------------------- one failure kind at a time

LATE = T0 + timedelta(seconds=601)

FAILURES = [
    # id, edit of the clean batch, bad row positions, reason of each bad row
    ("null metric", setter(2, metric=None), [2], "metric is null"),
    ("null series_id", setter(2, series_id=None), [2], "series_id is null"),
    ("null ts", setter(2, ts=None), [2], "ts is null"),
    ("null value", setter(2, value=None), [2], "value is null"),
    ("null type", setter(2, type=None), [2], "type is null"),
    ("null tags", setter(2, tags=None), [2], "tags is null"),
    ("percent 150", setter(0, value=150.0), [0], PERCENT),
    ("percent -0.5", setter(1, value=-0.5), [1], PERCENT),
    ("percent infinite", setter(1, value=math.inf), [1], PERCENT),
    ("'.pct' suffix", setter(2, metric="net.pct"), [2], PERCENT),
    ("future ts", setter(3, ts=LATE), [3], FUTURE),
    ("unknown type", setter(4, type="timer"), [4], UNKNOWN_TYPE),
    ("type is case-sensitive", setter(4, type="Gauge"), [4], UNKNOWN_TYPE),
    ("duplicate (series_id, ts)", appender(value=13.0), [6], DUPLICATE),
]  # fmt: skip


@pytest.mark.parametrize(("edit", "bad_positions", "reason"), [f[1:] for f in FAILURES], ids=[f[0] for f in FAILURES])
def test_each_failure_kind_is_quarantined_with_its_reason(edit: Edit, bad_positions: list[int], reason: str) -> None:
    frame = edited(edit)
    outcome = validate_batch(frame, now=T0)

    assert_partition(frame, outcome, bad_positions)
    assert outcome.bad[REASON_COLUMN].to_list() == [reason] * len(bad_positions)
    assert outcome.report["success"] is False
    failed = [e for e in outcome.report["expectations"] if not e["success"]]
    assert [e["reason"] for e in failed] == [reason]
    assert failed[0]["quarantined"] == len(bad_positions)


PASSES = [
    ("percent bounds 0 and 100 are inclusive", setter(0, value=100.0)),
    ("'pct' without a separator is not a percent metric", setter(2, metric="net.bytespct")),
    ("the suffix must end the name", setter(2, metric="net.pct.bytes")),
    ("ts exactly max_future_seconds ahead", setter(3, ts=T0 + timedelta(seconds=600))),
    ("NaN is not null (a summary may be NaN)", setter(4, value=math.nan)),
    ("NaN in a percent metric is not out of range", setter(0, value=math.nan)),
    ("same series, another ts", setter(2, series_id=1, ts=T0 + timedelta(seconds=20))),
]


@pytest.mark.parametrize("edit", [p[1] for p in PASSES], ids=[p[0] for p in PASSES])
def test_edge_values_that_pass(edit: Edit) -> None:
    frame = edited(edit)
    outcome = validate_batch(frame, now=T0)

    assert_partition(frame, outcome, [])


def test_a_batch_without_percent_metrics_has_no_range_limit() -> None:
    frame = frame_of([r for r in ALL_GOOD if "pct" not in r["metric"] and "percent" not in r["metric"]])
    frame = frame.with_columns(pl.lit(1e9).alias("value"))
    outcome = validate_batch(frame, now=T0)

    assert_partition(frame, outcome, [])
    assert outcome.report["percent_metrics"] == 0
    assert expectation(outcome.report, "percent_range")["success"] is True


def test_a_row_failing_several_expectations_names_them_all() -> None:
    frame = edited(setter(0, value=101.0, ts=LATE, type="meter"))
    outcome = validate_batch(frame, now=T0)

    assert_partition(frame, outcome, [0])
    assert outcome.bad[REASON_COLUMN].item() == f"{PERCENT}; {FUTURE}; {UNKNOWN_TYPE}"


def test_max_future_seconds_and_aware_now_in_another_zone() -> None:
    frame = edited(setter(3, ts=T0 + timedelta(seconds=61)))
    now_elsewhere = T0.astimezone(datetime.fromisoformat("2025-03-01T00:00:00+05:30").tzinfo)
    outcome = validate_batch(frame, now=now_elsewhere, max_future_seconds=60)

    assert_partition(frame, outcome, [3])
    assert outcome.bad[REASON_COLUMN].item() == "ts more than 60 s in the future"
    assert outcome.report["newest_allowed_ts"] == (T0 + timedelta(seconds=60)).isoformat()


# --------------------------------------------------------------------------- duplicates


def test_only_later_copies_of_a_duplicate_are_quarantined() -> None:
    def three_copies(rows: list[dict[str, Any]]) -> None:
        rows.insert(2, {**rows[0], "value": 50.0})  # 2nd copy of row 0
        rows.append({**rows[0], "value": 60.0})  # 3rd copy

    frame = edited(three_copies)
    outcome = validate_batch(frame, now=T0)

    assert_partition(frame, outcome, [2, 7])
    assert outcome.good[0, "value"] == 12.5  # the first copy is kept
    entry = expectation(outcome.report, "duplicate")
    assert (entry["success"], entry["unexpected_count"], entry["quarantined"]) == (False, 3, 2)


def test_when_the_first_copy_is_bad_the_first_valid_copy_is_kept() -> None:
    def bad_first(rows: list[dict[str, Any]]) -> None:
        rows.append({**rows[0], "value": 40.0})
        rows.append({**rows[0], "value": 45.0})
        rows[0]["value"] = None

    frame = edited(bad_first)
    outcome = validate_batch(frame, now=T0)

    assert_partition(frame, outcome, [0, 7])
    assert outcome.bad[REASON_COLUMN].to_list() == ["value is null", DUPLICATE]
    assert 40.0 in outcome.good["value"].to_list()


# --------------------------------------------------------------------------- schema and empty input


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda f: f.with_columns(pl.lit("x").alias("host")), "extra ['host']"),
        (lambda f: f.drop("tags"), "missing ['tags']"),
        (lambda f: f.drop("tags").with_columns(pl.lit("{}").alias("labels")), "missing ['tags'], extra ['labels']"),
        (lambda f: f.with_columns(pl.col("ts").dt.cast_time_unit("ns")), "ts: Datetime(time_unit='ns'"),
        (lambda f: f.with_columns(pl.col("series_id").cast(pl.Int32)), "series_id: Int32"),
    ],
    ids=["extra column", "missing column", "renamed column", "ts in ns", "series_id Int32"],
)
def test_a_schema_mismatch_refuses_the_whole_batch(change: Callable[[pl.DataFrame], pl.DataFrame], named: str) -> None:
    frame = change(frame_of(ALL_GOOD))
    with pytest.raises(ValidationError, match=r"^batch columns") as caught:
        validate_batch(frame, now=T0)
    assert named in str(caught.value)
    with pytest.raises(ValidationError):
        check_schema(frame)


def test_column_order_does_not_matter() -> None:
    frame = frame_of(ALL_GOOD).select(reversed(list(SCHEMA)))
    outcome = validate_batch(frame, now=T0)

    assert_partition(frame, outcome, [])
    assert outcome.good.columns == list(reversed(list(SCHEMA)))


def test_an_empty_batch_skips_great_expectations() -> None:
    frame = frame_of([])
    outcome = validate_batch(frame, now=T0)

    assert outcome.good.is_empty()
    assert outcome.bad.is_empty()
    assert outcome.bad.schema == {**SCHEMA, REASON_COLUMN: pl.String()}
    assert outcome.report["success"] is True
    assert outcome.report["skipped"] == "empty batch"
    assert outcome.report["expectations"] == []


def test_negative_max_future_seconds_is_refused() -> None:
    with pytest.raises(ValueError, match="max_future_seconds"):
        validate_batch(frame_of(ALL_GOOD), now=T0, max_future_seconds=-1)


def test_importing_the_module_does_not_import_great_expectations() -> None:
    code = "import sys, storage.validate; print('great_expectations' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert result.stdout.strip() == "False"


# --------------------------------------------------------------------------- quarantine


def test_quarantine_writes_the_bad_rows_and_the_report(tmp_path: Path) -> None:
    def percent_and_duplicate(rows: list[dict[str, Any]]) -> None:
        rows[0]["value"] = 150.0
        rows.append(dict(rows[1]))

    frame = edited(percent_and_duplicate)
    outcome = validate_batch(frame, now=T0)
    folder = tmp_path / "quarantine" / "2025-03-01"

    written = quarantine(outcome, folder, batch_name="batch-0001")

    assert written == folder / "batch-0001.parquet"
    assert sorted(p.name for p in folder.iterdir()) == ["batch-0001.json", "batch-0001.parquet"]
    back = pl.read_parquet(written)
    assert back.equals(outcome.bad)
    assert back[REASON_COLUMN].to_list() == [PERCENT, DUPLICATE]
    report = json.loads((folder / "batch-0001.json").read_text(encoding="utf-8"))
    assert report == outcome.report
    assert report["bad_rows"] == 2


def test_quarantine_of_a_clean_outcome_writes_nothing(tmp_path: Path) -> None:
    outcome = validate_batch(frame_of(ALL_GOOD), now=T0)

    assert quarantine(outcome, tmp_path / "q", batch_name="clean") is None
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "../escape"])
def test_quarantine_refuses_a_batch_name_that_is_not_a_file_name(tmp_path: Path, name: str) -> None:
    outcome = validate_batch(edited(setter(0, value=150.0)), now=T0)
    with pytest.raises(ValueError, match="batch_name"):
        quarantine(outcome, tmp_path, batch_name=name)


# --------------------------------------------------------------------------- against a reference implementation

METRICS = ["cpu_pct", "mem.percent", "disk.pct", "net.bytes", "pctile"]
TYPES = ["counter", "gauge", "histogram", "summary", "timer"]

row_strategy = st.fixed_dictionaries(
    {
        "metric": st.sampled_from(METRICS) | st.none(),
        "series_id": st.integers(0, 3) | st.none(),
        "ts": st.sampled_from([T0, T0 + timedelta(seconds=600), T0 + timedelta(seconds=601)]) | st.none(),
        "value": st.sampled_from([-1.0, 0.0, 50.0, 100.0, 100.5, math.nan]) | st.none(),
        "type": st.sampled_from(TYPES) | st.none(),
        "tags": st.just("{}") | st.none(),
    }
)


def reference_good(frame: pl.DataFrame) -> pl.DataFrame:
    """The rules written plainly in polars: what validate_batch must keep."""
    percent = pl.col("metric").str.ends_with("percent") | pl.col("metric").str.ends_with("_pct")
    percent = percent | pl.col("metric").str.ends_with(".pct")
    value = pl.col("value")
    fails = (
        pl.any_horizontal(pl.all().is_null())
        | (percent & ~value.is_nan() & ((value < 0) | (value > 100)))
        | (pl.col("ts") > T0 + timedelta(seconds=600))
        | ~pl.col("type").is_in(["counter", "gauge", "histogram", "summary"])
    )
    passing = frame.filter(~fails.fill_null(True))
    return passing.filter(pl.struct("series_id", "ts").is_first_distinct())


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(row_strategy, min_size=1, max_size=12))
def test_matches_a_reference_implementation(rows: list[dict[str, Any]]) -> None:
    frame = frame_of(rows)
    outcome = validate_batch(frame, now=T0)

    assert outcome.good.equals(reference_good(frame), null_equal=True)
    assert outcome.good.height + outcome.bad.height == frame.height
    assert outcome.bad[REASON_COLUMN].null_count() == 0
