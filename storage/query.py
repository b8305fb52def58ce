"""The DuckDB query engine: every reader of the lake goes through here.

Python callers get polars DataFrames. Each structured query lists the exact
files it needs (only the days in range) under the lake's shared lock, so
compaction can never make it fail or double count, and reads rollups for the
days whose rollups cover all samples when the interval and aggregation allow.
``sql()`` runs ad-hoc SQL over views named after the lake tables (``samples``,
``series``, ``rollups_1m``, ``rollups_1h`` and, once they hold data,
``anomalies``, ``forecasts``, ``alert_events``). The same views are written to
a DuckDB database file so that ``duckdb data/metrics.duckdb`` works directly.

Metric patterns are globs (``crypto.key.*``); tag filters are equality (a
list of values means any of them). Buckets are aligned to multiples of the
interval since the Unix epoch.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from metrics.errors import QueryError, ValidationError
from metrics.model import TAG_KEY_RE, parse_duration, to_utc
from storage.encoding import VALUE_SQL
from storage.lake import SERIES_TABLE, TABLES, Lake
from storage.rollups import covered_days

AGGREGATIONS = ("avg", "min", "max", "sum", "count", "last", "rate", "increase", "p50", "p95", "p99")
ROLLUP_AGGREGATIONS = frozenset({"avg", "min", "max", "sum", "count", "last", "rate", "increase"})
PERCENTILES = {"p50": 0.5, "p95": 0.95, "p99": 0.99}
_GLOB_CHARS = re.compile(r"[*?\[]")
US = 1_000_000

SAMPLE_VIEW_COLUMNS = "metric VARCHAR, series_id BIGINT, ts TIMESTAMPTZ, value DOUBLE, type VARCHAR, tags VARCHAR"
_EMPTY_SCHEMAS = {
    "samples": SAMPLE_VIEW_COLUMNS + ", date DATE",
    "series": "series_id BIGINT, metric VARCHAR, type VARCHAR, tags VARCHAR, first_seen TIMESTAMPTZ",
    "rollups_1m": "metric VARCHAR, series_id BIGINT, ts TIMESTAMPTZ, count BIGINT, sum DOUBLE, min DOUBLE, "
    "max DOUBLE, first DOUBLE, last DOUBLE, last_ts TIMESTAMPTZ, increase DOUBLE, date DATE",
}
_EMPTY_SCHEMAS["rollups_1h"] = _EMPTY_SCHEMAS["rollups_1m"]


def connect(database: str = ":memory:", *, threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection configured for the lake: built-in extensions only, UTC, metadata cache."""
    config: dict[str, Any] = {"autoinstall_known_extensions": False, "autoload_known_extensions": True}
    if threads:
        config["threads"] = threads
    con = duckdb.connect(database, config=config)
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET parquet_metadata_cache = true")
    return con


def sql_string(text: str) -> str:
    """Quote ``text`` as a SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def _file_list(paths: Sequence[Path | str]) -> str:
    return "[" + ", ".join(sql_string(str(p)) for p in paths) + "]"


def samples_source(files: Sequence[Path | str]) -> str:
    """A subquery reading sample files with their values decoded (see ``storage.encoding``)."""
    return f"(SELECT metric, series_id, ts, {VALUE_SQL} AS value, type, tags FROM read_parquet({_file_list(files)}))"


def _json_path(key: str) -> str:
    return '$."' + key + '"'


def interval_seconds(interval: str | int | float | timedelta) -> int:
    """Whole seconds of an interval such as ``5m``; sub-second intervals are refused."""
    try:
        seconds = parse_duration(interval).total_seconds()
    except ValidationError as exc:
        raise QueryError(f"interval: {exc}") from None
    if seconds < 1 or seconds != int(seconds):
        raise QueryError(f"interval: {interval!r} must be a whole number of seconds (>= 1s)")
    return int(seconds)


@dataclass(frozen=True)
class MetricFilter:
    """A glob over metric names plus tag equality filters, rendered as SQL."""

    pattern: str = "*"
    tags: Mapping[str, str | Sequence[str]] | None = None

    def metric_sql(self, column: str = "metric") -> tuple[str, list[Any]]:
        """SQL predicate (with parameters) selecting the metric names."""
        pattern = (self.pattern or "*").strip()
        if pattern in ("*", ""):
            return "TRUE", []
        wildcard = _GLOB_CHARS.search(pattern)
        if wildcard is None:
            return f"{column} = ?", [pattern]
        prefix = pattern[: wildcard.start()]
        if not prefix:
            return f"{column} GLOB ?", [pattern]
        # The range lets DuckDB skip row groups by min/max statistics; GLOB does the rest.
        upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        return f"{column} >= ? AND {column} < ? AND {column} GLOB ?", [prefix, upper, pattern]

    def tag_items(self) -> list[tuple[str, list[str]]]:
        """Validated (key, allowed values) pairs."""
        items: list[tuple[str, list[str]]] = []
        for key, value in (self.tags or {}).items():
            if not TAG_KEY_RE.fullmatch(key):
                raise QueryError(f"tags: key {key!r} must match {TAG_KEY_RE.pattern}")
            values = [value] if isinstance(value, str) else [str(v) for v in value]
            if not values:
                raise QueryError(f"tags: no value given for {key!r}")
            items.append((key, values))
        return items


@dataclass(frozen=True)
class _Range:
    start: datetime
    end: datetime

    @property
    def days(self) -> list[date]:
        first, last = self.start.date(), (self.end - timedelta(microseconds=1)).date()
        return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def resolve_range(
    start: datetime | None, end: datetime | None, default: timedelta = timedelta(hours=1)
) -> tuple[datetime, datetime]:
    """Aware UTC [start, end); end defaults to now, start to ``default`` before end."""
    end_utc = to_utc(end) if end is not None else datetime.now(UTC)
    start_utc = to_utc(start) if start is not None else end_utc - default
    if start_utc >= end_utc:
        raise QueryError(f"time range: start {start_utc.isoformat()} is not before end {end_utc.isoformat()}")
    return start_utc, end_utc


def _floor(moment: datetime, seconds: int) -> datetime:
    micros = int(moment.timestamp() * US) if moment.microsecond == 0 else _micros(moment)
    floored = micros // (seconds * US) * seconds * US
    return datetime.fromtimestamp(floored / US, UTC)


def _micros(moment: datetime) -> int:
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * US + delta.microseconds


class QueryEngine:
    """One DuckDB engine over a lake; thread-safe (each call uses its own cursor)."""

    def __init__(self, lake: Lake, *, database_file: Path | None = None, threads: int | None = None) -> None:
        self.lake = lake
        self.database_file = database_file
        self._con = connect(threads=threads)
        self._views_signature: tuple[bool, ...] | None = None
        self._views_lock = threading.Lock()
        self._catalog_lock = threading.Lock()
        self._catalog_signature: list[tuple[str, int, int]] | None = None
        self.last_query_seconds = 0.0

    def close(self) -> None:
        """Close the DuckDB connection."""
        self._con.close()

    # -- low level -----------------------------------------------------------
    def _run(self, text: str, params: Sequence[Any] | None = None) -> pl.DataFrame:
        started = time.perf_counter()
        cursor = self._con.cursor()
        try:
            result = cursor.sql(text, params=list(params or [])).pl()
            result = result.with_columns(
                pl.col(name).dt.convert_time_zone("UTC")
                for name, dtype in result.schema.items()
                if isinstance(dtype, pl.Datetime) and dtype.time_zone not in (None, "UTC")
            )
        except duckdb.Error as exc:
            raise QueryError(str(exc).split("\n")[0]) from None
        finally:
            cursor.close()
            self.last_query_seconds = time.perf_counter() - started
        return result

    def _series_source(self) -> str | None:
        """Name of an in-memory table holding the series catalog, refreshed when its files change."""
        files = self.lake.flat_files(SERIES_TABLE)
        if not files:
            return None
        signature = []
        for path in files:
            try:
                stat = path.stat()
            except FileNotFoundError:  # merged away by compaction meanwhile: read again
                return self._series_source()
            signature.append((path.name, stat.st_size, stat.st_mtime_ns))
        with self._catalog_lock:
            if signature != self._catalog_signature:
                cursor = self._con.cursor()
                try:
                    cursor.execute(
                        "CREATE OR REPLACE TABLE series_catalog AS SELECT series_id, any_value(metric) AS metric, "
                        "any_value(type) AS type, any_value(tags) AS tags "
                        f"FROM read_parquet({_file_list(files)}) GROUP BY series_id"
                    )
                finally:
                    cursor.close()
                self._catalog_signature = signature
        return "series_catalog"

    def _series_ids(self, flt: MetricFilter) -> list[int] | None:
        """Series ids matching the tag filters (None when there are no tag filters)."""
        items = flt.tag_items()
        if not items:
            return None
        source = self._series_source()
        if source is None:
            return []
        where, params = flt.metric_sql()
        for key, values in items:
            where += f" AND json_extract_string(tags, ?) IN ({', '.join('?' for _ in values)})"
            params += [_json_path(key), *values]
        found = self._run(f"SELECT series_id FROM {source} WHERE {where}", params)
        return found.get_column("series_id").to_list()

    def _where(self, flt: MetricFilter, ids: list[int] | None, ts_column: str = "ts") -> tuple[str, list[Any]]:
        where, params = flt.metric_sql()
        if ids is not None:
            where += f" AND series_id IN ({', '.join(str(int(i)) for i in ids)})"
        return where, params

    # -- raw samples -----------------------------------------------------------
    def query_metrics(
        self,
        pattern: str = "*",
        start: datetime | None = None,
        end: datetime | None = None,
        tags: Mapping[str, str | Sequence[str]] | None = None,
        *,
        above: float | None = None,
        below: float | None = None,
        limit: int | None = None,
    ) -> pl.DataFrame:
        """Raw samples of metrics matching ``pattern`` in [start, end).

        Args:
            pattern: glob over metric names, e.g. ``crypto.key.*``.
            start: inclusive start (default: one hour before ``end``); naive is local time.
            end: exclusive end (default: now).
            tags: tag equality filters; a list of values matches any of them.
            above: keep only values strictly greater than this.
            below: keep only values strictly less than this.
            limit: at most this many rows.

        Returns:
            Columns ``ts, metric, value, type, tags, series_id`` ordered by metric, series and time.
        """
        flt = MetricFilter(pattern, tags)
        rng = _Range(*resolve_range(start, end))
        with self.lake.shared():
            files = [f.path for f in self.lake.files("samples", rng.days[0], rng.days[-1])]
            ids = self._series_ids(flt)
            if not files or ids == []:
                return _empty_samples()
            where, params = self._where(flt, ids)
            where += " AND ts >= ? AND ts < ?"
            params += [rng.start, rng.end]
            if above is not None:
                where += " AND value > ?"
                params.append(float(above))
            if below is not None:
                where += " AND value < ?"
                params.append(float(below))
            text = (
                f"SELECT ts, metric, value, type, tags, series_id FROM {samples_source(files)} "
                f"WHERE {where} ORDER BY metric, series_id, ts"
            )
            if limit is not None:
                text += f" LIMIT {int(limit)}"
            return self._run(text, params)

    def latest(
        self,
        pattern: str = "*",
        tags: Mapping[str, str | Sequence[str]] | None = None,
        *,
        lookback: timedelta = timedelta(days=7),
    ) -> pl.DataFrame:
        """The latest sample of every matching series, searching back day by day up to ``lookback``.

        Returns:
            Columns ``ts, metric, value, type, tags, series_id``, one row per series.
        """
        flt = MetricFilter(pattern, tags)
        now = datetime.now(UTC)
        with self.lake.shared():
            ids = self._series_ids(flt)
            if ids == []:
                return _empty_samples()
            days = [d for d in self.lake.partitions("samples") if d >= (now - lookback).date()]
            where, params = self._where(flt, ids)
            found: list[pl.DataFrame] = []
            seen: set[int] = set()
            expected = self._count_series(flt, ids)
            for day in reversed(days):
                files = [f.path for f in self.lake.files("samples", day, day)]
                if not files:
                    continue
                exclude = f" AND series_id NOT IN ({', '.join(map(str, seen))})" if seen else ""
                part = self._run(
                    "SELECT max(ts) AS ts, any_value(metric) AS metric, arg_max(value, ts) AS value, "
                    "any_value(type) AS type, any_value(tags) AS tags, series_id "
                    f"FROM {samples_source(files)} WHERE {where}{exclude} GROUP BY series_id",
                    params,
                )
                found.append(part)
                seen.update(part.get_column("series_id").to_list())
                if expected is not None and len(seen) >= expected:
                    break
        if not found:
            return _empty_samples()
        return pl.concat(found).sort("metric", "series_id")

    def _count_series(self, flt: MetricFilter, ids: list[int] | None) -> int | None:
        if ids is not None:
            return len(ids)
        source = self._series_source()
        if source is None:
            return None
        where, params = flt.metric_sql()
        return int(self._run(f"SELECT count(*) AS n FROM {source} WHERE {where}", params).item())

    def series(self, pattern: str = "*", tags: Mapping[str, str | Sequence[str]] | None = None) -> pl.DataFrame:
        """The series catalog rows (``series_id, metric, type, tags``) matching a filter."""
        flt = MetricFilter(pattern, tags)
        source = self._series_source()
        if source is None:
            return pl.DataFrame(
                schema={"series_id": pl.Int64, "metric": pl.String, "type": pl.String, "tags": pl.String}
            )
        ids = self._series_ids(flt)
        where, params = self._where(flt, ids)
        return self._run(
            f"SELECT series_id, metric, type, tags FROM {source} WHERE {where} ORDER BY metric, tags", params
        )

    # -- aggregation -------------------------------------------------------------
    def query_aggregated(
        self,
        pattern: str = "*",
        aggregation: str = "avg",
        interval: str | int | timedelta = "1m",
        start: datetime | None = None,
        end: datetime | None = None,
        group_by: Sequence[str] | None = None,
        tags: Mapping[str, str | Sequence[str]] | None = None,
        *,
        use_rollups: bool = True,
    ) -> pl.DataFrame:
        """Aggregate matching series into time buckets.

        Args:
            pattern: glob over metric names.
            aggregation: one of avg, min, max, sum, count, last, rate, increase, p50, p95, p99.
                ``rate`` is the per-second increase of a counter (resets handled).
            interval: bucket width, e.g. ``1m``, ``5m``, ``1h``.
            start: inclusive start (rounded down to the interval); default one hour before ``end``.
            end: exclusive end, default now.
            group_by: ``None`` keeps one row per series; ``[]`` groups per metric; tag keys group
                per metric and those tags (series lacking a tag form their own group with null).
            tags: tag equality filters.
            use_rollups: read rollups where they cover the data (the default); False forces raw samples.

        Returns:
            Columns ``ts, metric``, then ``series_id, tags`` (per series) or the group-by tags, then ``value``.
        """
        agg = aggregation.lower()
        if agg not in AGGREGATIONS:
            raise QueryError(f"aggregation: {aggregation!r} is not one of {', '.join(AGGREGATIONS)}")
        step = interval_seconds(interval)
        flt = MetricFilter(pattern, tags)
        group_keys = list(group_by) if group_by is not None else None
        for key in group_keys or []:
            if not TAG_KEY_RE.fullmatch(key):
                raise QueryError(f"group_by: {key!r} is not a tag key")
        start_utc, end_utc = resolve_range(start, end)
        rng = _Range(_floor(start_utc, step), end_utc)
        with self.lake.shared():
            ids = self._series_ids(flt)
            if ids == []:
                return _empty_aggregate(group_keys)
            where, params = self._where(flt, ids)
            if agg in PERCENTILES:
                per_group_sql, params = self._percentile_sql(rng, step, where, params, agg, group_keys)
            else:
                partials = self._partials_sql(rng, step, where, params, agg, use_rollups)
                if partials is None:
                    return _empty_aggregate(group_keys)
                per_group_sql, params = self._combine_sql(partials[0], partials[1], step, agg, group_keys)
            if per_group_sql is None:
                return _empty_aggregate(group_keys)
            return self._run(per_group_sql, params)

    def _partials_sql(
        self, rng: _Range, step: int, where: str, params: list[Any], agg: str, use_rollups: bool
    ) -> tuple[str, list[Any]] | None:
        """SQL of per-series partial aggregates from rollups (covered days) and raw samples (the rest)."""
        width = 0
        if use_rollups and agg in ROLLUP_AGGREGATIONS and step % 60 == 0:
            width = 3600 if step % 3600 == 0 else 60
        table = "rollups_1h" if width == 3600 else "rollups_1m"
        covered = covered_days(self.lake, table, rng.days) if width else set()
        grain = width or step
        tail_start = _floor(rng.end, width) if width else rng.end
        need_steps = agg in ("rate", "increase")
        parts: list[str] = []
        all_params: list[Any] = []

        raw_days = [d for d in rng.days if d not in covered]
        raw_files = [f.path for d in raw_days for f in self.lake.files("samples", d, d)]
        if covered and tail_start < rng.end and tail_start.date() in covered:
            tail_files = [f.path for f in self.lake.files("samples", tail_start.date(), tail_start.date())]
        else:
            tail_files = []
        for files, lo in ((raw_files, rng.start), (tail_files, max(tail_start, rng.start))):
            if not files:
                continue
            parts.append(self._raw_partial(files, grain, where, need_steps))
            all_params += [*params, lo, rng.end]
        rollup_files = [f.path for d in sorted(covered) for f in self.lake.files(table, d, d)]
        if rollup_files and rng.start < tail_start:
            parts.append(
                "SELECT series_id, any_value(metric) AS metric, epoch_us(ts) AS b, count AS n, sum AS s, min AS lo, "
                "max AS hi, first, last, last_ts, increase AS inc "
                f"FROM read_parquet({_file_list(rollup_files)}) WHERE {where} AND ts >= ? AND ts < ? "
                "GROUP BY ALL"
            )
            all_params += [*params, rng.start, tail_start]
        if not parts:
            return None
        return " UNION ALL ".join(f"({p})" for p in parts), all_params

    @staticmethod
    def _raw_partial(files: list[Path], grain: int, where: str, need_steps: bool) -> str:
        bucket = f"(epoch_us(ts) // {grain * US}) * {grain * US}"
        source = samples_source(files)
        if need_steps:
            source = (
                f"(SELECT metric, series_id, ts, value, {bucket} AS b, "
                "value - lag(value) OVER (PARTITION BY series_id, " + bucket + " ORDER BY ts) AS d "
                f"FROM {source} WHERE {where} AND ts >= ? AND ts < ?)"
            )
            increase = "sum(CASE WHEN d IS NULL THEN 0 WHEN d >= 0 THEN d ELSE value END)"
            where_clause = ""
            bucket = "b"
        else:
            increase = "0.0"
            where_clause = f" WHERE {where} AND ts >= ? AND ts < ?"
        return (
            f"SELECT series_id, any_value(metric) AS metric, {bucket} AS b, count(*) AS n, sum(value) AS s, "
            "min(value) AS lo, max(value) AS hi, arg_min(value, ts) AS first, arg_max(value, ts) AS last, "
            f"max(ts) AS last_ts, {increase} AS inc FROM {source}{where_clause} GROUP BY series_id, b"
        )

    def _combine_sql(
        self, partials: str, params: list[Any], step: int, agg: str, group_keys: list[str] | None
    ) -> tuple[str, list[Any]]:
        """SQL turning partials into one value per (bucket, series or group)."""
        step_us = step * US
        if agg in ("rate", "increase"):
            # Add the step from each partial's previous ``last`` to its ``first`` (reset-aware).
            boundary = (
                "CASE WHEN lag(last) OVER w IS NULL THEN 0 WHEN first - lag(last) OVER w >= 0 "
                "THEN first - lag(last) OVER w ELSE first END"
            )
            stepped = (
                f"SELECT *, inc + {boundary} AS inc2 FROM ({partials}) WINDOW w AS (PARTITION BY series_id ORDER BY b)"
            )
        else:
            stepped = f"SELECT *, inc AS inc2 FROM ({partials})"
        per_series = (
            f"SELECT series_id, any_value(metric) AS metric, (b // {step_us}) * {step_us} AS bucket, sum(n) AS n, "
            "sum(s) AS s, min(lo) AS lo, max(hi) AS hi, arg_max(last, last_ts) AS last, max(last_ts) AS last_ts, "
            f"sum(inc2) AS inc FROM ({stepped}) GROUP BY series_id, bucket"
        )
        series_value = {
            "avg": "s / n",
            "min": "lo",
            "max": "hi",
            "sum": "s",
            "count": "n::DOUBLE",
            "last": "last",
            "rate": f"inc / {float(step)}",
            "increase": "inc",
        }[agg]
        group_value = {
            "avg": "sum(s) / sum(n)",
            "min": "min(lo)",
            "max": "max(hi)",
            "sum": "sum(s)",
            "count": "sum(n)::DOUBLE",
            "last": "arg_max(last, last_ts)",
            "rate": f"sum(inc) / {float(step)}",
            "increase": "sum(inc)",
        }[agg]
        ts = "make_timestamp(bucket)::TIMESTAMPTZ"
        if group_keys is None:
            catalog = self._series_source()
            tags_sql = "c.tags" if catalog else "NULL::VARCHAR"
            join = f" LEFT JOIN {catalog} c USING (series_id)" if catalog else ""
            text = (
                f"SELECT {ts} AS ts, p.metric, p.series_id, {tags_sql} AS tags, {series_value} AS value "
                f"FROM ({per_series}) p{join} ORDER BY p.metric, tags, ts"
            )
            return text, params
        select_keys, group_cols = self._group_columns(group_keys)
        catalog = self._series_source() or "(SELECT NULL::BIGINT AS series_id, NULL::VARCHAR AS tags)"
        text = (
            f"SELECT {ts} AS ts, p.metric{select_keys}, {group_value} AS value "
            f"FROM ({per_series}) p LEFT JOIN {catalog} c USING (series_id) "
            f"GROUP BY bucket, p.metric{group_cols} ORDER BY p.metric{group_cols}, ts"
        )
        return text, params

    @staticmethod
    def _group_columns(group_keys: list[str]) -> tuple[str, str]:
        select = "".join(f', json_extract_string(c.tags, {sql_string(_json_path(k))}) AS "{k}"' for k in group_keys)
        group = "".join(f', "{k}"' for k in group_keys)
        return select, group

    def _percentile_sql(
        self, rng: _Range, step: int, where: str, params: list[Any], agg: str, group_keys: list[str] | None
    ) -> tuple[str | None, list[Any]]:
        files = [f.path for f in self.lake.files("samples", rng.days[0], rng.days[-1])]
        if not files:
            return None, params
        q = PERCENTILES[agg]
        bucket = f"(epoch_us(ts) // {step * US}) * {step * US}"
        raw = (
            f"SELECT metric, series_id, {bucket} AS bucket, value FROM {samples_source(files)} "
            f"WHERE {where} AND ts >= ? AND ts < ?"
        )
        all_params = [*params, rng.start, rng.end]
        catalog = self._series_source() or "(SELECT NULL::BIGINT AS series_id, NULL::VARCHAR AS tags)"
        ts = "make_timestamp(bucket)::TIMESTAMPTZ"
        if group_keys is None:
            text = (
                f"SELECT {ts} AS ts, r.metric, r.series_id, any_value(c.tags) AS tags, "
                f"quantile_cont(value, {q}) AS value "
                f"FROM ({raw}) r LEFT JOIN {catalog} c USING (series_id) "
                "GROUP BY bucket, r.metric, r.series_id ORDER BY r.metric, tags, ts"
            )
        else:
            select_keys, group_cols = self._group_columns(group_keys)
            text = (
                f"SELECT {ts} AS ts, r.metric{select_keys}, quantile_cont(value, {q}) AS value "
                f"FROM ({raw}) r LEFT JOIN {catalog} c USING (series_id) "
                f"GROUP BY bucket, r.metric{group_cols} ORDER BY r.metric{group_cols}, ts"
            )
        return text, all_params

    # -- ad-hoc SQL and views ------------------------------------------------------
    def sql(self, text: str, params: Sequence[Any] | None = None) -> pl.DataFrame:
        """Run ad-hoc SQL over the lake views (``samples``, ``series``, ``rollups_1m``, ...)."""
        if not text or not text.strip():
            raise QueryError("sql: empty statement")
        self.refresh_views()
        with self.lake.shared():
            return self._run(text, params)

    def _table_has_files(self, table: str) -> bool:
        if table == SERIES_TABLE:
            return bool(self.lake.flat_files(table))
        folder = self.lake.table_dir(table)
        if not folder.is_dir():
            return False
        with os.scandir(folder) as partitions:
            for partition in partitions:
                if not partition.is_dir():
                    continue
                with os.scandir(partition.path) as entries:
                    if any(e.name.endswith(".parquet") for e in entries):
                        return True
        return False

    def view_statements(self) -> list[str]:
        """CREATE VIEW statements for every lake table (empty typed views where no files exist yet)."""
        statements: list[str] = []
        for table in (*TABLES, SERIES_TABLE):
            if self._table_has_files(table):
                if table == SERIES_TABLE:
                    glob = str(self.lake.table_dir(table) / "*.parquet")
                    body = (
                        "SELECT series_id, any_value(metric) AS metric, any_value(type) AS type, "
                        f"any_value(tags) AS tags, min(first_seen) AS first_seen FROM read_parquet({sql_string(glob)}) "
                        "GROUP BY series_id"
                    )
                elif table == "samples":
                    body = (
                        f"SELECT metric, series_id, ts, {VALUE_SQL} AS value, type, tags, date "
                        f"FROM read_parquet({sql_string(self.lake.glob(table))}, hive_partitioning = true)"
                    )
                else:
                    body = (
                        f"SELECT * FROM read_parquet({sql_string(self.lake.glob(table))}, "
                        "hive_partitioning = true, union_by_name = true)"
                    )
            elif table in _EMPTY_SCHEMAS:
                columns = ", ".join(
                    f"NULL::{c.split(' ', 1)[1]} AS {c.split(' ', 1)[0]}" for c in _EMPTY_SCHEMAS[table].split(", ")
                )
                body = f"SELECT {columns} WHERE false"
            else:
                continue
            statements.append(f"CREATE OR REPLACE VIEW {table} AS {body}")
        return statements

    def refresh_views(self, *, force: bool = False) -> None:
        """(Re)create the views when tables gained or lost their first file; rewrite the database file."""
        signature = tuple(self._table_has_files(t) for t in (*TABLES, SERIES_TABLE))
        with self._views_lock:
            if not force and signature == self._views_signature:
                return
            statements = self.view_statements()
            cursor = self._con.cursor()
            try:
                for table in (*TABLES, SERIES_TABLE):
                    cursor.execute(f"DROP VIEW IF EXISTS {table}")
                for statement in statements:
                    cursor.execute(statement)
            finally:
                cursor.close()
            self._views_signature = signature
            if self.database_file is not None:
                write_database_file(self.database_file, statements)


def write_database_file(path: Path, statements: list[str]) -> bool:
    """Write a DuckDB database holding only the lake views (atomically replaced); False when already current.

    The statements are remembered beside the file (``<name>.views.sql``), so
    readers that find the same views leave the file alone.
    """
    recorded = path.with_name(path.name + ".views.sql")
    text = ";\n".join(statements) + ";\n"
    if path.exists() and recorded.exists() and recorded.read_text(encoding="utf-8") == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    con = connect(str(tmp))
    try:
        for statement in statements:
            con.execute(statement)
        con.execute("CHECKPOINT")
    finally:
        con.close()
    os.replace(tmp, path)
    Path(str(tmp) + ".wal").unlink(missing_ok=True)
    recorded_tmp = recorded.with_name(f".{recorded.name}.{os.getpid()}.tmp")
    recorded_tmp.write_text(text, encoding="utf-8")
    os.replace(recorded_tmp, recorded)
    return True


def _empty_samples() -> pl.DataFrame:
    return pl.DataFrame(
        schema={
            "ts": pl.Datetime("us", "UTC"),
            "metric": pl.String,
            "value": pl.Float64,
            "type": pl.String,
            "tags": pl.String,
            "series_id": pl.Int64,
        }
    )


def _empty_aggregate(group_keys: list[str] | None) -> pl.DataFrame:
    schema: dict[str, Any] = {"ts": pl.Datetime("us", "UTC"), "metric": pl.String}
    if group_keys is None:
        schema.update({"series_id": pl.Int64, "tags": pl.String})
    else:
        schema.update(dict.fromkeys(group_keys, pl.String))
    schema["value"] = pl.Float64
    return pl.DataFrame(schema=schema)
