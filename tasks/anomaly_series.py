"""The series anomaly detection reads from the lake: one per gauge or counter, and groups of them aligned in time.

A counter is read as its per-second rate (a reset counts from zero);
histograms and summaries are not scored. :func:`series_groups` puts the
series that share a grouping tag (``host``, ``key_id`` by default) into one
wide frame on a common time grid, which is what the joint Isolation Forest
(:mod:`models.joint`) scores: the metrics of one host, or one key's
operations, judged together.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from fnmatch import fnmatchcase

import numpy as np
import polars as pl

from models.base import spacing_seconds
from storage.store import MetricStore

US = 1_000_000
GROUP_MAX_COLUMNS = 64  # the most recently active series of a group, if it has more


@dataclass
class SeriesData:
    """One series' rows as detectors see them (a counter as its rate)."""

    series_id: int
    metric: str
    tags: str
    kind: str
    ts: np.ndarray  # µs
    values: np.ndarray
    counts: np.ndarray | None = None  # a counter's increase per row (values are its rate)


def increases(values: np.ndarray) -> np.ndarray:
    """A cumulative counter's increase from each row to the next (a drop is a reset from zero)."""
    steps = np.diff(values)
    return np.where(steps >= 0, steps, values[1:])


def as_rate(ts: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A cumulative counter as a per-second rate between consecutive rows (a drop is a reset from zero)."""
    if len(values) < 2:
        return ts[:0], values[:0]
    seconds = np.maximum(np.diff(ts) / US, 1e-6)
    return ts[1:], increases(values) / seconds


def series_data(frame: pl.DataFrame) -> list[SeriesData]:
    """Raw samples (``query_metrics`` columns) as one :class:`SeriesData` per gauge or counter series."""
    found: list[SeriesData] = []
    if frame.is_empty():
        return found
    for (series_id,), part in frame.sort("series_id", "ts").group_by(["series_id"], maintain_order=True):
        kind = str(part["type"][0])
        if kind not in ("gauge", "counter"):
            continue
        ts = part["ts"].dt.cast_time_unit("us").to_physical().to_numpy().astype(np.int64)
        values = part["value"].to_numpy().astype(float)
        counts = None
        if kind == "counter":
            counts = increases(values) if len(values) > 1 else values[:0]
            ts, values = as_rate(ts, values)
        found.append(SeriesData(int(series_id), str(part["metric"][0]), str(part["tags"][0]), kind, ts, values, counts))
    return found


def matches(metric: str, patterns: Sequence[str]) -> bool:
    """Whether a metric name matches any of the globs."""
    return any(fnmatchcase(metric, pattern) for pattern in patterns)


def load_series(
    store: MetricStore, patterns: Sequence[str], start: datetime, end: datetime, limit: int
) -> list[SeriesData]:
    """The gauge and counter series matching ``patterns`` with rows in [start, end), most recently active first."""
    frames = [store.query_metrics(pattern, start, end) for pattern in dict.fromkeys(patterns)]
    frame = (
        pl.concat([f for f in frames if f.height], how="vertical_relaxed") if any(f.height for f in frames) else None
    )
    if frame is None:
        return []
    found = {item.series_id: item for item in series_data(frame.unique(["series_id", "ts"], keep="first"))}
    ranked = sorted(found.values(), key=lambda s: (-int(s.ts[-1]) if len(s.ts) else 0, s.series_id))
    return [item for item in ranked if len(item.ts)][:limit]


@dataclass
class SeriesGroup:
    """Series sharing one grouping tag value, aligned on a common grid.

    Args:
        key: the grouping tag and value (``host=web-1``).
        group_id: a stable number for the key (the model registry's series id of its joint model).
        members: the series, in column order.
        frame: ``ts`` (µs, the grid) and one column per member (named by its series id); null where
            a member has no sample in a step.
        stamps: rows × members, the timestamp of the sample behind each cell (0 where null).
    """

    key: str
    group_id: int
    members: list[SeriesData]
    frame: pl.DataFrame
    stamps: np.ndarray

    @property
    def columns(self) -> tuple[str, ...]:
        """The member columns of :attr:`frame`."""
        return tuple(str(item.series_id) for item in self.members)

    @property
    def ts(self) -> np.ndarray:
        """The grid's timestamps (µs)."""
        return self.frame.get_column("ts").to_numpy()

    def member(self, column: str) -> tuple[int, SeriesData]:
        """The index and series of a column of :attr:`frame`."""
        for index, item in enumerate(self.members):
            if str(item.series_id) == column:
                return index, item
        raise KeyError(column)


def parse_tags(tags: str) -> dict[str, str]:
    """A series' tags (JSON, as stored) as a dict; empty when they are not a JSON object."""
    try:
        parsed = json.loads(tags) if tags else {}
    except json.JSONDecodeError:
        return {}
    return {str(k): str(v) for k, v in parsed.items()} if isinstance(parsed, dict) else {}


def tags_label(tags: str) -> str:
    """``host=web-1 mount=/`` of a series' tags (JSON), sorted by name."""
    return " ".join(f"{k}={v}" for k, v in sorted(parse_tags(tags).items()))


def group_id(key: str) -> int:
    """A stable positive 63-bit number for a group key."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") & (2**63 - 1)


def group_key(tags: str, names: Sequence[str]) -> str | None:
    """``name=value`` of the first grouping tag a series carries (its tags as JSON), or None."""
    try:
        parsed = json.loads(tags) if tags else {}
    except json.JSONDecodeError:
        return None
    for name in names:
        value = parsed.get(name) if isinstance(parsed, dict) else None
        if isinstance(value, str) and value:
            return f"{name}={value}"
    return None


def series_groups(items: Sequence[SeriesData], names: Sequence[str]) -> list[SeriesGroup]:
    """The groups of at least two varying series that share a grouping tag, each aligned on its coarsest step."""
    grouped: dict[str, list[SeriesData]] = {}
    for item in items:
        key = group_key(item.tags, names)
        varying = len(item.values) > 1 and np.nanmax(item.values) > np.nanmin(item.values)
        if key is not None and varying:
            grouped.setdefault(key, []).append(item)
    groups = []
    for key, members in sorted(grouped.items()):
        members = sorted(members, key=lambda s: (-int(s.ts[-1]), s.series_id))[:GROUP_MAX_COLUMNS]
        if len(members) >= 2:
            members.sort(key=lambda s: s.series_id)
            frame, stamps = _aligned(members)
            groups.append(SeriesGroup(key, group_id(key), members, frame, stamps))
    return groups


def _aligned(members: Sequence[SeriesData]) -> tuple[pl.DataFrame, np.ndarray]:
    """Members on a grid of their coarsest typical step: the last sample of each step, carried one step on."""
    step = int(max(spacing_seconds(item.ts) for item in members) * US)
    parts = [
        pl.DataFrame({"ts": (item.ts // step) * step, "value": item.values, "stamp": item.ts})
        .group_by("ts")
        .agg(pl.col("value").last().alias(str(item.series_id)), pl.col("stamp").last().alias(f"@{item.series_id}"))
        for item in members
    ]
    grid = pl.DataFrame({"ts": np.unique(np.concatenate([part["ts"].to_numpy() for part in parts]))})
    for part in parts:
        grid = grid.join(part, on="ts", how="left")
    # A sample landing just across a step boundary leaves one step empty: carry the last value one step.
    grid = grid.sort("ts").with_columns(pl.all().exclude("ts").forward_fill(limit=1))
    columns = [str(item.series_id) for item in members]
    stamps = grid.select(pl.col(f"@{c}").fill_null(0) for c in columns).to_numpy().astype(np.int64)
    return grid.select("ts", *columns), stamps
