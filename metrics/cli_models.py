"""``metrics detect`` (anomaly scores for CSV files) and ``metrics eval nab`` (the NAB benchmark's scores)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from metrics.errors import ValidationError
from models.names import DEFAULT_DETECTOR, DETECTOR_NAMES

eval_app = typer.Typer(
    help="Measure the models on public benchmarks; `--json` prints one JSON line.\n\n"
    "Example: metrics eval nab --data ../shared/data/nab-dev/data --windows ../shared/data/nab-dev/windows.json",
    no_args_is_help=True,
)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
DETECTOR_HELP = f"Detector: {', '.join(DETECTOR_NAMES)} (default {DEFAULT_DETECTOR}, the best on NAB)."


def _check_detector(name: str, *, allow_all: bool = False) -> list[str]:
    if allow_all and name == "all":
        return list(DETECTOR_NAMES)
    if name not in DETECTOR_NAMES:
        choices = ", ".join([*DETECTOR_NAMES, "all"] if allow_all else DETECTOR_NAMES)
        raise ValidationError(f"--detector: {name!r} is not one of {choices}")
    return [name]


@contextmanager
def progress_bar(label: str) -> Iterator[Callable[[int, int], None]]:
    """A transient progress bar on stderr (label, bar, done of all, elapsed); yields the (done, all) callback."""
    with Progress(
        TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err, transient=True
    ) as bar:
        task = bar.add_task(label, total=None)

        def advance(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield advance


def detect(
    input_path: Annotated[Path, typer.Option("--input", help="A timestamp,value CSV, or a folder of them.")],
    output: Annotated[Path, typer.Option("--output", help="The output CSV, or folder for a folder input.")],
    detector: Annotated[str, typer.Option(help=DETECTOR_HELP)] = DEFAULT_DETECTOR,
    workers: Annotated[int | None, typer.Option(help="Processes for a folder (default: one per core).")] = None,
) -> None:
    """Score every row of a CSV (timestamp,value) for anomalies; writes timestamp,value,anomaly_score.

    Same rows, same order; each row's score uses only the rows above it (streaming, as in production).
    A folder is scored file by file in parallel into the same relative paths under --output.

    Example: metrics detect --input ../shared/data/nab-dev/data --output scores/ --detector ensemble
    """
    from metrics.detect_files import score_path

    _check_detector(detector)
    with progress_bar(f"scoring with {detector}") as progress:
        done = score_path(
            input_path,
            output,
            detector,
            workers=workers,
            progress=progress,
        )
    rows = sum(item.rows for item in done)
    seconds = sum(item.seconds for item in done)
    out.print(f"scored {len(done)} files, {rows:,} rows with {detector} ({seconds:.1f} s of work)", markup=False)
    print(done[0].output if len(done) == 1 else output)


@eval_app.command("nab")
def eval_nab(
    data: Annotated[Path, typer.Option(help="The NAB data folder (files named as in --windows).")],
    windows: Annotated[Path, typer.Option(help="NAB's windows.json (file -> list of start, end pairs).")],
    detector: Annotated[str, typer.Option(help=DETECTOR_HELP + " 'all' scores each.")] = DEFAULT_DETECTOR,
    workers: Annotated[int | None, typer.Option(help="Processes (default: one per core).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the scores as JSON on the last line.")] = False,
) -> None:
    """The NAB scores (standard, reward_low_FP_rate, reward_low_FN_rate) of a detector on a NAB-layout corpus.

    Rules of ../shared/data/README.md: probationary period, scaled sigmoid, one threshold per profile
    for the whole corpus (the exact optimum), normalised 0 (never fires) to 100 (perfect).

    Example: metrics eval nab --data ../shared/data/nab-dev/data --windows ../shared/data/nab-dev/windows.json --json
    """
    from metrics.detect_files import evaluate_nab

    names = _check_detector(detector, allow_all=True)
    reports = []
    for name in names:
        with progress_bar(f"NAB with {name}") as advance:
            reports.append(evaluate_nab(data, windows, name, workers=workers, progress=advance))
    table = Table(header_style="bold", title="NAB scores (0: never fires, 100: perfect)", title_justify="left")
    for column in ("detector", "standard", "reward_low_FP_rate", "reward_low_FN_rate", "files", "rows", "seconds"):
        table.add_column(column, justify="left" if column == "detector" else "right")
    for report in reports:
        row = report.to_dict()
        table.add_row(
            report.detector,
            *(f"{row[p]:.1f}" for p in ("standard", "reward_low_FP_rate", "reward_low_FN_rate")),
            str(report.files),
            f"{report.rows:,}",
            f"{report.seconds:.1f}",
        )
    if not as_json:
        out.print(table)
    figures = [report.to_dict() for report in reports]
    print(json.dumps(figures[0] if len(figures) == 1 else figures))


def anomalies(
    pattern: Annotated[str, typer.Argument(help="Glob over metric names, e.g. 'crypto.key.*'.")] = "*",
    sensitivity: Annotated[float, typer.Option(help="0 (only the surest, score ≥ 0.9) … 1 (score ≥ 0.5).")] = 0.5,
    window_hours: Annotated[float, typer.Option(help="How far back to look.")] = 24.0,
    refresh: Annotated[bool, typer.Option(help="Score what arrived since the last scoring run first.")] = True,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table, csv or json.")] = "table",
) -> None:
    """The anomalies of matching metrics in the last hours, highest score first (new rows are scored first).

    Example: metrics anomalies 'system.*' --sensitivity 0.7 --window-hours 6
    """
    from metrics.analysis import detect_anomalies
    from metrics.cli import emit, open_store, settings

    with open_store() as store:
        frame = detect_anomalies(settings(), store, pattern, sensitivity, window_hours, refresh=refresh)
    emit(frame.drop("series_id", "scored_at"), fmt)


def correlations(
    primary: Annotated[str, typer.Argument(help="The metric (glob) the others are compared with.")],
    secondary: Annotated[list[str], typer.Option("--with", help="Globs of the candidate series (repeatable).")],
    threshold: Annotated[float, typer.Option(help="Least |Pearson| or |Spearman| reported.")] = 0.7,
    window_hours: Annotated[float, typer.Option(help="The window compared.")] = 24.0,
    interval: Annotated[str, typer.Option(help="Bucket width the series are resampled to.")] = "5m",
    max_lag: Annotated[int, typer.Option(help="Lags tried in each direction, in buckets.")] = 12,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table, csv or json.")] = "table",
) -> None:
    """Series correlated with a metric: Pearson and Spearman at the best lag, strongest first.

    Example: metrics correlations system.cpu.usage_total --with 'crypto.key.*_ops' --threshold 0.6
    """
    import polars as pl

    from metrics.analysis import find_correlations
    from metrics.cli import emit, open_store

    with open_store(read_only=True) as store:
        found = find_correlations(
            store, primary, secondary, threshold, window_hours=window_hours, interval=interval, max_lag=max_lag
        )
    schema = {
        "series": pl.String,
        "pearson": pl.Float64,
        "spearman": pl.Float64,
        "lag_buckets": pl.Int64,
        "lag_seconds": pl.Float64,
        "points": pl.Int64,
        "strength": pl.Float64,
    }
    emit(pl.DataFrame([item.to_dict() for item in found], schema=schema), fmt)


def train(
    pattern: Annotated[list[str] | None, typer.Option(help="Train only series of these metric globs.")] = None,
) -> None:
    """Train an anomaly model per series, and a joint forest per host or key, with enough history (as train-models).

    Fits run in METRICS_TRAIN_WORKERS processes (default one per core).

    Example: metrics train --pattern 'system.*'
    """
    from metrics.cli import open_store, settings
    from tasks.anomalies import AnomalyScorer

    with open_store() as store, progress_bar("training") as progress:
        summary = AnomalyScorer(settings(), store).train(pattern or None, progress=progress)
    joint = sum(1 for item in summary.trained if item["detector"] == "joint")
    out.print(
        f"trained {len(summary.trained)} models ({joint} over groups of series), "
        f"skipped {summary.skipped} with too little history, "
        f"pruned {summary.pruned} old versions in {summary.seconds:.1f} s",
        markup=False,
    )
    print(len(summary.trained))
