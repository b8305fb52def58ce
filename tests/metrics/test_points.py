"""The spec-dict fast path (metrics.points) stores exactly what the row-by-row path stores, and refuses alike."""

from __future__ import annotations

import json
import math
import struct
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metrics import points
from metrics.errors import ValidationError
from metrics.model import (
    SORT_KEY,
    MetricDataPoint,
    MetricType,
    SampleBatch,
    canonical_tags,
    parse_timestamp,
    prepare_points,
    prepare_points_rowwise,
)

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
RETENTION_DAYS = 90
T = NOW - timedelta(minutes=30, microseconds=345_678)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
T_US = (T - EPOCH) // timedelta(microseconds=1)
PLUS_0530 = timezone(timedelta(hours=5, minutes=30))


def row(
    metric: Any = "cpu.usage", value: Any = 1.5, kind: Any = "gauge", ts: Any = T, tags: Any = None
) -> dict[str, Any]:
    item: dict[str, Any] = {"metric_id": metric, "value": value, "metric_type": kind, "timestamp": ts}
    if tags is not None:
        item["tags"] = tags
    return item


def both(items: list[Any]) -> tuple[SampleBatch, SampleBatch]:
    """The batch through the fast path (``prepare_points`` on dicts) and through the reference path."""
    limits = {"now": NOW, "retention_days": RETENTION_DAYS, "max_future_seconds": 600}
    fast = points.prepare_dicts(items, **limits)
    assert prepare_points(items, **limits).rejected == fast.rejected  # lists of dicts take the fast path
    return fast, prepare_points_rowwise(items, **limits)


def rows_of(batch: SampleBatch) -> list[tuple[Any, ...]]:
    """The stored rows as comparable tuples (value by its bits, so NaN and -0.0 compare exactly)."""
    frame = batch.frame.with_columns(pl.col("metric", "type", "tags").cast(pl.String))
    return sorted(
        (r["metric"], r["series_id"], r["ts"], struct.pack("<d", r["value"]), r["type"], r["tags"])
        for r in frame.iter_rows(named=True)
    )


def assert_same(items: list[Any]) -> SampleBatch:
    fast, slow = both(items)
    assert [(r.index, r.reason) for r in fast.rejected] == [(r.index, r.reason) for r in slow.rejected]
    assert rows_of(fast) == rows_of(slow)
    assert fast.frame.schema == slow.frame.schema
    keys = fast.frame.with_columns(pl.col("metric").cast(pl.String)).select(SORT_KEY)
    assert keys.equals(keys.sort(SORT_KEY)), "the fast path's rows are not in lake order"
    return fast


CASES: dict[str, list[Any]] = {
    "clean batch": [row(metric=f"m.{i % 3}", value=i * 0.5, tags={"host": f"h{i % 4}"}) for i in range(40)],
    "empty": [],
    "iso forms": [
        row(ts=T.isoformat()),
        row(ts=T.isoformat().replace("+00:00", "Z")),
        row(ts=T.replace(tzinfo=None).isoformat()),
        row(ts=T.astimezone(PLUS_0530).isoformat()),
        row(ts=T.strftime("%Y-%m-%d %H:%M:%S")),
        row(ts=T.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"),
        row(ts=T.strftime("%Y%m%dT%H%M%S")),
        row(ts=" " + T.isoformat() + " "),
        row(ts=T.isoformat().replace("+00:00", "z")),
        row(ts=T.isoformat() + "\x00"),
        row(ts=T.strftime("%Y-%m-%dT%H:%M:%S.%f") + "789"),
    ],
    "all naive": [row(ts=(T + timedelta(seconds=i)).replace(tzinfo=None).isoformat()) for i in range(5)],
    "all +05:30": [row(ts=(T + timedelta(seconds=i)).astimezone(PLUS_0530).isoformat()) for i in range(5)],
    "epochs": [
        row(ts=T_US // 1_000_000),
        row(ts=T_US / 1e6),
        row(ts=T_US // 1000),
        row(ts=T_US / 1000),
        row(ts=T_US),
        row(ts=T_US * 1000 + 789),
        row(ts=float(T_US * 1000 + 500)),
        row(ts=str(T_US // 1000)),
        row(ts=f"{T_US / 1e6:.6f}"),
        row(ts=-1.5),
        row(ts=0),
        row(ts=1e300),
        row(ts=10**400),
        row(ts=math.nan),
        row(ts=math.inf),
    ],
    "bad and odd timestamps": [
        row(ts="yesterday"),
        row(ts=""),
        row(ts="2025-13-01T00:00:00Z"),
        row(ts="2025-06-01T24:00:00"),
        row(ts="0001-01-01T00:00:00+05:00"),
        row(ts="9999-12-31T23:59:59-05:00"),
        row(ts=True),
        row(ts=False),
        row(ts=[1]),
        row(ts={"t": 1}),
        row(ts=None),
        row(ts=np.int64(T_US // 1000)),
        row(ts=np.float64(T_US / 1e6)),
        row(ts=T),
        row(ts=T.astimezone(PLUS_0530)),
        row(ts=T.astimezone().replace(tzinfo=None)),  # naive datetime: local time
        row(ts=NOW + timedelta(seconds=601)),
        row(ts=(NOW + timedelta(seconds=600)).isoformat()),
        row(ts=(NOW - timedelta(days=RETENTION_DAYS)).isoformat()),
        row(ts=(NOW - timedelta(days=RETENTION_DAYS, microseconds=1)).isoformat()),
    ],
    "tags": [
        row(),
        row(tags={}),
        row(tags=None),
        row(tags=[]),
        row(tags=""),
        row(tags="host=a"),
        row(tags=["host", "a"]),
        row(tags={"host": "a", "region": "eu"}),
        row(tags={"region": "eu", "host": "a"}),
        row(tags={"host": 5}),
        row(tags={"host": 5.0}),
        row(tags={"host": True}),
        row(tags={"host": None}),
        row(tags={"host": ["a"]}),
        row(tags={"host": {"nested": "x"}}),
        row(tags={5: "x"}),
        row(tags={"bad key": "x"}),
        row(tags={"k" * 65: "x"}),
        row(tags={"k": "v" * 257}),
        row(tags={f"k{i}": "v" for i in range(33)}),
        row(tags={f"k{i}": "v" for i in range(32)}),
        row(tags={"u": "ünïcødé ✓ 🔑", "c": "tab\tnew\nline\x01\x7f", "q": 'quote" back\\'}),
        row(tags={"s": "line\u2028sep\u2029"}),
        row(tags={"s": "lone \ud800 surrogate"}),
    ],
    "values": [
        row(value=0),
        row(value=-3),
        row(value=2**63 + 1),
        row(value=10**400),
        row(value=-0.0),
        row(value=5e-324),
        row(value=1.7976931348623157e308),
        row(value=math.nan),
        row(value=math.nan, kind="summary"),
        row(value=math.inf),
        row(value=-math.inf, kind="summary"),
        row(value=True),
        row(value=False),
        row(value="1.5"),
        row(value=None),
        row(value=[1.0]),
        row(value=np.float64(2.5)),
        row(value=np.int64(7)),
        {"metric_id": "no.value"},
    ],
    "values all numbers, one too large": [row(value=v) for v in (1, 2.5, 10**400, 4)],
    "metrics and types": [
        row(metric=""),
        row(metric="1cpu"),
        row(metric="cpu usage"),
        row(metric="m" * 255),
        row(metric="m" * 256),
        row(metric=5),
        row(metric=True),
        row(metric=None),
        {"value": 1.0, "timestamp": T},
        row(kind="COUNTER"),
        row(kind=" Summary "),
        row(kind="timer"),
        row(kind=None),
        row(kind=""),
        row(kind=5),
        row(kind=["gauge"]),
        row(kind=MetricType.HISTOGRAM),
        {"metric_id": "typed", "value": 1.0, "timestamp": T, "type": "counter"},
        {"metric_id": "typed", "value": 1.0, "timestamp": T, "metric_type": "", "type": "COUNTER"},
    ],
    "not dicts": [
        row(value=1.0),
        "not an object",
        None,
        [1, 2],
        MetricDataPoint(metric_id="from.object", value=3.0, timestamp=T),
        row(value=2.0),
    ],
    "one series many ways, lake order": [
        row(metric="b.m", value=1.0, ts=T + timedelta(seconds=3), tags={"x": "1", "y": "2"}),
        row(metric="b.m", value=2.0, ts=T + timedelta(seconds=1), tags={"y": "2", "x": "1"}, kind="GAUGE"),
        row(metric="b.m", value=math.nan, ts=T + timedelta(seconds=2), tags={"x": "1", "y": "2"}, kind="summary"),
        row(metric="a.m", value=4.0, ts=T, tags={"x": "1"}),
        row(metric="b.m", value=5.0, ts=T, tags={"x": "1"}),
        row(metric="b.m", value=6.0, ts=T + timedelta(seconds=2), tags={"x": "1", "y": "2"}),
    ],
    "duplicates": [row(value=float(i)) for i in range(3)] + [row(value=1.0)],
}


@pytest.mark.parametrize("name", list(CASES))
def test_fast_path_matches_the_row_by_row_path(name: str) -> None:
    assert_same(CASES[name])


def test_all_cases_in_one_batch() -> None:
    mixed = [item for case in CASES.values() for item in case]
    batch = assert_same(mixed)
    assert batch.stored > 0
    assert batch.rejected


def test_the_fast_path_takes_the_clean_rows_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    rowwise = points.prepare_points_rowwise

    def spy(items: list[Any], **kwargs: Any) -> SampleBatch:
        seen.append(len(items))
        return rowwise(items, **kwargs)

    monkeypatch.setattr(points, "prepare_points_rowwise", spy)
    batch = points.prepare_dicts(CASES["clean batch"], now=NOW, retention_days=RETENTION_DAYS)
    assert batch.stored == 40
    assert seen == []
    items = [*CASES["clean batch"], row(value=math.inf), row(metric="bad name")]
    batch = points.prepare_dicts(items, now=NOW, retention_days=RETENTION_DAYS)
    assert seen == [2]  # only the two bad rows went the slow way
    assert [(r.index, r.reason.split(":")[0]) for r in batch.rejected] == [(40, "value"), (41, "metric")]


def test_repeated_batches_use_cached_series_facts_and_stay_equal() -> None:
    items = CASES["tags"] + CASES["metrics and types"]
    first = assert_same(items)
    again = assert_same(items)
    assert rows_of(first) == rows_of(again)


def test_a_missing_timestamp_is_now() -> None:
    before = datetime.now(UTC)
    batch = points.prepare_dicts([{"metric_id": "a.b", "value": 1.0}], now=datetime.now(UTC), retention_days=1)
    (stamp,) = batch.frame.get_column("ts").to_list()
    assert before <= stamp <= datetime.now(UTC)


# --- properties ------------------------------------------------------------------------

texts = st.text(st.characters(codec="utf-8"), max_size=12)
tag_values = st.one_of(texts, texts, st.integers(), st.none(), st.booleans(), st.just(["x"]))
tag_keys = st.one_of(
    st.sampled_from(["host", "region", "key_id", "Host"]),
    st.from_regex(r"[a-z_][a-z0-9_.\-]{0,8}", fullmatch=True),
    texts,
)
moments = st.datetimes(
    min_value=datetime(2025, 2, 1), max_value=datetime(2025, 6, 1, 12, 20), timezones=st.sampled_from([UTC, PLUS_0530])
)
stamps = st.one_of(
    moments.map(lambda m: m.isoformat()),
    moments.map(lambda m: m.isoformat().replace("+00:00", "Z")),
    moments.map(lambda m: m.replace(tzinfo=None).isoformat()),
    moments.map(lambda m: m.timestamp()),
    moments.map(lambda m: int(m.timestamp() * 1000)),
    moments.map(lambda m: (m - EPOCH) // timedelta(microseconds=1)),
    moments.map(lambda m: (m - EPOCH) // timedelta(microseconds=1) * 1000 + 499),
    moments,
    st.none(),
    texts,
    st.floats(allow_nan=True),
    st.integers(),
)
values = st.one_of(st.floats(), st.floats(), st.integers(), st.booleans(), st.none(), texts)
kinds = st.one_of(st.sampled_from(["gauge", "counter", "summary", "histogram", "COUNTER", "timer"]), st.none(), texts)
metrics = st.one_of(st.sampled_from(["cpu.usage", "mem.used", "a:b_c"]), texts, st.integers())
spec_dicts = st.fixed_dictionaries(
    {"metric_id": metrics, "value": values, "timestamp": stamps},
    optional={
        "metric_type": kinds,
        "type": kinds,
        "tags": st.one_of(st.dictionaries(tag_keys, tag_values, max_size=4), st.none(), texts),
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(spec_dicts, spec_dicts, spec_dicts, st.integers(), st.none()), max_size=12))
def test_property_fast_path_equals_row_by_row_path(items: list[Any]) -> None:
    assert_same(items)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_.\-]{0,20}", fullmatch=True), st.text(max_size=40), max_size=6)
)
def test_property_orjson_tag_text_is_canonical_tags(tags: dict[str, str]) -> None:
    assert points._tag_text(tuple(tags.items()), set()) == canonical_tags(tags)
    assert json.loads(canonical_tags(tags)) == tags


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(
        st.floats(min_value=-6e10, max_value=2.5e11),
        st.floats(min_value=1e11, max_value=2e18),
        st.integers(-(10**11), 2 * 10**18),
    )
)
def test_property_epoch_numbers_round_like_datetime(number: float) -> None:
    try:
        expected = (parse_timestamp(number) - EPOCH) // timedelta(microseconds=1)
    except ValidationError:
        expected = points._UNREAD
    assert points._stamp(number) == expected
