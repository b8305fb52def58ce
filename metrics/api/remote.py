"""Prometheus remote-write 1.0: a snappy-compressed ``prometheus.WriteRequest`` turned into a validated sample batch.

Mapping: the ``__name__`` label is the metric (a series without one fails the
whole request); every other label is a tag (empty values dropped, as
Prometheus treats them as absent). A sample's ``timestamp`` (ms) becomes
``ts``. The metric type comes from the metadata Prometheus sends (remembered
per metric family for later requests; ``_total``, ``_count``, ``_sum``,
``_bucket`` series find their family by the suffix), else from the name:
``_total`` is a counter, ``_bucket`` with an ``le`` label a histogram, a
series with a ``quantile`` label a summary, anything else a gauge.

Values: staleness markers (the NaN with bits 0x7ff0000000000002) are dropped
and counted, never stored; other NaNs and infinities follow the model's value
policy (NaN only for summaries), their rows refused with a reason, like rows
outside the time window. Refused rows are reported by their index among the
request's samples (series by series, in request order).

Speed: Prometheus sends the same series again and again, so per-series work
(labels to metric, canonical tags, ``series_id``, checks) runs once per
process and is cached by the label bytes of the series. upb splits a request
into raw series; the usual series shape (labels then samples, as Prometheus
writes it) is read by hand and all samples are decoded with numpy in one go;
anything else (exemplars, native histograms, other field orders, malformed
input) goes through the generated classes, which also word the error.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import cramjam
import numpy as np
import polars as pl
from google.protobuf.message import DecodeError
from google.protobuf.unknown_fields import UnknownFieldSet

from metrics.api import remote_pb2 as pb
from metrics.errors import RequestTooLargeError, ValidationError
from metrics.model import (
    SAMPLE_COLUMNS,
    MetricType,
    Rejection,
    SampleBatch,
    canonical_tags,
    check_metric_name,
    check_tags,
    series_id,
)
from metrics.points import empty_batch_frame
from metrics.timestamps import TS_DTYPE, to_utc

STALE_NAN_BITS = 0x7FF0000000000002  # Prometheus' staleness marker: a NaN no sample ever has
NAME_LABEL = "__name__"
SNAPPY_FRAMED_MAGIC = b"\xff\x06\x00\x00sNaPpY"
MAX_CACHED_SERIES = 262_144  # label sets remembered per process; the cache starts over when full
MAX_FAMILIES = 65_536  # metric families whose metadata type is remembered
# Suffixes a series name adds to its family's name (OpenMetrics / classic text exposition).
FAMILY_SUFFIXES = ("_total", "_bucket", "_count", "_sum", "_created", "_info")
METADATA_TYPES: dict[int, str | None] = {
    pb.MetricMetadata.UNKNOWN: None,
    pb.MetricMetadata.COUNTER: MetricType.COUNTER.value,
    pb.MetricMetadata.GAUGE: MetricType.GAUGE.value,
    pb.MetricMetadata.HISTOGRAM: MetricType.HISTOGRAM.value,
    pb.MetricMetadata.GAUGEHISTOGRAM: MetricType.HISTOGRAM.value,
    pb.MetricMetadata.SUMMARY: MetricType.SUMMARY.value,
    pb.MetricMetadata.INFO: MetricType.GAUGE.value,
    pb.MetricMetadata.STATESET: MetricType.GAUGE.value,
}
_SUMMARY = MetricType.SUMMARY.value
_VARINT_BYTES = np.arange(10, dtype=np.int64)
_VARINT_SHIFTS = _VARINT_BYTES.astype(np.uint64) * np.uint64(7)


class _Unusual(Exception):
    """The hand walk met a series shape it does not take; the generated TimeSeries class decodes it instead."""


@dataclass(eq=False, slots=True)
class SeriesInfo:
    """What a label set means in the lake: metric, canonical tags, series id, guessed type, or why it is refused.

    ``row`` is the series' row in the decoder's series table of ``generation``
    (-1: not in the table yet); the decoder sets both under its lock.
    """

    metric: str
    tags: str
    series_id: int
    guessed_type: str
    problem: str | None = None
    row: int = -1
    generation: int = -1


@dataclass
class Decoded:
    """A decoded request: one :class:`SeriesInfo` per time series, its sample count, and all samples in order."""

    series: list[SeriesInfo]
    counts: np.ndarray  # samples per series (int64)
    values: np.ndarray  # float64, series by series
    stamps_ms: np.ndarray  # int64 milliseconds since the epoch
    metadata: list[tuple[str, str | None]] = field(default_factory=list)  # (family, type) as sent

    @property
    def samples(self) -> int:
        """Samples in the request (staleness markers included)."""
        return len(self.values)


@dataclass
class RemoteWriteBatch:
    """A request ready to store: the validated batch plus what was dropped on purpose."""

    batch: SampleBatch
    stale_dropped: int
    samples: int
    series: int


def decompress(body: bytes, max_bytes: int) -> bytes:
    """The snappy *block* format body, uncompressed; refuses empty, framed, oversized and corrupt input."""
    if not body:
        raise ValidationError("body: empty; expected a snappy-compressed prometheus.WriteRequest")
    if body.startswith(SNAPPY_FRAMED_MAGIC):
        raise ValidationError("body: snappy framed (stream) format; remote-write uses the block format")
    try:
        declared = cramjam.snappy.decompress_raw_len(body)
    except cramjam.DecompressionError as exc:
        raise ValidationError(f"body: not snappy block-compressed data ({exc})") from None
    if declared > max_bytes:
        raise RequestTooLargeError(f"body: uncompressed size {declared} bytes is above the limit of {max_bytes}")
    try:
        return bytes(cramjam.snappy.decompress_raw(body))
    except cramjam.DecompressionError as exc:
        raise ValidationError(f"body: not snappy block-compressed data ({exc})") from None


def guess_type(metric: str, tags: dict[str, str]) -> str:
    """The type a series' name and labels suggest when no metadata names it."""
    if metric.endswith("_total"):
        return MetricType.COUNTER.value
    if metric.endswith("_bucket") and "le" in tags:
        return MetricType.HISTOGRAM.value
    if "quantile" in tags:
        return _SUMMARY
    return MetricType.GAUGE.value


def series_info(labels: list[tuple[str, str]], index: int) -> SeriesInfo:
    """The lake identity of one label set (``index`` names the series in errors)."""
    metric: str | None = None
    tags: dict[str, str] = {}
    duplicate: str | None = None
    for name, value in labels:
        if name == NAME_LABEL:
            if metric is not None:
                duplicate = name
            metric = value
        elif name in tags:
            duplicate = name
        elif value:
            tags[name] = value
    if not metric:
        shown = ", ".join(f"{n}={v!r}" for n, v in labels[:6])
        raise ValidationError(f"timeseries[{index}]: no {NAME_LABEL} label (labels: {shown or 'none'})")
    problem = check_metric_name(metric) or check_tags(tags)
    if duplicate is not None:
        problem = problem or f"labels: {duplicate!r} appears more than once"
    text = canonical_tags(tags) if problem is None else ""
    return SeriesInfo(
        metric=metric,
        tags=text,
        series_id=series_id(metric, text) if problem is None else 0,
        guessed_type=guess_type(metric, tags),
        problem=problem,
    )


def _uvarint(buf: bytes, pos: int) -> tuple[int, int]:
    """A protobuf varint at ``pos``: (value, position after it)."""
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise _Unusual("varint longer than 10 bytes")


def _label_pairs(raw: bytes) -> list[tuple[str, str]]:
    """The (name, value) pairs of a series' label fields, parsed with the generated class (validates UTF-8)."""
    pairs: list[tuple[str, str]] = []
    pos, end = 0, len(raw)
    while pos < end:
        length, pos = _uvarint(raw, pos + 1)  # each field is tag 0x0a, a length and a Label
        try:
            label = pb.Label.FromString(raw[pos : pos + length])
        except DecodeError as exc:
            raise _Unusual(str(exc)) from None
        pairs.append((label.name, label.value))
        pos += length
    return pairs


def _decode_samples(samples: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Values and timestamps of Sample messages, vectorised for the usual encoding.

    The usual encoding is ``0x09`` + 8-byte double then ``0x10`` + varint
    timestamp, either omitted when zero; a sample in any other encoding is
    parsed with the generated class.
    """
    buf = b"".join(samples)
    data = np.frombuffer(buf + bytes(32), dtype=np.uint8)  # padded: gathers never run off the end
    lengths = np.fromiter(map(len, samples), dtype=np.int64, count=len(samples))
    end = np.cumsum(lengths)
    start = end - lengths
    has_value = (data[start] == 0x09) & (end > start)
    raw_values = data[(start + 1)[:, None] + _VARINT_BYTES[:8]].copy().view("<f8").ravel()
    values = np.where(has_value, raw_values, 0.0)
    ts_at = start + 9 * has_value
    has_stamp = (ts_at < end) & (data[ts_at] == 0x10)
    window = data[(ts_at + 1)[:, None] + _VARINT_BYTES]
    more = window >= 0x80
    width = np.argmin(more, axis=1) + 1  # bytes in the varint (10 when all ten say "more": malformed)
    parts = (window & 0x7F).astype(np.uint64) << _VARINT_SHIFTS
    parts[_VARINT_BYTES[None, :] >= width[:, None]] = 0
    stamps = np.where(has_stamp, parts.sum(axis=1, dtype=np.uint64).view(np.int64), 0)
    usual = (np.where(has_stamp, ts_at + 1 + width, ts_at) == end) & ~(has_stamp & more.all(axis=1))
    for i in np.flatnonzero(~usual).tolist():
        try:
            sample = pb.Sample.FromString(samples[i])
        except DecodeError as exc:
            raise ValidationError(f"body: sample {i} is not a prometheus.Sample ({exc})") from None
        values[i], stamps[i] = sample.value, sample.timestamp
    return values, stamps


class RemoteWriteDecoder:
    """Decodes remote-write requests; remembers series identities and metadata types (one per app). Thread-safe."""

    def __init__(self, max_series: int = MAX_CACHED_SERIES, max_families: int = MAX_FAMILIES) -> None:
        self.max_series = max_series
        self.max_families = max_families
        self._series: dict[bytes, SeriesInfo] = {}  # label field bytes -> identity
        self._families: dict[str, str] = {}  # metric family -> type, from metadata
        self._type_of_metric: dict[str, str | None] = {}  # memo over _families (cleared when they change)
        # The columns of every cached series, once: a request gathers its rows instead of building strings.
        self._table = _table([], [])
        self._table_infos: list[SeriesInfo] = []  # the table's series, row by row
        self._types_stale = False  # metadata changed: the table's type column is recomputed before use
        self._generation = 0  # bumped when the cache starts over (and the table with it)
        self._lock = threading.Lock()

    # -- decoding --------------------------------------------------------------
    def decode(self, raw: bytes) -> Decoded:
        """The series and samples of an uncompressed ``WriteRequest``; malformed input raises ValidationError.

        upb splits the request into raw time series (:class:`WriteRequestView`);
        each then takes the first way that fits: (1) it ends in one sample in
        the usual encoding (a current timestamp in ms is a 6-byte varint: 18
        bytes with the value, 9 without) and the bytes before are a cached
        label region; (2) a hand walk: labels, then samples; (3) the generated
        TimeSeries class (exemplars, native histograms, other field orders).
        (1) is exact: the cache holds only regions (2) found to be whole label
        fields, and protobuf parses front to back, so the split is the parser's.
        """
        try:
            view = pb.WriteRequestView.FromString(raw)
        except DecodeError as exc:
            raise ValidationError(f"body: not a prometheus.WriteRequest protobuf ({exc})") from None
        unknown = sorted({entry.field_number for entry in UnknownFieldSet(view)})
        if unknown:
            raise ValidationError(
                f"body: not a prometheus.WriteRequest (unknown field numbers {unknown[:5]}); "
                "remote-write 1.0 sends fields 1 (timeseries) and 3 (metadata)"
            )
        series: list[SeriesInfo] = []
        counts: list[int] = []
        samples: list[bytes] = []
        cached = self._series.get
        for timeseries in view.timeseries:
            size = len(timeseries)
            if size > 18 and timeseries[-18] == 0x12 and timeseries[-17] == 16 and timeseries[-16] == 0x09:
                info = cached(timeseries[:-18])
                if info is not None:
                    series.append(info)
                    counts.append(1)
                    samples.append(timeseries[-16:])
                    continue
            elif size > 9 and timeseries[-9] == 0x12 and timeseries[-8] == 7 and timeseries[-7] == 0x10:
                info = cached(timeseries[:-9])
                if info is not None:
                    series.append(info)
                    counts.append(1)
                    samples.append(timeseries[-7:])
                    continue
            info, own = self._walk(timeseries, len(series))
            series.append(info)
            counts.append(len(own))
            samples += own
        if samples:
            values, stamps = _decode_samples(samples)
        else:
            values, stamps = np.empty(0, dtype=np.float64), np.empty(0, dtype=np.int64)
        metadata = [(m.metric_family_name, METADATA_TYPES.get(m.type)) for m in view.metadata]
        return Decoded(series, np.asarray(counts, dtype=np.int64), values, stamps, metadata)

    def _walk(self, timeseries: bytes, index: int) -> tuple[SeriesInfo, list[bytes]]:
        """One raw TimeSeries: its identity (cached by label bytes) and its Sample messages."""
        try:
            pos, end = 0, len(timeseries)
            while pos < end and timeseries[pos] == 0x0A:  # labels
                step = timeseries[pos + 1]
                if step < 0x80:
                    pos += 2 + step
                else:
                    step, pos = _uvarint(timeseries, pos + 1)
                    pos += step
            key = timeseries[:pos]
            own: list[bytes] = []
            while pos < end and timeseries[pos] == 0x12:  # samples
                step = timeseries[pos + 1]
                if step >= 0x80:
                    raise _Unusual("long sample")
                own.append(timeseries[pos + 2 : pos + 2 + step])
                pos += 2 + step
            if pos != end:  # exemplars, native histograms, another field order, a truncated field
                raise _Unusual("other fields")
            info = self._series.get(key)
            if info is None:
                info = self._remember(key, series_info(_label_pairs(key), index))
            return info, own
        except (_Unusual, IndexError):
            return self._general(timeseries, index)

    @staticmethod
    def _general(timeseries: bytes, index: int) -> tuple[SeriesInfo, list[bytes]]:
        """Any valid TimeSeries, through the generated class (not cached: its bytes are not a label region)."""
        try:
            message = pb.TimeSeries.FromString(timeseries)
        except DecodeError as exc:
            raise ValidationError(f"body: timeseries[{index}] is not a prometheus.TimeSeries ({exc})") from None
        info = series_info([(label.name, label.value) for label in message.labels], index)
        return info, [sample.SerializeToString() for sample in message.samples]

    def _remember(self, key: bytes, info: SeriesInfo) -> SeriesInfo:
        with self._lock:
            if len(self._series) >= self.max_series:
                self._series.clear()
                self._table = _table([], [])
                self._table_infos = []
                self._generation += 1
            self._series[key] = info
        return info

    def _rows(self, infos: list[SeriesInfo]) -> tuple[pl.DataFrame, np.ndarray]:
        """The series table and each series' row in it (series new to the table are appended first)."""
        with self._lock:
            generation = self._generation
            fresh = list({id(i): i for i in infos if i.generation != generation}.values())
            if self._types_stale:
                self._types_stale = False
                kinds = self._types(self._table_infos)
                self._table = self._table.with_columns(
                    pl.Series("type", kinds, dtype=pl.Categorical),
                    pl.Series("summary", [k == _SUMMARY for k in kinds], dtype=pl.Boolean),
                )
            if fresh:
                base = self._table.height
                for offset, info in enumerate(fresh):
                    info.row, info.generation = base + offset, generation
                table = pl.concat([self._table, _table(fresh, self._types(fresh))], how="vertical", rechunk=False)
                self._table = table.rechunk() if table.n_chunks() > 16 else table
                self._table_infos += fresh
            rows = np.fromiter((i.row for i in infos), dtype=np.int64, count=len(infos))
            return self._table, rows

    def _types(self, infos: list[SeriesInfo]) -> list[str]:
        return [self.metadata_type(info.metric) or info.guessed_type for info in infos]

    # -- metric types ----------------------------------------------------------
    def learn(self, metadata: list[tuple[str, str | None]]) -> None:
        """Remember the metric family types of a request's metadata (for this and later requests)."""
        changed = False
        with self._lock:
            for family, kind in metadata:
                if kind is None or not family or self._families.get(family) == kind:
                    continue
                if len(self._families) >= self.max_families:
                    self._families.clear()
                self._families[family] = kind
                changed = True
            if changed:
                self._type_of_metric = {}
                self._types_stale = True

    def metadata_type(self, metric: str) -> str | None:
        """The type metadata gave the family of ``metric`` (None when no metadata names it)."""
        memo = self._type_of_metric
        if metric in memo:
            return memo[metric]
        families = self._families
        kind = families.get(metric)
        if kind is None:
            for suffix in FAMILY_SUFFIXES:
                if metric.endswith(suffix) and metric[: -len(suffix)] in families:
                    family_kind = families[metric[: -len(suffix)]]
                    kind = MetricType.GAUGE.value if suffix in ("_created", "_info") else family_kind
                    break
        if len(memo) < self.max_series:
            memo[metric] = kind
        return kind

    # -- the batch ---------------------------------------------------------------
    def prepare(self, raw: bytes, *, now: datetime, retention_days: int, max_future_seconds: int) -> RemoteWriteBatch:
        """Decode, map and validate a request into the rows to store (in lake order) and the rows refused."""
        decoded = self.decode(raw)
        if decoded.metadata:
            self.learn(decoded.metadata)
        return self._batch(decoded, now=now, retention_days=retention_days, max_future_seconds=max_future_seconds)

    def _batch(
        self, decoded: Decoded, *, now: datetime, retention_days: int, max_future_seconds: int
    ) -> RemoteWriteBatch:
        """Row checks of :func:`metrics.model.validate_frame` (same order, same reasons), vectorised."""
        values, stamps_ms = decoded.values, decoded.stamps_ms
        if len(values) == 0:  # metadata-only requests: no polars work
            return RemoteWriteBatch(SampleBatch(frame=empty_batch_frame()), 0, 0, len(decoded.series))
        table, series_rows = self._rows(decoded.series)
        rows = table[pl.Series(np.repeat(series_rows, decoded.counts), dtype=pl.Int64)]  # one table row per sample
        stale = values.view(np.uint64) == np.uint64(STALE_NAN_BITS)
        now_utc = to_utc(now)
        # The model's window is in microseconds: a stamp in ms is late past floor(newest), early before ceil(oldest).
        newest = _epoch_us(now_utc + timedelta(seconds=max_future_seconds)) // 1000
        oldest = -(-_epoch_us(now_utc - timedelta(days=retention_days)) // 1000)
        summary = rows.get_column("summary").to_numpy()
        reasons: list[tuple[np.ndarray, str | None]] = [
            (rows.get_column("problem").is_not_null().to_numpy(), None),  # the series' own reason
            (np.isinf(values), "value: infinite values are not allowed"),
            (np.isnan(values) & ~summary & ~stale, "value: NaN is only allowed for summary metrics"),
            (stamps_ms > newest, f"timestamp: more than {max_future_seconds} s in the future"),
            (stamps_ms < oldest, f"timestamp: older than the retention period ({retention_days} days)"),
        ]
        refused = stale.copy()  # markers are dropped, not refused
        rejected: list[Rejection] = []
        for mask, reason in reasons:
            refuse = np.flatnonzero(mask & ~refused)
            if len(refuse) == 0:
                continue
            refused[refuse] = True
            texts = [reason] * len(refuse) if reason else rows.get_column("problem").gather(refuse).to_list()
            rejected += [Rejection(i, text) for i, text in zip(refuse.tolist(), texts, strict=True)]
        rejected.sort(key=lambda r: r.index)
        if refused.any():
            keep = ~refused
            rows, values, stamps_ms = rows.filter(pl.Series(keep)), values[keep], stamps_ms[keep]
        frame = rows.with_columns(
            pl.Series("ts", stamps_ms * 1000, dtype=pl.Int64).cast(TS_DTYPE), pl.Series("value", values)
        )
        frame = frame.sort(pl.col("metric").cast(pl.String), "series_id", "ts", maintain_order=True)
        return RemoteWriteBatch(
            SampleBatch(frame=frame.select(SAMPLE_COLUMNS), rejected=rejected),
            stale_dropped=int(stale.sum()),
            samples=decoded.samples,
            series=len(decoded.series),
        )


def _table(infos: list[SeriesInfo], kinds: list[str]) -> pl.DataFrame:
    """Series-table rows: lake columns (categorical, as validate_frame gives them), summary (NaN allowed), problem."""
    return pl.DataFrame(
        {
            "metric": pl.Series([i.metric for i in infos], dtype=pl.Categorical),
            "series_id": pl.Series([i.series_id for i in infos], dtype=pl.Int64),
            "type": pl.Series(kinds, dtype=pl.Categorical),
            "tags": pl.Series([i.tags for i in infos], dtype=pl.Categorical),
            "summary": pl.Series([k == _SUMMARY for k in kinds], dtype=pl.Boolean),
            "problem": pl.Series([i.problem for i in infos], dtype=pl.String),
        }
    )


def _epoch_us(moment: datetime) -> int:
    delta = moment - datetime(1970, 1, 1, tzinfo=moment.tzinfo)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
