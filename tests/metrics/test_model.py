"""Tests of metrics.model: validation of points and frames, series identity, timestamps, durations."""

from __future__ import annotations

import json
import math
import struct
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import polars as pl
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metrics.errors import ValidationError
from metrics.model import (
    MetricDataPoint,
    MetricType,
    SampleBatch,
    parse_duration,
    parse_timestamp,
    prepare_frame,
    prepare_points,
    series_id,
)

# A fixed "now": validation is a pure function of it, so every boundary is exact.
NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
RETENTION_DAYS = 90
MAX_FUTURE = 600
GOOD_TS = NOW - timedelta(hours=1)
PLUS_TWO = timezone(timedelta(hours=2))
MINUS_530 = timezone(-timedelta(hours=5, minutes=30))


def run_points(items: list[Any]) -> SampleBatch:
    return prepare_points(items, now=NOW, retention_days=RETENTION_DAYS, max_future_seconds=MAX_FUTURE)


def run_frame(data: pl.DataFrame | pa.Table) -> SampleBatch:
    return prepare_frame(data, now=NOW, retention_days=RETENTION_DAYS, max_future_seconds=MAX_FUTURE)


def spec(
    metric: str = "cpu.usage",
    value: Any = 1.0,
    kind: str = "gauge",
    ts: Any = GOOD_TS,
    tags: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {"metric_id": metric, "value": value, "metric_type": kind, "timestamp": ts, "tags": tags or {}}


def as_frame(items: list[dict[str, Any]]) -> pl.DataFrame:
    """The same points as a frame: ``ts, metric, value, type`` and ``tags`` as JSON text."""
    return pl.DataFrame(
        {
            "ts": [i["timestamp"] for i in items],
            "metric": [i["metric_id"] for i in items],
            "value": [float(i["value"]) for i in items],
            "type": [i["metric_type"] for i in items],
            "tags": [json.dumps(i["tags"]) for i in items],
        },
        schema_overrides={"ts": pl.Datetime("us", "UTC")},
    )


def run(path: str, case: dict[str, Any]) -> SampleBatch:
    """Validate [good, case, good] through ``path``; the case is row 1."""
    items = [spec(value=10.0), case, spec(value=20.0)]
    return run_points(items) if path == "points" else run_frame(as_frame(items))


PATHS = ["points", "frame"]


def vcase(name: str, item: dict[str, Any], reason: str | None, *marks: pytest.MarkDecorator) -> Any:
    return pytest.param(item, reason, id=name, marks=marks)


VALIDATION_CASES: list[Any] = [
    # metric names
    vcase("name: simple", spec(metric="cpu"), None),
    vcase("name: dotted", spec(metric="crypto.key.access_count"), None),
    vcase("name: underscore first", spec(metric="_private.x"), None),
    vcase("name: colons", spec(metric="job:rate:5m"), None),
    vcase("name: mixed case digits", spec(metric="A1_b.C2"), None),
    vcase("name: 255 chars", spec(metric="m" * 255), None),
    vcase("name: empty", spec(metric=""), "metric"),
    vcase("name: digit first", spec(metric="1cpu"), "metric"),
    vcase("name: space", spec(metric="cpu usage"), "metric"),
    vcase("name: dash", spec(metric="cpu-usage"), "metric"),
    vcase("name: slash", spec(metric="cpu/usage"), "metric"),
    vcase("name: dot first", spec(metric=".cpu"), "metric"),
    vcase("name: non-ascii", spec(metric="cpü"), "metric"),
    vcase("name: 256 chars", spec(metric="m" * 256), "longer than 255"),
    vcase("name: trailing newline", spec(metric="cpu.usage\n"), "metric"),
    # values
    *[vcase(f"value: NaN {k}", spec(value=math.nan, kind=k), "NaN") for k in ("counter", "gauge", "histogram")],
    vcase("value: NaN summary", spec(value=math.nan, kind="summary"), None),
    *[
        vcase(f"value: +inf {k}", spec(value=math.inf, kind=k), "infinite")
        for k in ("counter", "gauge", "histogram", "summary")
    ],
    *[
        vcase(f"value: -inf {k}", spec(value=-math.inf, kind=k), "infinite")
        for k in ("counter", "gauge", "histogram", "summary")
    ],
    vcase("value: max float", spec(value=1.7976931348623157e308), None),
    vcase("value: min subnormal", spec(value=5e-324), None),
    vcase("value: negative zero", spec(value=-0.0), None),
    vcase("value: negative counter", spec(value=-3.0, kind="counter"), None),
    # timestamps
    vcase("ts: 600 s ahead", spec(ts=NOW + timedelta(seconds=600)), None),
    vcase("ts: 601 s ahead", spec(ts=NOW + timedelta(seconds=601)), "future"),
    vcase("ts: a day ahead", spec(ts=NOW + timedelta(days=1)), "future"),
    vcase("ts: exactly retention old", spec(ts=NOW - timedelta(days=RETENTION_DAYS)), None),
    vcase("ts: retention + 1 s old", spec(ts=NOW - timedelta(days=RETENTION_DAYS, seconds=1)), "retention"),
    vcase("ts: a year old", spec(ts=NOW - timedelta(days=365)), "retention"),
    # tags
    vcase("tags: 32", spec(tags={f"k{i}": "v" for i in range(32)}), None),
    vcase("tags: 33", spec(tags={f"k{i}": "v" for i in range(33)}), "at most 32"),
    vcase("tags: key 64 chars", spec(tags={"k" * 64: "v"}), None),
    vcase("tags: key 65 chars", spec(tags={"k" * 65: "v"}), "longer than 64"),
    vcase("tags: value 256 chars", spec(tags={"k": "v" * 256}), None),
    vcase("tags: value 257 chars", spec(tags={"k": "v" * 257}), "longer than 256"),
    vcase("tags: empty value", spec(tags={"k": ""}), None),
    vcase("tags: int value", spec(tags={"k": 5}), "must be a string"),
    vcase("tags: list value", spec(tags={"k": ["a"]}), "must be a string"),
    vcase("tags: key with dash and dot", spec(tags={"a-b.c_d": "x"}), None),
    vcase("tags: key with space", spec(tags={"bad key": "x"}), "key"),
    vcase("tags: key digit first", spec(tags={"1abc": "x"}), "key"),
    vcase("tags: key with slash", spec(tags={"a/b": "x"}), "key"),
    vcase("tags: key with colon", spec(tags={"a:b": "x"}), "key"),
    vcase("tags: empty key", spec(tags={"": "x"}), "key"),
    vcase("tags: non-ascii key", spec(tags={"ключ": "x"}), "key"),
    vcase("tags: key trailing newline", spec(tags={"host\n": "x"}), "key"),
    # types
    vcase("type: counter upper case", spec(kind="COUNTER"), None),
    vcase("type: histogram", spec(kind="histogram"), None),
    vcase("type: unknown", spec(kind="timer"), "type"),
    vcase("type: unknown untyped", spec(kind="untyped"), "type"),
]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("case", "reason"), VALIDATION_CASES)
def test_validation(path: str, case: dict[str, Any], reason: str | None) -> None:
    batch = run(path, case)
    if reason is not None:
        assert batch.stored == 2
        assert [r.index for r in batch.rejected] == [1]
        assert reason in batch.rejected[0].reason, batch.rejected[0].reason
        assert sorted(batch.frame.get_column("value").to_list()) == [10.0, 20.0]
        return
    assert batch.rejected == []
    assert batch.stored == 3
    frame = batch.frame.with_columns(pl.col("metric", "type", "tags").cast(pl.String))
    row = frame.filter(~pl.col("value").is_in([10.0, 20.0])).row(0, named=True)
    assert row["metric"] == case["metric_id"]
    assert row["type"] == case["metric_type"].lower()
    assert row["ts"] == case["timestamp"]
    assert json.loads(row["tags"]) == case["tags"]
    assert bits(row["value"]) == bits(float(case["value"]))


def test_rejections_keep_their_input_index_and_order() -> None:
    items = [
        spec(metric="bad name"),
        spec(value=1.0),
        {"metric_id": "x.y"},  # no value
        spec(value=math.inf),
        "not an object",
        spec(value=2.0),
        spec(ts=NOW + timedelta(hours=1)),
    ]
    batch = run_points(items)
    assert [r.index for r in batch.rejected] == [0, 2, 3, 4, 6]
    assert batch.frame.get_column("value").to_list() == [1.0, 2.0]
    assert [r.to_dict()["index"] for r in batch.rejected] == [0, 2, 3, 4, 6]
    assert "value" in batch.rejected[1].reason
    assert "expected an object" in batch.rejected[3].reason


@pytest.mark.parametrize("value", [True, "1.5", None, [1.0]])
def test_spec_dict_values_must_be_numbers(value: Any) -> None:
    batch = run_points([spec(value=value)])
    assert batch.stored == 0
    assert "value" in batch.rejected[0].reason


def test_metric_data_point_rejects_an_unknown_type() -> None:
    with pytest.raises(ValidationError, match="type: unknown metric type 'timer'"):
        MetricDataPoint(metric_id="a.b", value=1.0, metric_type="timer")  # type: ignore[arg-type]
    assert MetricDataPoint(metric_id="a.b", value=1.0, metric_type="Summary").metric_type is MetricType.SUMMARY  # type: ignore[arg-type]


def test_frame_tag_columns_become_tags() -> None:
    frame = pl.DataFrame(
        {
            "timestamp": [GOOD_TS, GOOD_TS],
            "metric_id": ["a.b", "a.b"],
            "value": [1, 2],
            "host": ["web-1", None],
            "shard": [7, 8],
        },
        schema_overrides={"timestamp": pl.Datetime("us", "UTC")},
    )
    batch = run_frame(frame)
    assert batch.rejected == []
    assert sorted(batch.frame.get_column("tags").cast(pl.String).to_list()) == [
        '{"host":"web-1","shard":"7"}',
        '{"shard":"8"}',
    ]
    assert batch.frame.get_column("type").cast(pl.String).to_list() == ["gauge", "gauge"]


# --- series identity ---------------------------------------------------------------

KEY_TAGS = {"key_type": "encryption", "algorithm": "AES-256"}


def test_series_id_is_pinned() -> None:
    # Hard-coded once: a change in the hashing would orphan every stored series.
    assert series_id("crypto.key.access_count", KEY_TAGS) == 2215889718935577334
    assert series_id("crypto.key.access_count", {}) == -8209425437654620702
    assert series_id("cpu.usage", {"host": "web-1", "region": "eu"}) == -1874838967829130165


def test_series_id_ignores_tag_order_and_accepts_canonical_text() -> None:
    reordered = {"algorithm": "AES-256", "key_type": "encryption"}
    assert series_id("crypto.key.access_count", reordered) == series_id("crypto.key.access_count", KEY_TAGS)
    canonical = '{"algorithm":"AES-256","key_type":"encryption"}'
    assert series_id("crypto.key.access_count", canonical) == series_id("crypto.key.access_count", KEY_TAGS)


@pytest.mark.parametrize(
    ("metric", "tags"),
    [
        ("crypto.key.access_count2", KEY_TAGS),
        ("crypto.key.access_count", {**KEY_TAGS, "algorithm": "AES-128"}),
        ("crypto.key.access_count", {"key_type": "encryption"}),
        ("crypto.key.access_count", {**KEY_TAGS, "extra": ""}),
        ("crypto.key.access_count", {"key_type": "encryption", "Algorithm": "AES-256"}),
    ],
)
def test_series_id_differs_for_a_different_series(metric: str, tags: dict[str, str]) -> None:
    assert series_id(metric, tags) != series_id("crypto.key.access_count", KEY_TAGS)


def test_series_id_is_the_same_through_points_and_frames() -> None:
    points = run_points(
        [
            spec(metric="crypto.key.access_count", tags=KEY_TAGS),
            spec(metric="crypto.key.access_count", tags={"algorithm": "AES-256", "key_type": "encryption"}),
        ]
    )
    wide = run_frame(
        pl.DataFrame(
            {
                "ts": [GOOD_TS],
                "metric": ["crypto.key.access_count"],
                "value": [1.0],
                "algorithm": ["AES-256"],
                "key_type": ["encryption"],
            },
            schema_overrides={"ts": pl.Datetime("us", "UTC")},
        )
    )
    expected = series_id("crypto.key.access_count", KEY_TAGS)
    assert points.frame.get_column("series_id").to_list() == [expected, expected]
    assert wide.frame.get_column("series_id").to_list() == [expected]
    assert wide.frame.get_column("tags").cast(pl.String).to_list() == [
        '{"algorithm":"AES-256","key_type":"encryption"}'
    ]


# --- timestamps ----------------------------------------------------------------------

T_US = GOOD_TS.replace(microsecond=654_321)
T_MS = GOOD_TS.replace(microsecond=123_000)
T_S = GOOD_TS
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def micros(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(microseconds=1)


TIMESTAMP_CASES = [
    ("iso Z", T_US.isoformat().replace("+00:00", "Z"), T_US),
    ("iso +00:00", T_US.isoformat(), T_US),
    ("iso +02:00", T_US.astimezone(PLUS_TWO).isoformat(), T_US),
    ("iso -05:30", T_MS.astimezone(MINUS_530).isoformat(), T_MS),
    ("iso naive is UTC", T_US.replace(tzinfo=None).isoformat(), T_US),
    ("iso space Z", T_S.strftime("%Y-%m-%d %H:%M:%SZ"), T_S),
    ("iso space +02:00", T_S.astimezone(PLUS_TWO).strftime("%Y-%m-%d %H:%M:%S%z"), T_S),
    ("epoch s int", micros(T_S) // 1_000_000, T_S),
    ("epoch s float", micros(T_US) / 1e6, T_US),
    ("epoch ms int", micros(T_MS) // 1000, T_MS),
    ("epoch us int", micros(T_US), T_US),
    ("epoch ns int", micros(T_US) * 1000, T_US),
    ("epoch s text", str(micros(T_S) // 1_000_000), T_S),
    ("epoch s float text", f"{micros(T_MS) / 1e6:.3f}", T_MS),
    ("epoch ms text", str(micros(T_MS) // 1000), T_MS),
    ("epoch us text", str(micros(T_US)), T_US),
]


@pytest.mark.parametrize(("raw", "expected"), [pytest.param(r, e, id=i) for i, r, e in TIMESTAMP_CASES])
def test_parse_timestamp(raw: Any, expected: datetime) -> None:
    parsed = parse_timestamp(raw)
    assert parsed == expected
    assert parsed.tzinfo is not None
    assert parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize(("raw", "expected"), [pytest.param(r, e, id=i) for i, r, e in TIMESTAMP_CASES])
def test_timestamps_through_points(raw: Any, expected: datetime) -> None:
    batch = run_points([spec(ts=raw)])
    assert batch.rejected == []
    assert batch.frame.get_column("ts").to_list() == [expected]


@pytest.mark.parametrize(("raw", "expected"), [pytest.param(r, e, id=i) for i, r, e in TIMESTAMP_CASES])
def test_timestamps_through_frames(raw: Any, expected: datetime) -> None:
    frame = pl.DataFrame({"ts": [raw], "metric": ["a.b"], "value": [1.0]})
    batch = run_frame(frame)
    assert batch.rejected == []
    assert batch.frame.get_column("ts").to_list() == [expected]


def test_frame_datetime_columns_naive_is_utc_and_aware_is_converted() -> None:
    naive = pl.DataFrame({"ts": [T_US.replace(tzinfo=None)], "metric": ["a.b"], "value": [1.0]})
    aware = pl.DataFrame({"ts": [T_US]}).with_columns(pl.col("ts").dt.convert_time_zone("Asia/Tokyo"))
    aware = aware.with_columns(metric=pl.lit("a.b"), value=pl.lit(1.0))
    millis = pa.table({"ts": pa.array([micros(T_MS) // 1000], pa.timestamp("ms")), "metric": ["a.b"], "value": [1.0]})
    for data in (naive, aware):
        assert run_frame(data).frame.get_column("ts").to_list() == [T_US]
    assert run_frame(millis).frame.get_column("ts").to_list() == [T_MS]


def test_metric_data_point_naive_datetime_is_local_time() -> None:
    naive = T_US.astimezone().replace(tzinfo=None)  # this machine's wall clock
    assert MetricDataPoint(metric_id="a.b", value=1.0, timestamp=naive).timestamp == T_US
    assert MetricDataPoint(metric_id="a.b", value=1.0, timestamp=T_US.astimezone(PLUS_TWO)).timestamp == T_US


@pytest.mark.parametrize("raw", ["yesterday", "2025-13-01T00:00:00Z", "", "12:00", True, [1], 1e30])
def test_bad_timestamps_are_rejected(raw: Any) -> None:
    with pytest.raises(ValidationError, match="timestamp"):
        parse_timestamp(raw)
    batch = run_points([spec(ts=raw)]) if raw != "" else run_points([spec(ts="not a time")])
    assert batch.stored == 0
    assert "timestamp" in batch.rejected[0].reason


@pytest.mark.parametrize("raw", ["yesterday", "2025-13-01T00:00:00Z", "", "12:00"])
def test_bad_timestamp_texts_reject_their_frame_row(raw: str) -> None:
    frame = pl.DataFrame({"ts": [raw, T_S.isoformat()], "metric": ["a.b", "a.b"], "value": [1.0, 2.0]})
    batch = run_frame(frame)
    assert [r.index for r in batch.rejected] == [0]
    assert "timestamp" in batch.rejected[0].reason
    assert batch.frame.get_column("value").to_list() == [2.0]


# --- durations -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("5m", timedelta(minutes=5)),
        ("1h", timedelta(hours=1)),
        ("90d", timedelta(days=90)),
        ("2w", timedelta(weeks=2)),
        ("1.5h", timedelta(minutes=90)),
        ("250ms", timedelta(milliseconds=250)),
        ("10us", timedelta(microseconds=10)),
        ("45", timedelta(seconds=45)),
        (" 5m ", timedelta(minutes=5)),
        ("5 m", timedelta(minutes=5)),
        (10, timedelta(seconds=10)),
        (0.5, timedelta(milliseconds=500)),
        (timedelta(hours=3), timedelta(hours=3)),
    ],
)
def test_parse_duration(raw: Any, expected: timedelta) -> None:
    assert parse_duration(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "abc",
        "5x",
        "-5m",
        "0s",
        "0",
        "",
        "1h30m",
        "m",
        "5 mins",
        "1e3s",
        -5,
        0,
        math.nan,
    ],
)
def test_parse_duration_rejects(raw: Any) -> None:
    with pytest.raises(ValidationError, match="duration"):
        parse_duration(raw)


# --- property: an accepted point reads back unchanged ---------------------------------------

metric_names = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_.:]{0,60}", fullmatch=True)
tag_keys = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_.\-]{0,63}", fullmatch=True)
tag_sets = st.dictionaries(tag_keys, st.text(max_size=256), max_size=6)
moments = st.datetimes(
    min_value=(NOW - timedelta(days=RETENTION_DAYS + 2)).replace(tzinfo=None),
    max_value=(NOW + timedelta(hours=1)).replace(tzinfo=None),
    timezones=st.sampled_from([UTC, PLUS_TWO, MINUS_530]),
)


def bits(value: float) -> int:
    return int.from_bytes(struct.pack("<d", value), "little")


@settings(max_examples=300, deadline=None, database=None)
@given(
    metric=metric_names,
    value=st.floats(allow_nan=True, allow_infinity=True),
    kind=st.sampled_from(list(MetricType)),
    ts=moments,
    tags=tag_sets,
)
def test_accepted_points_read_back_unchanged(
    metric: str, value: float, kind: MetricType, ts: datetime, tags: dict[str, str]
) -> None:
    point = MetricDataPoint(metric_id=metric, value=value, metric_type=kind, timestamp=ts, tags=tags)
    batch = run_points([point])
    finite_ok = math.isfinite(value) or (math.isnan(value) and kind is MetricType.SUMMARY)
    in_time = NOW - timedelta(days=RETENTION_DAYS) <= ts <= NOW + timedelta(seconds=MAX_FUTURE)
    assert batch.stored == (1 if finite_ok and in_time else 0), batch.rejected
    if not batch.stored:
        assert len(batch.rejected) == 1
        return
    row = batch.frame.row(0, named=True)
    assert row["metric"] == metric
    assert bits(row["value"]) == bits(value)
    assert row["type"] == kind.value
    assert row["ts"] == ts
    assert json.loads(row["tags"]) == tags
    assert row["series_id"] == series_id(metric, tags)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"metric_id": 123, "value": 1.0}, "metric_id"),
        ({"metric_id": "a.b", "value": "1"}, "value"),
        ({"metric_id": "a.b", "value": 10**400}, "value"),
        ({"metric_id": "a.b", "value": 1.0, "tags": ["x"]}, "tags"),
    ],
)
def test_a_malformed_point_is_a_validation_error(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        MetricDataPoint(**kwargs)


def test_a_tag_list_without_key_value_pairs_rejects_only_its_row() -> None:
    now = datetime.now(UTC)
    frame = pl.DataFrame({"ts": [now, now], "metric": ["a.b", "a.b"], "value": [1.0, 2.0], "tags": ['["x"]', "{}"]})
    batch = prepare_frame(frame, now=now, retention_days=90)
    assert batch.frame.height == 1
    assert [r.index for r in batch.rejected] == [0]
