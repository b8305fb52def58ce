"""Series scored together: grouping and alignment, the joint forest trained in parallel and filed under the culprit."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from metrics.settings import Settings
from storage.anomalies import read_anomalies
from storage.store import MetricStore
from tasks.anomalies import AnomalyScorer
from tasks.anomaly_series import SeriesData, group_id, group_key, series_groups

NOW = datetime.now(UTC).replace(second=0, microsecond=0)
STEP = timedelta(minutes=5)
DAY = 288
US = 1_000_000


def series(series_id: int, tags: str, values: list[float], offset_s: int = 0, metric: str = "m") -> SeriesData:
    ts = (np.arange(len(values)) * 300 + offset_s + 1_700_000_100) * US
    return SeriesData(series_id, metric, tags, "gauge", ts, np.asarray(values, dtype=float))


@pytest.mark.parametrize(
    ("tags", "key"),
    [
        ('{"host":"web-1","core":"0"}', "host=web-1"),
        ('{"key_id":"k1"}', "key_id=k1"),
        ('{"host":"web-1","key_id":"k1"}', "host=web-1"),  # the first grouping tag wins
        ('{"region":"eu"}', None),
        ('{"host":""}', None),
        ("not json", None),
        ("", None),
    ],
)
def test_group_key(tags: str, key: str | None) -> None:
    assert group_key(tags, ("host", "key_id")) == key


def test_group_ids_are_stable_and_distinct() -> None:
    assert group_id("host=web-1") == group_id("host=web-1")
    assert group_id("host=web-1") != group_id("host=web-2")
    assert 0 <= group_id("key_id=k") < 2**63


def test_groups_need_two_varying_series_and_are_aligned_on_the_coarsest_step() -> None:
    items = [
        series(1, '{"host":"a"}', [1, 2, 3, 4]),
        series(2, '{"host":"a"}', [10, 20, 30, 40], offset_s=7),  # sampled a few seconds later
        series(3, '{"host":"a"}', [5, 5, 5, 5]),  # constant: tells nothing
        series(4, '{"host":"b"}', [1, 2, 3, 4]),  # alone in its group
        series(5, "{}", [1, 2, 3, 4]),
    ]
    (group,) = series_groups(items, ("host",))
    assert group.key == "host=a"
    assert group.columns == ("1", "2")
    assert group.frame.height == 4
    assert group.frame["2"].to_list() == [10, 20, 30, 40]
    assert group.stamps[:, 1].tolist() == items[1].ts.tolist()  # each cell knows its sample's own time
    assert group.member("2") == (1, items[1])


def test_a_missed_step_carries_the_last_value_one_step() -> None:
    items = [series(1, '{"host":"a"}', [1, 2, 3, 4, 5, 6]), series(2, '{"host":"a"}', [1, 2, 3, 4, 5, 6])]
    items[1] = SeriesData(2, "m", '{"host":"a"}', "gauge", items[1].ts[[0, 1, 2, 4, 5]], np.array([1.0, 2, 3, 5, 6]))
    (group,) = series_groups(items, ("host",))
    assert group.frame["2"].to_list() == [1, 2, 3, 3, 5, 6]


def host_frames(host: str, broken: bool, seed: int, rows: int = 12 * DAY) -> list[pl.DataFrame]:
    rng = np.random.default_rng(seed)
    load = 50 + 20 * np.sin(2 * np.pi * np.arange(rows) / DAY) + rng.normal(0, 2, rows)
    metrics = {"app.cpu": 0.8 * load + rng.normal(0, 1, rows), "app.requests": 10 * load + rng.normal(0, 10, rows)}
    if broken:
        metrics["app.requests"][-12:] *= 0.2  # requests collapse while the CPU stays busy
    stamps = [NOW - STEP * (rows - i) for i in range(rows)]
    return [
        pl.DataFrame(
            {"ts": stamps, "metric": name, "value": values, "type": "gauge", "host": host},
            schema_overrides={"ts": pl.Datetime("us", "UTC")},
        )
        for name, values in metrics.items()
    ]


@pytest.fixture
def group_settings(settings: Settings) -> Settings:
    return replace(settings, anomaly_detector="zscore", train_min_points=300, score_warmup_hours=48.0)


def test_joint_models_are_trained_in_worker_processes_and_find_the_broken_host(group_settings: Settings) -> None:
    settings = replace(group_settings, train_workers=2)
    store = MetricStore(settings).open(background_flush=False)
    try:
        for item in [*host_frames("h1", True, 1), *host_frames("h2", False, 2)]:
            store.ingest_frame(item)
        store.flush()
        scorer = AnomalyScorer(settings, store)
        trained = scorer.train(now=NOW - 2 * timedelta(hours=2))
        joint = [item for item in trained.trained if item["detector"] == "joint"]
        assert sorted(item["tags"] for item in joint) == ["host=h1", "host=h2"]
        assert {item["metric"] for item in joint} == {"app.cpu,app.requests"}
        assert len(trained.trained) == 6  # four series and two hosts
        scored = scorer.score(now=NOW)
        assert scored.groups == 2
        found = read_anomalies(store, "app.*", NOW - timedelta(hours=3), NOW + STEP, 0.7).filter(
            pl.col("detector") == "joint"
        )
        assert found.height >= 1
        assert set(found["metric"]) == {"app.requests"}  # filed under the series that broke
        assert set(found["tags"]) == {'{"host":"h1"}'}
        assert (found["model_version"] != "").all()
        again = scorer.score(now=NOW)
        assert again.groups == 0  # nothing new
    finally:
        store.close()


def test_a_group_that_lost_a_series_is_scored_without_its_model(group_settings: Settings) -> None:
    settings = replace(group_settings, train_workers=1)
    store = MetricStore(settings).open(background_flush=False)
    try:
        for item in host_frames("h1", False, 3, rows=4 * DAY):
            store.ingest_frame(item)
        extra = host_frames("h1", False, 4, rows=4 * DAY)[0].with_columns(pl.lit("app.memory").alias("metric"))
        store.ingest_frame(extra)
        store.flush()
        scorer = AnomalyScorer(settings, store)
        scorer.train(now=NOW - timedelta(hours=1))
        scored = scorer.score(["app.cpu", "app.requests"], now=NOW)  # app.memory is not read now
        assert any("host=h1: the joint model was trained on other series" in error for error in scored.model_errors)
    finally:
        store.close()
