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

**Chart.** The summary carries up to :data:`CHART_PANELS` panels for
:func:`metrics.charts.anomaly_chart`: the series with anomalies this run, the
highest score first, each over the scoring window (``score_warmup_hours``,
earlier if an anomaly is older) with its anomalies marked; the series as
scored, so a key's usage judged by its profile is drawn as counts per row.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from fnmatch import fnmatchcase
from typing import Any

import numpy as np
import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from metrics.charts import AnomalyPanel, anomaly_chart
from metrics.errors import ValidationError
from metrics.processes import parallel_map
from metrics.settings import Settings
from models.calibration import QuietPeriod
from models.detectors import make_detector
from models.joint import JointForest
from models.registry import ModelError, ModelRegistry
from models.training import FitJob, fit_model
from storage.anomalies import anomaly_frame, write_anomalies
from storage.statedb import exclusive_lock
from storage.store import MetricStore
from tasks.anomaly_series import US, SeriesData, SeriesGroup, load_series, series_groups, tags_label
from tasks.collect.checkpoints import Checkpoints

CANDIDATE_LEVEL = QuietPeriod.level  # rows scoring this much are written
CHECKPOINT = "anomaly-scoring"
ROWS_PER_WORKER = 250_000  # about 10 s of ensemble fitting: worth a worker's start-up (about 4 s)
WARMUP_ROWS = 2000  # at most this many rows of warm-up for a series without a model
KEY_USAGE_METRICS = ("crypto.key.access_count",)  # also scored against their hour-of-week profile
PROFILE = "profile"
PROFILE_WEEKS = 4
JOINT = JointForest.name
CHART_PANELS = 4  # series in the run's anomaly chart


def sensitivity_threshold(sensitivity: float) -> float:
    """The score threshold of a sensitivity in [0, 1]: 0 → 0.9 (only the surest), 0.5 → 0.7, 1 → 0.5."""
    if isinstance(sensitivity, bool) or not isinstance(sensitivity, int | float) or not 0 <= sensitivity <= 1:
        raise ValidationError(f"sensitivity: {sensitivity!r} must be a number from 0 to 1")
    return 0.9 - 0.4 * float(sensitivity)


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
    groups: int = 0
    model_errors: list[str] = field(default_factory=list)
    top: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    panels: list[AnomalyPanel] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The figures and the top anomalies (not the chart's panels), as plain data."""
        figures = asdict(replace(self, panels=[]))
        del figures["panels"]
        return figures


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

    def train(
        self,
        patterns: Sequence[str] | None = None,
        *,
        now: datetime | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> TrainSummary:
        """Fit and store a model for every series, and a joint forest for every group, with enough history.

        The fits run in ``train_workers`` processes (one per core by default); ``progress`` is told
        (done, all) after each.
        """
        started = time.perf_counter()
        end = now or datetime.now(UTC)
        begin = end - timedelta(days=self.settings.train_days)
        summary = TrainSummary()
        chosen = patterns or self.settings.anomaly_metrics
        least = self.settings.train_min_points
        with self.exclusive():
            items = load_series(self.store, chosen, begin, end, self.settings.anomaly_max_series)
            jobs: list[tuple[FitJob, int, str, str, np.ndarray]] = []
            for item in items:
                if len(item.ts) < least:
                    summary.skipped += 1
                    continue
                job = FitJob(self.detector, ts=item.ts, values=item.values)
                jobs.append((job, item.series_id, item.metric, item.tags, item.ts))
            for group in series_groups(items, self.settings.anomaly_group_tags):
                complete = group.frame.drop_nulls()
                if complete.height < least:
                    summary.skipped += 1
                    continue
                metrics = ",".join(sorted({member.metric for member in group.members}))
                ts = complete.get_column("ts").to_numpy()
                jobs.append((FitJob(JOINT, frame=complete), group.group_id, metrics, group.key, ts))
            fits = [job for job, *_ in jobs]
            fitted = parallel_map(fit_model, fits, self._workers(fits), progress, cost=lambda job: job.rows)
            for (job, series_id, metric, tags, ts), (model, figures) in zip(jobs, fitted, strict=True):
                info = self.registry.save(
                    model, series_id, data_start=_moment(ts[0]), data_end=_moment(ts[-1]), rows=job.rows,
                    figures=figures, now=end,
                )  # fmt: skip
                summary.pruned += len(self.registry.prune(model.name, series_id, self.settings.model_keep))
                summary.trained.append(
                    {"metric": metric, "tags": tags, "detector": model.name, "version": info.version, **figures}
                )
        summary.seconds = time.perf_counter() - started
        return summary

    def _workers(self, fits: Sequence[FitJob]) -> int:
        """Processes for the fits: ``train_workers`` when set; else one per core, but only as many as there is
        work for (a spawned worker costs seconds of imports, so each should get ``ROWS_PER_WORKER`` rows)."""
        if self.settings.train_workers:
            return self.settings.train_workers
        return max(1, min(os.cpu_count() or 1, sum(job.rows for job in fits) // ROWS_PER_WORKER))

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
            items = load_series(self.store, chosen, begin - timedelta(days=1), end, limit)
            for item in items:
                scores, version, fed = self._scores(item, models, begin, summary)
                self._keep(item, item.values, scores, fed, self.detector, version, str(item.series_id), state, rows)
            joint_models = set(self.registry.series(JOINT))
            for group in series_groups(items, self.settings.anomaly_group_tags):
                self._score_group(group, joint_models, begin, summary, state, rows)
            usage = [p for p in KEY_USAGE_METRICS if any(fnmatchcase(p, c) for c in chosen)]
            usage_items = load_series(self.store, usage, end - timedelta(weeks=PROFILE_WEEKS), end, limit)
            for item in usage_items:
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
        summary.panels = chart_panels(rows, items, usage_items, int(begin.timestamp() * US))
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
        fresh = self._fresh(key, item.ts, fed, state)
        if not fresh.any():
            return
        self._scored.add(item.series_id)
        self._rows_scored += int(fresh.sum())
        keep = fresh & (scores >= CANDIDATE_LEVEL)
        for stamp, value, score in zip(item.ts[keep], values[keep], scores[keep], strict=True):
            rows.append(self._row(item, int(stamp), float(value), float(score), detector, version))

    def _fresh(self, key: str, ts: np.ndarray, fed: np.ndarray, state: dict[str, Any]) -> np.ndarray:
        """The rows fed that are newer than the checkpoint ``key``, which moves to the last of them."""
        last = state.get(key)
        fresh = fed if last is None else fed & (ts > int(last))
        if fresh.any():
            state[key] = int(ts[fresh][-1])
        return fresh

    def _row(
        self, item: SeriesData, stamp: int, value: float, score: float, detector: str, version: str
    ) -> tuple[Any, ...]:
        """One row of the ``anomalies`` table (storage.anomalies.ROW_COLUMNS)."""
        flagged = score >= self.settings.anomaly_threshold
        return (item.metric, item.series_id, stamp, item.tags, value, score, flagged, detector, version)

    def _score_group(
        self,
        group: SeriesGroup,
        models: set[int],
        begin: datetime,
        summary: ScoreSummary,
        state: dict[str, Any],
        rows: list[tuple[Any, ...]],
    ) -> None:
        """Score a group's new rows with its joint forest; a candidate is filed under the series most to blame."""
        model, version, trained_until = self._joint_model(group, models, summary)
        ts = group.ts
        if model is None:
            model = JointForest()
            fed = ts >= int(begin.timestamp() * US)
            fed[: max(0, len(fed) - WARMUP_ROWS)] = False
        else:
            fed = ts > trained_until
        fresh = self._fresh(f"{JOINT}:{group.group_id}", ts, fed, state)
        if not fed.any():
            return
        judgement = model.judge(group.frame.filter(pl.Series(fed)).select("ts", *model.columns_ or group.columns))
        scores = np.zeros(len(ts))
        culprits = np.zeros(len(ts), dtype=np.int64)
        scores[fed], culprits[fed] = judgement.scores, judgement.culprits
        summary.groups += int(fresh.any())
        columns = model.columns_
        for row in np.flatnonzero(fresh & (scores >= CANDIDATE_LEVEL)):
            column = columns[int(culprits[row])]
            index, item = group.member(column)
            stamp = int(group.stamps[row, index]) or int(ts[row])
            value = float(group.frame.get_column(column)[int(row)])
            rows.append(self._row(item, stamp, value, float(scores[row]), JOINT, version))

    def _joint_model(
        self, group: SeriesGroup, models: set[int], summary: ScoreSummary
    ) -> tuple[JointForest | None, str, int]:
        """(the group's stored joint forest or None, its version, the end of its training rows in µs)."""
        if group.group_id not in models:
            return None, "", 0
        try:
            model, info = self.registry.load_as(JointForest, JOINT, group.group_id)
        except ModelError as exc:
            summary.model_errors.append(str(exc))
            return None, "", 0
        if not set(model.columns_) <= set(group.columns):
            summary.model_errors.append(
                f"{group.key}: the joint model was trained on other series; scored without it until the next training"
            )
            return None, "", 0
        trained_until = datetime.fromisoformat(info.data_end).timestamp() * US if info.data_end else 0
        return model, info.version, int(trained_until)

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


def chart_panels(
    rows: Sequence[tuple[Any, ...]],
    items: Sequence[SeriesData],
    usage: Sequence[SeriesData],
    begin_us: int,
    most: int = CHART_PANELS,
) -> list[AnomalyPanel]:
    """The chart of a run: up to ``most`` series with anomalies among ``rows``, the highest score first.

    Each is drawn as scored, from ``begin_us`` (or its oldest anomaly, if earlier): ``items`` as their
    values (a counter's rate), ``usage`` (scored by the hour-of-week profile) as their counts per row.
    """
    marked: dict[tuple[int, bool], list[tuple[Any, ...]]] = {}
    for row in rows:
        if row[6]:  # is_anomaly
            marked.setdefault((int(row[1]), row[7] == PROFILE), []).append(row)
    lookup = {(item.series_id, False): (item, item.values) for item in items}
    lookup |= {(item.series_id, True): (item, item.values if item.counts is None else item.counts) for item in usage}
    ranked = sorted((key for key in marked if key in lookup), key=lambda key: -max(row[5] for row in marked[key]))
    panels = []
    for key in ranked[:most]:
        item, values = lookup[key]
        stamps = np.array([row[2] for row in marked[key]], dtype=np.int64)
        shown = item.ts >= min(begin_us, int(stamps.min()))
        title = f"{item.metric} {tags_label(item.tags)}".strip() + (" (count per row, profile)" if key[1] else "")
        found = np.array([row[4] for row in marked[key]], dtype=float)
        panels.append(AnomalyPanel(title, item.ts[shown], values[shown], stamps, found))
    return panels


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


@task(name="anomaly-chart", cache_policy=NO_CACHE)
def anomaly_chart_task(summary: ScoreSummary) -> bytes | None:
    """Prefect task: the run's anomaly chart as PNG (None without anomalies); the flow publishes and keeps it."""
    if not summary.panels:
        return None
    return anomaly_chart(summary.panels)
