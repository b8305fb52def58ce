"""Time in the data model: timestamps (ISO 8601, epoch s/ms/us/ns, naive = local or UTC) and durations.

Python ``datetime`` objects without a time zone are local time (the Python API's
rule); timestamp *text* and numbers in files and frames without an offset are
UTC. Every parser raises :class:`metrics.errors.ValidationError` naming the bad
input, or (for whole columns) yields null for the rows it cannot read.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import polars as pl

from metrics.errors import ValidationError

TS_UNIT: Literal["us"] = "us"
TS_DTYPE = pl.Datetime(TS_UNIT, "UTC")
MAX_DURATION_SECONDS = 100 * 366 * 86_400


def to_utc(moment: datetime) -> datetime:
    """Convert a datetime to aware UTC; naive values are local time."""
    try:
        if moment.tzinfo is None:
            moment = moment.astimezone()  # interpret as local time
        return moment.astimezone(UTC)
    except (OverflowError, ValueError, OSError):
        raise ValidationError(f"timestamp: {moment!r} is out of the supported range") from None


def parse_timestamp(value: Any) -> datetime:
    """Parse ISO 8601 text or epoch seconds/milliseconds/microseconds into aware UTC."""
    if isinstance(value, datetime):
        return to_utc(value)
    if isinstance(value, bool):
        raise ValidationError(f"timestamp: expected ISO 8601 text or epoch number, got {value!r}")
    if isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:  # an int beyond any float
            raise ValidationError("timestamp: epoch number out of range") from None
        return _from_epoch(number)
    if isinstance(value, str):
        text = value.strip()
        try:
            number = float(text)
        except ValueError:
            pass
        else:
            return _from_epoch(number)
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ValidationError(f"timestamp: {value!r} is not ISO 8601 or an epoch number") from None
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else to_utc(parsed)
    raise ValidationError(f"timestamp: expected ISO 8601 text or epoch number, got {type(value).__name__}")


def _from_epoch(number: float) -> datetime:
    try:
        return datetime.fromtimestamp(_epoch_to_seconds(number), UTC)
    except (OverflowError, OSError, ValueError):
        raise ValidationError(f"timestamp: epoch {number!r} is out of range") from None


def _epoch_to_seconds(number: float) -> float:
    """Epoch seconds, milliseconds, microseconds or nanoseconds, told apart by magnitude."""
    magnitude = abs(number)
    if magnitude >= 1e17:
        return number / 1e9
    if magnitude >= 1e14:
        return number / 1e6
    if magnitude >= 1e11:
        return number / 1e3
    return number


# ISO 8601 layouts parsed vectorised, most common first, and whether they carry
# an offset; anything else falls back to metrics.model.parse_timestamp per
# distinct text. A naive time is UTC.
_ISO_LAYOUTS: tuple[tuple[str, bool], ...] = (
    ("%Y-%m-%dT%H:%M:%S%.fZ", False),
    ("%Y-%m-%dT%H:%M:%S%.f%z", True),
    ("%Y-%m-%dT%H:%M:%S%.f", False),
    ("%Y-%m-%d %H:%M:%S%.fZ", False),
    ("%Y-%m-%d %H:%M:%S%.f%z", True),
    ("%Y-%m-%d %H:%M:%S%.f", False),
    ("%Y-%m-%d", False),
)


def _epoch(number: pl.Expr, *, integer: bool) -> pl.Expr:
    """Epoch seconds/ms/us/ns (told apart by magnitude) as Datetime(us, UTC); out of range is null."""
    magnitude = number.abs()
    if integer:
        micros = (
            pl.when(magnitude >= 10**17)
            .then(number // 1000)
            .when(magnitude >= 10**14)
            .then(number)
            .when(magnitude >= 10**11)
            .then(number * 1000)
            .otherwise(number * 1_000_000)
        )
    else:
        micros = (
            pl.when(magnitude >= 1e17)
            .then(number / 1e3)
            .when(magnitude >= 1e14)
            .then(number)
            .when(magnitude >= 1e11)
            .then(number * 1e3)
            .otherwise(number * 1e6)
            .round(0)
        )
    return micros.cast(pl.Int64, strict=False).cast(pl.Datetime(TS_UNIT)).dt.replace_time_zone("UTC")


def parse_timestamp_column(frame: pl.DataFrame, column: str) -> pl.DataFrame:
    """Turn a text or numeric timestamp column into Datetime(us, UTC); unparseable entries become null."""
    dtype = frame.schema[column]
    col = pl.col(column)
    if dtype.is_integer():
        return frame.with_columns(_epoch(col.cast(pl.Int64, strict=False), integer=True).alias(column))
    if dtype.is_float() or dtype.is_decimal():
        return frame.with_columns(_epoch(col.cast(pl.Float64), integer=False).alias(column))
    if dtype not in (pl.String, pl.Categorical, pl.Null):
        return frame  # datetimes and dates are metrics.model's business, as are wrong types
    return frame.with_columns(_parse_text_series(frame.get_column(column).cast(pl.String)).alias(column))


def _parse_text_series(texts: pl.Series) -> pl.Series:
    """Parse epoch or ISO 8601 texts; each layout is tried only on the entries still unparsed."""
    texts = texts.str.strip_chars()
    numbers = texts.cast(pl.Float64, strict=False)
    parsed = pl.select(_epoch(pl.lit(numbers), integer=False)).to_series()
    todo = (texts.is_not_null() & numbers.is_null()).arg_true()
    pending = texts.gather(todo)
    for layout, aware in _ISO_LAYOUTS:
        if pending.is_empty():
            break
        found = pending.str.to_datetime(layout, time_unit=TS_UNIT, strict=False)
        found = found.dt.convert_time_zone("UTC") if aware else found.dt.replace_time_zone("UTC")
        ok = found.is_not_null()
        parsed = parsed.scatter(todo.filter(ok), found.filter(ok))
        todo, pending = todo.filter(~ok), pending.filter(~ok)
    if not pending.is_empty():  # rarer ISO 8601 forms: let Python parse each distinct text once
        known = {text: _parse_text(text) for text in pending.unique().to_list()}
        found = pending.replace_strict(
            list(known), pl.Series(list(known.values()), dtype=TS_DTYPE), return_dtype=TS_DTYPE
        )
        ok = found.is_not_null()
        parsed = parsed.scatter(todo.filter(ok), found.filter(ok))
    return parsed


def _parse_text(text: str) -> datetime | None:
    """Python's reading of one timestamp text, or None when it is not one."""
    try:
        return parse_timestamp(text)
    except (ValidationError, ValueError, OverflowError, OSError):
        return None


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(us|ms|s|m|h|d|w)?\s*$")


_UNIT_SECONDS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def looks_like_duration(text: str) -> bool:
    """True for text shaped like a duration with a unit (``90d``, ``5m``), as opposed to a timestamp."""
    match = _DURATION_RE.fullmatch(text)
    return match is not None and match.group(2) is not None


def parse_duration(text: str | int | float | timedelta) -> timedelta:
    """Parse ``30s``, ``5m``, ``1h``, ``90d``, ``2w`` (a bare number is seconds) into a timedelta."""
    if isinstance(text, timedelta):
        seconds = text.total_seconds()
    elif isinstance(text, int | float) and not isinstance(text, bool):
        seconds = float(text)
    else:
        match = _DURATION_RE.fullmatch(str(text))
        if not match:
            raise ValidationError(f"duration: {text!r} is not a duration such as 30s, 5m, 1h, 7d or 2w")
        number, unit = match.groups()
        seconds = float(number) * _UNIT_SECONDS[unit or "s"]
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValidationError(f"duration: {text!r} must be a positive, finite length of time")
    if seconds > MAX_DURATION_SECONDS:
        raise ValidationError(f"duration: {text!r} is longer than 100 years")
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise ValidationError(f"duration: {text!r} is too long") from None
