"""``metrics forecast`` and ``metrics eval m4``: forecasts of CSV files, and their accuracy on M4 Hourly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from metrics.cli_models import eval_app, out, progress_bar


def forecast(
    input_path: Annotated[Path, typer.Option("--input", help="A timestamp,value CSV, or M4's wide format.")],
    output: Annotated[Path, typer.Option("--output", help="The output CSV.")],
    horizon: Annotated[int, typer.Option(help="Steps to forecast.")] = 48,
    season: Annotated[int | None, typer.Option(help="Seasonal period in steps (default: detect 24 and 168).")] = None,
    workers: Annotated[int | None, typer.Option(help="Processes for many series (default: one per core).")] = None,
    plot: Annotated[Path | None, typer.Option(help="Also draw the forecast (wide: first 6) to this PNG.")] = None,
) -> None:
    """Forecast one series (timestamp,value) or many (M4 wide: id, then values) with 80 % and 95 % intervals.

    Each series gets the method its own backtest prefers (the median of seasonal naives, Theta and
    MSTL + ETS unless one is clearly better). Output: timestamp,yhat,lower_80,upper_80,lower_95,upper_95,method
    for one series; id,F1..Fh for the wide format.

    Example: metrics forecast --input ../shared/data/m4/Hourly-train.csv --horizon 48 --output f.csv --plot f.png
    """
    from metrics.forecast_files import forecast_file

    with progress_bar(f"forecasting {horizon} steps") as progress:
        run = forecast_file(
            input_path,
            output,
            horizon,
            season=season,
            workers=workers,
            progress=progress,
            plot=plot,
        )
    chosen = ", ".join(f"{name} {count}" for name, count in sorted(run.methods.items(), key=lambda i: -i[1]))
    out.print(f"forecast {run.series} series ({run.layout}) {run.horizon} steps ahead; methods: {chosen}", markup=False)
    print(run.output)


@eval_app.command("m4")
def eval_m4(
    data: Annotated[Path, typer.Option(help="An M4 wide file (e.g. ../shared/data/m4/Hourly-train.csv).")],
    horizon: Annotated[int, typer.Option(help="Points held out at the end of each series.")] = 48,
    season: Annotated[int | None, typer.Option(help="Seasonal period for the forecaster (default: detect).")] = None,
    period: Annotated[int, typer.Option(help="Period of MASE's scale and Naive2's test (Hourly: 24).")] = 24,
    limit: Annotated[int | None, typer.Option(help="Only the first N series.")] = None,
    workers: Annotated[int | None, typer.Option(help="Processes (default: one per core).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON on the last line.")] = False,
) -> None:
    """Backtest the forecaster on an M4 file's last --horizon points: sMAPE, MASE, OWA against Naive2, time.

    Example: metrics eval m4 --data ../shared/data/m4/Hourly-train.csv --horizon 48 --json
    """
    from models.forecast.m4 import backtest, read_wide

    series = read_wide(data)[:limit]
    with progress_bar("M4 backtest") as progress:
        figures = backtest(
            series,
            horizon,
            season=season,
            period=period,
            workers=workers,
            progress=progress,
        )
    if not as_json:
        table = Table(header_style="bold", title=f"M4 backtest, last {horizon} points", title_justify="left")
        for column in ("method", "sMAPE", "MASE", "OWA"):
            table.add_column(column, justify="left" if column == "method" else "right")
        table.add_row("forecaster", f"{figures['smape']:.2f}", f"{figures['mase']:.3f}", f"{figures['owa']:.3f}")
        table.add_row("Naive2", f"{figures['naive2_smape']:.2f}", f"{figures['naive2_mase']:.3f}", "1.000")
        out.print(table)
        out.print(
            f"{figures['series']} series in {figures['seconds']:.1f} s; interval coverage "
            f"80 %: {figures['coverage_80']:.1%}, 95 %: {figures['coverage_95']:.1%}",
            markup=False,
        )
    print(json.dumps(figures))


def capacity(
    pattern: Annotated[list[str] | None, typer.Option(help="Forecast only metrics of these globs.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table, csv or json.")] = "table",
    plot: Annotated[Path | None, typer.Option(help="Also draw the most urgent series' forecasts to this PNG.")] = None,
) -> None:
    """Capacity risks now: per gauge with a limit, days until its trend reaches it (80 % interval), breach odds.

    Forecasts the configured series (forecast.metrics) as the forecast-capacity flow does, without writing,
    and sizes the fleet by its CPU forecast against forecast.scaling_target_utilisation.

    Example: metrics capacity --pattern 'system.*' --plot capacity.png
    """
    import polars as pl

    from metrics.charts import forecast_chart
    from metrics.cli import emit, open_store, settings
    from metrics.errors import ValidationError
    from metrics.forecast_files import write_plot
    from tasks.forecasts import CapacityPlanner

    with open_store() as store, progress_bar("forecasting") as progress:
        summary = CapacityPlanner(settings(), store).run(pattern or None, write=False, progress=progress)
    columns = ("metric", "tags", "level", "limit", "days", "days_80_low", "days_80_high", "breach_probability")
    schema = {name: pl.String if name in ("metric", "tags") else pl.Float64 for name in columns}
    rows = [{name: risk.to_dict()[name] for name in columns} for risk in summary.risks]
    if plot is not None:
        if not summary.panels:
            raise ValidationError("--plot: no series were forecast, so there is nothing to draw")
        write_plot(forecast_chart(summary.panels), plot)
        out.print(f"chart: {plot}", markup=False)
    emit(pl.DataFrame(rows, schema=schema), fmt)
    if fmt == "table":
        for risk in summary.risks[:5]:
            out.print(risk.summary, markup=False)
        if summary.scaling is not None:
            out.print(f"Scaling: {summary.scaling.reason}", markup=False)
