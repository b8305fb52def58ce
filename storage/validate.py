"""Great Expectations quality gate for a compaction batch: split it into good rows and quarantined rows.

A compaction batch is a polars frame with exactly the sample columns ``metric``,
``series_id``, ``ts``, ``value``, ``type`` and ``tags``. :func:`validate_batch`
runs one Great Expectations (GX 1.x) suite over it, on an ephemeral context with
a pandas data source and a whole-dataframe batch definition, using
``result_format="COMPLETE"`` so every failing row index comes back:

=================================================  ==========================================
expectation                                        reason written to a quarantined row
=================================================  ==========================================
ExpectTableColumnsToMatchSet (exact, the six)      (never per row: see "schema" below)
ExpectColumnValuesToNotBeNull, one per column      ``<column> is null``
ExpectColumnValuesToBeBetween ``value`` 0..100,    ``value out of range 0-100 for percent
  row_condition: ``metric`` is a percent metric      metric``
ExpectColumnValuesToBeBetween ``ts`` <= limit      ``ts more than <n> s in the future``
ExpectColumnValuesToBeInSet ``type``               ``unknown type (allowed: ...)``
ExpectCompoundColumnsToBeUnique (series_id, ts)    ``duplicate (series_id, ts); an earlier
                                                     row was kept``
=================================================  ==========================================

A row failing several expectations gets every reason, joined with ``"; "``.

Decisions worth knowing:

* Schema: a frame whose columns are not exactly the six names (or whose dtypes
  are not the sample dtypes) raises :class:`~metrics.errors.ValidationError`
  naming the missing/extra columns (or wrong dtypes) *before* GX runs. Rows of
  a malformed frame cannot be judged one by one and could not be quarantined
  under the sample schema, so the whole batch is refused instead of being
  reported as all-bad. The GX schema expectation stays in the suite so the
  report documents the full contract; on a frame that got that far it passes.
* Percent metrics are metrics whose name ends in ``percent``, ``_pct`` or
  ``.pct``. GX conditions have no "ends with" operator, so the distinct metric
  names of the batch that end that way are computed with polars and the range
  expectation gets the (non-deprecated) row condition
  ``Column("metric").is_in(<those names>)``.
* Duplicates: GX reports *every* row of a duplicated (series_id, ts) pair. The
  row that is kept is the first occurrence (in input order, via polars
  ``is_first_distinct``) among the reported rows that pass every other
  expectation; the later ones are quarantined as duplicates. So when the first
  copy is bad for another reason (say a null value) the next valid copy is
  kept rather than losing the sample. Rows already bad for another reason do
  not also get the duplicate reason.
* NaN is not null: pandas cannot tell NaN from null in a float64 column, so
  GX's not-null check on ``value`` counts NaN too; rows whose value is NaN
  (not null) in the polars frame are not quarantined for it (NaN is a legal
  summary value; the model's NaN policy is enforced at ingest). GX's range
  check skips NaN as missing, so a NaN percent value is not out of range
  either. The report shows both GX's ``unexpected_count`` and the
  ``quarantined`` count of every expectation.
* Fail closed: if GX raises inside an expectation, or reports more failing
  rows than it returns indices for, :func:`validate_batch` raises
  ValidationError instead of letting unchecked rows through as good.
* Report (JSON-ready): ``success`` (GX's verdict on the suite, so False
  whenever GX saw a duplicate even if only later copies went), row counts
  (``evaluated_rows``, ``good_rows``, ``bad_rows``), ``now``,
  ``newest_allowed_ts``, ``run_seconds``, ``gx_validate_seconds`` and
  ``expectations``: one entry per expectation in suite order with ``name``,
  ``column``, ``success``, ``unexpected_count``, ``quarantined``, ``reason``.
* The frame is handed to GX with numpy ``float64``/``int64`` and tz-aware
  ``datetime64[us, UTC]`` columns because GX's between-check is vectorised
  only for those; strings stay Arrow-backed (pandas 3), categoricals are cast
  to strings first. ``good`` and ``bad`` are cut from the *input* polars
  frame, so they keep its dtypes and row order.
* An empty frame skips GX altogether (and its ~5 s import).
* GX is imported lazily inside :func:`validate_batch`; analytics, progress
  bars and GX logging below ERROR are switched off. Each call builds a fresh
  ephemeral context and deletes its data source afterwards, so the pandas copy
  of the batch does not outlive the call. GX keeps its "current context" in a
  process global, so :func:`validate_batch` serialises calls with a lock.
* Cost: the pandas copy plus GX's work peak at roughly 2.5x the polars frame's
  size on top of it (10 M rows, ~0.8 GB frame: ~+2 GB, freed afterwards); time
  is linear, roughly 1 s per million rows once GX is imported.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from metrics.errors import ValidationError
from metrics.model import METRIC_TYPES, SAMPLE_COLUMNS, TS_DTYPE, to_utc
from storage.lake import ensure_dir, fsync_dir

if TYPE_CHECKING:
    import pandas as pd
    from great_expectations.core import ExpectationSuite, ExpectationSuiteValidationResult

log = logging.getLogger(__name__)

SUITE_NAME = "compaction_batch"
REASON_COLUMN = "reason"
PERCENT_SUFFIXES = ("percent", "_pct", ".pct")
DUPLICATE_KEY = ("series_id", "ts")

_STRING_LIKE = (pl.String, pl.Categorical, pl.Enum)
_EXPECTED_DTYPES: dict[str, tuple[Any, ...]] = {
    "metric": _STRING_LIKE,
    "series_id": (pl.Int64,),
    "ts": (TS_DTYPE,),
    "value": (pl.Float64,),
    "type": _STRING_LIKE,
    "tags": (pl.String,),
}

# Keys stored in each expectation's ``meta`` so results can be matched back.
_META_KEY = "storage.validate"
_SCHEMA = "schema"
_DUPLICATE = "duplicate"
_VALUE_NULL = "null:value"
_DATASOURCE = "compaction"
# COMPLETE is the result format that returns every failing row index (``unexpected_index_list``).
_RESULT_FORMAT = {"result_format": "COMPLETE", "partial_unexpected_count": 20}


@dataclass
class ValidationOutcome:
    """The result of :func:`validate_batch`: good rows, quarantined rows and a JSON-ready report."""

    good: pl.DataFrame
    bad: pl.DataFrame
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def failed_rows(self) -> int:
        """How many rows were quarantined."""
        return self.bad.height


@dataclass(frozen=True)
class _Check:
    """One expectation of the suite, as this module knows it."""

    key: str
    reason: str
    column: str | None


def validate_batch(frame: pl.DataFrame, *, now: datetime, max_future_seconds: int = 600) -> ValidationOutcome:
    """Run the GX suite on ``frame``; return its good rows, its bad rows (with ``reason``) and a report.

    Calls are serialised: GX keeps its current context in a process-wide global.
    """
    with _GX_LOCK:
        return _validate_batch(frame, now=now, max_future_seconds=max_future_seconds)


_GX_LOCK = threading.Lock()


def _validate_batch(frame: pl.DataFrame, *, now: datetime, max_future_seconds: int) -> ValidationOutcome:
    started = time.perf_counter()
    if max_future_seconds < 0:
        raise ValueError(f"max_future_seconds must be >= 0, not {max_future_seconds}")
    check_schema(frame)
    now_utc = to_utc(now)
    newest = now_utc + timedelta(seconds=max_future_seconds)
    report: dict[str, Any] = {
        "suite": SUITE_NAME,
        "success": True,
        "evaluated_rows": frame.height,
        "good_rows": frame.height,
        "bad_rows": 0,
        "now": now_utc.isoformat(),
        "max_future_seconds": max_future_seconds,
        "newest_allowed_ts": newest.isoformat(),
        "expectations": [],
    }
    if frame.height == 0:
        report["skipped"] = "empty batch"
        report["run_seconds"] = round(time.perf_counter() - started, 6)
        return ValidationOutcome(good=frame, bad=_no_bad_rows(frame), report=report)

    percent_metrics = _percent_metric_names(frame)
    checks = _checks(max_future_seconds)
    result, gx_version, gx_seconds = _run_gx(frame, checks, newest=newest, percent_metrics=percent_metrics)

    masks, entries = _collect(result, checks, frame.height)
    _drop_nan_from_null_value(masks, frame)
    _keep_first_duplicate(masks, frame)

    reasons = [(check, masks[check.key]) for check in checks if check.key in masks]
    bad_mask = np.zeros(frame.height, dtype=bool)
    for _, mask in reasons:
        bad_mask |= mask
    for entry in entries:
        entry["quarantined"] = int(masks[entry["key"]].sum()) if entry["key"] in masks else 0

    if bad_mask.any():
        bad_series = pl.Series("_bad", bad_mask)
        good = frame.filter(~bad_series)
        bad = _bad_rows(frame, bad_mask, reasons)
    else:
        good, bad = frame, _no_bad_rows(frame)

    log.debug("validated %d rows: %d good, %d quarantined", frame.height, good.height, bad.height)
    report.update(
        success=bool(result.success),
        good_rows=good.height,
        bad_rows=bad.height,
        percent_metrics=len(percent_metrics),
        great_expectations_version=gx_version,
        gx_validate_seconds=round(gx_seconds, 6),
        run_seconds=round(time.perf_counter() - started, 6),
        expectations=entries,
    )
    return ValidationOutcome(good=good, bad=bad, report=report)


def check_schema(frame: pl.DataFrame) -> None:
    """Raise ValidationError unless ``frame`` has exactly the six sample columns with the sample dtypes."""
    missing = [c for c in SAMPLE_COLUMNS if c not in frame.columns]
    extra = [c for c in frame.columns if c not in SAMPLE_COLUMNS]
    if missing or extra:
        raise ValidationError(
            f"batch columns do not match the sample schema: missing {missing}, extra {extra}"
            f" (expected exactly {list(SAMPLE_COLUMNS)})"
        )
    wrong = [
        f"{name}: {dtype}"
        for name, dtype in frame.schema.items()
        if not any(dtype == allowed for allowed in _EXPECTED_DTYPES[name])
    ]
    if wrong:
        raise ValidationError(f"batch columns have the wrong dtypes: {', '.join(wrong)}")


def quarantine(outcome: ValidationOutcome, folder: Path, *, batch_name: str) -> Path | None:
    """Write the bad rows to ``<folder>/<batch_name>.parquet`` and the report next to it; None if none are bad."""
    if outcome.failed_rows == 0:
        return None
    if not batch_name or Path(batch_name).name != batch_name or batch_name in {".", ".."}:
        raise ValueError(f"batch_name must be a plain file name, not {batch_name!r}")
    folder.mkdir(parents=True, exist_ok=True)
    parquet_path = folder / f"{batch_name}.parquet"
    report_path = folder / f"{batch_name}.json"
    _write_atomically(parquet_path, lambda tmp: outcome.bad.write_parquet(tmp))
    text = json.dumps(outcome.report, indent=2, sort_keys=True)
    _write_atomically(report_path, lambda tmp: tmp.write_text(text + "\n", encoding="utf-8"))
    return parquet_path


# --------------------------------------------------------------------------- internals


def _checks(max_future_seconds: int) -> list[_Check]:
    """The suite's expectations, in report order."""
    allowed = ", ".join(METRIC_TYPES)
    return [
        _Check(_SCHEMA, "columns do not match the sample schema", None),
        *(_Check(f"null:{c}", f"{c} is null", c) for c in SAMPLE_COLUMNS),
        _Check("percent_range", "value out of range 0-100 for percent metric", "value"),
        _Check("future_ts", f"ts more than {max_future_seconds} s in the future", "ts"),
        _Check("type_set", f"unknown type (allowed: {allowed})", "type"),
        _Check(_DUPLICATE, "duplicate (series_id, ts); an earlier row was kept", None),
    ]


def _percent_metric_names(frame: pl.DataFrame) -> list[str]:
    """The distinct percent-metric names in the batch, sorted."""
    metric = pl.col("metric")
    names = frame.lazy().select(metric.cast(pl.String).drop_nulls().unique())
    suffix_match = pl.any_horizontal(*(metric.str.ends_with(s) for s in PERCENT_SUFFIXES))
    return sorted(names.filter(suffix_match).collect().get_column("metric").to_list())


def _to_pandas(frame: pl.DataFrame) -> pd.DataFrame:
    """The batch as pandas for GX: categoricals as strings, numpy numbers, tz-aware datetimes, RangeIndex."""
    cast = [pl.col(n).cast(pl.String) for n, d in frame.schema.items() if isinstance(d, (pl.Categorical, pl.Enum))]
    return (frame.with_columns(cast) if cast else frame).to_pandas()


def _import_gx() -> ModuleType:
    """Import GX (slow: ~5 s the first time) with analytics off and its loggers quiet."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        # GX 1.24 imports the deprecated ``sre_constants`` module; keep ``-W error`` runs working.
        warnings.simplefilter("ignore", DeprecationWarning)
        import great_expectations

    return great_expectations


def _build_suite(checks: Sequence[_Check], *, newest: datetime, percent_metrics: list[str]) -> ExpectationSuite:
    """The GX expectation suite for one batch (its limits depend on ``now`` and the batch's metric names)."""
    import great_expectations as gx
    import great_expectations.expectations as gxe
    from great_expectations.expectations.row_conditions import Column

    suite = gx.ExpectationSuite(name=SUITE_NAME)
    for check in checks:
        meta = {_META_KEY: check.key}
        expectation: gxe.Expectation
        if check.key == _SCHEMA:
            expectation = gxe.ExpectTableColumnsToMatchSet(column_set=list(SAMPLE_COLUMNS), exact_match=True, meta=meta)
        elif check.key.startswith("null:") and check.column is not None:
            expectation = gxe.ExpectColumnValuesToNotBeNull(column=check.column, meta=meta)
        elif check.key == "percent_range":
            expectation = gxe.ExpectColumnValuesToBeBetween(
                column="value",
                min_value=0,
                max_value=100,
                row_condition=Column("metric").is_in(percent_metrics),
                meta=meta,
            )
        elif check.key == "future_ts":
            expectation = gxe.ExpectColumnValuesToBeBetween(column="ts", max_value=newest, meta=meta)
        elif check.key == "type_set":
            expectation = gxe.ExpectColumnValuesToBeInSet(column="type", value_set=list(METRIC_TYPES), meta=meta)
        elif check.key == _DUPLICATE:
            expectation = gxe.ExpectCompoundColumnsToBeUnique(column_list=list(DUPLICATE_KEY), meta=meta)
        else:  # pragma: no cover - _checks and this function are kept in step
            raise AssertionError(check.key)
        suite.add_expectation(expectation)
    return suite


def _run_gx(
    frame: pl.DataFrame, checks: Sequence[_Check], *, newest: datetime, percent_metrics: list[str]
) -> tuple[ExpectationSuiteValidationResult, str, float]:
    """Validate ``frame`` with a fresh ephemeral GX context; return the result, GX version and validation seconds."""
    gx = _import_gx()
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
    )
    context = gx.get_context(mode="ephemeral", project_config=config)
    datasource = context.data_sources.add_pandas(name=_DATASOURCE)
    try:
        asset = datasource.add_dataframe_asset(name="batch")
        batch_definition = asset.add_batch_definition_whole_dataframe(name="whole_batch")
        suite = _build_suite(checks, newest=newest, percent_metrics=percent_metrics)
        started = time.perf_counter()
        batch = batch_definition.get_batch(batch_parameters={"dataframe": _to_pandas(frame)})
        result = batch.validate(suite, result_format=_RESULT_FORMAT)
        return result, str(gx.__version__), time.perf_counter() - started
    finally:
        # GX keeps the last context in a process global and the data source caches the batch:
        # drop it, or the pandas copy of the batch would stay alive until the next call.
        context.data_sources.delete(_DATASOURCE)


def _collect(
    result: ExpectationSuiteValidationResult, checks: Sequence[_Check], height: int
) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    """Per-check boolean row masks (failed checks only) and the report entries, in suite order."""
    by_key = {check.key: check for check in checks}
    order = {check.key: i for i, check in enumerate(checks)}
    masks: dict[str, np.ndarray] = {}
    entries: list[dict[str, Any]] = []
    for item in result.results:
        config = item.expectation_config
        key = str((config.meta or {}).get(_META_KEY)) if config is not None else "?"
        check = by_key.get(key)
        if config is None or check is None:
            raise ValidationError(f"unexpected result from Great Expectations: {item}")
        exception = item.exception_info or {}
        if exception.get("raised_exception"):
            raise ValidationError(
                f"expectation {config.type} ({check.reason}) could not be evaluated: "
                f"{exception.get('exception_message')}"
            )
        details = item.result or {}
        entry: dict[str, Any] = {
            "key": key,
            "name": config.type,
            "column": check.column,
            "reason": check.reason,
            "success": bool(item.success),
            "unexpected_count": int(details.get("unexpected_count") or 0),
        }
        if key == _SCHEMA:
            entry["observed_columns"] = [str(c) for c in details.get("observed_value") or []]
            if not item.success:  # check_schema ran first, so only a conversion bug gets here
                raise ValidationError(f"batch columns do not match the sample schema: {entry['observed_columns']}")
        elif not item.success:
            indices = np.asarray(details.get("unexpected_index_list") or [], dtype=np.int64)
            if indices.size != entry["unexpected_count"]:
                # Never let rows through unchecked because GX did not name them all.
                raise ValidationError(
                    f"expectation {config.type} ({check.reason}) reported {entry['unexpected_count']}"
                    f" failing rows but returned {indices.size} row indices"
                )
            mask = np.zeros(height, dtype=bool)
            mask[indices] = True
            masks[key] = mask
        entries.append(entry)
    entries.sort(key=lambda e: order[e["key"]])
    return masks, entries


def _drop_nan_from_null_value(masks: dict[str, np.ndarray], frame: pl.DataFrame) -> None:
    """Un-flag rows GX called null in ``value`` that are NaN, not null, in the polars frame."""
    mask = masks.get(_VALUE_NULL)
    if mask is not None:
        masks[_VALUE_NULL] = mask & frame.get_column("value").is_null().to_numpy()


def _keep_first_duplicate(masks: dict[str, np.ndarray], frame: pl.DataFrame) -> None:
    """Narrow GX's duplicate rows to those that must go: all but the first otherwise-valid row of each key."""
    duplicated = masks.get(_DUPLICATE)
    if duplicated is None:
        return
    other_bad = np.zeros(frame.height, dtype=bool)
    for key, mask in masks.items():
        if key != _DUPLICATE:
            other_bad |= mask
    candidates = np.flatnonzero(duplicated & ~other_bad)
    later = np.zeros(frame.height, dtype=bool)
    if candidates.size:
        keys = frame.select(DUPLICATE_KEY)[candidates]
        first = keys.select(pl.struct(DUPLICATE_KEY).is_first_distinct()).to_series().to_numpy()
        later[candidates[~first]] = True
    masks[_DUPLICATE] = later


def _bad_rows(frame: pl.DataFrame, bad_mask: np.ndarray, reasons: list[tuple[_Check, np.ndarray]]) -> pl.DataFrame:
    """The failing rows of ``frame`` plus a ``reason`` column naming every failed expectation."""
    positions = np.flatnonzero(bad_mask)
    flags = pl.DataFrame({f"_f{i}": mask[positions] for i, (_, mask) in enumerate(reasons)})
    reason = pl.concat_str(
        [pl.when(pl.col(f"_f{i}")).then(pl.lit(check.reason)) for i, (check, _) in enumerate(reasons)],
        separator="; ",
        ignore_nulls=True,
    )
    return frame[positions].with_columns(flags.select(reason.alias(REASON_COLUMN)).to_series())


def _no_bad_rows(frame: pl.DataFrame) -> pl.DataFrame:
    """An empty ``bad`` frame: the columns of ``frame`` plus a String ``reason``."""
    return frame.head(0).with_columns(pl.lit(None, dtype=pl.String).alias(REASON_COLUMN))


def _write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp_path)``, fsync, and move the file into place durably (readers never see half a file).

    Quarantined rows are deleted from the lake right after, so they must be on disk first.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        ensure_dir(path.parent)
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)
