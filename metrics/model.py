"""The data model: a sample, its type, its series identity and how input is validated.

A sample is ``ts`` (UTC, microseconds), ``metric`` (dotted name), ``value``
(float64), ``type`` (counter, gauge, histogram, summary) and ``tags``
(string -> string). A series is a metric plus its full tag set; its
``series_id`` is a stable signed 64-bit BLAKE2b hash of the metric and the
canonical (key-sorted, compact JSON) tags.

Value policy: NaN and +/-inf are rejected for counters, gauges and histograms;
a summary may carry NaN (Prometheus reports a quantile with no observations
as NaN) but never an infinity.

Time policy: a timestamp more than ``max_future_seconds`` (default 600) ahead
of now, or older than the retention period, is rejected. Naive ``datetime``
objects given to the Python API are local time and converted to UTC; naive
timestamps in files and frames are taken as UTC.

This module is the bottom layer: it imports nothing else of the system but
``metrics.errors`` and ``metrics.timestamps`` (whose helpers it re-exports),
and, when a list of spec dicts arrives, ``metrics.points``, its column-wise
fast path (which builds on this module and falls back to it row by row).
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from metrics.errors import ValidationError
from metrics.timestamps import (  # noqa: F401  (re-exported: the model's public time helpers)
    TS_DTYPE,
    TS_UNIT,
    parse_duration,
    parse_timestamp,
    parse_timestamp_column,
    to_utc,
)

METRIC_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_.:]*$")  # used with fullmatch: no trailing newline
TAG_KEY_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_.\-]*$")
MAX_METRIC_LENGTH = 255
MAX_TAGS = 32
MAX_TAG_KEY_LENGTH = 64
MAX_TAG_VALUE_LENGTH = 256


class MetricType(enum.StrEnum):
    """The four Prometheus metric types."""

    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"
    SUMMARY = "summary"

    @classmethod
    def parse(cls, value: str | MetricType) -> MetricType:
        """Return the type named by ``value`` (case-insensitive)."""
        if isinstance(value, MetricType):
            return value
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            allowed = ", ".join(t.value for t in cls)
            raise ValidationError(f"type: unknown metric type {value!r}; allowed: {allowed}") from None


METRIC_TYPES = tuple(t.value for t in MetricType)

# The Arrow schema of a sample as stored in the lake (``samples`` table).
SAMPLE_SCHEMA = pa.schema(
    [
        pa.field("metric", pa.string(), nullable=False),
        pa.field("series_id", pa.int64(), nullable=False),
        pa.field("ts", pa.timestamp(TS_UNIT, tz="UTC"), nullable=False),
        pa.field("value", pa.float64(), nullable=False),
        pa.field("type", pa.string(), nullable=False),
        pa.field("tags", pa.string(), nullable=False),
    ]
)
SAMPLE_COLUMNS = tuple(SAMPLE_SCHEMA.names)
POLARS_SAMPLE_SCHEMA: dict[str, pl.DataType] = {
    "metric": pl.String(),
    "series_id": pl.Int64(),
    "ts": TS_DTYPE,
    "value": pl.Float64(),
    "type": pl.String(),
    "tags": pl.String(),
}
SORT_KEY = ("metric", "series_id", "ts")


def canonical_tags(tags: Mapping[str, str]) -> str:
    """The canonical text of a tag set: compact JSON with sorted keys."""
    return json.dumps(dict(sorted(tags.items())), separators=(",", ":"), ensure_ascii=False)


def series_id(metric: str, tags: Mapping[str, str] | str) -> int:
    """Stable signed 64-bit id of a series (metric plus full tag set)."""
    text = tags if isinstance(tags, str) else canonical_tags(tags)
    digest = hashlib.blake2b(f"{metric}\x1f{text}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def check_tags(tags: Mapping[str, Any]) -> str | None:
    """Return why a tag set is invalid, or None when it is fine."""
    if len(tags) > MAX_TAGS:
        return f"tags: {len(tags)} tags, at most {MAX_TAGS} allowed"
    for key, value in tags.items():
        if not isinstance(key, str) or not TAG_KEY_RE.fullmatch(key):
            return f"tags: key {key!r} must match {TAG_KEY_RE.pattern}"
        if len(key) > MAX_TAG_KEY_LENGTH:
            return f"tags: key {key[:20]!r}... longer than {MAX_TAG_KEY_LENGTH} characters"
        if not isinstance(value, str):
            return f"tags: value of {key!r} must be a string, got {type(value).__name__}"
        if len(value) > MAX_TAG_VALUE_LENGTH:
            return f"tags: value of {key!r} longer than {MAX_TAG_VALUE_LENGTH} characters"
        if not value.isascii() and not _is_unicode_text(value):
            return f"tags: value of {key!r} is not valid Unicode text (a lone surrogate)"
    return None


def _is_unicode_text(text: str) -> bool:
    """False for strings holding lone surrogates (Python allows them; UTF-8, Arrow and the lake do not)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


@dataclass
class MetricDataPoint:
    """One sample as the original spec's Python API and JSON batch shape it."""

    metric_id: str
    value: float
    metric_type: MetricType = MetricType.GAUGE
    timestamp: datetime | None = None
    tags: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.metric_id, str):
            raise ValidationError(f"metric_id: expected text, got {type(self.metric_id).__name__}")
        if isinstance(self.value, bool) or not isinstance(self.value, int | float):
            raise ValidationError(f"value: expected a number, got {self.value!r}")
        try:
            self.value = float(self.value)
        except OverflowError:
            raise ValidationError(f"value: {self.value!r} is too large for a 64-bit float") from None
        self.metric_type = MetricType.parse(self.metric_type)
        if self.timestamp is None:
            self.timestamp = datetime.now(UTC)
        elif isinstance(self.timestamp, datetime):
            self.timestamp = to_utc(self.timestamp)
        else:
            self.timestamp = parse_timestamp(self.timestamp)
        if self.tags is not None and not isinstance(self.tags, Mapping):
            raise ValidationError(f"tags: expected an object of strings, got {type(self.tags).__name__}")
        self.tags = dict(self.tags or {})

    @classmethod
    def from_dict(cls, item: Mapping[str, Any]) -> MetricDataPoint:
        """Build a point from one element of the spec's ``{"metrics": [...]}`` batch."""
        if not isinstance(item, Mapping):
            raise ValidationError(f"expected an object, got {type(item).__name__}")
        missing = [k for k in ("metric_id", "value") if k not in item]
        if missing:
            raise ValidationError(f"{missing[0]}: required field is missing")
        value = item["value"]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValidationError(f"value: expected a number, got {value!r}")
        tags = item.get("tags") or {}
        if not isinstance(tags, Mapping):
            raise ValidationError(f"tags: expected an object of strings, got {type(tags).__name__}")
        try:
            number = float(value)
        except OverflowError:
            raise ValidationError(f"value: {value!r} is too large for a 64-bit float") from None
        return cls(
            metric_id=str(item["metric_id"]),
            value=number,
            metric_type=MetricType.parse(item.get("metric_type") or item.get("type") or "gauge"),
            timestamp=parse_timestamp(item["timestamp"]) if item.get("timestamp") is not None else None,
            tags=dict(tags),
        )

    def to_dict(self) -> dict[str, Any]:
        """The point in the spec's JSON shape."""
        assert self.timestamp is not None
        return {
            "metric_id": self.metric_id,
            "value": self.value,
            "metric_type": self.metric_type.value,
            "timestamp": self.timestamp.isoformat(),
            "tags": dict(self.tags),
        }


@dataclass(frozen=True)
class Rejection:
    """One input row that was not stored: its index in the input and why."""

    index: int
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"index": self.index, "reason": self.reason}


@dataclass
class SampleBatch:
    """A validated, normalised batch: the rows to store and the rows refused."""

    frame: pl.DataFrame
    rejected: list[Rejection] = field(default_factory=list)

    @property
    def stored(self) -> int:
        """How many rows are valid."""
        return self.frame.height


def points_to_frame(points: Iterable[MetricDataPoint | Mapping[str, Any]]) -> tuple[pl.DataFrame, list[Rejection]]:
    """Turn points (objects or spec dicts) into an un-validated sample frame plus shape errors."""
    metrics: list[str] = []
    values: list[float] = []
    types: list[str] = []
    stamps: list[datetime] = []
    tags: list[str] = []
    index: list[int] = []
    rejected: list[Rejection] = []
    for i, raw in enumerate(points):
        try:
            point = raw if isinstance(raw, MetricDataPoint) else MetricDataPoint.from_dict(raw)
            problem = check_tags(point.tags)
            if problem:
                raise ValidationError(problem)
            value = point.value
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValidationError(f"value: expected a number, got {value!r}")
        except ValidationError as exc:
            rejected.append(Rejection(i, str(exc)))
            continue
        assert point.timestamp is not None
        metrics.append(point.metric_id)
        values.append(float(value))
        types.append(point.metric_type.value)
        stamps.append(point.timestamp)
        tags.append(canonical_tags(point.tags))
        index.append(i)
    frame = pl.DataFrame(
        {
            "metric": pl.Series(metrics, dtype=pl.String),
            "ts": pl.Series(stamps, dtype=pl.Datetime(TS_UNIT, "UTC")),
            "value": pl.Series(values, dtype=pl.Float64),
            "type": pl.Series(types, dtype=pl.String),
            f"{_TAG_PREFIX}tags": pl.Series(tags, dtype=pl.String),
            "_row": pl.Series(index, dtype=pl.Int64),
        }
    )
    return frame, rejected


_TS_ALIASES = ("ts", "timestamp", "time")
_METRIC_ALIASES = ("metric", "metric_id", "name")
_TYPE_ALIASES = ("type", "metric_type")


def _pick(columns: Sequence[str], aliases: Sequence[str], role: str, required: bool = True) -> str | None:
    found = [c for c in aliases if c in columns]
    if len(found) > 1:
        raise ValidationError(f"{role}: ambiguous columns {found}; give only one")
    if not found and required:
        raise ValidationError(f"{role}: missing column (one of {', '.join(aliases)})")
    return found[0] if found else None


def normalise_frame(data: pl.DataFrame | pa.Table) -> pl.DataFrame:
    """Bring a user frame to the sample columns (un-validated), keeping ``_row`` indices.

    Accepted columns: ``ts``/``timestamp``, ``metric``/``metric_id``, ``value``,
    optional ``type``/``metric_type`` (default gauge), optional ``tags`` (a
    struct, a JSON object text or a list of key/value structs), and every
    other column is a tag. Tag columns are kept as they are (prefixed
    ``_tag:``); :func:`validate_frame` encodes them once per distinct series.
    """
    frame = data if isinstance(data, pl.DataFrame) else pl.from_arrow(data)
    if not isinstance(frame, pl.DataFrame):
        raise ValidationError("expected a table of samples")
    columns = frame.columns
    ts_col = _pick(columns, _TS_ALIASES, "timestamp")
    assert ts_col is not None
    ts_dtype = frame.schema[ts_col]
    if isinstance(ts_dtype, pl.Datetime):
        ts_expr = pl.col(ts_col)
        ts_expr = (
            ts_expr.dt.replace_time_zone("UTC") if ts_dtype.time_zone is None else ts_expr.dt.convert_time_zone("UTC")
        )
        frame = frame.with_columns(ts_expr.dt.cast_time_unit(TS_UNIT))
    elif isinstance(ts_dtype, pl.Date):
        frame = frame.with_columns(pl.col(ts_col).cast(pl.Datetime(TS_UNIT)).dt.replace_time_zone("UTC"))
    elif ts_dtype.is_numeric() or ts_dtype in (pl.String, pl.Categorical, pl.Null):
        frame = parse_timestamp_column(frame, ts_col)
    else:
        raise ValidationError(f"timestamp: column {ts_col!r} has type {ts_dtype}; expected datetime, epoch or ISO text")
    metric_col = _pick(columns, _METRIC_ALIASES, "metric")
    type_col = _pick(columns, _TYPE_ALIASES, "type", required=False)
    if "value" not in columns:
        raise ValidationError("value: missing column")
    assert metric_col is not None
    special = {ts_col, metric_col, "value", "_row"} | ({type_col} if type_col else set())
    value_dtype = frame.schema["value"]
    if not (value_dtype.is_numeric() or value_dtype in (pl.Null, pl.String)):
        raise ValidationError(f"value: column has type {value_dtype}; expected numbers")
    exprs: list[pl.Expr] = [
        pl.col(metric_col).cast(pl.String).alias("metric"),
        pl.col(ts_col).alias("ts"),
        pl.col("value").cast(pl.Float64, strict=False).alias("value"),
        (pl.col(type_col).cast(pl.String).str.to_lowercase() if type_col else pl.lit("gauge")).alias("type"),
        pl.col("_row") if "_row" in columns else pl.int_range(0, pl.len(), dtype=pl.Int64).alias("_row"),
    ]
    exprs.extend(pl.col(c).alias(f"{_TAG_PREFIX}{c}") for c in columns if c not in special)
    return frame.select(exprs)


_TAG_PREFIX = "_tag:"


def _series_columns(frame: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """Per-row ``metric``, ``type``, ``tags`` (categorical), ``series_id``, ``_problem`` and ``_rank``.

    The work per series (names, tags, ids) runs once per distinct key; rows are
    mapped to their group by index, never by joining on strings. (Few polars
    calls on purpose: each costs ~0.1 ms, which dominates small batches.)
    """
    groups = frame.select(keys).with_row_index("_i").group_by(keys).agg(pl.col("_i"))
    rows_of_group = groups.get_column("_i")
    group_of_row = np.empty(frame.height, dtype=np.uint32)
    group_of_row[rows_of_group.explode().to_numpy()] = np.repeat(
        np.arange(groups.height, dtype=np.uint32), rows_of_group.list.len().to_numpy()
    )
    return _series_lookup(groups.drop("_i"))[pl.Series(group_of_row)]


def _series_lookup(keys: pl.DataFrame) -> pl.DataFrame:
    """Per distinct (metric, type, tag columns): metric, type, canonical tags, series_id, problem, lake rank."""
    tag_columns = [c for c in keys.columns if c.startswith(_TAG_PREFIX)]
    texts: list[str] = []
    ids: list[int] = []
    problems: list[str | None] = []
    for row in keys.iter_rows(named=True):
        metric = row["metric"]
        text, problem = _encode_tags(row, tag_columns)
        problem = check_metric_name(metric) or problem or check_type(row["type"])
        texts.append(text)
        problems.append(problem)
        ids.append(series_id(metric, text) if problem is None else 0)
    metrics = keys.get_column("metric").to_list()
    order = sorted(range(len(ids)), key=lambda i: (metrics[i] is None, metrics[i] or "", ids[i]))
    rank = np.empty(len(ids), dtype=np.uint32)
    rank[order] = np.arange(len(ids), dtype=np.uint32)
    return pl.DataFrame(
        {
            "metric": keys.get_column("metric"),
            "type": keys.get_column("type"),
            "tags": pl.Series(texts, dtype=pl.String),
            "series_id": pl.Series(ids, dtype=pl.Int64),
            "_problem": pl.Series(problems, dtype=pl.String),
            "_rank": pl.Series(rank),
        }
    ).with_columns(pl.col("metric", "type", "tags").cast(pl.Categorical))


def check_type(name: str | None) -> str | None:
    """Return why a metric type name is invalid, or None when it is fine."""
    if name in METRIC_TYPES:
        return None
    return f"type: unknown metric type {name!r}; allowed: {', '.join(METRIC_TYPES)}"


def check_metric_name(metric: str | None) -> str | None:
    """Return why a metric name is invalid, or None when it is fine."""
    if metric is None or metric == "":
        return "metric: missing"
    if len(metric) > MAX_METRIC_LENGTH:
        return f"metric: name longer than {MAX_METRIC_LENGTH} characters"
    if not METRIC_NAME_RE.fullmatch(metric):
        return f"metric: name {metric[:40]!r} must match {METRIC_NAME_RE.pattern}"
    return None


def _encode_tags(row: Mapping[str, Any], tag_columns: list[str]) -> tuple[str, str | None]:
    tags: dict[str, Any] = {}
    for column in tag_columns:
        value = row[column]
        if value is None:
            continue
        key = column[len(_TAG_PREFIX) :]
        if key == "tags":  # an embedded tag set: struct, JSON text or key/value list
            if isinstance(value, str):
                try:
                    value = json.loads(value) if value.strip() else {}
                except json.JSONDecodeError:
                    return "", "tags: not a JSON object"
            if isinstance(value, list):  # Arrow map: a list of {"key", "value"} pairs
                if not all(isinstance(item, Mapping) and {"key", "value"} <= set(item) for item in value):
                    return "", "tags: a list of tags must hold {key, value} pairs"
                value = {item["key"]: item["value"] for item in value}
            if not isinstance(value, Mapping):
                return "", f"tags: expected an object, got {type(value).__name__}"
            tags.update({k: v for k, v in value.items() if v is not None})
        else:
            tags[key] = value if isinstance(value, str) else _tag_text(value)
    problem = check_tags(tags)
    return ("", problem) if problem else (canonical_tags(tags), None)


def _tag_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def validate_frame(
    frame: pl.DataFrame, *, now: datetime, retention_days: int, max_future_seconds: int = 600
) -> SampleBatch:
    """Validate a normalised frame; return the good rows (with ``series_id``, in lake order) and the rejections."""
    now_utc = to_utc(now)
    newest = now_utc + timedelta(seconds=max_future_seconds)
    oldest = now_utc - timedelta(days=retention_days)
    keys = ["metric", "type", *[c for c in frame.columns if c.startswith(_TAG_PREFIX)]]
    checked = pl.concat([frame.drop("metric", "type"), _series_columns(frame, keys)], how="horizontal")
    reasons = checked.select(_ROW_REASON).to_series()
    # The time window is checked in numpy: polars literals of datetimes are slow to build.
    stamps = checked.get_column("ts").to_physical().fill_null(0).to_numpy()
    late = np.flatnonzero(reasons.is_null().to_numpy() & (stamps > _epoch_us(newest)))
    early = np.flatnonzero(reasons.is_null().to_numpy() & (stamps < _epoch_us(oldest)))
    if len(late):
        reasons = reasons.scatter(late, f"timestamp: more than {max_future_seconds} s in the future")
    if len(early):
        reasons = reasons.scatter(early, f"timestamp: older than the retention period ({retention_days} days)")
    rejected: list[Rejection] = []
    good = checked
    if reasons.null_count() < checked.height:
        refused = reasons.is_not_null()
        rows = checked.get_column("_row").filter(refused).to_list()
        rejected = [Rejection(int(i), str(r)) for i, r in zip(rows, reasons.filter(refused).to_list(), strict=True)]
        good = checked.filter(~refused)
    good = good.sort("_rank", "ts").select(SAMPLE_COLUMNS)
    return SampleBatch(frame=good, rejected=rejected)


def _epoch_us(moment: datetime) -> int:
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


# Why a row is refused, for the checks that do not depend on the time of validation
# (built once: constructing polars expressions costs more than running them on a small batch).
_ROW_REASON = (
    pl.when(pl.col("_problem").is_not_null())
    .then(pl.col("_problem"))
    .when(pl.col("value").is_null())
    .then(pl.lit("value: missing or not a number"))
    .when(pl.col("value").is_infinite())
    .then(pl.lit("value: infinite values are not allowed"))
    .when(pl.col("value").is_nan() & (pl.col("type") != MetricType.SUMMARY.value))
    .then(pl.lit("value: NaN is only allowed for summary metrics"))
    .when(pl.col("ts").is_null())
    .then(pl.lit("timestamp: missing or unparseable"))
    .otherwise(pl.lit(None, dtype=pl.String))
    .alias("_reason")
)


def prepare_frame(
    data: pl.DataFrame | pa.Table, *, now: datetime, retention_days: int, max_future_seconds: int = 600
) -> SampleBatch:
    """Normalise and validate a user frame in one step."""
    return validate_frame(
        normalise_frame(data), now=now, retention_days=retention_days, max_future_seconds=max_future_seconds
    )


def prepare_points(
    points: Iterable[MetricDataPoint | Mapping[str, Any]],
    *,
    now: datetime,
    retention_days: int,
    max_future_seconds: int = 600,
) -> SampleBatch:
    """Validate points (objects or spec dicts) into a sample batch; lists of spec dicts take the fast path."""
    items = points if isinstance(points, list) else list(points)
    if items and type(items[0]) is dict:
        from metrics.points import prepare_dicts  # (it builds on this module)

        return prepare_dicts(items, now=now, retention_days=retention_days, max_future_seconds=max_future_seconds)
    return prepare_points_rowwise(items, now=now, retention_days=retention_days, max_future_seconds=max_future_seconds)


def prepare_points_rowwise(
    points: Iterable[MetricDataPoint | Mapping[str, Any]],
    *,
    now: datetime,
    retention_days: int,
    max_future_seconds: int = 600,
) -> SampleBatch:
    """Validate points one by one (``MetricDataPoint`` each, then ``validate_frame``): the reference path."""
    frame, shape_errors = points_to_frame(points)
    batch = validate_frame(frame, now=now, retention_days=retention_days, max_future_seconds=max_future_seconds)
    batch.rejected = sorted(shape_errors + batch.rejected, key=lambda r: r.index)
    return batch
