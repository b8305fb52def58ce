"""Training and scoring over the lake: models stored, new rows scored once, candidates in the anomalies table."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from metrics.analysis import detect_anomalies, find_correlations
from metrics.errors import ConfigError, ValidationError
from metrics.settings import Settings
from storage.anomalies import read_anomalies
from storage.store import MetricStore
from tasks.anomalies import AnomalyScorer, sensitivity_threshold
from tasks.anomaly_series import as_rate

NOW = datetime.now(UTC).replace(second=0, microsecond=0)
STEP = timedelta(minutes=5)


def frame(
    metric: str, values: np.ndarray, *, kind: str = "gauge", host: str = "h1", end: datetime = NOW
) -> pl.DataFrame:
    stamps = [end - STEP * (len(values) - i) for i in range(len(values))]
    return pl.DataFrame(
        {"ts": stamps, "metric": metric, "value": values, "type": kind, "host": host},
        schema_overrides={"ts": pl.Datetime("us", "UTC")},
    )


@pytest.fixture
def anomaly_settings(settings: Settings) -> Settings:
    # One series at a time here: groups scored together have their own tests (test_anomaly_groups.py).
    return replace(
        settings, anomaly_detector="zscore", train_min_points=300, score_warmup_hours=48.0, anomaly_group_tags=()
    )


def load(settings: Settings, *frames: pl.DataFrame) -> None:
    store = MetricStore(settings).open(background_flush=False)
    try:
        for item in frames:
            store.ingest_frame(item)
        store.flush()
    finally:
        store.close()


def spiky(n: int = 600, spike_from_end: int = 20, seed: int = 0) -> np.ndarray:
    values = 50 + np.random.default_rng(seed).normal(0, 1, n)
    values[n - spike_from_end] += 40
    return values


def test_sensitivity_and_rates() -> None:
    assert sensitivity_threshold(0) == pytest.approx(0.9)
    assert sensitivity_threshold(0.5) == pytest.approx(0.7)
    assert sensitivity_threshold(1) == pytest.approx(0.5)
    with pytest.raises(ValidationError, match="sensitivity"):
        sensitivity_threshold(1.5)
    ts = np.array([0, 10, 20, 30]) * 1_000_000
    rate_ts, rate = as_rate(ts, np.array([0.0, 10.0, 30.0, 5.0]))  # a reset at the end
    np.testing.assert_allclose(rate, [1.0, 2.0, 0.5])
    assert list(rate_ts) == list(ts[1:])


def test_scoring_writes_candidates_once_and_only_new_rows_later(anomaly_settings: Settings) -> None:
    load(anomaly_settings, frame("app.latency", spiky()), frame("app.calm", 50 + np.zeros(600) + np.arange(600) % 3))
    store = MetricStore(anomaly_settings).open(background_flush=False)
    try:
        scorer = AnomalyScorer(anomaly_settings, store)
        first = scorer.score(now=NOW)
        assert first.series == 2
        assert first.written >= 1
        found = read_anomalies(store, "app.*", NOW - timedelta(days=3), NOW + STEP, 0.7)
        assert found.height >= 1
        assert set(found["metric"]) == {"app.latency"}
        assert found["is_anomaly"].all()
        assert (found["detector"] == "zscore").all()
        (panel,) = first.panels  # the chart: only the series with anomalies
        assert panel.title == "app.latency host=h1"
        warmup_start = (NOW - timedelta(hours=48)).timestamp() * 1_000_000
        assert panel.ts[0] >= warmup_start  # over the scoring window, not all that was read
        assert len(panel.ts) == len(panel.values) == 48 * 12
        stamps = found["ts"].dt.epoch("us").to_numpy()
        assert sorted(panel.anomaly_ts.tolist()) == sorted(stamps.tolist())
        np.testing.assert_allclose(sorted(panel.anomaly_values), sorted(found["value"].to_numpy()))
        assert "panels" not in first.to_dict()
        assert first.to_dict()["top"] == first.top
        again = scorer.score(now=NOW)
        assert (again.rows, again.written) == (0, 0)  # nothing new since the last run
        assert again.panels == []
    finally:
        store.close()
    load(anomaly_settings, frame("app.latency", 50 + np.zeros(3), end=NOW + 3 * STEP))
    store = MetricStore(anomaly_settings).open(background_flush=False)
    try:
        later = AnomalyScorer(anomaly_settings, store).score(now=NOW + 3 * STEP)
        assert (later.series, later.rows) == (1, 3)
    finally:
        store.close()


def test_training_stores_models_and_scoring_uses_them(anomaly_settings: Settings) -> None:
    load(anomaly_settings, frame("app.latency", spiky(900, spike_from_end=5)), frame("app.short", spiky(100)))
    store = MetricStore(anomaly_settings).open(background_flush=False)
    try:
        scorer = AnomalyScorer(anomaly_settings, store)
        trained = scorer.train(now=NOW - 10 * STEP)  # trained on all but the last ten rows
        assert [item["metric"] for item in trained.trained] == ["app.latency"]
        assert trained.skipped == 1  # app.short has too little history
        scored = scorer.score(now=NOW)
        assert scored.with_model == 1
        found = read_anomalies(store, "app.latency", NOW - timedelta(days=1), NOW + STEP, 0.5)
        assert (found["model_version"] != "").all()
        assert found.height >= 1
    finally:
        store.close()


def test_counters_are_scored_as_rates_and_histograms_not_at_all(anomaly_settings: Settings) -> None:
    counts = np.cumsum(np.full(600, 10.0))
    counts[-20:] += np.arange(1, 21) * 500  # the rate jumps
    load(anomaly_settings, frame("app.requests", counts, kind="counter"), frame("app.hist", spiky(), kind="histogram"))
    store = MetricStore(anomaly_settings).open(background_flush=False)
    try:
        summary = AnomalyScorer(anomaly_settings, store).score(now=NOW)
        assert summary.series == 1
        found = read_anomalies(store, "app.*", NOW - timedelta(days=3), NOW + STEP, 0.7)
        assert set(found["metric"]) == {"app.requests"}
        (panel,) = summary.panels
        # Drawn as the rate it was scored as (10, then 510 per 5 minutes), not the cumulative count.
        assert (panel.values.min(), panel.values.max()) == pytest.approx((10 / 300, 510 / 300))
        assert panel.anomaly_values.tolist() == pytest.approx([510 / 300] * len(panel.anomaly_values))
    finally:
        store.close()


def test_detect_anomalies_refreshes_and_filters_by_sensitivity(anomaly_settings: Settings) -> None:
    load(anomaly_settings, frame("app.latency", spiky()))
    store = MetricStore(anomaly_settings).open(background_flush=False)
    try:
        none = detect_anomalies(anomaly_settings, store, "app.*", window_hours=72, now=NOW + STEP)
        assert none.height == 0  # nothing scored yet, and no refresh
        found = detect_anomalies(anomaly_settings, store, "app.*", 0.5, 72, refresh=True, now=NOW + STEP)
        strict = detect_anomalies(anomaly_settings, store, "app.*", 0.0, 72, now=NOW + STEP)
        assert found.height >= strict.height >= 1
        assert found["score"].to_list() == sorted(found["score"].to_list(), reverse=True)
        with pytest.raises(ValidationError, match="window_hours"):
            detect_anomalies(anomaly_settings, store, "app.*", window_hours=0)
    finally:
        store.close()


def test_find_correlations_over_the_lake(anomaly_settings: Settings) -> None:
    rng = np.random.default_rng(3)
    load_values = np.cumsum(rng.normal(0, 1, 300)) + 100
    follower = np.roll(load_values, 2) * 2 + rng.normal(0, 0.1, 300)
    load(
        anomaly_settings,
        frame("app.load", load_values),
        frame("app.cpu", follower, host="h2"),
        frame("app.other", rng.normal(0, 1, 300), host="h3"),
    )
    store = MetricStore(anomaly_settings).open(background_flush=False)
    try:
        found = find_correlations(store, "app.load", ["app.*"], 0.8, window_hours=30, now=NOW + STEP)
    finally:
        store.close()
    assert [item.series.split("{")[0] for item in found] == ["app.cpu"]
    assert found[0].lag_buckets == 2
    assert found[0].pearson > 0.95


def test_an_unknown_detector_is_refused_naming_the_variable(anomaly_settings: Settings) -> None:
    store = MetricStore(anomaly_settings).open(background_flush=False)
    try:
        with pytest.raises(ConfigError, match="METRICS_ANOMALY_DETECTOR"):
            AnomalyScorer(replace(anomaly_settings, anomaly_detector="magic"), store)
    finally:
        store.close()


def test_key_usage_is_scored_against_its_hour_of_week_profile(anomaly_settings: Settings) -> None:
    rows = 3 * 7 * 288
    rng = np.random.default_rng(5)
    calls = rng.poisson(3, rows).astype(float)
    calls[-6:] += 60  # the last half hour: far more calls than at this hour in past weeks
    counter = np.cumsum(calls)
    load(anomaly_settings, frame("crypto.key.access_count", counter, kind="counter", host="k1"))
    store = MetricStore(anomaly_settings).open(background_flush=False)
    try:
        summary = AnomalyScorer(anomaly_settings, store).score(now=NOW)
        found = store.sql(
            "SELECT DISTINCT detector FROM anomalies WHERE ts >= ? AND score >= 0.7", [NOW - timedelta(hours=1)]
        )
    finally:
        store.close()
    assert "profile" in set(found["detector"])  # besides the ensemble's own view of the series
    profiled = [panel for panel in summary.panels if panel.title.endswith("(count per row, profile)")]
    assert profiled  # the profile's view is drawn as counts per row, as it was scored
    assert set(np.unique(profiled[0].values)) <= set(np.unique(calls))
