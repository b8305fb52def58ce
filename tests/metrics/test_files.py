"""Tests of metrics.files: reading the input files of ``metrics ingest`` (real files, no mocks)."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from metrics.errors import ValidationError
from metrics.files import count_rows_hint, detect_format, read_file
from metrics.model import Rejection

NOW = datetime.now(UTC)
RETENTION_DAYS = 90
# Recent, whole-second and whole-millisecond instants so every epoch form is exact.
T_S = (NOW - timedelta(hours=2)).replace(microsecond=0)
T_MS = (NOW - timedelta(hours=1)).replace(microsecond=123_000)
T_US = (NOW - timedelta(minutes=30)).replace(microsecond=654_321)
PLUS_TWO = timezone(timedelta(hours=2))
MINUS_530 = timezone(-timedelta(hours=5, minutes=30))

Row = tuple[str, datetime, float, str, dict[str, str]]

# The rows every round-trip fixture encodes, in its own format.
EXPECTED: list[Row] = [
    ("cpu.load", T_US, 1.5, "gauge", {"host": "01", "zone": "eu-1"}),
    ("http.requests", T_S, 42.0, "counter", {"host": "web-1"}),
    ("rpc.latency", T_MS, 0.25, "histogram", {}),
    ("rpc.duration", T_S + timedelta(seconds=5), 3.0, "summary", {"host": "01"}),
    ("queue.depth", T_US + timedelta(seconds=1), -7.0, "gauge", {"zone": "us"}),
]


def iso_z(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def epoch_s(moment: datetime) -> int:
    return int(moment.timestamp())


def epoch_ms(moment: datetime) -> int:
    return round(moment.timestamp() * 1000)


# --- writing fixtures ---------------------------------------------------------


def write(path: Path, text: str) -> Path:
    data = text.encode()
    path.write_bytes(gzip.compress(data) if path.name.lower().endswith(".gz") else data)
    return path


def csv_text() -> str:
    stamps = [
        iso_z(T_US),
        str(epoch_s(T_S)),
        str(epoch_ms(T_MS)),
        (T_S + timedelta(seconds=5)).astimezone(PLUS_TWO).isoformat(),
        (T_US + timedelta(seconds=1)).astimezone(MINUS_530).isoformat(),
    ]
    types = ["gauge", "Counter", "histogram", "summary", ""]  # empty type = gauge
    lines = ["metric,timestamp,value,type,host,zone"]
    for (metric, _, value, _, tags), stamp, kind in zip(EXPECTED, stamps, types, strict=True):
        lines.append(f"{metric},{stamp},{value},{kind},{tags.get('host', '')},{tags.get('zone', '')}")
    return "\n".join(lines) + "\n"


def point_dicts() -> list[dict[str, Any]]:
    stamps: list[Any] = [
        T_US.astimezone(MINUS_530).isoformat(),
        epoch_s(T_S),
        epoch_ms(T_MS),
        (T_S + timedelta(seconds=5)).astimezone(PLUS_TWO).isoformat(),
        iso_z(T_US + timedelta(seconds=1)),
    ]
    return [
        {"metric_id": metric, "timestamp": stamp, "value": value, "metric_type": kind, "tags": tags}
        for (metric, _, value, kind, tags), stamp in zip(EXPECTED, stamps, strict=True)
    ]


def parquet_frame(timestamps: str) -> pl.DataFrame:
    moments = [row[1] for row in EXPECTED]
    stamp_column: pl.Series
    if timestamps == "datetime":
        stamp_column = pl.Series(moments, dtype=pl.Datetime("us", "UTC"))
    elif timestamps == "naive-datetime":  # naive datetimes in files are UTC
        stamp_column = pl.Series([m.replace(tzinfo=None) for m in moments], dtype=pl.Datetime("us"))
    elif timestamps == "epoch-us":
        stamp_column = pl.Series([round(m.timestamp() * 1e6) for m in moments], dtype=pl.Int64)
    else:  # ISO text with offsets
        stamp_column = pl.Series([m.astimezone(PLUS_TWO).isoformat() for m in moments], dtype=pl.String)
    return pl.DataFrame(
        {
            "metric": [row[0] for row in EXPECTED],
            "timestamp": stamp_column,
            "value": [row[2] for row in EXPECTED],
            "type": [row[3] for row in EXPECTED],
            "host": [row[4].get("host") for row in EXPECTED],
            "zone": [row[4].get("zone") for row in EXPECTED],
        }
    )


def make_fixture(tmp_path: Path, kind: str) -> Path:
    """Write the EXPECTED rows in the format ``kind`` and return the file."""
    if kind in ("csv", "csv.gz"):
        return write(tmp_path / f"in.{kind}", csv_text())
    if kind in ("ndjson", "ndjson.gz", "jsonl", "jsonl.gz"):
        return write(tmp_path / f"in.{kind}", "\n".join(json.dumps(p) for p in point_dicts()) + "\n")
    if kind in ("json", "json.gz"):
        return write(tmp_path / f"in.{kind}", json.dumps({"metrics": point_dicts()}, indent=2))
    if kind == "json-list":
        return write(tmp_path / "in.json", json.dumps(point_dicts()))
    if kind.startswith(("parquet-", "pq-")):
        extension, timestamps = kind.split("-", 1)
        path = tmp_path / f"in.{extension}"
        parquet_frame(timestamps).write_parquet(path)
        return path
    raise AssertionError(kind)


# --- reading ------------------------------------------------------------------


def read_all(path: Path, **options: Any) -> tuple[list[Row], list[Rejection], int]:
    """All stored rows (sorted by metric, ts), all rejections and the number of batches."""
    options = {"now": NOW, "retention_days": RETENTION_DAYS, **options}
    rows: list[Row] = []
    rejected: list[Rejection] = []
    batches = 0
    for batch in read_file(path, **options):
        batches += 1
        frame = batch.frame.with_columns(pl.col("metric", "type", "tags").cast(pl.String))
        for metric, ts, value, kind, tags in frame.select("metric", "ts", "value", "type", "tags").iter_rows():
            rows.append((metric, ts, value, kind, json.loads(tags)))
        rejected.extend(batch.rejected)
    rows.sort(key=lambda r: (r[0], r[1]))
    return rows, rejected, batches


def expected_rows() -> list[Row]:
    return sorted(EXPECTED, key=lambda r: (r[0], r[1]))


# --- round trips --------------------------------------------------------------

ROUND_TRIP_KINDS = [
    "csv",
    "csv.gz",
    "parquet-datetime",
    "parquet-naive-datetime",
    "parquet-epoch-us",
    "parquet-text",
    "pq-datetime",
    "ndjson",
    "ndjson.gz",
    "jsonl",
    "jsonl.gz",
    "json",
    "json.gz",
    "json-list",
]


@pytest.mark.parametrize("kind", ROUND_TRIP_KINDS)
def test_round_trip(tmp_path: Path, kind: str) -> None:
    rows, rejected, _ = read_all(make_fixture(tmp_path, kind))
    assert rejected == []
    assert rows == expected_rows()


@pytest.mark.parametrize("kind", ["csv", "parquet-text", "ndjson", "json"])
@pytest.mark.parametrize("chunk_rows", [1, 2, 1000])
def test_round_trip_in_chunks(tmp_path: Path, kind: str, chunk_rows: int) -> None:
    rows, rejected, batches = read_all(make_fixture(tmp_path, kind), chunk_rows=chunk_rows)
    assert rejected == []
    assert rows == expected_rows()
    assert batches == -(-len(EXPECTED) // chunk_rows)


def test_csv_keeps_tag_text_and_strips_value(tmp_path: Path) -> None:
    path = write(
        tmp_path / "tags.csv",
        f'metric,timestamp,value,host,rack,port\ncpu,{iso_z(T_S)}, 1.5 ,007,"",8080\ncpu,{iso_z(T_S)},2,1.0,,\n',
    )
    rows, rejected, _ = read_all(path)
    assert rejected == []
    assert sorted((r[2], r[3], r[4]) for r in rows) == [
        (1.5, "gauge", {"host": "007", "port": "8080"}),
        (2.0, "gauge", {"host": "1.0"}),
    ]


# --- rejected rows -------------------------------------------------------------

GOOD_CSV_ROW = f"cpu.load,{iso_z(T_S)},1,gauge,a"

CSV_BAD_ROWS = [
    ("value not a number", f"cpu.load,{iso_z(T_S)},abc,gauge,a", "value: missing or not a number"),
    ("value empty", f"cpu.load,{iso_z(T_S)},,gauge,a", "value: missing or not a number"),
    ("value comma decimal", f'cpu.load,{iso_z(T_S)},"1,5",gauge,a', "value: missing or not a number"),
    ("value infinite", f"cpu.load,{iso_z(T_S)},inf,gauge,a", "value: infinite values are not allowed"),
    ("value NaN gauge", f"cpu.load,{iso_z(T_S)},NaN,gauge,a", "value: NaN is only allowed for summary metrics"),
    (
        "metric with space",
        f"bad metric,{iso_z(T_S)},1,gauge,a",
        "metric: name 'bad metric' must match ^[a-zA-Z_][a-zA-Z0-9_.:]*$",
    ),
    (
        "metric leading digit",
        f"9cpu,{iso_z(T_S)},1,gauge,a",
        "metric: name '9cpu' must match ^[a-zA-Z_][a-zA-Z0-9_.:]*$",
    ),
    ("metric empty", f",{iso_z(T_S)},1,gauge,a", "metric: missing"),
    (
        "unknown type",
        f"cpu.load,{iso_z(T_S)},1,bogus,a",
        "type: unknown metric type 'bogus'; allowed: counter, gauge, histogram, summary",
    ),
    (
        "future timestamp",
        f"cpu.load,{iso_z(NOW + timedelta(hours=1))},1,gauge,a",
        "timestamp: more than 600 s in the future",
    ),
    (
        "future epoch ms",
        f"cpu.load,{epoch_ms(NOW + timedelta(days=1))},1,gauge,a",
        "timestamp: more than 600 s in the future",
    ),
    (
        "older than retention",
        f"cpu.load,{epoch_s(NOW - timedelta(days=RETENTION_DAYS + 1))},1,gauge,a",
        f"timestamp: older than the retention period ({RETENTION_DAYS} days)",
    ),
    ("timestamp garbage", "cpu.load,yesterday,1,gauge,a", "timestamp: missing or unparseable"),
    ("timestamp bad date", "cpu.load,2026-13-45T00:00:00Z,1,gauge,a", "timestamp: missing or unparseable"),
    ("timestamp empty", "cpu.load,,1,gauge,a", "timestamp: missing or unparseable"),
    ("timestamp beyond range", "cpu.load,1e300,1,gauge,a", "timestamp: missing or unparseable"),
]


@pytest.mark.parametrize(("row", "reason"), [case[1:] for case in CSV_BAD_ROWS], ids=[c[0] for c in CSV_BAD_ROWS])
@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
def test_csv_bad_row_rejected_good_rows_kept(tmp_path: Path, suffix: str, row: str, reason: str) -> None:
    text = f"metric,timestamp,value,type,host\n{GOOD_CSV_ROW}\n{row}\n{GOOD_CSV_ROW}\n"
    path = write(tmp_path / f"in{suffix}", text)
    rows, rejected, _ = read_all(path)
    assert rejected == [Rejection(1, reason)]
    assert len(rows) == 2
    assert all(r[0] == "cpu.load" and r[2] == 1.0 and r[4] == {"host": "a"} for r in rows)


def test_csv_all_bad_rows_in_one_file(tmp_path: Path) -> None:
    lines = ["metric,timestamp,value,type,host"]
    expected: list[Rejection] = []
    for _, row, reason in CSV_BAD_ROWS:
        lines.append(GOOD_CSV_ROW)
        expected.append(Rejection(len(lines) - 1, reason))
        lines.append(row)
    path = write(tmp_path / "mixed.csv", "\n".join(lines) + "\n")
    rows, rejected, _ = read_all(path)
    assert rejected == expected
    assert len(rows) == len(CSV_BAD_ROWS)


def test_csv_blank_lines_skipped_but_counted(tmp_path: Path) -> None:
    path = write(
        tmp_path / "blank.csv",
        f"metric,timestamp,value\ncpu,{iso_z(T_S)},1\n\n,,\ncpu,{iso_z(T_S)},oops\n\n",
    )
    rows, rejected, _ = read_all(path)
    assert len(rows) == 1
    # index + 2 is the line number: the header is line 1
    assert rejected == [Rejection(3, "value: missing or not a number")]


def csv_of_ten_rows() -> tuple[str, list[Rejection]]:
    """A 10-row CSV with bad rows at indices 2, 3, 7 and 9."""
    bad = {
        2: ("cpu", "x", "value: missing or not a number"),
        3: ("no good", "1", "metric: name 'no good' must match ^[a-zA-Z_][a-zA-Z0-9_.:]*$"),
        7: ("cpu", "inf", "value: infinite values are not allowed"),
        9: ("cpu", "", "value: missing or not a number"),
    }
    lines = ["metric,timestamp,value,host"]
    for i in range(10):
        metric, value, _ = bad.get(i, ("cpu", str(i), ""))
        lines.append(f"{metric},{epoch_s(T_S) + i},{value},h{i % 2}")
    return "\n".join(lines) + "\n", [Rejection(i, reason) for i, (_, _, reason) in sorted(bad.items())]


@pytest.mark.parametrize(
    ("name", "chunk_rows", "batches"),
    [("c.csv", 3, 4), ("c.csv.gz", 3, 4), ("c.csv", 1, 10), ("c.csv", 10, 1), ("c.csv", 4, 3)],
)
def test_chunked_csv_gives_global_rejection_indices(tmp_path: Path, name: str, chunk_rows: int, batches: int) -> None:
    text, expected = csv_of_ten_rows()
    rows, rejected, count = read_all(write(tmp_path / name, text), chunk_rows=chunk_rows)
    assert rejected == expected
    assert sorted(r[2] for r in rows) == [0.0, 1.0, 4.0, 5.0, 6.0, 8.0]
    assert count == batches


def test_chunked_parquet_gives_global_rejection_indices(tmp_path: Path) -> None:
    text, expected = csv_of_ten_rows()
    frame = pl.read_csv(text.encode(), schema_overrides={"value": pl.String, "host": pl.String})
    frame = frame.with_columns(pl.col("value").cast(pl.Float64, strict=False))
    path = tmp_path / "c.parquet"
    frame.write_parquet(path)
    _, rejected, count = read_all(path, chunk_rows=3)
    # the parquet value column holds null for both "x" and "", so reasons match the CSV
    assert rejected == expected
    assert count == 4


# --- NDJSON and JSON ------------------------------------------------------------


def ndjson_lines() -> tuple[list[str], list[tuple[int, str]], int]:
    """Lines of an NDJSON file, the expected (index, reason prefix) rejections and the good count."""
    good = json.dumps({"metric_id": "cpu", "timestamp": iso_z(T_S), "value": 1, "tags": {"host": "a"}})
    lines = [
        good,  # 0
        '{"metric_id": "cpu", "value": ',  # 1 truncated
        "",  # 2 blank: skipped, still counted
        good,  # 3
        "not json at all",  # 4
        "[1, 2]",  # 5 JSON, but not an object
        json.dumps({"metric_id": "bad name", "timestamp": iso_z(T_S), "value": 1}),  # 6
        json.dumps({"metric_id": "cpu", "timestamp": epoch_s(T_S), "value": "12"}),  # 7
        json.dumps({"metric_id": "cpu", "timestamp": 1e300, "value": 1}),  # 8 beyond datetime range
        json.dumps({"metric_id": "cpu", "timestamp": iso_z(NOW + timedelta(days=1)), "value": 1}),  # 9
        json.dumps({"timestamp": iso_z(T_S), "value": 1}),  # 10
        json.dumps({"metric_id": "cpu", "timestamp": iso_z(T_S), "value": 2, "metric_type": "nope"}),  # 11
        good,  # 12
    ]
    expected = [
        (1, "invalid JSON: Expecting value (line 2, column 30)"),
        (4, "invalid JSON: Expecting value (line 5, column 1)"),
        (5, "expected an object, got list"),
        (6, "metric: name 'bad name' must match"),
        (7, "value: expected a number, got '12'"),
        (8, "timestamp: epoch"),
        (9, "timestamp: more than 600 s in the future"),
        (10, "metric_id: required field is missing"),
        (11, "type: unknown metric type 'nope'"),
    ]
    return lines, expected, 3


@pytest.mark.parametrize("name", ["in.ndjson", "in.jsonl", "in.ndjson.gz", "in.JSONL.GZ"])
@pytest.mark.parametrize("chunk_rows", [1, 2, 5, 1000])
def test_ndjson_bad_lines_reported_others_kept(tmp_path: Path, name: str, chunk_rows: int) -> None:
    lines, expected, good = ndjson_lines()
    path = write(tmp_path / name, "\n".join(lines) + "\n")
    rows, rejected, _ = read_all(path, chunk_rows=chunk_rows)
    assert [r.index for r in rejected] == [i for i, _ in expected]
    for rejection, (_, prefix) in zip(rejected, expected, strict=True):
        assert rejection.reason.startswith(prefix), (rejection, prefix)
    assert len(rows) == good
    assert all(r[:1] == ("cpu",) and r[4] == {"host": "a"} for r in rows)


def test_ndjson_crlf_and_invalid_utf8(tmp_path: Path) -> None:
    good = json.dumps({"metric_id": "cpu", "timestamp": iso_z(T_S), "value": 1}).encode()
    path = tmp_path / "in.ndjson"
    path.write_bytes(good + b"\r\n" + b'{"metric_id": "\xff"}\r\n' + good + b"\r\n")
    rows, rejected, _ = read_all(path)
    assert len(rows) == 2
    assert [r.index for r in rejected] == [1]
    assert rejected[0].reason.startswith("invalid JSON: ")
    assert "(line 2)" in rejected[0].reason


@pytest.mark.parametrize("chunk_rows", [1, 2, 1000])
@pytest.mark.parametrize("shape", ["batch", "list"])
def test_json_rejections_are_list_positions(tmp_path: Path, chunk_rows: int, shape: str) -> None:
    points: list[Any] = [
        {"metric_id": "cpu", "timestamp": iso_z(T_S), "value": 1},
        {"metric_id": "cpu", "timestamp": iso_z(T_S), "value": None},
        "a string",
        {"metric_id": "cpu", "timestamp": epoch_ms(T_MS), "value": 2, "tags": {"host": 5}},
        {"metric_id": "cpu", "timestamp": epoch_ms(T_MS), "value": 3, "metric_type": "counter"},
    ]
    document = {"metrics": points} if shape == "batch" else points
    path = write(tmp_path / "in.json", json.dumps(document))
    rows, rejected, _ = read_all(path, chunk_rows=chunk_rows)
    assert rejected == [
        Rejection(1, "value: expected a number, got None"),
        Rejection(2, "expected an object, got str"),
        Rejection(3, "tags: value of 'host' must be a string, got int"),
    ]
    assert [(r[2], r[3]) for r in sorted(rows, key=lambda r: r[2])] == [(1.0, "gauge"), (3.0, "counter")]


def test_json_point_without_timestamp_is_now(tmp_path: Path) -> None:
    path = write(tmp_path / "in.json", json.dumps({"metrics": [{"metric_id": "cpu", "value": 1}]}))
    # judged against the time now, not the module's NOW: in a long suite that is more than max_future_seconds ago
    rows, rejected, _ = read_all(path, now=datetime.now(UTC))
    assert rejected == []
    assert abs(rows[0][1] - datetime.now(UTC)) < timedelta(minutes=5)


def test_empty_inputs_yield_nothing(tmp_path: Path) -> None:
    for path in [
        write(tmp_path / "e.ndjson", "\n\n"),
        write(tmp_path / "e.json", '{"metrics": []}'),
        write(tmp_path / "e.csv", "metric,timestamp,value,host\n"),
    ]:
        assert read_all(path) == ([], [], 0)


# --- whole-file errors -------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["data.txt", "data", "data.xlsx", "data.parquet.gz", "data.pq.gz", "data.gz", "data.csv.zip"]
)
def test_unknown_extension(tmp_path: Path, name: str) -> None:
    path = write(tmp_path / name, "metric,timestamp,value\n")
    with pytest.raises(ValidationError, match=name.replace(".", r"\.")) as info:
        read_file(path, now=NOW, retention_days=RETENTION_DAYS)
    assert ".csv, .parquet, .pq, .ndjson, .jsonl, .json" in str(info.value)
    with pytest.raises(ValidationError, match="accepted extensions"):
        detect_format(path)


@pytest.mark.parametrize("name", ["missing.csv", "missing.csv.gz", "missing.parquet", "missing.ndjson", "missing.json"])
def test_missing_file(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValidationError) as info:
        list(read_file(tmp_path / name, now=NOW, retention_days=RETENTION_DAYS))
    assert str(info.value) == f"{tmp_path / name}: no such file"


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    folder = tmp_path / "folder.csv"
    folder.mkdir()
    with pytest.raises(ValidationError, match=r"folder\.csv: not a regular file"):
        list(read_file(folder, now=NOW, retention_days=RETENTION_DAYS))


BROKEN_FILES: list[tuple[str, bytes, str]] = [
    ("no-value.csv", b"metric,timestamp,host\ncpu,1,a\n", "value: missing column"),
    ("no-metric.csv", b"timestamp,value\n1,2\n", "metric: missing column"),
    ("two-times.csv", b"metric,ts,timestamp,value\ncpu,1,1,1\n", "timestamp: ambiguous columns"),
    ("dup.csv", b"metric,timestamp,value,host,host\ncpu,1,1,a,b\n", "duplicate column 'host'"),
    ("reserved.csv", b"metric,timestamp,value,_row\ncpu,1,1,a\n", "column '_row' is reserved"),
    ("empty.csv", b"", "empty CSV file"),
    ("ragged.csv", b"metric,timestamp,value\ncpu,1,1,extra,cells\n", "cannot read file"),
    ("latin1.csv", "metric,timestamp,value\ncaf\xe9,1,1\n".encode("latin-1"), "cannot read file"),
    ("not-gzip.csv.gz", b"metric,timestamp,value\n", "cannot read file"),
    ("truncated.ndjson.gz", gzip.compress(b'{"metric_id": "cpu", "value": 1}\n' * 50)[:-12], "cannot read file"),
    ("not-parquet.parquet", b"metric,timestamp,value\n", "cannot read file"),
    ("broken.json", b'{"metrics": [', "invalid JSON: Expecting value (line 1, column 14)"),
    ("object.json", b'{"points": []}', 'no "metrics" key'),
    ("scalar.json", b"42", "got int"),
    ("metrics-not-list.json", b'{"metrics": {"metric_id": "cpu"}}', '"metrics" must be a list'),
    ("latin1.json", '{"metrics": ["\xe9"]}'.encode("latin-1"), "not UTF-8 text"),
]


@pytest.mark.parametrize(("name", "content", "message"), BROKEN_FILES, ids=[b[0] for b in BROKEN_FILES])
def test_broken_file_raises_validation_error_naming_it(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValidationError) as info:
        list(read_file(path, now=NOW, retention_days=RETENTION_DAYS))
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)


def test_parquet_timestamp_of_wrong_type(tmp_path: Path) -> None:
    path = tmp_path / "bool.parquet"
    pl.DataFrame({"metric": ["cpu"], "timestamp": [True], "value": [1.0]}).write_parquet(path)
    with pytest.raises(ValidationError, match=r"bool\.parquet: timestamp: column 'timestamp' has type"):
        read_file(path, now=NOW, retention_days=RETENTION_DAYS)


def test_bad_chunk_rows(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="chunk_rows"):
        read_file(make_fixture(tmp_path, "csv"), now=NOW, retention_days=RETENTION_DAYS, chunk_rows=0)


# --- detect_format and count_rows_hint ----------------------------------------------

DETECT_CASES = [
    ("a.csv", "csv"),
    ("a.CSV", "csv"),
    ("a.csv.gz", "csv"),
    ("dir.v1/a.b.csv", "csv"),
    ("a.parquet", "parquet"),
    ("a.pq", "parquet"),
    ("a.ndjson", "ndjson"),
    ("a.jsonl", "ndjson"),
    ("a.Jsonl.Gz", "ndjson"),
    ("a.json", "json"),
    ("a.json.gz", "json"),
]


@pytest.mark.parametrize(("name", "fmt"), DETECT_CASES)
def test_detect_format(name: str, fmt: str) -> None:
    assert detect_format(Path(name)) == fmt


def test_count_rows_hint(tmp_path: Path) -> None:
    parquet = make_fixture(tmp_path, "parquet-datetime")
    assert count_rows_hint(parquet) == len(EXPECTED)
    assert count_rows_hint(make_fixture(tmp_path, "csv")) is None
    assert count_rows_hint(make_fixture(tmp_path, "ndjson")) is None
    assert count_rows_hint(tmp_path / "missing.parquet") is None
    assert count_rows_hint(write(tmp_path / "fake.parquet", "not parquet")) is None
    assert count_rows_hint(tmp_path / "a.txt") is None
