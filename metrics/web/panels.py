"""What a dashboard panel shows over a time range: aligned series for uPlot, bars, or table rows, as plain JSON.

The bucket width follows the range (:func:`step_for`: at most
:data:`MAX_POINTS` buckets), so a 30-day chart reads 3-hour buckets, which
the query engine takes from the 1-hour rollups, while a 1-hour chart reads
15-second buckets of raw samples: both are a few hundred points. Anomalies
are marked on the line they belong to; a forecast adds its yhat and 80 %
interval after the last bucket.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import polars as pl

from metrics.errors import ValidationError
from metrics.settings import Settings
from metrics.web.boards import Dashboard, Panel, Query
from storage.aggregate import floor_to, sql_literal
from storage.store import MetricStore

MAX_POINTS = 240  # buckets per chart: enough for a 1,000-pixel-wide line, few enough to send at once
STEPS = (10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
MAX_RANGE = timedelta(days=90)
# A counter's rate over a bucket holding one or two samples swings with where they fall: like Grafana's
# $__rate_interval, rates and increases use buckets of at least a minute (several samples each).
COUNTER_MIN_STEP = 60
COUNTER_AGGREGATIONS = ("rate", "increase")
US = 1_000_000


@dataclass(frozen=True)
class Window:
    """The range a dashboard shows, and its bucket width in seconds."""

    start: datetime
    end: datetime
    step: int

    @classmethod
    def of(cls, start: datetime, end: datetime) -> Window:
        """The window [start, end) with its bucket width; raises :class:`ValidationError` for a bad range."""
        if start >= end:
            raise ValidationError(f"time range: start {start.isoformat()} is not before end {end.isoformat()}")
        if end - start > MAX_RANGE:
            raise ValidationError(f"time range: at most {MAX_RANGE.days} days, got {(end - start).days}")
        return cls(start, end, step_for(end - start))

    @property
    def interval(self) -> str:
        """The bucket width as the query API writes it (``15s``, ``3h``)."""
        return f"{self.step}s"


def step_for(length: timedelta) -> int:
    """The narrowest bucket from :data:`STEPS` giving at most :data:`MAX_POINTS` buckets over ``length``."""
    seconds = length.total_seconds()
    return next((step for step in STEPS if seconds / step <= MAX_POINTS), STEPS[-1])


def filters_for(query: Query, dashboard: Dashboard, chosen: Mapping[str, list[str]]) -> dict[str, list[str]]:
    """The tag filters of one query: its fixed tags plus the dashboard filters it honours."""
    allowed = dashboard.filters if query.filters is None else query.filters
    tags: dict[str, list[str]] = {key: list(values) for key, values in query.tags.items()}
    for key, values in chosen.items():
        if key in allowed and values:
            tags[key] = values
    return tags


def step_of(query: Query, window: Window) -> int:
    """The bucket width of one query: the window's, or at least a minute for counters."""
    if query.aggregation in COUNTER_AGGREGATIONS:
        return max(window.step, COUNTER_MIN_STEP)
    return window.step


def query_args(query: Query, dashboard: Dashboard, window: Window, chosen: Mapping[str, list[str]]) -> dict[str, Any]:
    """Keyword arguments of ``MetricStore.query_aggregated`` (and ``aggregated_sql``) for one query."""
    tags = filters_for(query, dashboard, chosen)
    return {
        "pattern": query.metric,
        "aggregation": query.aggregation,
        "interval": f"{step_of(query, window)}s",
        "start": window.start,
        "end": window.end,
        "group_by": list(query.group_by),
        "tags": tags or None,
    }


def panel_sql(store: MetricStore, dashboard: Dashboard, panel: Panel, window: Window, chosen: Any) -> str:
    """The DuckDB SQL of a lake panel, one statement per query, to paste into ``metrics sql``."""
    if panel.source == "lake":
        texts = []
        for query in panel.queries:
            text = store.aggregated_sql(**query_args(query, dashboard, window, chosen))
            texts.append(text if text is not None else f"-- {query.metric}: no data in this range")
        return ";\n\n".join(texts)
    if panel.source in ALERT_EVENT_SQL:
        return _alert_event_sql(panel.source, window)
    return f"-- {panel.title}: read from {SOURCE_ORIGINS.get(panel.source, panel.source)}, not from the lake"


SOURCE_ORIGINS = {
    "keys.by_state": "the key ledger (metrics keys-report)",
    "keys.by_algorithm": "the key ledger (metrics keys-report)",
    "keys.rotations": "the key ledger (metrics keys-report)",
    "keys.inventory": "the key ledger (metrics keys-report)",
    "alerts.active": "the alert store (metrics alerts list)",
    "alerts.silences": "the alert store (metrics alerts silence list)",
}


def line_label(query: Query, tag: Callable[[str], pl.Expr] = pl.col) -> pl.Expr:
    """The name of the line a row belongs to: the query's label, the metric when the pattern is a glob, and
    the group-by tags (``no <key>`` where a series lacks one); the metric alone when that leaves nothing.

    ``tag(key)`` is the column of a tag: the group-by columns of an aggregate (default), or a field of the
    ``tags`` JSON of stored anomalies and forecasts (:func:`json_tag`).
    """
    parts: list[pl.Expr] = [pl.lit(query.label)] if query.label else []
    if any(c in query.metric for c in "*?["):
        parts.append(pl.col("metric"))
    parts += [tag(key).cast(pl.String).fill_null(f"no {key}") for key in query.group_by]
    return pl.concat_str(parts or [pl.col("metric")], separator=" ")


def json_tag(key: str) -> pl.Expr:
    """A tag's value from the ``tags`` JSON column (null where the series lacks it)."""
    return pl.col("tags").str.json_path_match(f"$['{key}']")


def labelled_lines(
    frame: pl.DataFrame, query: Query, *, step: int | None = None, end: int | None = None
) -> dict[str, dict[int, float]]:
    """A query's rows as {line label: {bucket second: value}}, finite values only.

    With ``step`` and ``end`` (a rate), the bucket still filling at ``end`` is the rate over its elapsed
    part rather than over the whole step, or left out while less than half of it has elapsed (too few
    samples to say). Labels are :func:`line_label`'s.
    """
    x = pl.col("ts").dt.epoch("s")
    kept = frame.filter(pl.col("value").is_not_null() & pl.col("value").is_finite())
    if step is not None and end is not None:
        elapsed = pl.lit(end) - x
        kept = kept.filter(elapsed * 2 >= step).with_columns(
            value=pl.when(elapsed < step).then(pl.col("value") * step / elapsed).otherwise(pl.col("value"))
        )
    table = kept.select(label=line_label(query), x=x, value=pl.col("value"))
    return {
        str(label): dict(zip(part.get_column("x").to_list(), part.get_column("value").to_list(), strict=True))
        for (label,), part in table.group_by("label", maintain_order=True)
    }


def timeseries(
    store: MetricStore,
    settings: Settings,
    dashboard: Dashboard,
    panel: Panel,
    window: Window,
    chosen: Mapping[str, list[str]],
) -> dict[str, Any]:
    """A lake panel's lines, aligned on one time axis, with anomalies and a forecast when the panel asks."""
    lines: dict[str, dict[int, float]] = {}
    owners: dict[str, Query] = {}
    for query in panel.queries:
        frame = store.query_aggregated(**query_args(query, dashboard, window, chosen))
        # A rate's last bucket is still filling: over the whole step it would dip to a fraction.
        partial = {"step": step_of(query, window), "end": _seconds(window.end)} if query.aggregation == "rate" else {}
        for label, values in labelled_lines(frame, query, **partial).items():
            lines.setdefault(label, {}).update(values)
            owners[label] = query
    for label, values in lines.items():
        if owners[label].aggregation == "increase":  # an event counter: a bucket without samples saw no events
            step = step_of(owners[label], window)
            for moment in range(_seconds(floor_to(window.start, step)), _seconds(window.end), step):
                values.setdefault(moment, 0.0)
    total = len(lines)
    ranked = sorted(lines, key=lambda label: -_mean(lines[label]))[: panel.top]
    shown = sorted(ranked)
    result: dict[str, Any] = {
        "kind": "timeseries",
        "unit": panel.unit,
        "interval": f"{max(step_of(query, window) for query in panel.queries)}s",
        "start": _seconds(window.start),
        "end": _seconds(window.end),
        "hidden": total - len(shown),
        "series": [],
        "anomalies": [],
        "forecast": None,
    }
    columns: dict[str, dict[int, float]] = {label: lines[label] for label in shown}
    if panel.anomalies and shown:
        marks, anomaly_column = _anomalies(store, settings, panel, window, chosen, dashboard, columns, owners)
        result["anomalies"] = marks
        if marks:
            columns["anomalies"] = anomaly_column
    if panel.forecast and shown:
        forecast = _forecast(store, panel, window, ranked, owners)
        if forecast is not None:
            label, band = forecast
            result["forecast"] = {"label": label}
            for name, values in band.items():
                columns[f"forecast {name}"] = values
    return {**result, **align(columns, shown)}


def align(columns: Mapping[str, Mapping[int, float]], shown: list[str]) -> dict[str, Any]:
    """uPlot's data shape: one sorted x axis (epoch seconds) and each column's values on it (None for gaps)."""
    x = sorted({moment for values in columns.values() for moment in values})
    data = {name: [values.get(moment) for moment in x] for name, values in columns.items()}
    return {
        "x": x,
        "series": [{"label": label, "values": data[label]} for label in shown],
        "extra": {name: values for name, values in data.items() if name not in shown},
        "points": sum(1 for label in shown for value in data[label] if value is not None),
    }


def _anomalies(
    store: MetricStore,
    settings: Settings,
    panel: Panel,
    window: Window,
    chosen: Mapping[str, list[str]],
    dashboard: Dashboard,
    columns: Mapping[str, Mapping[int, float]],
    owners: Mapping[str, Query],
) -> tuple[list[dict[str, Any]], dict[int, float]]:
    """The stored anomalies of the panel's lines: markers on the line (x, y) and what each one was."""
    from storage.anomalies import read_anomalies

    marks: list[dict[str, Any]] = []
    column: dict[int, float] = {}
    for query in {q.metric: q for q in panel.queries}.values():
        found = read_anomalies(store, query.metric, window.start, window.end, settings.anomaly_threshold)
        for key, values in filters_for(query, dashboard, chosen).items():
            found = found.filter(json_tag(key).is_in(values))
        for row in found.with_columns(label=line_label(query, json_tag)).iter_rows(named=True):
            label = row["label"]
            if label not in columns or owners.get(label) is not query:
                continue
            x = _seconds(floor_to(row["ts"], step_of(query, window)))
            y = columns[label].get(x, row["value"])
            column[x] = y
            marks.append({"x": x, "y": y, "label": label, "value": row["value"], "score": round(row["score"], 3)})
    marks.sort(key=lambda mark: (mark["x"], mark["label"]))
    return marks, column


def _forecast(
    store: MetricStore, panel: Panel, window: Window, shown: list[str], owners: Mapping[str, Query]
) -> tuple[str, dict[str, dict[int, float]]] | None:
    """The newest forecast of the highest line that has one (``shown`` is ranked), up to half the window ahead."""
    from storage.forecasts import latest_forecasts

    horizon_end = window.end + (window.end - window.start) / 2
    for query in panel.queries:
        frame = latest_forecasts(store, query.metric)
        if frame.is_empty():
            continue
        frame = frame.filter(
            (pl.col("ts") >= window.end - timedelta(seconds=window.step)) & (pl.col("ts") <= horizon_end)
        )
        by_label: dict[str, pl.DataFrame] = {}
        labelled = frame.with_columns(label=line_label(query, json_tag))
        for _, part in labelled.group_by(["series_id"], maintain_order=True):
            by_label.setdefault(part.item(0, "label"), part)
        for label in shown:
            found = by_label.get(label)
            if found is None or owners.get(label) is not query:
                continue
            band: dict[str, dict[int, float]] = {"yhat": {}, "lower": {}, "upper": {}}
            for row in found.iter_rows(named=True):
                x = _seconds(row["ts"])
                band["yhat"][x], band["lower"][x], band["upper"][x] = row["yhat"], row["lower_80"], row["upper_80"]
            return label, band
    return None


def _seconds(moment: datetime) -> int:
    return int(moment.timestamp())


def _mean(values: Mapping[int, float]) -> float:
    return sum(values.values()) / len(values) if values else 0.0


def top(
    store: MetricStore, dashboard: Dashboard, panel: Panel, window: Window, chosen: Mapping[str, list[str]]
) -> dict[str, Any]:
    """A ranking: each group's total over the range (the sum of its buckets), largest first."""
    totals: dict[str, float] = {}
    for query in panel.queries:
        frame = store.query_aggregated(**query_args(query, dashboard, window, chosen))
        for label, values in labelled_lines(frame, query).items():
            totals[label] = totals.get(label, 0.0) + sum(values.values())
    ranked = sorted(totals.items(), key=lambda item: (-item[1], item[0]))
    return {
        "kind": "bars",
        "unit": panel.unit,
        "labels": [label for label, _ in ranked[: panel.top]],
        "values": [round(value, 6) for _, value in ranked[: panel.top]],
        "hidden": max(0, len(ranked) - panel.top),
    }


# -- the alert_events table -------------------------------------------------------------
ALERT_EVENT_SQL = {
    # Firings per bucket and priority.
    "alerts.trend": (
        "SELECT make_timestamp((epoch_us(ts) // {us}) * {us})::TIMESTAMPTZ AS ts, priority AS label, "
        "count(*)::DOUBLE AS value FROM alert_events "
        "WHERE status = 'firing' AND previous <> 'firing' AND ts >= {start} AND ts < {end} "
        "GROUP BY ALL ORDER BY ALL"
    ),
    # Minutes from becoming active to resolving, median and worst per bucket of the resolution.
    "alerts.resolve": (
        "SELECT make_timestamp((epoch_us(ts) // {us}) * {us})::TIMESTAMPTZ AS ts, "
        "unnest(['median', 'worst']) AS label, unnest([median(d), max(d)]) AS value "
        "FROM (SELECT ts, (epoch_us(ts) - epoch_us(active_at)) / 60e6 AS d "
        "FROM alert_events WHERE status = 'resolved' AND active_at IS NOT NULL AND ts >= {start} AND ts < {end}) "
        "GROUP BY 1 ORDER BY 1, 2"
    ),
}


def _alert_event_sql(source: str, window: Window) -> str:
    return ALERT_EVENT_SQL[source].format(
        us=window.step * US, start=sql_literal(window.start), end=sql_literal(window.end)
    )


def alert_events_series(store: MetricStore, panel: Panel, window: Window) -> dict[str, Any]:
    """A chart of the ``alert_events`` table (alerts fired, time to resolve), from the SQL it shows."""
    from storage.views import table_has_files

    lines: dict[str, dict[int, float]] = {}
    if table_has_files(store.lake, "alert_events"):
        frame = store.sql(_alert_event_sql(panel.source, window))
        for row in frame.iter_rows(named=True):
            if row["value"] is not None:
                lines.setdefault(str(row["label"]), {})[_seconds(row["ts"])] = float(row["value"])
    if panel.source == "alerts.trend":  # counts: a bucket without firings fired none
        for values in lines.values():
            for moment in range(_seconds(floor_to(window.start, window.step)), _seconds(window.end), window.step):
                values.setdefault(moment, 0.0)
    shown = sorted(lines)
    return {
        "kind": "timeseries",
        "style": "points" if panel.source == "alerts.resolve" else "lines",  # one point per resolution
        "unit": panel.unit,
        "interval": window.interval,
        "start": _seconds(window.start),
        "end": _seconds(window.end),
        "hidden": 0,
        "anomalies": [],
        "forecast": None,
        **align(lines, shown),
    }
