"""Reading the input files of ``metrics ingest``.

The format is told by the file extension; the text formats may also be gzip
compressed (``.csv.gz``, ``.ndjson.gz``, ``.jsonl.gz``, ``.json.gz``):

``.csv``
    A header row with ``metric``, ``timestamp``, ``value`` and an optional
    ``type``; every other column is a tag. All cells are read as text, so a
    tag such as ``01`` keeps its leading zero. An empty cell (quoted or not)
    means "not given": no tag, a missing value, or the default type
    ``gauge``. Timestamps are ISO 8601 (an offset or ``Z`` is honoured, a
    naive time is UTC) or epoch seconds / milliseconds / microseconds /
    nanoseconds, told apart by magnitude. A value that is not a number
    (after trimming spaces) rejects its row, it does not abort the file.
    Blank lines are skipped.
``.parquet`` / ``.pq``
    The same columns with the types as stored (a timestamp column may be a
    datetime, an epoch number or text).
``.ndjson`` / ``.jsonl``
    One JSON object per line, shaped like one element of the spec's batch:
    ``{"metric_id", "timestamp", "value", "metric_type", "tags"}``. A line
    that is not valid JSON is rejected (``invalid JSON: ...``) and the other
    lines are still read. Blank lines are skipped.
``.json``
    The spec's batch ``{"metrics": [{...}, ...]}``, or a bare list of such
    objects. The whole document is parsed at once; validation is chunked.

A ``.gz`` file must really be gzip data. Timestamps (ISO 8601 with or
without offset, epoch seconds/milliseconds) are parsed by
:func:`metrics.model.parse_timestamp_column`; an unparseable or out-of-range
one rejects its row instead of failing the file.

Rejection indices (:class:`metrics.model.Rejection.index`) are 0-based and
count over the whole file, whatever the chunking:

* CSV and Parquet: the data row (the first row after the CSV header is 0).
  Blank CSV lines are skipped but still counted, so for a CSV without quoted
  line breaks ``index + 2`` is the line number in the file.
* NDJSON: the line index, i.e. ``index + 1`` is the line number (blank lines
  are skipped but counted); the ``invalid JSON`` reason also names the line.
* JSON: the position in the ``metrics`` list.

Every problem with a file as a whole (unknown extension, missing or
unreadable file, missing columns, a CSV that cannot be parsed) raises
:class:`metrics.errors.ValidationError` whose message starts with the file
name. Such problems found before any data is read (extension, existence,
CSV header, Parquet schema, JSON syntax) are raised by :func:`read_file`
itself; damage further into a CSV or Parquet file is raised while iterating.
"""

from __future__ import annotations

import gzip
import io
import json
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from metrics.errors import ValidationError
from metrics.model import (
    MetricDataPoint,
    Rejection,
    SampleBatch,
    prepare_frame,
    prepare_points,
)

FORMATS = ("csv", "parquet", "ndjson", "json")
EXTENSIONS: dict[str, str] = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".ndjson": "ndjson",
    ".jsonl": "ndjson",
    ".json": "json",
}
COMPRESSIBLE_FORMATS = frozenset({"csv", "ndjson", "json"})
ACCEPTED_EXTENSIONS = ".csv, .parquet, .pq, .ndjson, .jsonl, .json (.csv, .ndjson, .jsonl and .json also with .gz)"

# Column names normalise_frame (metrics.model) takes as the type.
_TYPE_COLUMNS = ("type", "metric_type")
_ROW = "_row"
_GZIP_MAGIC = b"\x1f\x8b"
_DUPLICATE_RE = re.compile(r"^(?P<name>.*)_duplicated_\d+$")


def detect_format(path: Path) -> str:
    """Return the format of ``path`` by its extension: "csv", "parquet", "ndjson" or "json"."""
    name = Path(path).name.lower()
    compressed = name.endswith(".gz")
    suffix = Path(name[:-3] if compressed else name).suffix
    fmt = EXTENSIONS.get(suffix)
    if fmt is None or (compressed and fmt not in COMPRESSIBLE_FORMATS):
        shown = f"{suffix}.gz" if compressed and suffix else (".gz" if compressed else suffix or "no extension")
        raise ValidationError(f"{path}: unsupported file type {shown!r}; accepted extensions: {ACCEPTED_EXTENSIONS}")
    return fmt


def count_rows_hint(path: Path) -> int | None:
    """Cheap row count for a progress bar: exact for Parquet (metadata), None for other formats or on error."""
    try:
        if detect_format(path) != "parquet":
            return None
        return int(pq.read_metadata(path).num_rows)
    except (ValidationError, OSError, pa.ArrowException):  # a hint must never fail the caller
        return None


def read_file(
    path: Path,
    *,
    now: datetime,
    retention_days: int,
    max_future_seconds: int = 600,
    chunk_rows: int = 1_000_000,
) -> Iterator[SampleBatch]:
    """Read and validate one input file, yielding sample batches of at most ``chunk_rows`` input rows each."""
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
    path = Path(path)
    fmt = check_file(path)
    limits = _Limits(now=now, retention_days=retention_days, max_future_seconds=max_future_seconds)
    with _reading(path):
        if fmt == "csv":
            batches = _csv_batches(path, limits, chunk_rows)
        elif fmt == "parquet":
            batches = _parquet_batches(path, limits, chunk_rows)
        elif fmt == "ndjson":
            batches = _ndjson_batches(path, limits, chunk_rows)
        else:
            batches = _json_batches(path, limits, chunk_rows)
    return _guarded(path, batches)


@dataclass(frozen=True)
class _Limits:
    """The validation settings, applied to each chunk."""

    now: datetime
    retention_days: int
    max_future_seconds: int

    def frame(self, frame: pl.DataFrame) -> SampleBatch:
        """Validate a user frame that carries its global ``_row`` indices."""
        return prepare_frame(
            frame, now=self.now, retention_days=self.retention_days, max_future_seconds=self.max_future_seconds
        )

    def points(self, items: Sequence[tuple[int, Any]], rejected: Sequence[Rejection] = ()) -> SampleBatch:
        """Validate decoded JSON objects, each given with its global index, plus earlier rejections."""
        points: list[MetricDataPoint] = []
        where: list[int] = []
        refused = list(rejected)
        for index, item in items:
            try:
                point = MetricDataPoint.from_dict(item)
            except ValidationError as exc:
                refused.append(Rejection(index, str(exc)))
                continue
            points.append(point)
            where.append(index)
        batch = prepare_points(
            points, now=self.now, retention_days=self.retention_days, max_future_seconds=self.max_future_seconds
        )
        refused.extend(Rejection(where[r.index], r.reason) for r in batch.rejected)
        batch.rejected = sorted(refused, key=lambda r: r.index)
        return batch


# --- errors -----------------------------------------------------------------


def check_file(path: Path) -> str:
    """Raise ValidationError naming ``path`` when it is missing, unreadable or of unknown format; return the format."""
    fmt = detect_format(path)
    if not path.exists():
        raise ValidationError(f"{path}: no such file")
    if not path.is_file():
        raise ValidationError(f"{path}: not a regular file")
    try:
        with path.open("rb") as stream:
            magic = stream.read(2)
    except OSError as exc:
        raise ValidationError(f"{path}: cannot read file: {exc.strerror or exc}") from exc
    if path.name.lower().endswith(".gz") and magic and magic != _GZIP_MAGIC:
        raise ValidationError(f"{path}: cannot read file: not gzip compressed")
    return fmt


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Turn any error met while reading ``path`` into a ValidationError whose message starts with the file name."""
    try:
        yield
    except ValidationError as exc:
        message = str(exc)
        if message.startswith(f"{path}:"):
            raise
        raise ValidationError(f"{path}: {message}") from exc
    except (OSError, EOFError, ValueError, pl.exceptions.PolarsError, pa.ArrowException) as exc:
        raise ValidationError(f"{path}: cannot read file: {exc}") from exc


def _guarded(path: Path, batches: Iterator[SampleBatch]) -> Iterator[SampleBatch]:
    """Yield from ``batches``, translating reading errors as :func:`_reading` does."""
    with _reading(path):
        yield from batches


def _open_binary(path: Path) -> gzip.GzipFile | io.BufferedReader:
    """Open a file for reading bytes, decompressing ``.gz`` on the fly."""
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rb")
    return path.open("rb")


# --- CSV and Parquet --------------------------------------------------------


def _check_columns(columns: Sequence[str]) -> None:
    """Refuse the reserved ``_row`` column and (polars-renamed) duplicate CSV headers."""
    if _ROW in columns:
        raise ValidationError(f"column {_ROW!r} is reserved")
    for column in columns:
        match = _DUPLICATE_RE.match(column)
        if match and match.group("name") in columns:
            raise ValidationError(f"duplicate column {match.group('name')!r}")


def _csv_batches(path: Path, limits: _Limits, chunk_rows: int) -> Iterator[SampleBatch]:
    """Check the CSV header now; return the batches of the data rows."""
    scan = pl.scan_csv(path, infer_schema=False)
    try:
        schema = scan.collect_schema()
    except pl.exceptions.NoDataError:
        raise ValidationError("empty CSV file (no header row)") from None
    _check_columns(schema.names())
    limits.frame(_tidy_frame(pl.DataFrame(schema=schema), 0, text=True))  # missing/ambiguous columns
    return _frame_batches(scan.collect_batches(chunk_size=chunk_rows), limits, chunk_rows, text=True)


def _parquet_batches(path: Path, limits: _Limits, chunk_rows: int) -> Iterator[SampleBatch]:
    """Check the Parquet schema now; return the batches of its rows."""
    schema = pq.read_schema(path)
    _check_columns(schema.names)
    limits.frame(_tidy_frame(_from_arrow(schema.empty_table()), 0, text=False))
    return _frame_batches(_parquet_frames(path, chunk_rows), limits, chunk_rows, text=False)


def _parquet_frames(path: Path, chunk_rows: int) -> Iterator[pl.DataFrame]:
    """The rows of a Parquet file as polars frames of at most ``chunk_rows`` rows."""
    with pq.ParquetFile(path) as parquet:
        for record_batch in parquet.iter_batches(batch_size=chunk_rows):
            yield _from_arrow(record_batch)


def _from_arrow(data: pa.Table | pa.RecordBatch) -> pl.DataFrame:
    """An Arrow table or record batch as a polars frame."""
    frame = pl.from_arrow(data)
    if not isinstance(frame, pl.DataFrame):  # pragma: no cover - a table always gives a frame
        raise ValidationError("expected a table of samples")
    return frame


def _frame_batches(
    frames: Iterator[pl.DataFrame], limits: _Limits, chunk_rows: int, *, text: bool
) -> Iterator[SampleBatch]:
    """Validate frames chunk by chunk, numbering rows across the whole file."""
    offset = 0
    for frame in frames:
        for start in range(0, frame.height, chunk_rows):
            part = frame.slice(start, chunk_rows)
            batch = limits.frame(_tidy_frame(part, offset, text=text))
            offset += part.height
            if batch.stored or batch.rejected:
                yield batch


def _tidy_frame(frame: pl.DataFrame, offset: int, *, text: bool) -> pl.DataFrame:
    """Number the rows from ``offset``; for CSV text drop blank rows and parse values; default the type."""
    data_columns = frame.columns
    frame = frame.with_columns(pl.int_range(offset, offset + pl.len(), dtype=pl.Int64).alias(_ROW))
    if text:
        frame = frame.with_columns(pl.col(data_columns).replace("", None))
        frame = frame.filter(~pl.all_horizontal(pl.col(data_columns).is_null()))
        if "value" in data_columns:
            frame = frame.with_columns(pl.col("value").str.strip_chars().cast(pl.Float64, strict=False))
    for column in _TYPE_COLUMNS:
        if column in data_columns:
            frame = frame.with_columns(pl.col(column).cast(pl.String).str.strip_chars().fill_null("gauge"))
    return frame


# --- NDJSON and JSON --------------------------------------------------------


def _ndjson_batches(path: Path, limits: _Limits, chunk_rows: int) -> Iterator[SampleBatch]:
    """Validate an NDJSON file line by line, ``chunk_rows`` non-blank lines per batch."""
    with _open_binary(path) as stream:
        items: list[tuple[int, Any]] = []
        broken: list[Rejection] = []
        for line_index, line in enumerate(stream):
            if not line.strip():
                continue
            try:
                items.append((line_index, json.loads(line.rstrip())))
            except ValueError as exc:
                broken.append(Rejection(line_index, _json_reason(exc, line_index + 1)))
            if len(items) + len(broken) >= chunk_rows:
                yield limits.points(items, broken)
                items, broken = [], []
        if items or broken:
            yield limits.points(items, broken)


def _json_reason(exc: ValueError, line_number: int) -> str:
    """The rejection reason of an NDJSON line that is not valid JSON."""
    if isinstance(exc, json.JSONDecodeError):
        return f"invalid JSON: {exc.msg} (line {line_number}, column {exc.colno})"
    return f"invalid JSON: {exc} (line {line_number})"


def _json_batches(path: Path, limits: _Limits, chunk_rows: int) -> Iterator[SampleBatch]:
    """Parse a JSON batch file now; return its points in batches of ``chunk_rows``."""
    with _open_binary(path) as stream:
        try:
            document = json.load(stream)
        except json.JSONDecodeError as exc:
            raise ValidationError(f"invalid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
        except UnicodeDecodeError as exc:
            raise ValidationError(f"invalid JSON: not UTF-8 text ({exc.reason})") from None
    if isinstance(document, dict):
        if "metrics" not in document:
            raise ValidationError('expected {"metrics": [...]} or a list of points; no "metrics" key')
        document = document["metrics"]
        if not isinstance(document, list):
            raise ValidationError(f'"metrics" must be a list, got {type(document).__name__}')
    elif not isinstance(document, list):
        raise ValidationError(f'expected {{"metrics": [...]}} or a list of points, got {type(document).__name__}')
    return _list_batches(document, limits, chunk_rows)


def _list_batches(items: list[Any], limits: _Limits, chunk_rows: int) -> Iterator[SampleBatch]:
    """Validate a list of points ``chunk_rows`` at a time, indexed by list position."""
    for start in range(0, len(items), chunk_rows):
        yield limits.points(list(enumerate(items[start : start + chunk_rows], start)))
