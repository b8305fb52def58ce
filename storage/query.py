"""The DuckDB query engine: every reader of the lake goes through here.

Python callers get polars DataFrames. Each structured query lists the exact
files it needs (only the days in range) under the lake's shared lock, so
compaction can never make it fail or double count, and reads rollups for the
days whose rollups cover all samples when the interval and aggregation allow.
``sql()`` runs ad-hoc SQL over the views of ``storage.views``, which are also
kept in a DuckDB database file so that ``duckdb data/metrics.duckdb`` works.

Metric patterns are globs (``crypto.key.*``); tag filters are equality (a
list of values means any of them). Buckets are aligned to multiples of the
interval since the Unix epoch.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa

from metrics.errors import QueryError, ValidationError
from metrics.model import TAG_KEY_RE
from metrics.timestamps import parse_duration, parse_timestamp, to_utc
from storage.aggregate import (
    AGGREGATIONS,
    PERCENTILES,
    FileSources,
    TimeRange,
    ViewSources,
    combine_sql,
    floor_to,
    inline_params,
    partials_sql,
    percentile_sql,
    tag_path,
)
from storage.cache import RollupCache
from storage.lake import SERIES_TABLE, TABLES, Lake
from storage.series import read_catalog
from storage.views import (
    connect,
    samples_source,
    table_has_files,
    view_statements,
    write_database_file,
)

CATALOG_TABLE = "series_catalog"  # the engine's in-memory copy of the series catalog
_GLOB_CHARS = re.compile(r"[*?\[]")
_RESULT_COLUMNS = ("ts", "metric", "series_id", "tags", "value")
_READ_STATEMENTS = frozenset({duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN})


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
        if self.pattern is not None and not isinstance(self.pattern, str):
            raise QueryError(f"pattern: expected a glob over metric names, got {self.pattern!r}")
        pattern = (self.pattern or "*").strip()
        if pattern in ("*", ""):
            return "TRUE", []
        wildcard = _GLOB_CHARS.search(pattern)
        if wildcard is None:
            return f"{column} = ?", [pattern]
        prefix = pattern[: wildcard.start()]
        if not prefix:
            return f"{column} GLOB ?", [pattern]
        if ord(prefix[-1]) >= 0x10FFFF:
            return f"{column} GLOB ?", [pattern]
        # The range lets DuckDB skip row groups by min/max statistics; GLOB does the rest.
        upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        return f"{column} >= ? AND {column} < ? AND {column} GLOB ?", [prefix, upper, pattern]

    def tag_items(self) -> list[tuple[str, list[str]]]:
        """Validated (key, allowed values) pairs."""
        if self.tags is None:
            return []
        if not isinstance(self.tags, Mapping):
            raise QueryError(f"tags: expected a mapping of tag key to value(s), got {type(self.tags).__name__}")
        items: list[tuple[str, list[str]]] = []
        for key, value in self.tags.items():
            if not isinstance(key, str) or not TAG_KEY_RE.fullmatch(key):
                raise QueryError(f"tags: key {key!r} must match {TAG_KEY_RE.pattern}")
            raw = [value] if isinstance(value, str | int | float) and not isinstance(value, bool) else value
            if not isinstance(raw, Sequence) or isinstance(raw, str | bytes):
                raise QueryError(f"tags: value of {key!r} must be a string or a list of strings, got {value!r}")
            if not raw or not all(isinstance(v, str | int | float) and not isinstance(v, bool) for v in raw):
                raise QueryError(f"tags: value of {key!r} must be a string or a non-empty list of strings")
            items.append((key, [str(v) for v in raw]))
        return items


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _moment(value: datetime | str | None, name: str) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return parse_timestamp(value)
        except ValidationError as exc:
            raise QueryError(f"{name}: {exc}") from None
    if not isinstance(value, datetime):
        raise QueryError(f"{name}: expected a datetime or ISO 8601 text, got {type(value).__name__}")
    try:
        return to_utc(value)
    except ValidationError as exc:
        raise QueryError(f"{name}: {exc}") from None


def resolve_range(
    start: datetime | str | None, end: datetime | str | None, default: timedelta = timedelta(hours=1)
) -> tuple[datetime, datetime]:
    """Aware UTC [start, end); end defaults to now, start to ``default`` before end; nothing before 1970."""
    end_utc = _moment(end, "end") or datetime.now(UTC)
    start_utc = _moment(start, "start") or max(end_utc - default, EPOCH) if end_utc > EPOCH else EPOCH
    start_utc = max(start_utc, EPOCH)
    if start_utc >= end_utc:
        raise QueryError(f"time range: start {start_utc.isoformat()} is not before end {end_utc.isoformat()}")
    return start_utc, end_utc


class QueryEngine:
    """One DuckDB engine over a lake; thread-safe (each call uses its own cursor)."""

    def __init__(
        self, lake: Lake, *, database_file: Path | None = None, threads: int | None = None, cache_bytes: int = 0
    ) -> None:
        self.lake = lake
        self.rollup_cache = RollupCache(cache_bytes)
        self.database_file = database_file
        self._con = connect(threads=threads)  # structured queries and the engine's own tables
        self._sql_con = connect(threads=threads, sandbox=lake.root)  # ad-hoc SQL: only the views, only the lake
        self._views_signature: tuple[bool, ...] | None = None
        self._views_lock = threading.Lock()
        self._catalog_lock = threading.Lock()
        self._catalog_signature: list[tuple[str, int, int]] | None = None
        self.last_query_seconds = 0.0

    def close(self) -> None:
        """Close the DuckDB connections."""
        self._con.close()
        self._sql_con.close()

    # -- low level -----------------------------------------------------------
    def _run(
        self,
        text: str,
        params: Sequence[Any] | None = None,
        con: duckdb.DuckDBPyConnection | None = None,
        tables: Mapping[str, pa.Table] | None = None,
    ) -> pl.DataFrame:
        started = time.perf_counter()
        cursor = (con or self._con).cursor()
        try:
            for name, table in (tables or {}).items():
                cursor.register(name, table)
            result = cursor.sql(text, params=list(params or []))
            if result is None:  # a statement without a result (DDL, SET, ...)
                return pl.DataFrame()
            frame = result.pl()
            frame = frame.with_columns(
                pl.col(name).dt.convert_time_zone("UTC")
                for name, dtype in frame.schema.items()
                if isinstance(dtype, pl.Datetime) and dtype.time_zone not in (None, "UTC")
            )
        except duckdb.Error as exc:
            raise QueryError(str(exc).split("\n")[0]) from None
        except (pl.exceptions.PolarsError, pa.ArrowException) as exc:
            raise QueryError(f"the result cannot be returned as a table: {str(exc).splitlines()[0]}") from None
        finally:
            cursor.close()
            self.last_query_seconds = time.perf_counter() - started
        return frame

    def _closed_part(self, text: str, params: list[Any], joins_catalog: bool) -> pa.Table:
        """A query part over closed time, from the rollup cache or read now (then kept)."""
        version: tuple[Any, ...] = ()
        if joins_catalog:
            # Its rows carry the catalog's tags: read the catalog after the part's files were listed (a writer
            # registers a series before its samples), and key the part by that catalog.
            self._series_source()
            version = tuple(self._catalog_signature or ())
        return self.rollup_cache.table(text, params, self._arrow, version)

    def _arrow(self, text: str, params: list[Any]) -> pa.Table:
        """The rows of a query as an Arrow table."""
        cursor = self._con.cursor()
        try:
            return cursor.sql(text, params=params).to_arrow_table()
        except duckdb.Error as exc:
            raise QueryError(str(exc).split("\n")[0]) from None
        finally:
            cursor.close()

    @contextmanager
    def _reading(self) -> Iterator[None]:
        """Hold the shared lock for a read, after finishing any swap a dead process left half done."""
        self.lake.recover()
        with self.lake.shared():
            yield

    def _series_source(self) -> str | None:
        """Name of an in-memory table holding the series catalog, refreshed when its files change."""
        signature = []
        for path in self.lake.flat_files(SERIES_TABLE):
            try:
                stat = path.stat()
            except FileNotFoundError:  # merged away by compaction meanwhile: read again
                return self._series_source()
            signature.append((path.name, stat.st_size, stat.st_mtime_ns))
        if not signature:
            return None
        with self._catalog_lock:
            if signature != self._catalog_signature:
                catalog = read_catalog(self.lake).select("series_id", "metric", "type", "tags").to_arrow()
                cursor = self._con.cursor()
                try:
                    cursor.register("_catalog_rows", catalog)
                    cursor.execute(f"CREATE OR REPLACE TABLE {CATALOG_TABLE} AS SELECT * FROM _catalog_rows")
                    cursor.unregister("_catalog_rows")
                finally:
                    cursor.close()
                self._catalog_signature = signature
        return CATALOG_TABLE

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
            params += [tag_path(key), *values]
        found = self._run(f"SELECT series_id FROM {source} WHERE {where}", params)
        return found.get_column("series_id").to_list()

    def _where(self, flt: MetricFilter, ids: list[int] | None) -> tuple[str, list[Any]]:
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
        rng = TimeRange(*resolve_range(start, end))
        with self._reading():
            files = [f.path for f in self.lake.files("samples", rng.first_day, rng.last_day)]
            ids = self._series_ids(flt)
            if not files or ids == []:
                return _empty_samples()
            where, params = self._where(flt, ids)
            where += " AND ts >= ? AND ts < ?"
            params += [rng.start, rng.end]
            if above is not None:
                where += " AND value > ?"
                params.append(_number(above, "above"))
            if below is not None:
                where += " AND value < ?"
                params.append(_number(below, "below"))
            text = (
                f"SELECT ts, metric, value, type, tags, series_id FROM {samples_source(files)} "
                f"WHERE {where} ORDER BY metric, series_id, ts"
            )
            if limit is not None:
                if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
                    raise QueryError(f"limit: expected a whole number >= 0, got {limit!r}")
                text += f" LIMIT {limit}"
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
        with self._reading():
            ids = self._series_ids(flt)
            if ids == []:
                return _empty_samples()
            oldest = (now - min(lookback, now - EPOCH)).date()
            days = [d for d in self.lake.partitions("samples") if d >= oldest]
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
        with self._reading():
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

    def over_samples(
        self,
        start: datetime,
        end: datetime,
        text: str,
        params: Sequence[Any] | None = None,
        tables: Mapping[str, pa.Table] | None = None,
    ) -> pl.DataFrame | None:
        """Run ``text``, where ``{samples}`` reads the sample files of days [start, end], beside Arrow ``tables``.

        For readers that need their own SQL over recent samples (alert
        evaluation); ``tables`` are registered under their names for the
        query. None when there is no sample file in the range.
        """
        rng = TimeRange(start, end)
        with self._reading():
            files = [f.path for f in self.lake.files("samples", rng.first_day, rng.last_day)]
            if not files:
                return None
            return self._run(text.format(samples=samples_source(files)), params, tables=tables)

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
        use_rollups: bool | None = None,
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
            use_rollups: None (default) reads rollups where they cover the data and the range is long
                enough to gain from them (6 h for 1-minute, 3 days for 1-hour rollups); True reads them
                whenever possible; False reads raw samples only. The results are the same.

        Returns:
            Columns ``ts, metric``, then ``series_id, tags`` (per series) or the group-by tags, then ``value``.
        """
        with self._reading():
            planned = self._plan_aggregated(pattern, aggregation, interval, start, end, group_by, tags, use_rollups)
            if planned is None:
                return _empty_aggregate(_group_keys(group_by))
            text, params, group_keys, tables = planned
            result = self._run(text, params, tables=tables)
        return result.rename({f"_g{i}": key for i, key in enumerate(group_keys or [])})

    def aggregated_sql(
        self,
        pattern: str = "*",
        aggregation: str = "avg",
        interval: str | int | timedelta = "1m",
        start: datetime | None = None,
        end: datetime | None = None,
        group_by: Sequence[str] | None = None,
        tags: Mapping[str, str | Sequence[str]] | None = None,
        *,
        use_rollups: bool | None = None,
    ) -> str | None:
        """The SQL :meth:`query_aggregated` runs for these arguments, over the lake's views with values inlined.

        Paste it into ``metrics sql`` (or ``duckdb data/metrics.duckdb``) for the
        same rows: it reads the same days of the same tables, rollups for the days
        they cover (a day with raw files newer than its compaction is read raw,
        where the engine reads its compacted file's rollups). None when no data is
        in range.
        """
        with self._reading():
            planned = self._plan_aggregated(
                pattern, aggregation, interval, start, end, group_by, tags, use_rollups, portable=True
            )
        if planned is None:
            return None
        text, params, group_keys, _ = planned
        if group_keys:
            renames = ", ".join(f"_g{i} AS {key}" for i, key in enumerate(group_keys))
            text = f"SELECT * RENAME ({renames}) FROM ({text})"
        return inline_params(text, params)

    def _plan_aggregated(
        self,
        pattern: str,
        aggregation: str,
        interval: str | int | timedelta,
        start: datetime | None,
        end: datetime | None,
        group_by: Sequence[str] | None,
        tags: Mapping[str, str | Sequence[str]] | None,
        use_rollups: bool | None,
        *,
        portable: bool = False,
    ) -> tuple[str, list[Any], list[str] | None, dict[str, pa.Table]] | None:
        """(SQL, parameters, group keys, tables to register) of an aggregated query, or None when nothing is in range.

        Hold the read lock: the rollup part may be read here (into the cache).
        """
        agg = aggregation.lower() if isinstance(aggregation, str) else ""
        if agg not in AGGREGATIONS:
            raise QueryError(f"aggregation: {aggregation!r} is not one of {', '.join(AGGREGATIONS)}")
        step = interval_seconds(interval)
        flt = MetricFilter(pattern, tags)
        group_keys = _group_keys(group_by)
        start_utc, end_utc = resolve_range(start, end)
        rng = TimeRange(floor_to(start_utc, step), end_utc)
        ids = self._series_ids(flt)
        if ids == []:
            return None
        sources = (
            ViewSources(flt.tag_items())
            if portable
            else FileSources(self._series_source(), self._closed_part if self.rollup_cache.max_bytes else None)
        )
        where, params = flt.metric_sql()
        if ids is not None:
            extra, extra_params = sources.series_filter(where, params, ids)
            where, params = where + extra, params + extra_params
        if agg in PERCENTILES:
            text, params = percentile_sql(self.lake, sources, rng, step, where, params, agg, group_keys)
            return None if text is None else (text, params, group_keys, sources.tables)
        partials = partials_sql(self.lake, sources, rng, step, where, params, agg, use_rollups)
        if partials is None:
            return None
        text, params = combine_sql(sources, partials[0], partials[1], step, agg, group_keys)
        return text, params, group_keys, sources.tables

    # -- ad-hoc SQL and views ------------------------------------------------------
    def sql(self, text: str, params: Sequence[Any] | None = None) -> pl.DataFrame:
        """Run ad-hoc SQL over the lake views (``samples``, ``series``, ``rollups_1m``, ...)."""
        if not isinstance(text, str) or not text.strip():
            raise QueryError("sql: empty statement")
        try:
            kinds = {statement.type for statement in duckdb.extract_statements(text)}
        except duckdb.Error as exc:
            raise QueryError(str(exc).split("\n")[0]) from None
        if not kinds <= _READ_STATEMENTS:
            names = ", ".join(sorted(kind.name for kind in kinds - _READ_STATEMENTS))
            raise QueryError(f"sql: only queries (SELECT, WITH, EXPLAIN, DESCRIBE, SHOW) are allowed, not {names}")
        self.refresh_views()
        with self._reading():
            return self._run(text, params, con=self._sql_con)

    def refresh_views(self, *, force: bool = False) -> None:
        """(Re)create the views when tables gained or lost their first file; rewrite the database file."""
        signature = tuple(table_has_files(self.lake, t) for t in (*TABLES, SERIES_TABLE))
        with self._views_lock:
            if not force and signature == self._views_signature:
                return
            statements = view_statements(self.lake)
            cursor = self._sql_con.cursor()
            try:  # one transaction: concurrent sql() calls see the old views or the new ones
                cursor.execute("BEGIN TRANSACTION")
                defined = {name for (name,) in cursor.execute("SELECT view_name FROM duckdb_views()").fetchall()}
                created = {statement.split()[4] for statement in statements}
                for table in sorted(defined & {*TABLES, SERIES_TABLE} - created):
                    cursor.execute(f"DROP VIEW {table}")  # its table lost its last file
                for statement in statements:
                    cursor.execute(statement)
                cursor.execute("COMMIT")
            except BaseException:
                cursor.execute("ROLLBACK")
                raise
            finally:
                cursor.close()
            self._views_signature = signature
            if self.database_file is not None:
                write_database_file(self.database_file, statements)


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise QueryError(f"{name}: expected a number, got {value!r}")
    return float(value)


def _group_keys(group_by: Sequence[str] | None) -> list[str] | None:
    """Validated group-by tag keys (None: one row per series)."""
    if group_by is not None and (isinstance(group_by, str) or not isinstance(group_by, Sequence)):
        raise QueryError(f"group_by: expected a list of tag keys, got {group_by!r}")
    group_keys = list(group_by) if group_by is not None else None
    for key in group_keys or []:
        if not isinstance(key, str) or not TAG_KEY_RE.fullmatch(key):
            raise QueryError(f"group_by: {key!r} is not a tag key")
        if key in _RESULT_COLUMNS:
            raise QueryError(f"group_by: {key!r} clashes with a result column ({', '.join(_RESULT_COLUMNS)})")
    if group_keys is not None and len(set(group_keys)) != len(group_keys):
        raise QueryError(f"group_by: {group_keys} names a tag twice")
    return group_keys


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
