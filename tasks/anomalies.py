"""Training and scoring anomaly models over the lake's series; rows go to the ``anomalies`` table (storage.anomalies).

**Which series.** Gauges and counters whose metric matches
``anomaly_metrics`` (globs, default every metric); a counter is scored as its
per-second rate (a reset counts from zero), histograms and summaries are not
scored. At most ``anomaly_max_series`` series per run, most recently active
first.

**Training** (``train-models``, daily): a series with at least
``train_min_points`` rows in the last ``train_days`` days gets a detector
(``anomaly_detector``, default the ensemble) fitted on them and stored in the
model registry (``data/models/…``), old versions pruned to ``model_keep``.

**Scoring** (``score-anomalies``, every 5 minutes): for each series, the rows
after the last one scored. A series with a model replays the rows since its
training into it (the model is streaming: it keeps learning), so a row's
score depends only on earlier rows; a series without one is scored by a fresh
detector over the ``score_warmup_hours`` before (at most its last 2,000 rows). Rows scoring at least 0.5
(the quiet-period level) are written to the ``anomalies`` table with the
detector, the model version, the score and ``is_anomaly`` (score at least
``anomaly_threshold``). **Key usage** (``crypto.key.access_count``) is also
scored by the hour-of-week profile (:mod:`models.profile`, detector
``profile``) over the last four weeks: a key used far more than at the same
hour of past weeks. One scoring run at a time per data directory (a lock);
a row written twice after a crash has the same score, and readers keep one.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from fnmatch import fnmatchcase
from typing import Any

import numpy as np
import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from metrics.errors import ValidationError
from metrics.settings import Settings
from models.calibration import QuietPeriod
from models.detectors import make_detector
from models.registry import ModelError, ModelRegistry
from storage.anomalies import anomaly_frame, write_anomalies
from storage.statedb import exclusive_lock
from storage.store import MetricStore
from tasks.collect.checkpoints import Checkpoints

CANDIDATE_LEVEL = QuietPeriod.level  # rows scoring this much are written
CHECKPOINT = "anomaly-scoring"
WARMUP_ROWS = 2000  # at most this many rows of warm-up for a series without a model
KEY_USAGE_METRICS = ("crypto.key.access_count",)  # also scored against their hour-of-week profile
PROFILE = "profile"
PROFILE_WEEKS = 4
US = 1_000_000


def sensitivity_threshold(sensitivity: float) -> float:
    """The score threshold of a sensitivity in [0, 1]: 0 → 0.9 (only the surest), 0.5 → 0.7, 1 → 0.5."""
    if isinstance(sensitivity, bool) or not isinstance(sensitivity, int | float) or not 0 <= sensitivity <= 1:
        raise ValidationError(f"sensitivity: {sensitivity!r} must be a number from 0 to 1")
    return 0.9 - 0.4 * float(sensitivity)


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
class TrainSummary:
    """One training run: models written, series skipped for too little history, seconds."""

    trained: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0
    pruned: int = 0
    seconds: float = 0.0


@dataclass
class ScoreSummary:
    """One scoring run: series and rows scored, candidates written, anomalies flagged, the top ones."""

    series: int = 0
    rows: int = 0
    written: int = 0
    anomalies: int = 0
    with_model: int = 0
    model_errors: list[str] = field(default_factory=list)
    top: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


class AnomalyScorer:
    """Trains and scores the configured detector over the lake's series (one data directory)."""

    def __init__(self, settings: Settings, store: MetricStore) -> None:
        self.settings = settings
        self.store = store
        self.registry = ModelRegistry(settings.data_dir / "models")
        self.detector = settings.anomaly_detector
        self.checkpoints = Checkpoints(settings.state_dir)
        self._scored: set[int] = set()
        self._rows_scored = 0

    def exclusive(self) -> AbstractContextManager[None]:
        """One scoring (or training) run at a time per data directory."""
        return exclusive_lock(self.settings.state_dir / "anomaly_scoring.lock", "anomaly scoring run", 3600.0)

    def train(self, patterns: Sequence[str] | None = None, *, now: datetime | None = None) -> TrainSummary:
        """Fit and store a model for every series with enough recent history."""
        started = time.perf_counter()
        end = now or datetime.now(UTC)
        begin = end - timedelta(days=self.settings.train_days)
        summary = TrainSummary()
        chosen = patterns or self.settings.anomaly_metrics
        with self.exclusive():
            for item in load_series(self.store, chosen, begin, end, self.settings.anomaly_max_series):
                if len(item.ts) < self.settings.train_min_points:
                    summary.skipped += 1
                    continue
                clock = time.perf_counter()
                model = make_detector(self.detector)
                scores = model.calibrated((item.ts, item.values))  # learns the history, as fit() does
                figures = {
                    "rows": len(item.ts),
                    "candidate_rate": round(float((scores >= CANDIDATE_LEVEL).mean()), 5),
                    "seconds": round(time.perf_counter() - clock, 3),
                }
                info = self.registry.save(
                    model,
                    item.series_id,
                    data_start=_moment(item.ts[0]),
                    data_end=_moment(item.ts[-1]),
                    rows=len(item.ts),
                    figures=figures,
                    now=end,
                )
                summary.pruned += len(self.registry.prune(self.detector, item.series_id, self.settings.model_keep))
                summary.trained.append({"metric": item.metric, "tags": item.tags, "version": info.version, **figures})
        summary.seconds = time.perf_counter() - started
        return summary

    def score(self, patterns: Sequence[str] | None = None, *, now: datetime | None = None) -> ScoreSummary:
        """Score every series' rows after the last scored one; write the candidates to the ``anomalies`` table.

        Key usage (``crypto.key.access_count``) is also scored by the hour-of-week profile.
        """
        started = time.perf_counter()
        end = now or datetime.now(UTC)
        summary = ScoreSummary()
        chosen = patterns or self.settings.anomaly_metrics
        rows: list[tuple[Any, ...]] = []
        self._scored, self._rows_scored = set(), 0
        with self.exclusive():
            state = self.checkpoints.load(CHECKPOINT) or {}
            begin = end - timedelta(hours=self.settings.score_warmup_hours)
            models = set(self.registry.series(self.detector))
            limit = self.settings.anomaly_max_series
            for item in load_series(self.store, chosen, begin - timedelta(days=1), end, limit):
                scores, version, fed = self._scores(item, models, begin, summary)
                self._keep(item, item.values, scores, fed, self.detector, version, str(item.series_id), state, rows)
            usage = [p for p in KEY_USAGE_METRICS if any(fnmatchcase(p, c) for c in chosen)]
            for item in load_series(self.store, usage, end - timedelta(weeks=PROFILE_WEEKS), end, limit):
                counts = item.counts if item.counts is not None else item.values
                scores = make_detector(PROFILE).score((item.ts, counts))
                fed = np.ones(len(item.ts), dtype=bool)
                self._keep(item, counts, scores, fed, PROFILE, "", f"{PROFILE}:{item.series_id}", state, rows)
            summary.series = len(self._scored)
            summary.rows = self._rows_scored
            written = self._write(rows, end)
            self.checkpoints.save(CHECKPOINT, state)
        summary.written = written
        summary.anomalies = sum(1 for row in rows if row[6])
        top = sorted(rows, key=lambda row: -row[5])[:10]
        summary.top = [
            {
                "ts": _moment(row[2]).isoformat(),
                "metric": row[0],
                "tags": row[3],
                "value": row[4],
                "score": round(row[5], 4),
                "detector": row[7],
                "model_version": row[8],
            }
            for row in top
        ]
        summary.seconds = time.perf_counter() - started
        return summary

    def _keep(
        self,
        item: SeriesData,
        values: np.ndarray,
        scores: np.ndarray,
        fed: np.ndarray,
        detector: str,
        version: str,
        key: str,
        state: dict[str, Any],
        rows: list[tuple[Any, ...]],
    ) -> None:
        """The candidate rows among those not scored before (by this detector), and the new checkpoint."""
        last = state.get(key)
        fresh = fed if last is None else fed & (item.ts > int(last))
        if not fresh.any():
            return
        self._scored.add(item.series_id)
        self._rows_scored += int(fresh.sum())
        state[key] = int(item.ts[fresh][-1])
        keep = fresh & (scores >= CANDIDATE_LEVEL)
        threshold = self.settings.anomaly_threshold
        for stamp, value, score in zip(item.ts[keep], values[keep], scores[keep], strict=True):
            rows.append(
                (
                    item.metric,
                    item.series_id,
                    int(stamp),
                    item.tags,
                    float(value),
                    float(score),
                    bool(score >= threshold),
                    detector,
                    version,
                )
            )

    def _scores(
        self, item: SeriesData, models: set[int], begin: datetime, summary: ScoreSummary
    ) -> tuple[np.ndarray, str, np.ndarray]:
        """(scores of the rows fed, the model version or '', which rows were fed) for one series."""
        if item.series_id in models:
            try:
                model, info = self.registry.load(self.detector, item.series_id)
            except ModelError as exc:
                summary.model_errors.append(str(exc))
            else:
                trained_until = datetime.fromisoformat(info.data_end).timestamp() * US if info.data_end else 0
                fed = item.ts > trained_until
                scores = np.zeros(len(item.ts))
                if fed.any():
                    scores[fed] = model.score((item.ts[fed], item.values[fed]))
                summary.with_model += 1
                return scores, info.version, fed
        fed = item.ts >= int(begin.timestamp() * US)
        fed[: max(0, len(fed) - WARMUP_ROWS)] = False  # fine-grained series: the last rows of the warm-up only
        scores = np.zeros(len(item.ts))
        if fed.any():
            scores[fed] = make_detector(self.detector).score((item.ts[fed], item.values[fed]))
        return scores, "", fed

    def _write(self, rows: list[tuple[Any, ...]], scored_at: datetime) -> int:
        """Append candidate rows to the ``anomalies`` table."""
        return write_anomalies(self.store, anomaly_frame(rows, scored_at))


def _moment(micros: int) -> datetime:
    return datetime.fromtimestamp(int(micros) / US, UTC)


@task(
    name="train-anomaly-models",
    retries=1,
    retry_delay_seconds=exponential_backoff(backoff_factor=5),
    cache_policy=NO_CACHE,
)
def train_models_task(settings: Settings) -> TrainSummary:
    """Prefect task: train and store a model per series with enough history."""
    store = MetricStore(settings).open(background_flush=False)
    try:
        return AnomalyScorer(settings, store).train()
    finally:
        store.close()


@task(
    name="score-anomalies", retries=1, retry_delay_seconds=exponential_backoff(backoff_factor=5), cache_policy=NO_CACHE
)
def score_anomalies_task(settings: Settings) -> ScoreSummary:
    """Prefect task: score every series' new rows and write the candidates."""
    store = MetricStore(settings).open(background_flush=False)
    try:
        return AnomalyScorer(settings, store).score()
    finally:
        store.close()
