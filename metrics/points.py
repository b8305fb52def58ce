"""The spec's JSON batch, fast: a list of sample dicts validated in one pass, odd rows the row-by-row way.

``metrics.model.prepare_points`` sends lists of dicts here (the HTTP API's
``POST /api/v1/metrics``, NDJSON files, the Python API given dicts). One pass
reads each row's fields with plain dict look-ups; whatever repeats is worked
out once per call: a tag set's checks and canonical text (keyed by its items),
a series' id (metric, type and tag set), a timestamp's instant (keyed by the
text, number or datetime). The good rows then become columns at once, in lake
order.

A row is accepted here only when it passes every check and every stored value
is exactly what the row-by-row path (``MetricDataPoint.from_dict`` and
``validate_frame``) would store. Any other row -- a bad one, or one this path
is not sure of: a value that is not a plain finite float or int, a time
outside the window, a nested or non-string tag, an object that is not a dict
-- goes through the row-by-row path under its own index, so a refused row
keeps its index and its exact reason, and the two paths cannot disagree.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from hashlib import blake2b
from itertools import repeat
from typing import Any

import numpy as np
import orjson
import polars as pl

from metrics.errors import ValidationError
from metrics.model import (
    MAX_TAG_VALUE_LENGTH,
    MAX_TAGS,
    TS_DTYPE,
    MetricType,
    Rejection,
    SampleBatch,
    check_metric_name,
    check_tags,
    parse_timestamp,
    prepare_points_rowwise,
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_NAIVE = datetime(1970, 1, 1)
_MICROSECOND = timedelta(microseconds=1)
_EMPTY: dict[str, Any] = {}
# Epoch seconds beyond these are out of Python's datetime range (years 1..9999): the slow path says why.
_MIN_SECONDS, _MAX_SECONDS = -62_135_596_800.0, 253_402_300_799.0
_UNREAD = -(1 << 62)  # the "instant" of a timestamp this path does not read: below any window
_NUMBER_TYPES = frozenset({float, int})
_STAMP_TYPES = frozenset({str, float, int, type(None)})
_TEXT = frozenset({str})
_DICT = frozenset({dict})
# Facts of (metric, type, tag items) keys seen by this process; cleared when it grows past the bound.
_SERIES_CACHE: dict[tuple[Any, ...], tuple[str, str, int] | None] = {}
_SERIES_CACHE_SIZE = 100_000
_BAD_KEY: tuple[Any, ...] = ("<not a valid row>", None, ())
_UNSEEN: Any = object()


@dataclass
class _Series:
    """The distinct (metric, type, tag set) groups of a call that passed every check."""

    metric: list[str] = field(default_factory=list)
    kind: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)


@dataclass
class _Columns:
    """The surely good rows as columns (group number, microseconds, value) and the input rows left to the slow path."""

    series: _Series
    group: np.ndarray
    stamp: np.ndarray
    value: np.ndarray
    slow: list[int]


def prepare_dicts(
    items: Sequence[Any], *, now: datetime, retention_days: int, max_future_seconds: int = 600
) -> SampleBatch:
    """Validate spec dicts into a sample batch: the same rows, values, order and rejections as the row-by-row path."""
    validation_now = now if now.tzinfo is not None else now.astimezone()
    newest = _micros(validation_now + timedelta(seconds=max_future_seconds))
    oldest = _micros(validation_now - timedelta(days=retention_days))
    columns = _columns(items, oldest, newest)
    frame = _frame(columns)
    if not columns.slow:
        return SampleBatch(frame=frame)
    slow = columns.slow
    others = prepare_points_rowwise(
        [items[i] for i in slow], now=now, retention_days=retention_days, max_future_seconds=max_future_seconds
    )
    rejected = [Rejection(slow[r.index], r.reason) for r in others.rejected]
    if others.frame.height:
        frame = _merge(frame, others.frame) if frame.height else others.frame
    return SampleBatch(frame=frame, rejected=rejected)


def _columns(items: Sequence[Any], oldest: int, newest: int) -> _Columns:
    """Read every field of every row in column passes; rows failing any check are left to the slow path."""
    position: list[int] | None = None
    rows = items
    if not all(type(item) is dict for item in items):
        position = [i for i, item in enumerate(items) if type(item) is dict]
        rows = [items[i] for i in position]
    value = _values([row.get("value") for row in rows])
    stamp = _stamps([row.get("timestamp") for row in rows])
    series, group = _groups(rows)
    good = np.isfinite(value) & (stamp >= oldest) & (stamp <= newest) & (group >= 0)
    slow = np.flatnonzero(~good).tolist()
    if position is not None:
        dicts = set(position)
        slow = sorted([position[i] for i in slow] + [i for i in range(len(items)) if i not in dicts])
    if len(slow) == 0:
        return _Columns(series, group, stamp, value, slow)
    return _Columns(series, group[good], stamp[good], value[good], slow)


def _values(raw: list[Any]) -> np.ndarray:
    """Values as float64; NaN where a value is not a plain int or float (those rows go the slow way)."""
    kinds = set(map(type, raw))
    if kinds <= _NUMBER_TYPES:
        try:
            return np.array(raw, dtype=np.float64)
        except OverflowError:
            pass
    return np.array([_float(v) for v in raw], dtype=np.float64)


def _float(value: Any) -> float:
    kind = type(value)
    if kind is float:
        return float(value)
    if kind is int:
        try:
            return float(value)
        except OverflowError:
            return math.nan
    return math.nan


def _stamps(raw: list[Any]) -> np.ndarray:
    """Microseconds of each timestamp, each distinct one read once; ``_UNREAD`` for those left to the slow path."""
    kinds = set(map(type, raw))
    simple = kinds <= _STAMP_TYPES  # hashable, and equal only when they mean the same instant (not datetimes: fold)
    distinct = list(set(raw) if simple else {value for value in raw if type(value) in _STAMP_TYPES})
    known = _iso_texts(distinct) if kinds == _TEXT else None
    if known is None:
        now = _micros(datetime.now(UTC))  # a missing timestamp is now (MetricDataPoint's rule)
        known = {value: now if value is None else _stamp(value) for value in distinct}
    if simple:
        return np.fromiter(map(known.__getitem__, raw), dtype=np.int64, count=len(raw))
    return np.array([known[v] if type(v) in _STAMP_TYPES else _stamp(v) for v in raw], dtype=np.int64)


def _iso_texts(texts: list[str]) -> dict[Any, int] | None:
    """The common case at C speed: extended ISO 8601 texts, all naive or all with an offset; else None."""
    if not all(text[4:5] == "-" for text in texts):  # an extended ISO date is never an epoch number
        return None
    try:
        moments = list(map(datetime.fromisoformat, texts))
        epoch = _EPOCH_NAIVE if moments[0].tzinfo is None else _EPOCH  # naive text is UTC
        micros = [(moment - epoch) // _MICROSECOND for moment in moments]  # TypeError when naive and aware mix
    except (ValueError, TypeError):
        return None
    return dict(zip(texts, micros, strict=True))


def _groups(rows: Sequence[dict[str, Any]]) -> tuple[_Series, np.ndarray]:
    """Each row's group number (metric, type, tag set); -1 for rows not surely good.

    A group is checked once per process: its facts are a pure function of its
    key, and the same series arrive in batch after batch (``_SERIES_CACHE``).
    """
    metrics = [row.get("metric_id") for row in rows]
    kinds = [row.get("metric_type") or row.get("type") or "gauge" for row in rows]
    tag_sets = [row.get("tags") or _EMPTY for row in rows]
    keys: list[tuple[Any, ...]]
    if set(map(type, metrics)) == _TEXT and set(map(type, kinds)) == _TEXT and set(map(type, tag_sets)) == _DICT:
        keys = list(zip(metrics, kinds, [tuple(tags.items()) for tags in tag_sets], strict=True))
    else:  # (str subclasses too: str() of one may differ from its text, so the slow path takes them)
        keys = [
            (metric, kind, tuple(tags.items()))
            if type(metric) is type(kind) is str and type(tags) is dict
            else _BAD_KEY
            for metric, kind, tags in zip(metrics, kinds, tag_sets, strict=True)
        ]
    try:
        groups, first = _number(keys)
    except TypeError:  # unhashable tag values: invalid, the slow path says why
        groups, first = _number([key if _hashable(key) else _BAD_KEY for key in keys])
    cache = _SERIES_CACHE
    if len(cache) > _SERIES_CACHE_SIZE:
        cache.clear()
    facts = list(map(cache.get, groups, repeat(_UNSEEN)))
    good_keys: set[str] = set()
    for i in [i for i, fact in enumerate(facts) if fact is _UNSEEN]:
        facts[i] = cache[groups[i]] = _facts(groups[i], good_keys)
    kept = [i for i, fact in enumerate(facts) if fact is not None]
    found: list[tuple[str, str, int]] = [fact for fact in facts if fact is not None]
    series = _Series(
        metric=[groups[i][0] for i in kept],
        kind=[fact[0] for fact in found],
        tags=[fact[1] for fact in found],
        ids=[fact[2] for fact in found],
    )
    series_of_group = np.full(len(groups), -1, dtype=np.int64)
    series_of_group[kept] = np.arange(len(kept), dtype=np.int64)
    return series, series_of_group[first]


def _number(keys: list[tuple[Any, ...]]) -> tuple[list[tuple[Any, ...]], np.ndarray]:
    """The distinct keys in order of appearance, and each row's position among them (one hash per row)."""
    number: dict[tuple[Any, ...], int] = {}
    first = [number.setdefault(key, len(number)) for key in keys]
    return list(number), np.array(first, dtype=np.int64)


def _facts(key: tuple[Any, ...], good_keys: set[str]) -> tuple[str, str, int] | None:
    """(canonical type, canonical tags, series_id) of a valid (metric, type, tag items); None when not surely valid."""
    if key is _BAD_KEY:
        return None
    metric, kind, items = key
    if check_metric_name(metric) is not None:
        return None
    canonical = _kind(kind)
    text = _tag_text(items, good_keys)
    if canonical is None or text is None:
        return None
    digest = blake2b(f"{metric}\x1f{text}".encode(), digest_size=8).digest()  # model.series_id, inlined
    return canonical, text, int.from_bytes(digest, "little", signed=True)


def _hashable(key: tuple[Any, ...]) -> bool:
    try:
        hash(key)
    except TypeError:
        return False
    return True


def _kind(kind: Any) -> str | None:
    """The canonical name of a metric type as ``MetricType.parse`` reads it; None when unknown."""
    try:
        return MetricType.parse(kind).value
    except ValidationError:
        return None


def _tag_text(items: tuple[tuple[Any, Any], ...], good_keys: set[str]) -> str | None:
    """The canonical text (``canonical_tags``'s, through orjson) of a valid tag set; None when not surely valid.

    The checks are ``check_tags``'s, with each key's pattern checked once per call (``good_keys``).
    """
    if not items:
        return "{}"
    if len(items) > MAX_TAGS:
        return None
    for key, value in items:
        if type(value) is not str or len(value) > MAX_TAG_VALUE_LENGTH:
            return None
        if key not in good_keys:
            if type(key) is not str or check_tags({key: value}) is not None:
                return None
            good_keys.add(key)
    try:
        return orjson.dumps(dict(items), option=orjson.OPT_SORT_KEYS).decode()
    except orjson.JSONEncodeError:  # lone surrogates: invalid, the slow path says why
        return None


def _stamp(raw: Any) -> int:
    """Microseconds since the epoch of a timestamp as ``parse_timestamp`` reads it; ``_UNREAD`` when unsure."""
    kind = type(raw)
    if kind is str:
        if raw[4:5] == "-":  # an extended ISO date is never an epoch number: fromisoformat decides alone
            try:
                moment = datetime.fromisoformat(raw)
            except ValueError:
                pass
            else:
                if moment.tzinfo is None:  # naive text is UTC
                    return (moment - _EPOCH_NAIVE) // _MICROSECOND
                return (moment - _EPOCH) // _MICROSECOND
        try:
            return _micros(parse_timestamp(raw))
        except ValidationError:
            return _UNREAD
    if kind is float or kind is int:
        try:
            return _epoch_micros(float(raw))
        except OverflowError:
            return _UNREAD
    if kind is datetime:
        try:
            return _micros(raw)  # naive: local time, as the Python API reads it
        except (OverflowError, ValueError, OSError):
            return _UNREAD
    return _UNREAD  # bools, numpy scalars, subclasses: the slow path knows what to do with them


def _epoch_micros(number: float) -> int:
    """Epoch seconds/ms/us/ns to microseconds, rounded exactly as ``datetime.fromtimestamp`` rounds them."""
    magnitude = abs(number)
    if magnitude >= 1e17:
        seconds = number / 1e9
    elif magnitude >= 1e14:
        seconds = number / 1e6
    elif magnitude >= 1e11:
        seconds = number / 1e3
    else:
        seconds = number
    if not _MIN_SECONDS <= seconds <= _MAX_SECONDS:  # NaN too
        return _UNREAD
    fraction, whole = math.modf(seconds)
    micros = round(fraction * 1e6)  # half to even, as CPython's _PyTime_ROUND_HALF_EVEN
    return int(whole) * 1_000_000 + micros  # a carry (micros of +/-1e6) lands in the right second


def _micros(moment: datetime) -> int:
    """Microseconds since the epoch of an aware datetime (naive: local time, as ``to_utc``)."""
    if moment.tzinfo is None:
        moment = moment.astimezone()
    return (moment - _EPOCH) // _MICROSECOND


def _frame(columns: _Columns) -> pl.DataFrame:
    """The accepted rows as a validated sample frame in lake order: (metric, series_id, ts)."""
    if len(columns.group) == 0:
        return empty_batch_frame()
    found, group = columns.series, columns.group
    names = sorted(set(found.metric))
    name_rank = dict(zip(names, range(len(names)), strict=True))
    metric_rank = np.fromiter(map(name_rank.__getitem__, found.metric), dtype=np.int64, count=len(found.metric))
    ids = np.array(found.ids, dtype=np.int64)
    order = np.lexsort((columns.stamp, ids[group], metric_rank[group]))
    rows = pl.Series(group[order])
    return pl.DataFrame(
        [
            pl.Series("metric", found.metric, dtype=pl.Categorical).gather(rows),
            pl.Series("series_id", ids[group[order]]),
            pl.Series("ts", columns.stamp[order]).cast(TS_DTYPE),
            pl.Series("value", columns.value[order]),
            pl.Series("type", found.kind, dtype=pl.Categorical).gather(rows),
            pl.Series("tags", found.tags, dtype=pl.Categorical).gather(rows),
        ]
    )


def empty_batch_frame() -> pl.DataFrame:
    """A validated batch's frame with no rows (the columns and types the writer takes)."""
    return pl.DataFrame(
        schema={
            "metric": pl.Categorical(),
            "series_id": pl.Int64(),
            "ts": TS_DTYPE,
            "value": pl.Float64(),
            "type": pl.Categorical(),
            "tags": pl.Categorical(),
        }
    )


def _merge(fast: pl.DataFrame, slow: pl.DataFrame) -> pl.DataFrame:
    """Both paths' good rows in one frame, in lake order again."""
    text = ("metric", "type", "tags")
    both = pl.concat([fast.with_columns(pl.col(text).cast(pl.String)), slow.with_columns(pl.col(text).cast(pl.String))])
    return both.sort("metric", "series_id", "ts", maintain_order=True).with_columns(pl.col(text).cast(pl.Categorical))
