"""What the data says, per rule and series group, at one moment: the observations the state machine judges.

An observation is one row per (rule, group) with data:

=================  ==============================================================
``rule_id``        the rule
``labels``         the group's labels (JSON): the series' tags and ``metric``, or the
                   ``group_by`` tags
``series``         the group as people read it (``system.cpu.usage_total host=a``)
``sample_ts``      the group's newest sample (µs)
``value``          the rule's value at that sample (its aggregation over the window)
``breach``         whether that value breaches the threshold
``held_since``     the first sample of the unbroken run of breaches ending now (µs)
``clear``          whether that value is past the resolve level (``resolve_threshold``,
                   else the threshold)
``clear_since``    the first sample of the unbroken run of clear values ending now (µs)
=================  ==============================================================

**Threshold rules** are judged in one DuckDB query for all of them at once
(a branch per distinct aggregation and window), over the samples of the
trailing ``max(duration, keep_firing_for) + window + grace``: the rules'
metric patterns are resolved against the series catalog first (a literal
pattern by lookup, a regular expression by ``re.fullmatch`` over the distinct
metric names; ``tag=value`` matchers by one hash join, other matchers per
series), the matching series joined with their rule's parameters, the window
aggregate taken per sample (a counter's ``rate`` and ``increase`` from its
per-sample increases, a drop counted as a reset), and the runs reduced to the
row above.
Because everything is judged on the samples' timestamps, a late, repeated or
restarted evaluation reaches the same verdict from the same data.

**Anomaly rules** read the ``anomalies`` table (a finding at or above the
rule's score within the window is a breach); **forecast rules** read each
series' newest forecast and breach when the probability of crossing the
threshold within the horizon reaches ``predicted_breach``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np
import polars as pl
import pyarrow as pa
from scipy import stats

from alerts.matchers import Matcher
from alerts.rules import COMPARISONS, COUNTER_AGGREGATIONS, AlertRule
from storage.forecasts import latest_forecasts
from storage.store import MetricStore

US = 1_000_000
SEPARATOR = "\x1f"  # between tag values joined into one key (the unit separator: not in tag values)
GRACE_SECONDS = 300.0  # samples before the window start looked at: one slow collection interval
ANOMALY_WINDOW_SECONDS = 600.0  # an anomaly rule without a window looks this far back
Z_95 = 1.959963984540054
OBSERVATION_SCHEMA: dict[str, pl.DataType] = {
    "rule_id": pl.String(),
    "labels": pl.String(),
    "series": pl.String(),
    "sample_ts": pl.Int64(),
    "value": pl.Float64(),
    "breach": pl.Boolean(),
    "held_since": pl.Int64(),
    "clear": pl.Boolean(),
    "clear_since": pl.Int64(),
}
WINDOW_SQL = {
    "avg": "avg(value)",
    "max": "max(value)",
    "min": "min(value)",
    "sum": "sum(value)",
    "count": "count(value)",
    "p95": "quantile_cont(value, 0.95)",
    "increase": "sum(increase)",
}


def lookback_seconds(rule: AlertRule) -> float:
    """How far back a rule's verdict reads: its duration (or keep_firing_for), its window, and one slow interval."""
    window = rule.window_seconds or (ANOMALY_WINDOW_SECONDS if rule.kind == "anomaly" else 0.0)
    return max(rule.duration_seconds, rule.keep_firing_for) + window + GRACE_SECONDS


def empty_observations() -> pl.DataFrame:
    """An observation frame with no rows."""
    return pl.DataFrame(schema=OBSERVATION_SCHEMA)


def observe(store: MetricStore, rules: Sequence[AlertRule], now: datetime) -> pl.DataFrame:
    """Observations of every enabled rule at ``now`` (see the module)."""
    frames = [
        threshold_observations(store, [r for r in rules if r.kind == "threshold"], now),
        anomaly_observations(store, [r for r in rules if r.kind == "anomaly"], now),
        forecast_observations(store, [r for r in rules if r.kind == "forecast"], now),
    ]
    return (
        pl.concat([frame for frame in frames if frame.height], how="vertical")
        if any(frame.height for frame in frames)
        else empty_observations()
    )


# -- threshold rules -------------------------------------------------------------------
def match_series(rules: Sequence[AlertRule], catalog: pl.DataFrame) -> pl.DataFrame:
    """(rule_idx, series_id, labels, series) for every series each rule's pattern and tag matchers select.

    ``catalog`` has ``series_id, metric, tags``; a literal pattern is a lookup,
    any other is ``re.fullmatch`` over the distinct metric names. Rules whose
    matchers are all ``tag=value`` are resolved by one join on the tags; other
    matchers are checked per series.
    """
    metrics = catalog.get_column("metric").unique().to_list()
    known = set(metrics)
    pairs_rule: list[int] = []
    pairs_metric: list[str] = []
    for index, rule in enumerate(rules):
        literal = rule.literal_metric
        if literal is not None:
            matched = [literal] if literal in known else []
        else:
            pattern = re.compile(rule.metric_pattern)
            matched = [name for name in metrics if pattern.fullmatch(name)]
        pairs_rule += [index] * len(matched)
        pairs_metric += matched
    schema = {"rule_idx": pl.Int32, "series_id": pl.Int64, "labels": pl.String, "series": pl.String}
    if not pairs_rule:
        return pl.DataFrame(schema=schema)
    pairs = pl.DataFrame({"rule_idx": pl.Series(pairs_rule, dtype=pl.Int32), "metric": pairs_metric})
    described = describe_series(catalog.filter(pl.col("metric").is_in(list(set(pairs_metric)))))
    matchers = [rule.tag_matchers for rule in rules]
    equal_only = [i for i, found in enumerate(matchers) if found and _joinable(found)]
    joinable = set(equal_only)
    checked = [i for i, found in enumerate(matchers) if found and i not in joinable]
    plain = pairs.filter(~pl.col("rule_idx").is_in(equal_only + checked))
    parts = [plain.join(described, on="metric")]
    if equal_only:
        parts.append(_join_on_tags(pairs.filter(pl.col("rule_idx").is_in(equal_only)), described, rules, equal_only))
    for index in checked:
        part = pairs.filter(pl.col("rule_idx") == index).join(described, on="metric")
        keep = [all(m.matches(json.loads(tags)) for m in rules[index].tag_matchers) for tags in part["tags"]]
        parts.append(part.filter(pl.Series(keep, dtype=pl.Boolean)))
    columns = ["rule_idx", "series_id", "metric", "tags", "labels", "series"]
    joined = pl.concat([part.select(columns) for part in parts], how="vertical")
    grouped = [i for i, rule in enumerate(rules) if rule.group_by is not None]
    if grouped:
        joined = pl.concat(
            [joined.filter(~pl.col("rule_idx").is_in(grouped))]
            + [_group_labels(joined.filter(pl.col("rule_idx") == i), rules[i]) for i in grouped],
            how="vertical",
        )
    return joined.select(list(schema))


def _joinable(matchers: Sequence[Matcher]) -> bool:
    """Only ``tag=value`` matchers (non-empty values), each tag once: resolvable by a join."""
    names = [m.name for m in matchers]
    return len(set(names)) == len(names) and all(m.equal and not m.regex and m.value for m in matchers)


def _join_on_tags(
    pairs: pl.DataFrame, described: pl.DataFrame, rules: Sequence[AlertRule], chosen: Sequence[int]
) -> pl.DataFrame:
    """The series of rules with only ``tag=value`` matchers, by one join per set of tag names matched.

    A series' values of those tags, joined into one key, must equal the rule's: a hash join however many
    series share any single value (hosts, devices).
    """
    by_names: dict[tuple[str, ...], list[int]] = {}
    for index in chosen:
        names = tuple(sorted(m.name for m in rules[index].tag_matchers))
        by_names.setdefault(names, []).append(index)
    found = []
    for names, indexes in by_names.items():
        wanted_values = [{m.name: m.value for m in rules[i].tag_matchers} for i in indexes]
        keys = pl.DataFrame(
            {
                "rule_idx": pl.Series(indexes, dtype=pl.Int32),
                "key": [SEPARATOR.join(wanted[name] for name in names) for wanted in wanted_values],
            }
        )
        tag_values = [pl.col("tags").str.json_path_match(_json_path(name)) for name in names]
        series = described.select("series_id", "metric", pl.concat_str(tag_values, separator=SEPARATOR).alias("key"))
        found.append(keys.join(series.drop_nulls("key"), on="key").select("rule_idx", "series_id", "metric"))
    hits = pl.concat(found, how="vertical")
    return hits.join(pairs, on=["rule_idx", "metric"], how="semi").drop("metric").join(described, on="series_id")


def describe_series(catalog: pl.DataFrame) -> pl.DataFrame:
    """Catalog rows with ``labels`` (JSON: ``metric`` and the tags) and ``series`` (``metric k=v …``).

    Vectorised over the catalog's canonical tag JSON (compact, sorted keys); metric names hold no character
    JSON would escape (they match ``[a-zA-Z_][a-zA-Z0-9_.:]*``).
    """
    tags = pl.col("tags")
    inner = tags.str.slice(1, tags.str.len_chars() - 2)
    text = (
        inner.str.replace_all('":"', "=", literal=True)
        .str.replace_all('","', " ", literal=True)
        .str.replace_all('"', "", literal=True)
    )
    return catalog.select("series_id", "metric", "tags").with_columns(
        labels=pl.when(tags == "{}")
        .then(pl.format('{{"metric":"{}"}}', pl.col("metric")))
        .otherwise(pl.format('{{"metric":"{}",{}}}', pl.col("metric"), inner)),
        series=pl.when(tags == "{}")
        .then(pl.col("metric"))
        .otherwise(pl.concat_str([pl.col("metric"), text], separator=" ")),
    )


def _group_labels(pairs: pl.DataFrame, rule: AlertRule) -> pl.DataFrame:
    """The pairs of a ``group_by`` rule relabelled by the group's tags (one alert per distinct value set)."""
    names = list(rule.group_by or ())
    values = [json.loads(tags) for tags in pairs.get_column("tags")]
    chosen = [{name: tags.get(name, "") for name in names} for tags in values]
    return pairs.with_columns(
        labels=pl.Series([json.dumps(item) for item in chosen], dtype=pl.String),
        series=pl.Series(
            [" ".join([rule.name, *(f"{k}={v}" for k, v in item.items())]) for item in chosen], dtype=pl.String
        ),
    )


def _json_path(name: str) -> str:
    """The JSONPath of a tag (``$.host``, or ``$['a.b']`` when the name is not a plain identifier)."""
    return f"$.{name}" if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) else "$['" + name.replace("'", "\\'") + "']"


def threshold_observations(store: MetricStore, rules: Sequence[AlertRule], now: datetime) -> pl.DataFrame:
    """Observations of threshold rules: one DuckDB query over the recent samples of every matching series."""
    if not rules:
        return empty_observations()
    catalog = store.engine.series("*")
    pairs = match_series(rules, catalog)
    if pairs.is_empty():
        return empty_observations()
    now_us = int(now.timestamp() * US)
    groups = pairs.select("rule_idx", "labels", "series").unique(
        ["rule_idx", "labels"], keep="first", maintain_order=True
    )
    groups = groups.with_row_index("gkey").with_columns(pl.col("gkey").cast(pl.Int64))
    pairs = pairs.join(groups.select("rule_idx", "labels", "gkey"), on=["rule_idx", "labels"])
    parameters = pl.DataFrame(
        {
            "rule_idx": pl.Series(range(len(rules)), dtype=pl.Int32),
            "cmp": pl.Series([COMPARISONS.index(r.comparison) for r in rules], dtype=pl.Int8),
            "thr": [r.threshold_value for r in rules],
            "rthr": [r.threshold_value if r.resolve_threshold is None else r.resolve_threshold for r in rules],
            "since_us": [now_us - int(lookback_seconds(r) * US) for r in rules],
            "agg": [r.aggregation for r in rules],
            "window_us": [int(r.window_seconds * US) for r in rules],
        }
    )
    joined = pairs.join(parameters, on="rule_idx")
    kinds = joined.select("agg", "window_us").unique(maintain_order=True).with_row_index("kind")
    joined = joined.join(kinds, on=["agg", "window_us"]).with_columns(pl.col("kind").cast(pl.Int32))
    found = _run_threshold_query(store, joined, [(str(a), int(w)) for _, a, w in kinds.iter_rows()], now_us)
    if found is None or found.is_empty():
        return empty_observations()
    ids = groups.join(
        pl.DataFrame({"rule_idx": range(len(rules)), "rule_id": [r.rule_id for r in rules]}).cast(
            {"rule_idx": pl.Int32}
        ),
        on="rule_idx",
    )
    return found.join(ids.select("gkey", "rule_id", "labels", "series"), on="gkey").select(list(OBSERVATION_SCHEMA))


def _run_threshold_query(
    store: MetricStore, joined: pl.DataFrame, kinds: Sequence[tuple[str, int]], now_us: int
) -> pl.DataFrame | None:
    """One query for every threshold rule: the samples read once, each (aggregation, window) its own branch."""
    since = min(joined.get_column("since_us").to_list(), default=now_us)
    tables = {
        "_pairs": joined.select("series_id", "gkey", "kind", "cmp", "thr", "rthr", "since_us").to_arrow(),
        "_ids": pa.table({"series_id": joined.get_column("series_id").unique().sort().to_arrow()}),
    }
    counters = any(agg in COUNTER_AGGREGATIONS for agg, _ in kinds)
    previous = "lag(value) OVER (PARTITION BY series_id ORDER BY t)"
    increase = (
        f"CASE WHEN {previous} IS NULL THEN 0 WHEN value >= {previous} THEN value - {previous} ELSE value END"
        if counters
        else "NULL::DOUBLE"
    )
    branches = []
    for kind, (agg, window_us) in enumerate(kinds):
        if agg == "last":
            value_sql = "value"
        else:
            frame = f"OVER (PARTITION BY gkey ORDER BY t RANGE BETWEEN {window_us - 1} PRECEDING AND CURRENT ROW)"
            value_sql = f"CAST({WINDOW_SQL['increase' if agg in COUNTER_AGGREGATIONS else agg]} {frame} AS DOUBLE)"
            if agg == "rate":
                value_sql = f"{value_sql} / {window_us / US}"
        branches.append(f"SELECT gkey, t, cmp, thr, rthr, {value_sql} AS v FROM j WHERE kind = {kind}")
    union = "\n    UNION ALL ".join(branches)
    text = f"""
WITH s AS (
    SELECT series_id, t, value, {increase} AS increase FROM (
        SELECT series_id, epoch_us(ts) AS t, value FROM {{samples}}
        WHERE ts > ? AND ts <= ? AND series_id IN (SELECT series_id FROM _ids)
    )
),
j AS MATERIALIZED (
    SELECT p.gkey, p.kind, s.t, s.value, s.increase, p.cmp, p.thr, p.rthr
    FROM s JOIN _pairs p ON s.series_id = p.series_id AND s.t > p.since_us
),
w AS (
    {union}
),
f AS (
    SELECT gkey, t, v, coalesce({_comparison_sql("thr")}, false) AS breach,
        coalesce({_comparison_sql("rthr")}, false) AS hold
    FROM w
),
g AS (
    SELECT *, max(CASE WHEN NOT breach THEN t END) OVER (PARTITION BY gkey) AS last_ok,
        max(CASE WHEN hold THEN t END) OVER (PARTITION BY gkey) AS last_hold
    FROM f
)
SELECT gkey, max(t) AS sample_ts, arg_max(v, t) AS value, arg_max(breach, t) AS breach,
    min(t) FILTER (WHERE t > coalesce(last_ok, -1)) AS held_since,
    NOT arg_max(hold, t) AS clear,
    min(t) FILTER (WHERE t > coalesce(last_hold, -1)) AS clear_since
FROM g GROUP BY gkey
"""
    start = datetime.fromtimestamp(since / US, UTC)
    end = datetime.fromtimestamp(now_us / US, UTC)
    return store.engine.over_samples(start, end, text, [start, end], tables)


def _comparison_sql(level: str) -> str:
    """``v`` compared with the column ``level`` by each row's comparison code (the index in COMPARISONS)."""
    spelled = {"==": "=", "!=": "<>"}
    cases = " ".join(f"WHEN {i} THEN v {spelled.get(op, op)} {level}" for i, op in enumerate(COMPARISONS))
    return f"CASE cmp {cases} END"


# -- anomaly rules ---------------------------------------------------------------------
def anomaly_observations(store: MetricStore, rules: Sequence[AlertRule], now: datetime) -> pl.DataFrame:
    """Observations of anomaly rules: a finding at or above the rule's score within its window is a breach."""
    if not rules or not store.lake.files("anomalies"):
        return empty_observations()
    now_us = int(now.timestamp() * US)
    earliest = now_us - int(max(lookback_seconds(rule) for rule in rules) * US)
    findings = store.sql(
        "SELECT metric, series_id, tags, epoch_us(ts) AS t, value, score FROM anomalies "
        "WHERE ts > ? AND ts <= ? AND score >= ? ORDER BY t",
        [datetime.fromtimestamp(earliest / US, UTC), now, min(rule.anomaly_score for rule in rules)],
    )
    metrics = findings.get_column("metric").unique().to_list()
    frames = []
    for rule in rules:
        window_us = int((rule.window_seconds or ANOMALY_WINDOW_SECONDS) * US)
        since = now_us - int(lookback_seconds(rule) * US)
        pattern = re.compile(rule.metric_pattern)  # Python's re, as for threshold rules (not DuckDB's RE2)
        found = findings.filter(
            pl.col("metric").is_in([m for m in metrics if pattern.fullmatch(m)])
            & (pl.col("t") > since)
            & (pl.col("score") >= rule.anomaly_score)
        )
        found = _matching_tags(found, rule)
        if found.is_empty():
            continue
        per_series = found.group_by("series_id", maintain_order=True).agg(
            pl.col("metric").first(),
            pl.col("tags").first(),
            pl.col("t").min().alias("first_t"),
            pl.col("t").max().alias("sample_ts"),
            pl.col("value").last(),
        )
        frames.append(
            per_series.with_columns(
                rule_id=pl.lit(rule.rule_id),
                breach=pl.col("sample_ts") > now_us - window_us,
            ).with_columns(
                held_since=pl.when(pl.col("breach")).then(pl.col("first_t")),
                clear=~pl.col("breach"),
                clear_since=pl.when(~pl.col("breach")).then(pl.col("sample_ts") + window_us),
            )
        )
    if not frames:
        return empty_observations()
    joined = pl.concat(frames, how="vertical")
    return (
        joined.drop("metric")
        .join(
            describe_series(joined.select("series_id", "metric", "tags").unique("series_id")).drop("metric", "tags"),
            on="series_id",
        )
        .select(list(OBSERVATION_SCHEMA))
    )


# -- forecast rules --------------------------------------------------------------------
def forecast_observations(store: MetricStore, rules: Sequence[AlertRule], now: datetime) -> pl.DataFrame:
    """Observations of forecast rules: the newest forecast's chance of a breach within its horizon."""
    if not rules or not store.lake.files("forecasts"):
        return empty_observations()
    forecasts = latest_forecasts(store, "*")
    if forecasts.is_empty():
        return empty_observations()
    described = describe_series(forecasts.select("series_id", "metric", "tags").unique("series_id"))
    names = {row[0]: row[1:] for row in described.select("series_id", "labels", "series").iter_rows()}
    metrics = forecasts.get_column("metric").unique().to_list()
    rows = []
    for rule in rules:
        pattern = re.compile(rule.metric_pattern)
        matched = [name for name in metrics if pattern.fullmatch(name)]
        chosen = _matching_tags(forecasts.filter(pl.col("metric").is_in(matched)), rule)
        for (series_id,), part in chosen.group_by(["series_id"], maintain_order=True):
            chance = breach_chance(
                part.get_column("yhat").to_numpy(),
                part.get_column("upper_95").to_numpy(),
                part.get_column("lower_95").to_numpy(),
                rule,
            )
            breach = chance >= (rule.predicted_breach or 1.0)
            made = int(part.get_column("created_at")[0].timestamp() * US)
            labels, series = names[series_id]
            rows.append(
                {
                    "rule_id": rule.rule_id,
                    "labels": labels,
                    "series": series,
                    "sample_ts": made,
                    "value": chance,
                    "breach": breach,
                    "held_since": made if breach else None,
                    "clear": not breach,
                    "clear_since": None if breach else made,
                }
            )
    return pl.DataFrame(rows, schema=OBSERVATION_SCHEMA) if rows else empty_observations()


def _matching_tags(frame: pl.DataFrame, rule: AlertRule) -> pl.DataFrame:
    """The rows of ``frame`` (with a ``tags`` JSON column) whose tags satisfy the rule's matchers."""
    if not rule.tag_matchers or frame.is_empty():
        return frame
    keep = [all(m.matches(json.loads(tags)) for m in rule.tag_matchers) for tags in frame.get_column("tags")]
    return frame.filter(pl.Series(keep, dtype=pl.Boolean))


def breach_chance(mean: np.ndarray, upper_95: np.ndarray, lower_95: np.ndarray, rule: AlertRule) -> float:
    """The largest per-step probability that the forecast passes the rule's threshold (normal errors)."""
    spread = np.maximum((upper_95 - lower_95) / (2 * Z_95), 1e-12)
    threshold = rule.threshold_value
    if rule.comparison in (">", ">="):
        chances = stats.norm.sf((threshold - mean) / spread)
    elif rule.comparison in ("<", "<="):
        chances = stats.norm.cdf((threshold - mean) / spread)
    else:
        return 0.0
    return float(np.max(chances)) if len(chances) else 0.0
