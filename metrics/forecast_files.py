"""Forecasts for CSV files (``metrics forecast``): one ``timestamp,value`` series, or many in M4's wide format.

A ``timestamp,value`` file gets ``timestamp,yhat,lower_80,upper_80,lower_95,upper_95,method``
rows for the next ``horizon`` steps (timestamps continue at the series' typical
step). A wide file (an id in the first column, then the values; M4's format)
gets ``id,F1,…,Fh`` rows in the same order, forecast in parallel. With
``plot``, a PNG of the forecast (of the first :data:`PLOT_SERIES` series of a
wide file) is written too.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from metrics.charts import ForecastPanel, forecast_chart, save_png
from metrics.detect_files import read_series_csv
from metrics.errors import ValidationError
from models.forecast.forecaster import AutoForecaster
from models.forecast.m4 import forecast_wide, read_wide, write_wide

INTERVAL_COLUMNS = ("lower_80", "upper_80", "lower_95", "upper_95")
PLOT_SERIES = 6


@dataclass(frozen=True)
class ForecastRun:
    """What a forecast of a file did: its format, series, horizon, methods chosen and output."""

    layout: str
    series: int
    horizon: int
    methods: dict[str, int]
    output: str


def is_long_layout(path: Path) -> bool:
    """Whether a CSV has ``timestamp`` and ``value`` columns (else it is read as the wide format)."""
    try:
        with open(path, newline="") as handle:
            header = next(csv.reader(handle), [])
    except (OSError, UnicodeDecodeError) as exc:
        raise ValidationError(f"--input: {path}: {exc}") from None
    names = {name.strip().lower() for name in header}
    return {"timestamp", "value"} <= names


def forecast_file(
    source: Path,
    output: Path,
    horizon: int,
    *,
    season: int | None = None,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    plot: Path | None = None,
) -> ForecastRun:
    """Forecast the series of ``source`` ``horizon`` steps ahead into ``output`` (and a chart into ``plot``)."""
    if isinstance(horizon, bool) or horizon < 1:
        raise ValidationError(f"--horizon: {horizon!r} must be a whole number of steps >= 1")
    if season is not None and season < 1:
        raise ValidationError(f"--season: {season!r} must be >= 1 (1: no season)")
    if not source.is_file():
        raise ValidationError(f"--input: {source} is not a file")
    if is_long_layout(source):
        _, timestamps, values = read_series_csv(source)
        if not len(values):
            raise ValidationError(f"--input: {source}: no rows")
        forecast = AutoForecaster(horizon=horizon, season=season).forecast(values)
        step = int(np.median(np.diff(timestamps))) if len(timestamps) > 1 else 3_600_000_000
        future = timestamps[-1] + step * np.arange(1, horizon + 1)
        frame = pl.DataFrame(
            {
                "timestamp": pl.Series(future, dtype=pl.Int64).cast(pl.Datetime("us", "UTC")),
                "yhat": forecast.mean,
                **{name: getattr(forecast, name) for name in INTERVAL_COLUMNS},
                "method": [forecast.method] * horizon,
            }
        )
        _write_csv(frame, output)
        if plot is not None:
            write_plot(forecast_chart([ForecastPanel(source.name, values, forecast, timestamps, future)]), plot)
        if progress is not None:
            progress(1, 1)
        return ForecastRun("timestamp,value", 1, horizon, {forecast.method: 1}, str(output))
    series = read_wide(source)
    forecasts = forecast_wide(series, horizon, season=season, workers=workers, progress=progress)
    write_wide(output, [item.series_id for item in series], [f.mean for f in forecasts])
    if plot is not None:
        shown = zip(series[:PLOT_SERIES], forecasts, strict=False)
        write_plot(forecast_chart([ForecastPanel(item.series_id, item.values, f) for item, f in shown]), plot)
    chosen: dict[str, int] = {}
    for forecast in forecasts:
        chosen[forecast.method] = chosen.get(forecast.method, 0) + 1
    return ForecastRun("wide", len(series), horizon, chosen, str(output))


def _write_csv(frame: pl.DataFrame, output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.with_name(f".{output.name}.partial")
    frame.write_csv(temporary)
    os.replace(temporary, output)


def write_plot(png: bytes, output: Path) -> None:
    """Save a chart for ``--plot``; a path that cannot be written is the option's error, not a traceback."""
    try:
        save_png(png, output)
    except OSError as exc:
        raise ValidationError(f"--plot: {output}: {exc.strerror or exc}") from None
