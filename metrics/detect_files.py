"""Anomaly scores for CSV files (``metrics detect``) and NAB-layout corpora (``metrics eval nab``).

A file holds ``timestamp,value`` rows; its output holds the same rows in the
same order, their text untouched, with ``anomaly_score`` added: each row's
score from a fresh detector that has seen only the rows above it. A folder is
scored file by file in parallel (one process per core), each CSV below it into
the same relative path under the output folder.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from metrics.errors import ValidationError
from metrics.processes import parallel_map
from metrics.timestamps import parse_timestamp_column
from models.detectors import DEFAULT_DETECTOR, make_detector
from models.nab import PROFILES, LabelledFile, ProfileResult, evaluate, window_rows

SCORE_COLUMN = "anomaly_score"


def read_series_csv(path: Path) -> tuple[pl.DataFrame, np.ndarray, np.ndarray]:
    """(the file's rows as text, timestamps in µs, values) of a ``timestamp,value`` CSV; bad input is refused."""
    try:
        raw = pl.read_csv(path, infer_schema=False)
    except (pl.exceptions.ComputeError, pl.exceptions.NoDataError, OSError) as exc:
        raise ValidationError(f"{path}: not a readable CSV ({str(exc).splitlines()[0]})") from None
    missing = [name for name in ("timestamp", "value") if name not in raw.columns]
    if missing:
        raise ValidationError(f"{path}: missing column {missing[0]!r} (expected timestamp,value)")
    stamps = parse_timestamp_column(raw.select("timestamp"), "timestamp").get_column("timestamp")
    if stamps.null_count():
        row = int(stamps.is_null().arg_max() or 0)
        raise ValidationError(f"{path}: row {row + 1}: timestamp {raw['timestamp'][row]!r} is not a date and time")
    values = raw.get_column("value").str.strip_chars().cast(pl.Float64, strict=False)
    bad = values.is_null() & raw.get_column("value").str.strip_chars().ne("").fill_null(False)
    if bad.any():
        row = int(bad.arg_max() or 0)
        raise ValidationError(f"{path}: row {row + 1}: value {raw['value'][row]!r} is not a number")
    timestamps = stamps.to_physical().to_numpy().astype(np.int64)  # UTC µs (text without an offset is UTC)
    return raw, timestamps, values.fill_null(float("nan")).to_numpy()


def score_series(timestamps: np.ndarray, values: np.ndarray, detector: str, params: dict[str, Any]) -> np.ndarray:
    """Streaming scores of one series by a fresh detector."""
    return make_detector(detector, **params).score((timestamps, values))


@dataclass(frozen=True)
class Scored:
    """One scored file: where from, where to, how many rows, how long it took."""

    source: str
    output: str
    rows: int
    seconds: float


def score_file(
    source: Path, output: Path, detector: str = DEFAULT_DETECTOR, params: dict[str, Any] | None = None
) -> Scored:
    """Write ``output``: the rows of ``source`` with their anomaly scores (same order, text unchanged)."""
    started = time.perf_counter()
    raw, timestamps, values = read_series_csv(source)
    scores = score_series(timestamps, values, detector, params or {})
    output.parent.mkdir(parents=True, exist_ok=True)
    frame = raw.select("timestamp", "value").with_columns(pl.Series(SCORE_COLUMN, np.round(scores, 6)))
    temporary = output.with_name(f".{output.name}.partial")
    frame.write_csv(temporary)
    os.replace(temporary, output)
    return Scored(str(source), str(output), len(scores), time.perf_counter() - started)


def _score_job(job: tuple[Path, Path, str, dict[str, Any]]) -> Scored:
    return score_file(*job)


def csv_files(folder: Path) -> list[Path]:
    """Every ``.csv`` below ``folder``, in path order."""
    return sorted(path for path in folder.rglob("*.csv") if path.is_file())


def score_path(
    source: Path,
    output: Path,
    detector: str = DEFAULT_DETECTOR,
    *,
    params: dict[str, Any] | None = None,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[Scored]:
    """Score one CSV into ``output``, or every CSV below a folder into the same relative paths under ``output``.

    Args:
        source: a ``timestamp,value`` CSV or a folder of them.
        output: the output CSV, or the output folder.
        detector: a detector name (:data:`models.detectors.DETECTORS`).
        params: the detector's parameters.
        workers: processes for a folder (default: one per core).
        progress: called with (files done, files in all).
    """
    make_detector(detector, **(params or {}))  # refuse a bad name or parameter before any work
    if source.is_file():
        done = [score_file(source, output, detector, params)]
        if progress is not None:
            progress(1, 1)
        return done
    if not source.is_dir():
        raise ValidationError(f"--input: {source} is neither a file nor a folder")
    files = csv_files(source)
    if not files:
        raise ValidationError(f"--input: no .csv files below {source}")
    if output.exists() and not output.is_dir():
        raise ValidationError(f"--output: {output} is a file; a folder input needs an output folder")
    jobs = [(path, output / path.relative_to(source), detector, params or {}) for path in files]
    return parallel_map(_score_job, jobs, workers, progress, cost=_file_size)


def _file_size(job: tuple[Any, ...]) -> float:
    """A file job's cost estimate: its size (rows cost alike)."""
    return float(job[0].stat().st_size)


def load_windows(path: Path) -> dict[str, list[tuple[str, str]]]:
    """A NAB ``windows.json``: relative file name → list of [start, end] timestamps (inclusive)."""
    try:
        document = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValidationError(f"--windows: {path}: {exc}") from None
    if not isinstance(document, dict) or not all(isinstance(v, list) for v in document.values()):
        raise ValidationError(f"--windows: {path}: expected an object of file name -> list of [start, end]")
    return {name: [(str(pair[0]), str(pair[1])) for pair in pairs] for name, pairs in document.items()}


def _labelled_job(job: tuple[Path, str, list[tuple[str, str]], str, dict[str, Any]]) -> LabelledFile:
    path, name, windows, detector, params = job
    _, timestamps, values = read_series_csv(path)
    scores = score_series(timestamps, values, detector, params)
    bounds = [(np.datetime64(start.replace(" ", "T")), np.datetime64(end.replace(" ", "T"))) for start, end in windows]
    rows = window_rows(timestamps.astype("datetime64[us]"), bounds)
    return LabelledFile(name, scores, rows)


@dataclass(frozen=True)
class NabReport:
    """A detector's three profile results on a corpus, and how long scoring it took."""

    detector: str
    files: int
    rows: int
    seconds: float
    results: dict[str, ProfileResult]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: the normalised score and threshold per profile."""
        return {
            "detector": self.detector,
            "files": self.files,
            "rows": self.rows,
            "seconds": round(self.seconds, 2),
            **{name: round(result.normalised, 2) for name, result in self.results.items()},
            "thresholds": {name: round(result.threshold, 6) for name, result in self.results.items()},
        }


def evaluate_nab(
    data: Path,
    windows_file: Path,
    detector: str = DEFAULT_DETECTOR,
    *,
    params: dict[str, Any] | None = None,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> NabReport:
    """Score every file ``windows.json`` names (relative to ``data``) and compute the NAB profile scores."""
    make_detector(detector, **(params or {}))
    windows = load_windows(windows_file)
    missing = [name for name in windows if not (data / name).is_file()]
    if missing:
        raise ValidationError(f"--data: {data / missing[0]} does not exist (named in {windows_file})")
    jobs = [(data / name, name, pairs, detector, params or {}) for name, pairs in sorted(windows.items())]
    started = time.perf_counter()
    files = parallel_map(_labelled_job, jobs, workers, progress, cost=_file_size)
    seconds = time.perf_counter() - started
    results = {profile.name: evaluate(files, profile) for profile in PROFILES}
    return NabReport(detector, len(files), sum(len(f.scores) for f in files), seconds, results)
