"""Charts as PNG, one panel per series: forecasts (history, mean, 80 % and 95 % bands, limit) and anomalies.

Rendered with matplotlib's Agg canvas directly (no pyplot: no global figure
state, safe in worker threads and Prefect tasks). Both kinds share one
pipeline: a grid of panels (:func:`_render`) → PNG bytes → :func:`data_uri` for
markdown and :func:`save_png` for a file. The flows ``forecast-capacity`` and
``score-anomalies`` embed their picture in a Prefect artifact and keep it
under ``<data_dir>/charts/`` (:func:`tasks.artifacts.publish_chart`);
``metrics capacity --plot`` and ``metrics forecast --plot`` write a forecast
chart to a file.
"""

from __future__ import annotations

import base64
import io
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import matplotlib

matplotlib.use("Agg")  # before any other matplotlib import: never look for a display

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure

from metrics.errors import ValidationError
from models.forecast.forecaster import Forecast

HISTORY_COLOUR = "#3b6ea5"
FORECAST_COLOUR = "#d9730d"
LIMIT_COLOUR = "#c0392b"
ANOMALY_COLOUR = "#e02020"
PANEL_INCHES = (6.4, 3.0)
DPI = 100


@dataclass(frozen=True)
class ForecastPanel:
    """One series to draw: its history and forecast, on timestamps (µs since the epoch) or on step numbers.

    Args:
        title: the panel's title (the metric and its tags).
        history: the observed values (NaN where nothing was observed).
        forecast: the forecast of the steps after the history.
        history_ts: the history's timestamps in µs, or None to number the steps 0, 1, ….
        future_ts: the forecast's timestamps in µs (required with ``history_ts``).
        limit: a level to draw as a line (the capacity limit or an alert threshold).
    """

    title: str
    history: np.ndarray
    forecast: Forecast
    history_ts: np.ndarray | None = None
    future_ts: np.ndarray | None = None
    limit: float | None = None

    def __post_init__(self) -> None:
        if (self.history_ts is None) != (self.future_ts is None):
            raise ValidationError("a forecast panel needs both history_ts and future_ts, or neither")
        if self.history_ts is not None and len(self.history_ts) != len(self.history):
            raise ValidationError(f"history_ts has {len(self.history_ts)} values, history {len(self.history)}")
        if self.future_ts is not None and len(self.future_ts) != len(self.forecast):
            raise ValidationError(f"future_ts has {len(self.future_ts)} values, the forecast {len(self.forecast)}")

    def axes_values(self, keep: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(history x, history y, future x) of the last ``keep`` history points, as datetimes or step numbers."""
        start = max(0, len(self.history) - keep)
        if self.history_ts is None or self.future_ts is None:
            steps = np.arange(len(self.history) + len(self.forecast))
            return steps[start : len(self.history)], self.history[start:], steps[len(self.history) :]
        as_time = np.asarray(self.history_ts[start:], dtype="int64").astype("datetime64[us]")
        return as_time, self.history[start:], np.asarray(self.future_ts, dtype="int64").astype("datetime64[us]")


def forecast_chart(panels: Sequence[ForecastPanel], *, columns: int = 2, history_points: int = 168) -> bytes:
    """A PNG of the panels in a grid of ``columns``, each with its last ``history_points`` observations.

    Args:
        panels: the series to draw (at least one).
        columns: panels per row (fewer when there are fewer panels).
        history_points: observations shown before the forecast (168: a week of hours).
    """
    if not panels:
        raise ValidationError("a forecast chart needs at least one series")
    if columns < 1 or history_points < 1:
        raise ValidationError(f"columns ({columns}) and history_points ({history_points}) must be >= 1")
    return _render(panels, columns, lambda axes, panel: _draw(axes, panel, history_points))


@dataclass(frozen=True)
class AnomalyPanel:
    """One series to draw with its anomalies: values over the scored window, the anomalous rows marked.

    Args:
        title: the panel's title (the metric and its tags).
        ts: the values' timestamps, µs since the epoch.
        values: the series as scored (a counter as its rate).
        anomaly_ts: the timestamps (µs) of the rows flagged as anomalies.
        anomaly_values: their values.
    """

    title: str
    ts: np.ndarray
    values: np.ndarray
    anomaly_ts: np.ndarray
    anomaly_values: np.ndarray

    def __post_init__(self) -> None:
        if len(self.ts) != len(self.values):
            raise ValidationError(f"ts has {len(self.ts)} values, values {len(self.values)}")
        if len(self.anomaly_ts) != len(self.anomaly_values):
            raise ValidationError(
                f"anomaly_ts has {len(self.anomaly_ts)} values, anomaly values {len(self.anomaly_values)}"
            )


def anomaly_chart(panels: Sequence[AnomalyPanel], *, columns: int = 2) -> bytes:
    """A PNG of the panels in a grid of ``columns``: each series as a line, its anomalies as red points.

    Args:
        panels: the series to draw (at least one).
        columns: panels per row (fewer when there are fewer panels).
    """
    if not panels:
        raise ValidationError("an anomaly chart needs at least one series")
    if columns < 1:
        raise ValidationError(f"columns ({columns}) must be >= 1")
    return _render(panels, columns, _draw_anomalies)


Panel = TypeVar("Panel")


def _render(panels: Sequence[Panel], columns: int, draw: Callable[[Axes, Panel], None]) -> bytes:
    """The shared pipeline of every chart: a grid of ``columns`` panels, each drawn by ``draw``, as PNG bytes."""
    across = min(columns, len(panels))
    down = math.ceil(len(panels) / across)
    figure = Figure(figsize=(PANEL_INCHES[0] * across, PANEL_INCHES[1] * down), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.subplots(down, across, squeeze=False)
    for index, axes in enumerate(grid.flat):
        if index < len(panels):
            draw(axes, panels[index])
        else:
            axes.set_axis_off()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def save_png(png: bytes, target: Path) -> Path:
    """Write a PNG atomically (a reader never sees half a picture); the folder is made if missing."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    partial.write_bytes(png)
    os.replace(partial, target)
    return target


def data_uri(png: bytes) -> str:
    """A ``data:image/png;base64,…`` URI of a PNG, for markdown that must carry its picture with it."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _draw(axes: Axes, panel: ForecastPanel, history_points: int) -> None:
    history_x, history_y, future_x = panel.axes_values(history_points)
    forecast = panel.forecast
    axes.plot(history_x, history_y, color=HISTORY_COLOUR, linewidth=1.1, label="observed")
    axes.fill_between(future_x, forecast.lower_95, forecast.upper_95, color=FORECAST_COLOUR, alpha=0.15, label="95 %")
    axes.fill_between(future_x, forecast.lower_80, forecast.upper_80, color=FORECAST_COLOUR, alpha=0.3, label="80 %")
    axes.plot(future_x, forecast.mean, color=FORECAST_COLOUR, linewidth=1.4, linestyle="--", label=forecast.method)
    if panel.limit is not None:
        axes.axhline(panel.limit, color=LIMIT_COLOUR, linewidth=1.0, linestyle=":", label=f"limit {panel.limit:g}")
    _style(axes, panel.title, timed=panel.history_ts is not None)
    finite = np.concatenate([history_y[np.isfinite(history_y)], forecast.lower_95, forecast.upper_95])
    if panel.limit is not None and len(finite) and np.max(finite) >= 0.5 * panel.limit:
        finite = np.append(finite, panel.limit)  # show the limit when the series comes within reach of it
    _fit_y(axes, finite)


def _draw_anomalies(axes: Axes, panel: AnomalyPanel) -> None:
    as_time = np.asarray(panel.ts, dtype="int64").astype("datetime64[us]")
    axes.plot(as_time, panel.values, color=HISTORY_COLOUR, linewidth=1.1, label="observed")
    marked = np.asarray(panel.anomaly_ts, dtype="int64").astype("datetime64[us]")
    axes.scatter(marked, panel.anomaly_values, color=ANOMALY_COLOUR, s=22, zorder=3, label=f"anomalies ({len(marked)})")
    _style(axes, panel.title, timed=True)
    values = np.concatenate([np.asarray(panel.values, dtype=float), np.asarray(panel.anomaly_values, dtype=float)])
    _fit_y(axes, values[np.isfinite(values)])


def _style(axes: Axes, title: str, *, timed: bool) -> None:
    """Title, grid, legend and ticks of a panel; a date axis when ``timed``, else step numbers."""
    axes.set_title(title, fontsize=9, loc="left")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=7, loc="upper left", frameon=False, ncols=5)
    axes.tick_params(labelsize=8)
    if timed:
        locator = AutoDateLocator()
        axes.xaxis.set_major_locator(locator)
        axes.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    else:
        axes.set_xlabel("step", fontsize=8)


def _fit_y(axes: Axes, finite: np.ndarray) -> None:
    """The y range of the finite values, padded (a constant series still gets a visible axis)."""
    if len(finite):
        low, high = float(np.min(finite)), float(np.max(finite))
        pad = (high - low) * 0.08 or max(abs(high) * 0.05, 1.0)
        axes.set_ylim(low - pad, high + pad)
