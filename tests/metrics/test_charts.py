"""Charts as PNG: forecasts (history, forecast, bands, limit) and anomalies (a line, red points); bad panels refused."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metrics.charts import (
    ANOMALY_COLOUR,
    FORECAST_COLOUR,
    HISTORY_COLOUR,
    AnomalyPanel,
    ForecastPanel,
    anomaly_chart,
    data_uri,
    forecast_chart,
    save_png,
)
from metrics.errors import ValidationError
from models.forecast.forecaster import AutoForecaster

PNG = b"\x89PNG\r\n\x1a\n"
HOUR_US = 3_600_000_000


def panel(points: int = 24 * 10, *, timed: bool = True, limit: float | None = 100.0) -> ForecastPanel:
    t = np.arange(points)
    history = 50 + 10 * np.sin(2 * np.pi * t / 24) + 0.1 * t
    history[5] = np.nan  # an hour without samples
    forecast = AutoForecaster(horizon=24).forecast(history)
    if not timed:
        return ForecastPanel("steps", history, forecast, limit=limit)
    ts = 1_790_000_000 * 1_000_000 + HOUR_US * t
    future = ts[-1] + HOUR_US * np.arange(1, 25)
    return ForecastPanel("system.disk.usage_percent host=a", history, forecast, ts, future, limit)


def ink(png: bytes, colour: str) -> int:
    """Pixels of a PNG within a small distance of a ``#rrggbb`` colour."""
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=int)
    target = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(pixels - target).sum(axis=2) < 30).sum())


def size(png: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


@pytest.mark.parametrize(
    ("count", "columns", "expected"),
    [(1, 2, (640, 300)), (2, 2, (1280, 300)), (3, 2, (1280, 600)), (4, 1, (640, 1200))],
)
def test_panels_are_laid_out_in_a_grid(count: int, columns: int, expected: tuple[int, int]) -> None:
    png = forecast_chart([panel() for _ in range(count)], columns=columns)
    assert png.startswith(PNG)
    assert size(png) == expected


@pytest.mark.parametrize("kind", ["timed", "steps", "no limit"])
def test_every_kind_of_panel_draws(kind: str) -> None:
    chosen = panel(timed=kind == "timed", limit=None if kind == "no limit" else 100.0)
    short = forecast_chart([chosen], history_points=2)
    drawn = forecast_chart([chosen])
    assert ink(drawn, HISTORY_COLOUR) > 5 * ink(short, HISTORY_COLOUR) > 0  # a week of history, not two points
    assert ink(drawn, FORECAST_COLOUR) > 50  # the dashed mean


def test_a_constant_series_still_gets_a_visible_axis() -> None:
    flat = np.full(48, 7.0)
    png = forecast_chart([ForecastPanel("flat", flat, AutoForecaster(horizon=6).forecast(flat))])
    assert png.startswith(PNG)


def test_bad_panels_are_refused() -> None:
    good = panel()
    with pytest.raises(ValidationError, match="both history_ts and future_ts"):
        ForecastPanel("x", good.history, good.forecast, good.history_ts, None)
    with pytest.raises(ValidationError, match="history_ts has 3 values"):
        ForecastPanel("x", good.history, good.forecast, good.history_ts[:3], good.future_ts)
    with pytest.raises(ValidationError, match="at least one series"):
        forecast_chart([])
    with pytest.raises(ValidationError, match="columns"):
        forecast_chart([good], columns=0)


def test_save_and_data_uri_round_trip(tmp_path: Path) -> None:
    png = forecast_chart([panel()])
    target = save_png(png, tmp_path / "deep" / "chart.png")
    assert target.read_bytes() == png
    assert not list(target.parent.glob(".*.partial"))
    uri = data_uri(png)
    assert base64.b64decode(uri.removeprefix("data:image/png;base64,")) == png


def anomalies(points: int = 288, marked: int = 3) -> AnomalyPanel:
    ts = 1_790_000_000 * 1_000_000 + 300_000_000 * np.arange(points)
    values = 50 + np.random.default_rng(1).normal(0, 1, points)
    first = points - marked
    values[first:] += 40
    return AnomalyPanel("app.latency host=a", ts, values, ts[first:], values[first:])


@pytest.mark.parametrize(("count", "expected"), [(1, (640, 300)), (2, (1280, 300)), (3, (1280, 600)), (4, (1280, 600))])
def test_anomaly_panels_are_laid_out_like_forecasts(count: int, expected: tuple[int, int]) -> None:
    png = anomaly_chart([anomalies() for _ in range(count)])
    assert png.startswith(PNG)
    assert size(png) == expected
    Image.open(io.BytesIO(png)).verify()


def test_anomalies_are_red_points_on_the_series_line() -> None:
    marked = anomaly_chart([anomalies(marked=6)])
    unmarked = anomaly_chart([anomalies(marked=0)])
    legend = ink(unmarked, ANOMALY_COLOUR)  # only the legend's marker is red without anomalies
    assert 0 < legend < 60
    assert ink(marked, HISTORY_COLOUR) > 200  # the line
    assert ink(marked, ANOMALY_COLOUR) > legend + 100  # the points


def test_bad_anomaly_panels_are_refused() -> None:
    good = anomalies()
    with pytest.raises(ValidationError, match="ts has 3 values"):
        AnomalyPanel("x", good.ts[:3], good.values, good.anomaly_ts, good.anomaly_values)
    with pytest.raises(ValidationError, match="anomaly_ts has 3 values"):
        AnomalyPanel("x", good.ts, good.values, good.anomaly_ts, good.anomaly_values[:1])
    with pytest.raises(ValidationError, match="at least one series"):
        anomaly_chart([])
    with pytest.raises(ValidationError, match="columns"):
        anomaly_chart([good], columns=0)
