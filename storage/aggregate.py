"""The SQL of bucketed aggregates: per-series partials from raw samples and rollups, combined per bucket and group.

:class:`~storage.query.QueryEngine` runs this SQL over the exact files a query
needs (:class:`FileSources`), with the parts over closed time read through its
cache (:mod:`storage.cache`). The same builder, given :class:`ViewSources`,
writes the query over the lake's views instead (``samples``, ``rollups_1m``,
``series``…), with its parameters inlined: text a person can paste into
``metrics sql`` or ``duckdb data/metrics.duckdb`` and get the same rows (the
dashboards' "show query").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pyarrow as pa

from storage.lake import Lake, LakeFile
from storage.rollups import ROLLUP_SQL, covered_by
from storage.views import file_list, samples_source, sql_string

AGGREGATIONS = ("avg", "min", "max", "sum", "count", "last", "rate", "increase", "p50", "p95", "p99")
ROLLUP_AGGREGATIONS = frozenset({"avg", "min", "max", "sum", "count", "last", "rate", "increase"})
PERCENTILES = {"p50": 0.5, "p95": 0.95, "p99": 0.99}
US = 1_000_000
# Rollups of a width pay off only over ranges long enough that raw samples of a
# series span several row groups; shorter ranges read raw samples in one pass.
ROLLUP_MIN_RANGE = {3600: timedelta(days=3), 60: timedelta(hours=6)}
EMPTY_CATALOG = "(SELECT NULL::BIGINT AS series_id, NULL::VARCHAR AS metric, NULL::VARCHAR AS tags WHERE false)"

# Partial aggregates per series and bucket: how raw samples and rollup rows give
# them, and how partials of a wider bucket combine (None: only used for stepping).
_INCREASE_SQL = "sum(CASE WHEN d IS NULL THEN 0 WHEN d >= 0 THEN d ELSE value END)"
_PARTIALS: dict[str, tuple[str, str, str | None]] = {
    "n": ("count(*)", "count", "sum(n)"),
    "s": ("sum(value)", "sum", "sum(s)"),
    "lo": ("min(value)", "min", "min(lo)"),
    "hi": ("max(value)", "max", "max(hi)"),
    "first": ("arg_min(value, ts)", "first", None),
    "last": ("arg_max(value, ts)", "last", "arg_max(last, last_ts)"),
    "last_ts": ("max(ts)", "last_ts", "max(last_ts)"),
    "inc": (_INCREASE_SQL, "increase", "sum(inc)"),
}
# The partials each aggregation needs, and its final value per series and per group.
_NEEDS: dict[str, tuple[str, ...]] = {
    "avg": ("n", "s"),
    "sum": ("s",),
    "count": ("n",),
    "min": ("lo",),
    "max": ("hi",),
    "last": ("last", "last_ts"),
    "rate": ("first", "last", "last_ts", "inc"),
    "increase": ("first", "last", "last_ts", "inc"),
}
_FINAL: dict[str, tuple[str, str]] = {
    "avg": ("s / n", "sum(s) / sum(n)"),
    "sum": ("s", "sum(s)"),
    "count": ("n::DOUBLE", "sum(n)::DOUBLE"),
    "min": ("lo", "min(lo)"),
    "max": ("hi", "max(hi)"),
    "last": ("last", "arg_max(last, last_ts)"),
    "rate": ("inc / STEP", "sum(inc) / STEP"),
    "increase": ("inc", "sum(inc)"),
}


@dataclass(frozen=True)
class TimeRange:
    """A UTC [start, end) range and the day partitions it touches."""

    start: datetime
    end: datetime

    @property
    def first_day(self) -> date:
        """The UTC day of the start."""
        return self.start.date()

    @property
    def last_day(self) -> date:
        """The UTC day of the last microsecond in range."""
        return (self.end - timedelta(microseconds=1)).date()


def floor_to(moment: datetime, seconds: int) -> datetime:
    """``moment`` rounded down to a multiple of ``seconds`` since the Unix epoch."""
    micros = int(moment.timestamp() * US) if moment.microsecond == 0 else micros_of(moment)
    floored = micros // (seconds * US) * seconds * US
    return datetime.fromtimestamp(floored / US, UTC)


def micros_of(moment: datetime) -> int:
    """Exact microseconds since the epoch (no float rounding)."""
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * US + delta.microseconds


class FileSources:
    """Reads the exact files listed: what the engine runs.

    Args:
        catalog: the series catalog relation.
        closed: reads a part over closed time as a table, from the cache when it can (None: parts stay SQL);
            its third argument says whether the part joins the series catalog.
    """

    by_file = True  # a day's compacted file can be read from its rollups while the day's newer files are raw

    def __init__(self, catalog: str | None, closed: Callable[[str, list[Any], bool], pa.Table] | None = None) -> None:
        self.catalog = catalog or EMPTY_CATALOG
        self._closed = closed
        self.tables: dict[str, pa.Table] = {}  # to register for the query: the parts read through the cache

    @property
    def caching(self) -> bool:
        """Whether :meth:`closed_part` reads parts through the cache."""
        return self._closed is not None

    def closed_part(self, text: str, params: list[Any], *, joins_catalog: bool = False) -> tuple[str, list[Any]]:
        """A part of a query over closed time: a registered table read through the cache, else ``text`` itself."""
        if self._closed is None:
            return text, params
        name = f"_closed_part_{len(self.tables)}"
        self.tables[name] = self._closed(text, params, joins_catalog)
        return f"SELECT * FROM {name}", []

    def samples(self, files: Sequence[LakeFile]) -> str:
        """A subquery of decoded samples from ``files``."""
        return samples_source([f.path for f in files])

    def rollups(self, files: Sequence[LakeFile]) -> str:
        """A relation of the rollup rows of ``files`` (columns still encoded: see :meth:`rollup_column`)."""
        return f"read_parquet({file_list([f.path for f in files])})"

    def rollup_column(self, name: str) -> str:
        """The SQL of a decoded rollup column."""
        return ROLLUP_SQL[name]

    def series_filter(self, metric_where: str, params: list[Any], ids: list[int]) -> tuple[str, list[Any]]:
        """A predicate keeping the series ``ids`` (found by tag filters)."""
        return f" AND series_id IN ({', '.join(str(int(i)) for i in ids)})", []


class ViewSources(FileSources):
    """Reads the lake's views, limited to the same days: what a person can paste into ``metrics sql``."""

    by_file = False  # the views select days, not files: a day is read from rollups only when they cover it

    def __init__(self, tag_items: list[tuple[str, list[str]]]) -> None:
        super().__init__("series")  # no cache: the SQL shown reads the views
        self.tag_items = tag_items

    @staticmethod
    def _days(files: Sequence[LakeFile]) -> str:
        return ", ".join(f"DATE '{day.isoformat()}'" for day in sorted({f.day for f in files}))

    def samples(self, files: Sequence[LakeFile]) -> str:
        """The ``samples`` view on the days of ``files``."""
        return f"(SELECT metric, series_id, ts, value, type, tags FROM samples WHERE date IN ({self._days(files)}))"

    def rollups(self, files: Sequence[LakeFile]) -> str:
        """The rollup view of ``files``' table on their days."""
        return f"(SELECT * FROM {files[0].table} WHERE date IN ({self._days(files)}))"

    def rollup_column(self, name: str) -> str:
        """Columns of the views are decoded already."""
        return name

    def series_filter(self, metric_where: str, params: list[Any], ids: list[int]) -> tuple[str, list[Any]]:
        """The tag filters as a subquery of the ``series`` view (not a list of ids)."""
        where, extra = metric_where, list(params)
        for key, values in self.tag_items:
            marks = ", ".join("?" for _ in values)
            where += f" AND json_extract_string(tags, {sql_string(tag_path(key))}) IN ({marks})"
            extra += values
        return f" AND series_id IN (SELECT series_id FROM series WHERE {where})", extra


def tag_path(key: str) -> str:
    """The JSON path of a tag key in the ``tags`` column."""
    return '$."' + key + '"'


def rollup_width(step: int, agg: str, rng: TimeRange, use_rollups: bool | None) -> int:
    """Width (seconds) of the rollups to read for this query, or 0 for raw samples only.

    ``use_rollups`` None picks rollups by the range's length; True uses them
    whenever the interval and aggregation allow; False never.
    """
    if use_rollups is False or agg not in ROLLUP_AGGREGATIONS:
        return 0
    for width in (3600, 60):
        if step % width == 0 and (use_rollups or rng.end - rng.start >= ROLLUP_MIN_RANGE[width]):
            return width
    return 0


def partials_sql(
    lake: Lake,
    sources: FileSources,
    rng: TimeRange,
    step: int,
    where: str,
    params: list[Any],
    agg: str,
    use_rollups: bool | None,
) -> tuple[str, list[Any]] | None:
    """SQL of per-series partial aggregates from rollups (covered days and files) and raw samples (the rest)."""
    width = rollup_width(step, agg, rng, use_rollups)
    table = "rollups_1h" if width == 3600 else "rollups_1m"
    sample_files = lake.files("samples", rng.first_day, rng.last_day)
    rollups = lake.files(table, rng.first_day, rng.last_day) if width and sample_files else []
    covered = covered_by(sample_files, rollups)
    grain = width or step
    tail_start = floor_to(rng.end, width) if width else rng.end
    columns = _NEEDS[agg]
    parts: list[str] = []
    all_params: list[Any] = []

    # Today's compacted file stands for itself by its rollups while newer raw files arrive: partials of an hour
    # from two files merge exactly (not a counter's increase: which file's samples came first is unknown).
    by_file = sources.by_file and "inc" not in columns
    generations = {(f.day, f.name) for f in rollups} if by_file else set()
    rolled = [f for f in sample_files if f.day in covered or (f.compacted and (f.day, f.name) in generations)]
    rolled_names = {(f.day, f.name) for f in rolled}
    raw_files = [f for f in sample_files if (f.day, f.name) not in rolled_names]
    tail_files = [f for f in rolled if f.day == tail_start.date()] if tail_start < rng.end else []
    for files, lo in ((raw_files, rng.start), (tail_files, max(tail_start, rng.start))):
        if not files:
            continue
        parts.append(_raw_partial(sources.samples(files), grain, where, columns))
        all_params += [*params, lo, rng.end]
    rollup_files = [f for f in rollups if (f.day, f.name) in rolled_names]
    if rollup_files and rng.start < tail_start:
        selected = ", ".join(f"{sources.rollup_column(_PARTIALS[c][1])} AS {c}" for c in columns)
        part, part_params = sources.closed_part(
            f"SELECT series_id, epoch_us(ts) AS b, {selected} FROM {sources.rollups(rollup_files)} "
            f"WHERE {where} AND ts >= ? AND ts < ?",
            [*params, rng.start, tail_start],
        )
        parts.append(part)
        all_params += part_params
    if not parts:
        return None
    return " UNION ALL ".join(f"({p})" for p in parts), all_params


def combine_sql(
    sources: FileSources, partials: str, params: list[Any], step: int, agg: str, group_keys: list[str] | None
) -> tuple[str, list[Any]]:
    """SQL turning partials into one value per (bucket, series or group)."""
    step_us = step * US
    columns = _NEEDS[agg]
    if "inc" in columns:
        # Add the step from each partial's previous ``last`` to its ``first`` (reset-aware).
        previous = "lag(last) OVER (PARTITION BY series_id ORDER BY b)"
        partials = (
            f"SELECT * REPLACE (inc + CASE WHEN {previous} IS NULL THEN 0 WHEN first - {previous} >= 0 "
            f"THEN first - {previous} ELSE first END AS inc) FROM ({partials})"
        )
    combined = ", ".join(f"{_PARTIALS[c][2]} AS {c}" for c in columns if _PARTIALS[c][2])
    per_series = (
        f"SELECT series_id, (b // {step_us}) * {step_us} AS bucket, {combined} "
        f"FROM ({partials}) GROUP BY series_id, bucket"
    )
    series_value, group_value = _FINAL[agg]
    series_value = series_value.replace("STEP", repr(float(step)))
    group_value = group_value.replace("STEP", repr(float(step)))
    ts = "make_timestamp(bucket)::TIMESTAMPTZ"
    if group_keys is None:
        text = (
            f"SELECT {ts} AS ts, c.metric, p.series_id, c.tags, {series_value} AS value "
            f"FROM ({per_series}) p LEFT JOIN {sources.catalog} c USING (series_id) ORDER BY c.metric, c.tags, ts"
        )
        return text, params
    select_keys, group_cols = group_columns(group_keys)
    text = (
        f"SELECT {ts} AS ts, c.metric{select_keys}, {group_value} AS value "
        f"FROM ({per_series}) p LEFT JOIN {sources.catalog} c USING (series_id) "
        f"GROUP BY bucket, c.metric{group_cols} ORDER BY c.metric{group_cols}, ts"
    )
    return text, params


def group_columns(group_keys: list[str]) -> tuple[str, str]:
    """SELECT and GROUP BY fragments for tag keys, under internal names (``_g0``, ...)."""
    select = "".join(
        f", json_extract_string(c.tags, {sql_string(tag_path(k))}) AS _g{i}" for i, k in enumerate(group_keys)
    )
    group = "".join(f", _g{i}" for i in range(len(group_keys)))
    return select, group


def percentile_sql(
    lake: Lake,
    sources: FileSources,
    rng: TimeRange,
    step: int,
    where: str,
    params: list[Any],
    agg: str,
    group_keys: list[str] | None,
) -> tuple[str | None, list[Any]]:
    """SQL of a percentile per bucket (and series or group) over raw samples (rollups keep no quantiles)."""
    files = lake.files("samples", rng.first_day, rng.last_day)
    if not files:
        return None, params
    q = PERCENTILES[agg]
    bucket = f"(epoch_us(ts) // {step * US}) * {step * US}"
    if group_keys is None:
        select, keys, order = "r.metric, r.series_id, any_value(c.tags) AS tags", "r.metric, r.series_id", "tags"
    else:
        select_keys, group_cols = group_columns(group_keys)
        select, keys, order = f"r.metric{select_keys}", f"r.metric{group_cols}", group_cols.lstrip(", ")

    def part(chosen: Sequence[LakeFile], lo: datetime, hi: datetime) -> tuple[str, list[Any]]:
        raw = (
            f"SELECT metric, series_id, {bucket} AS bucket, value FROM {sources.samples(chosen)} "
            f"WHERE {where} AND ts >= ? AND ts < ?"
        )
        return (
            f"SELECT bucket, {select}, quantile_cont(value, {q}) AS value "
            f"FROM ({raw}) r LEFT JOIN {sources.catalog} c USING (series_id) GROUP BY bucket, {keys}"
        ), [*params, lo, hi]

    # Buckets before today's are read once into the cache (their files change only by a new file name).
    today = datetime.now(UTC).date()
    cut = floor_to(datetime.combine(min(rng.last_day, today), datetime.min.time(), UTC), step)
    if sources.caching and rng.start < cut:
        closed = part([f for f in files if f.day <= (cut - timedelta(microseconds=1)).date()], rng.start, cut)
        parts = [sources.closed_part(*closed, joins_catalog=True)]
        fresh = [f for f in files if f.day >= cut.date()]
        if fresh and cut < rng.end:
            parts.append(part(fresh, cut, rng.end))
    else:
        parts = [part(files, rng.start, rng.end)]
    union = " UNION ALL ".join(f"({text})" for text, _ in parts)
    ordered = ", ".join(key for key in ("metric", order, "ts") if key)
    text = f"SELECT make_timestamp(bucket)::TIMESTAMPTZ AS ts, * EXCLUDE (bucket) FROM ({union}) ORDER BY {ordered}"
    return text, [value for _, part_params in parts for value in part_params]


def _raw_partial(source: str, grain: int, where: str, columns: tuple[str, ...]) -> str:
    """SQL of partial aggregates per series and ``grain``-second bucket from raw samples."""
    bucket = f"(epoch_us(ts) // {grain * US}) * {grain * US}"
    source = f"(SELECT series_id, ts, value, {bucket} AS b FROM {source} WHERE {where} AND ts >= ? AND ts < ?)"
    if "inc" in columns:
        source = f"(SELECT *, value - lag(value) OVER (PARTITION BY series_id, b ORDER BY ts) AS d FROM {source})"
    selected = ", ".join(f"{_PARTIALS[c][0]} AS {c}" for c in columns)
    return f"SELECT series_id, b, {selected} FROM {source} GROUP BY series_id, b"


def sql_literal(value: Any) -> str:
    """A parameter value as a DuckDB literal."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, datetime):
        moment = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
        return f"TIMESTAMPTZ '{moment.isoformat(sep=' ')}'"
    return sql_string(str(value))


def inline_params(text: str, params: Sequence[Any]) -> str:
    """``text`` with each ``?`` placeholder (outside quotes) replaced by its parameter as a literal."""
    values = iter(params)
    out: list[str] = []
    quote: str | None = None
    for char in text:
        if quote is not None:
            if char == quote:
                quote = None
        elif char in ("'", '"'):
            quote = char
        elif char == "?":
            try:
                out.append(sql_literal(next(values)))
            except StopIteration:
                raise ValueError("more placeholders than parameters") from None
            continue
        out.append(char)
    if next(values, _END) is not _END:
        raise ValueError("more parameters than placeholders")
    return "".join(out)


_END = object()
