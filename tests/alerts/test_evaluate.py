"""Observations: threshold rules in DuckDB over real lake files, anomaly and forecast rules over their tables."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest

from alerts.evaluate import breach_chance, match_series, observe
from alerts.rules import AlertRule
from storage.anomalies import anomaly_frame, write_anomalies
from storage.forecasts import forecast_frame, write_forecasts
from storage.store import MetricStore
from tests.alerts.conftest import WriteSeries

US = 1_000_000


def seconds_before(now: datetime, moment: int | None) -> float | None:
    return None if moment is None else (now.timestamp() * US - moment) / US


def one(frame: pl.DataFrame, rule_id: str, series: str | None = None) -> dict[str, object]:
    rows = [r for r in frame.to_dicts() if r["rule_id"] == rule_id and (series is None or r["series"] == series)]
    assert len(rows) == 1, rows
    return rows[0]


def test_the_run_of_breaches_is_judged_on_the_samples_timestamps(
    alert_store: MetricStore, write_series: WriteSeries, now: datetime
) -> None:
    write_series("system.cpu.usage_total", [50] * 20 + [95] * 20, now, host="a")  # breaching the last 9.5 min
    write_series("system.cpu.usage_total", [95] * 35 + [50] * 5, now, host="b")  # clear the last 2 min
    rule = AlertRule("cpu", "CPU", metric_pattern=r"system\.cpu\.usage_total", threshold_value=90, duration_seconds=300)
    found = observe(alert_store, [rule], now)
    a = one(found, "cpu", "system.cpu.usage_total host=a")
    assert a["breach"] is True
    assert a["clear"] is False
    assert a["value"] == 95.0
    assert seconds_before(now, a["held_since"]) == pytest.approx(570)  # the first breaching sample in the lookback
    b = one(found, "cpu", "system.cpu.usage_total host=b")
    assert b["breach"] is False
    assert b["clear"] is True
    assert b["held_since"] is None
    assert seconds_before(now, b["clear_since"]) == pytest.approx(120)


@pytest.mark.parametrize(
    ("aggregation", "window", "threshold", "value", "held"),
    [
        ("avg", 300, 70, 95, 150),  # over 70 once half the window's 10 samples are 95
        ("max", 60, 90, 95, 270),
        ("min", 300, 90, 95, 0),  # only once the window holds no 50 any more
        ("sum", 300, 900, 950, 30),
        ("count", 300, 9, 10, 300),  # 10 samples in every full window; the lookback's first windows hold fewer
        ("p95", 300, 90, 95, 240),  # two 95s of ten put the interpolated 95th percentile at 95
    ],
)
def test_window_aggregations(
    alert_store: MetricStore,
    write_series: WriteSeries,
    now: datetime,
    aggregation: str,
    window: float,
    threshold: float,
    value: float,
    held: float,
) -> None:
    write_series("app.latency", [50] * 30 + [95] * 10, now, host="a")  # 95 for the last 4.5 min (10 samples)
    rule = AlertRule(
        "r",
        "R",
        metric_pattern=r"app\.latency",
        threshold_value=threshold,
        aggregation=aggregation,
        window_seconds=window,
    )
    row = one(observe(alert_store, [rule], now), "r")
    assert row["value"] == pytest.approx(value)
    assert row["breach"] is True
    assert seconds_before(now, row["held_since"]) == pytest.approx(held, abs=31)


def test_counter_increase_and_rate_count_a_reset_as_a_restart_from_zero(
    alert_store: MetricStore, write_series: WriteSeries, now: datetime
) -> None:
    totals = [100.0] * 30 + [103, 106, 109, 112, 2, 5, 8, 11, 14, 17]  # a reset to 0 then +2: increase of 2
    write_series("security.auth_failures", totals, now, kind="counter", host="a")
    increase = AlertRule(
        "inc",
        "I",
        metric_pattern=r"security\.auth_failures",
        threshold_value=10,
        aggregation="increase",
        window_seconds=300,
    )
    rate = AlertRule(
        "rate",
        "R",
        metric_pattern=r"security\.auth_failures",
        threshold_value=0.05,
        aggregation="rate",
        window_seconds=300,
    )
    found = observe(alert_store, [increase, rate], now)
    assert one(found, "inc")["value"] == pytest.approx(3 * 9 + 2)
    assert one(found, "rate")["value"] == pytest.approx(29 / 300)
    assert one(found, "inc")["breach"] is True


def test_group_by_pools_the_series_of_a_group(
    alert_store: MetricStore, write_series: WriteSeries, now: datetime
) -> None:
    for host, level in (("a", 60), ("b", 100)):
        write_series("system.cpu.usage_total", [level] * 20, now, host=host, region="eu")
    write_series("system.cpu.usage_total", [10] * 20, now, host="c", region="us")
    rule = AlertRule(
        "fleet",
        "Fleet CPU",
        metric_pattern=r"system\.cpu\..*",
        threshold_value=75,
        aggregation="avg",
        window_seconds=300,
        group_by=("region",),
    )
    found = observe(alert_store, [rule], now)
    assert {row["labels"]: row["value"] for row in found.to_dicts()} == {
        '{"region": "eu"}': 80.0,
        '{"region": "us"}': 10.0,
    }
    assert one(found, "fleet", "Fleet CPU region=eu")["breach"] is True


@pytest.mark.parametrize(
    ("comparison", "threshold", "breach"),
    [(">", 95, False), (">=", 95, True), ("<", 96, True), ("<=", 94, False), ("==", 95, True), ("!=", 95, False)],
)
def test_every_comparison(
    alert_store: MetricStore, write_series: WriteSeries, now: datetime, comparison: str, threshold: float, breach: bool
) -> None:
    write_series("m", [95] * 5, now)
    row = one(
        observe(
            alert_store,
            [AlertRule("r", "R", metric_pattern="m", threshold_value=threshold, comparison=comparison)],
            now,
        ),
        "r",
    )
    assert row["breach"] is breach


def test_old_samples_and_other_metrics_are_not_read(
    alert_store: MetricStore, write_series: WriteSeries, now: datetime
) -> None:
    write_series("m", [99] * 5, now - timedelta(hours=2))
    write_series("other", [99] * 5, now)
    assert observe(alert_store, [AlertRule("r", "R", metric_pattern="m", threshold_value=90)], now).is_empty()


def test_literal_and_regex_patterns_match_whole_names() -> None:
    catalog = pl.DataFrame(
        {
            "series_id": [1, 2, 3],
            "metric": ["system.cpu.usage_total", "system.cpu.usage_percent", "xsystem.cpu.usage_total"],
            "tags": ['{"host":"a"}', '{"core":"0","host":"a"}', "{}"],
        }
    )
    rules = [
        AlertRule("literal", "L", metric_pattern=r"system\.cpu\.usage_total"),
        AlertRule("regex", "R", metric_pattern=r"system\.cpu\..*"),
    ]
    pairs = match_series(rules, catalog)
    assert sorted(pairs.filter(pl.col("rule_idx") == 0)["series_id"]) == [1]
    assert sorted(pairs.filter(pl.col("rule_idx") == 1)["series_id"]) == [1, 2]
    assert "system.cpu.usage_percent core=0 host=a" in pairs["series"].to_list()


def test_anomaly_rules_fire_on_findings_at_their_score(alert_store: MetricStore, now: datetime) -> None:
    base = int(now.timestamp() * US)
    rows = [
        ("crypto.key.access_count", 7, base - 120 * US, '{"key_id":"k1"}', 500.0, 0.85, True, "ensemble", "v1"),
        ("crypto.key.access_count", 8, base - 60 * US, '{"key_id":"k2"}', 40.0, 0.55, True, "ensemble", "v1"),
    ]
    write_anomalies(alert_store, anomaly_frame(rows, now))
    strict = AlertRule(
        "strict", "S", metric_pattern=r"crypto\.key\.access_count", use_anomaly_detection=True, ml_sensitivity=0.0
    )
    loose = AlertRule(
        "loose", "L", metric_pattern=r"crypto\.key\.access_count", use_anomaly_detection=True, ml_sensitivity=1.0
    )
    found = observe(alert_store, [strict, loose], now)
    assert found.filter(pl.col("rule_id") == "strict").height == 0  # 0.85 < 0.9
    assert sorted(found.filter(pl.col("rule_id") == "loose")["series"].to_list()) == [
        "crypto.key.access_count key_id=k1",
        "crypto.key.access_count key_id=k2",
    ]
    assert found["breach"].all()


def test_forecast_rules_fire_on_the_chance_of_a_breach(alert_store: MetricStore, now: datetime) -> None:
    steps = np.arange(1, 25)
    base = int(now.timestamp() * US)
    rows = []
    for series_id, (host, start) in enumerate((("a", 90.0), ("b", 40.0))):
        mean = start + 0.3 * steps
        for i, step in enumerate(steps):
            rows.append(
                {
                    "metric": "system.disk.usage_percent",
                    "series_id": series_id,
                    "tags": f'{{"host":"{host}"}}',
                    "ts": base + int(step) * 3600 * US,
                    "yhat": mean[i],
                    "lower_80": mean[i] - 1,
                    "upper_80": mean[i] + 1,
                    "lower_95": mean[i] - 2,
                    "upper_95": mean[i] + 2,
                    "model": "theta",
                }
            )
    write_forecasts(alert_store, forecast_frame(rows, now))
    rule = AlertRule(
        "disk", "D", metric_pattern=r"system\.disk\.usage_percent", threshold_value=95, predicted_breach=0.8
    )
    found = {row["series"]: row for row in observe(alert_store, [rule], now).to_dicts()}
    assert found["system.disk.usage_percent host=a"]["breach"] is True  # reaches 97.2
    assert found["system.disk.usage_percent host=b"]["breach"] is False
    assert found["system.disk.usage_percent host=b"]["value"] < 1e-6


@pytest.mark.parametrize(("comparison", "expected"), [(">", 0.5), ("<", 0.5), ("==", 0.0)])
def test_breach_chance_at_the_mean_is_even(comparison: str, expected: float) -> None:
    rule = AlertRule("r", "R", threshold_value=10.0, comparison=comparison)
    chance = breach_chance(np.array([10.0]), np.array([12.0]), np.array([8.0]), rule)
    assert chance == pytest.approx(expected)


def test_tag_matchers_select_series() -> None:
    catalog = pl.DataFrame(
        {
            "series_id": [1, 2, 3, 4],
            "metric": ["cpu", "cpu", "cpu", "mem"],
            "tags": [
                '{"host":"web-1","region":"eu"}',
                '{"host":"web-2","region":"eu"}',
                '{"host":"db-1"}',
                '{"host":"web-1"}',
            ],
        }
    )
    rules = [
        AlertRule("eq", "E", metric_pattern="cpu", matchers=("host=web-1", "region=eu")),
        AlertRule("re", "R", metric_pattern="cpu|mem", matchers=("host=~web-.*",)),
        AlertRule("ne", "N", metric_pattern="cpu", matchers=("region!=eu",)),
        AlertRule("none", "A", metric_pattern="cpu"),
    ]
    pairs = match_series(rules, catalog)
    chosen = {i: sorted(pairs.filter(pl.col("rule_idx") == i)["series_id"].to_list()) for i in range(len(rules))}
    assert chosen == {0: [1], 1: [1, 2, 4], 2: [3], 3: [1, 2, 3]}


def test_anomaly_rules_honour_tag_matchers(alert_store: MetricStore, now: datetime) -> None:
    base = int(now.timestamp() * US)
    rows = [
        ("crypto.key.access_count", 7, base - 60 * US, '{"key_id":"k1"}', 500.0, 0.95, True, "ensemble", "v1"),
        ("crypto.key.access_count", 8, base - 60 * US, '{"key_id":"k2"}', 400.0, 0.95, True, "ensemble", "v1"),
    ]
    write_anomalies(alert_store, anomaly_frame(rows, now))
    rule = AlertRule("k1", "K1", metric_pattern=r"crypto\.key\..*", use_anomaly_detection=True, matchers=("key_id=k1",))
    assert observe(alert_store, [rule], now)["series"].to_list() == ["crypto.key.access_count key_id=k1"]
