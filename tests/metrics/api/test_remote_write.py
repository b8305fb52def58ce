"""``POST /api/v1/write`` (Prometheus remote-write 1.0) on the real app and lake, and the decoder behind it."""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cramjam
import numpy as np
import polars as pl
import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from remote_write_requests import HEADERS, STALE_NAN, body, compress, node_series, write_request

from metrics.api import create_app
from metrics.api import remote_pb2 as pb
from metrics.api.keys import close_key_stores, create_key
from metrics.api.remote import STALE_NAN_BITS, RemoteWriteDecoder, guess_type, series_info
from metrics.model import prepare_frame
from metrics.settings import Settings
from storage.store import MetricStore

WRITE = "/api/v1/write"


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    """The app over a fresh lake, without credentials (insecure_dev)."""
    settings = Settings(data_dir=tmp_path / "data", insecure_dev=True, flush_seconds=0.1)
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture(autouse=True)
def _close_keys() -> Iterator[None]:
    yield
    close_key_stores()


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def recent(seconds_ago: float = 60) -> int:
    return ms(datetime.now(UTC) - timedelta(seconds=seconds_ago))


def post(client: TestClient, content: bytes, headers: dict[str, str] | None = None) -> Any:
    return client.post(WRITE, content=content, headers=HEADERS if headers is None else headers)


def stored(client: TestClient, pattern: str = "*") -> pl.DataFrame:
    """Rows in the lake (the store flushes before reading), without the API's own application.* samples."""
    frame: pl.DataFrame = client.app.state.store.query_metrics(pattern)  # type: ignore[attr-defined]
    return frame.filter(~pl.col("metric").cast(pl.String).str.starts_with("application."))


def rows_by_series(frame: pl.DataFrame) -> dict[tuple[str, str], list[tuple[datetime, float, str]]]:
    found: dict[tuple[str, str], list[tuple[datetime, float, str]]] = {}
    for row in frame.sort("ts").iter_rows(named=True):
        found.setdefault((row["metric"], row["tags"]), []).append((row["ts"], row["value"], row["type"]))
    return found


# -- the round trip ------------------------------------------------------------------------------------------------
def test_samples_reach_the_lake_with_metric_tags_time_and_value(client: TestClient) -> None:
    t0 = recent(120)
    series = [
        (
            {"__name__": "http_requests_total", "job": "api", "instance": "a:1", "code": "200"},
            [(10, t0), (12, t0 + 15_000)],
        ),
        ({"__name__": "node_load1", "job": "node", "instance": "b:9100"}, [(0.25, t0 + 1)]),
        ({"__name__": "process_open_fds", "job": "api", "instance": "a:1", "empty": ""}, [(0.0, t0 + 2)]),
    ]
    response = post(client, body(series))
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["stored"] == 4
    assert report["rejected"] == 0
    assert report["series"] == 3
    rows = rows_by_series(stored(client))
    start = datetime.fromtimestamp(t0 / 1000, UTC)
    http = rows[
        ("http_requests_total", json.dumps({"code": "200", "instance": "a:1", "job": "api"}, separators=(",", ":")))
    ]
    assert http == [(start, 10.0, "counter"), (start + timedelta(seconds=15), 12.0, "counter")]
    load = rows[("node_load1", '{"instance":"b:9100","job":"node"}')]
    assert load == [(start + timedelta(milliseconds=1), 0.25, "gauge")]
    assert rows[("process_open_fds", '{"instance":"a:1","job":"api"}')][0][1] == 0.0  # empty label dropped
    # the HTTP query sees the same, tags as an object
    answer = client.get("/api/v1/query", params={"metric_pattern": "node_load1", "start_time": "1h"}).json()
    assert answer["data"][0]["tags"] == {"instance": "b:9100", "job": "node"}


def test_series_ids_match_the_json_ingest_of_the_same_series(client: TestClient) -> None:
    t0 = recent()
    labels = {"__name__": "crypto_key_ops_total", "key_id": "k-1", "algorithm": "AES-256"}
    assert post(client, body([(labels, [(1, t0)])])).status_code == 200
    point = {
        "metric_id": "crypto_key_ops_total",
        "value": 2,
        "metric_type": "counter",
        "timestamp": (datetime.fromtimestamp(t0 / 1000, UTC) + timedelta(seconds=1)).isoformat(),
        "tags": {"algorithm": "AES-256", "key_id": "k-1"},
    }
    assert client.post("/api/v1/metrics", json={"metrics": [point]}).json()["stored"] == 1
    frame = stored(client, "crypto_key_ops_total")
    assert frame.height == 2
    assert frame.get_column("series_id").n_unique() == 1  # one series, whichever door it came in by
    client.app.state.store.flush()  # type: ignore[attr-defined]  # both shapes in one flush: the dtypes agree


def test_repeated_series_use_the_cache_and_stay_correct(client: TestClient) -> None:
    labels = node_series(300)
    t0 = recent(600)
    for step in range(4):  # the same series again and again, as Prometheus sends them
        response = post(client, body([(lab, [(float(step), t0 + step * 1000)]) for lab in labels]))
        assert response.json()["stored"] == 300
    frame = stored(client)
    assert frame.height == 1200
    assert frame.get_column("series_id").n_unique() == 300
    per_series = frame.group_by("series_id").agg(pl.col("value").sort_by("ts"))
    assert all(values == [0.0, 1.0, 2.0, 3.0] for values in per_series.get_column("value").to_list())


# -- values: staleness markers, NaN, infinities ------------------------------------------------------------------
def test_staleness_markers_are_dropped_and_counted_not_stored(client: TestClient) -> None:
    t0 = recent()
    series = [
        ({"__name__": "up", "job": "a"}, [(1, t0), (STALE_NAN, t0 + 1000)]),
        ({"__name__": "up", "job": "b"}, [(STALE_NAN, t0)]),
    ]
    report = post(client, body(series)).json()
    assert report == {**report, "stored": 1, "rejected": 0, "stale_dropped": 2, "errors": []}
    frame = stored(client, "up")
    assert frame.height == 1
    assert frame.item(0, "value") == 1.0


def test_nan_only_for_summaries_and_never_infinity(client: TestClient) -> None:
    t0 = recent()
    series = [
        ({"__name__": "rpc_seconds", "quantile": "0.99"}, [(math.nan, t0)]),  # a summary quantile: NaN allowed
        ({"__name__": "temperature"}, [(math.nan, t0)]),
        ({"__name__": "temperature", "room": "b"}, [(math.inf, t0)]),
        ({"__name__": "requests_total"}, [(-math.inf, t0)]),
    ]
    report = post(client, body(series)).json()
    assert report["stored"] == 1
    assert [(e["index"], e["reason"]) for e in report["errors"]] == [
        (1, "value: NaN is only allowed for summary metrics"),
        (2, "value: infinite values are not allowed"),
        (3, "value: infinite values are not allowed"),
    ]
    frame = stored(client)
    assert frame.get_column("type").to_list() == ["summary"]
    assert math.isnan(frame.item(0, "value"))


def test_rows_outside_the_time_window_and_bad_labels_are_refused_one_by_one(client: TestClient) -> None:
    now = datetime.now(UTC)
    series = [
        ({"__name__": "ok_metric"}, [(1, recent())]),
        ({"__name__": "late_metric"}, [(1, ms(now + timedelta(hours=1)))]),
        ({"__name__": "old_metric"}, [(1, ms(now - timedelta(days=400)))]),
        ({"__name__": "no_time"}, [(1, 0)]),
        ({"__name__": "long_label", "x": "v" * 300}, [(1, recent())]),
        ({"__name__": "9starts_with_digit"}, [(1, recent())]),
    ]
    report = post(client, body(series)).json()
    assert report["stored"] == 1
    reasons = {e["index"]: e["reason"] for e in report["errors"]}
    assert reasons[1] == "timestamp: more than 600 s in the future"
    assert reasons[2] == reasons[3] == "timestamp: older than the retention period (90 days)"
    assert reasons[4].startswith("tags: value of 'x' longer than")
    assert reasons[5].startswith("metric: name '9starts_with_digit' must match")
    assert stored(client).get_column("metric").to_list() == ["ok_metric"]


def test_duplicate_label_names_refuse_the_series(client: TestClient) -> None:
    request = write_request([({"__name__": "dup"}, [(1, recent())])])
    request.timeseries[0].labels.add(name="job", value="a")
    request.timeseries[0].labels.add(name="job", value="b")
    report = post(client, compress(request)).json()
    assert report["stored"] == 0
    assert report["errors"] == [{"index": 0, "reason": "labels: 'job' appears more than once"}]


def test_the_row_rules_are_the_models(tmp_path: Path) -> None:
    """The decoder applies validate_frame's rules in numpy: same rows kept, same reasons, same series ids."""
    now = datetime.now(UTC)
    t0 = ms(now - timedelta(minutes=5))
    cases: list[tuple[dict[str, str], float, int]] = [
        ({"__name__": "g", "host": "a"}, 1.5, t0),
        ({"__name__": "g", "host": "a"}, math.nan, t0 + 1),
        ({"__name__": "g", "host": "b"}, math.inf, t0),
        ({"__name__": "s", "quantile": "0.5"}, math.nan, t0),
        ({"__name__": "s", "quantile": "0.5"}, -math.inf, t0 + 1),
        ({"__name__": "late"}, 1.0, ms(now + timedelta(seconds=601))),
        ({"__name__": "edge"}, 1.0, ms(now + timedelta(seconds=599))),
        ({"__name__": "old"}, 1.0, ms(now - timedelta(days=91))),
        ({"__name__": "bad-name"}, 1.0, t0),
        ({"__name__": "t", **{f"k{i}": "v" for i in range(40)}}, 1.0, t0),
    ]
    decoder = RemoteWriteDecoder()
    prepared = decoder.prepare(
        write_request([(labels, [(value, stamp)]) for labels, value, stamp in cases]).SerializeToString(),
        now=now,
        retention_days=90,
        max_future_seconds=600,
    )
    frame = pl.DataFrame(
        {
            "ts": [datetime.fromtimestamp(stamp / 1000, UTC) for _, _, stamp in cases],
            "metric": [labels["__name__"] for labels, _, _ in cases],
            "value": [value for _, value, _ in cases],
            "type": [guess_type(labels["__name__"], labels) for labels, _, _ in cases],
            "tags": [json.dumps({k: v for k, v in labels.items() if k != "__name__"}) for labels, _, _ in cases],
        }
    )
    expected = prepare_frame(frame, now=now, retention_days=90, max_future_seconds=600)
    assert prepared.batch.rejected == expected.rejected
    ours = prepared.batch.frame.with_columns(pl.col("metric", "type", "tags").cast(pl.String))
    theirs = expected.frame.with_columns(pl.col("metric", "type", "tags").cast(pl.String))
    assert ours.equals(theirs)
    assert prepared.batch.frame.schema == expected.frame.schema


# -- metric types --------------------------------------------------------------------------------------------------
def test_types_from_metadata_including_an_earlier_requests(client: TestClient) -> None:
    t0 = recent()
    metadata = [
        ("http_duration_seconds", pb.MetricMetadata.HISTOGRAM),
        ("rpc_seconds", pb.MetricMetadata.SUMMARY),
        ("jobs", pb.MetricMetadata.COUNTER),  # OpenMetrics: the family has no _total
        ("weird_total", pb.MetricMetadata.GAUGE),  # metadata beats the suffix
        ("mystery", pb.MetricMetadata.UNKNOWN),
    ]
    assert post(client, body([], metadata)).json()["stored"] == 0  # Prometheus sends metadata on its own
    series = [
        ({"__name__": "http_duration_seconds_bucket", "le": "0.1"}, [(3, t0)]),
        ({"__name__": "http_duration_seconds_sum"}, [(1.5, t0)]),
        ({"__name__": "http_duration_seconds_count"}, [(4, t0)]),
        ({"__name__": "rpc_seconds", "quantile": "0.5"}, [(0.2, t0)]),
        ({"__name__": "rpc_seconds_count"}, [(9, t0)]),
        ({"__name__": "jobs_total"}, [(7, t0)]),
        ({"__name__": "jobs_created"}, [(1.7e9, t0)]),
        ({"__name__": "weird_total"}, [(1, t0)]),
        ({"__name__": "mystery"}, [(1, t0)]),
    ]
    assert post(client, body(series)).json()["stored"] == 9
    types = dict(stored(client).select(pl.col("metric").cast(pl.String), pl.col("type").cast(pl.String)).iter_rows())
    assert types == {
        "http_duration_seconds_bucket": "histogram",
        "http_duration_seconds_sum": "histogram",
        "http_duration_seconds_count": "histogram",
        "rpc_seconds": "summary",
        "rpc_seconds_count": "summary",
        "jobs_total": "counter",
        "jobs_created": "gauge",
        "weird_total": "gauge",
        "mystery": "gauge",
    }


def test_metadata_arriving_later_retypes_known_series(client: TestClient) -> None:
    labels = {"__name__": "jobs_done", "queue": "a"}
    t0 = recent(120)
    assert post(client, body([(labels, [(1, t0)])])).json()["stored"] == 1  # no metadata yet: a gauge by its name
    assert post(client, body([], [("jobs_done", pb.MetricMetadata.COUNTER)])).status_code == 200
    assert post(client, body([(labels, [(2, t0 + 1000)])])).json()["stored"] == 1  # the same, cached series
    frame = stored(client, "jobs_done").sort("ts")
    assert frame.get_column("type").cast(pl.String).to_list() == ["gauge", "counter"]


def test_metadata_in_the_same_request_applies_to_its_samples(client: TestClient) -> None:
    series = [({"__name__": "queue_depth_total"}, [(5, recent())])]
    assert post(client, body(series, [("queue_depth_total", pb.MetricMetadata.GAUGE)])).json()["stored"] == 1
    assert stored(client).item(0, "type") == "gauge"


@pytest.mark.parametrize(
    ("metric", "labels", "kind"),
    [
        ("requests_total", {}, "counter"),
        ("latency_bucket", {"le": "0.5"}, "histogram"),
        ("latency_bucket", {}, "gauge"),
        ("latency", {"quantile": "0.9"}, "summary"),
        ("latency_count", {}, "gauge"),
        ("latency_sum", {}, "gauge"),
        ("memory_bytes", {}, "gauge"),
    ],
)
def test_types_without_metadata_follow_the_name(metric: str, labels: dict[str, str], kind: str) -> None:
    assert guess_type(metric, labels) == kind


# -- bad input: the right 4xx, a JSON error, nothing stored ------------------------------------------------------------
def good_raw() -> bytes:
    return write_request([({"__name__": "good_metric", "job": "x"}, [(1, recent())])]).SerializeToString()


def good_body() -> bytes:
    return compress(good_raw())


def without_name() -> bytes:
    request = write_request([({"__name__": "good_metric"}, [(1, recent())]), ({"job": "x"}, [(1, recent())])])
    return compress(request)


def unknown_fields() -> bytes:
    raw = write_request([({"__name__": "good_metric"}, [(1, recent())])]).SerializeToString()
    return compress(raw + b"\x28\x05")  # field 5, varint: not a WriteRequest field


BAD_INPUTS: list[tuple[str, Any, dict[str, str], int, str]] = [
    ("json content type", good_body, {**HEADERS, "Content-Type": "application/json"}, 415, "application/x-protobuf"),
    ("no content type", good_body, {k: v for k, v in HEADERS.items() if k != "Content-Type"}, 415, "content type"),
    (
        "remote-write 2.0",
        good_body,
        {**HEADERS, "Content-Type": "application/x-protobuf;proto=io.prometheus.write.v2.Request"},
        415,
        "io.prometheus.write.v2.Request",
    ),
    ("gzip", good_body, {**HEADERS, "Content-Encoding": "gzip"}, 415, "snappy"),
    ("no encoding", good_body, {k: v for k, v in HEADERS.items() if k != "Content-Encoding"}, 415, "encoding"),
    ("version 2", good_body, {**HEADERS, "X-Prometheus-Remote-Write-Version": "2.0.0"}, 415, "version"),
    ("empty body", lambda: b"", HEADERS, 422, "empty"),
    ("truncated snappy", lambda: good_body()[:-6], HEADERS, 422, "snappy"),
    ("not snappy", lambda: b"\xffnot snappy at all", HEADERS, 422, "snappy"),
    ("framed snappy", lambda: bytes(cramjam.snappy.compress(b"x" * 100)), HEADERS, 422, "framed"),
    ("json inside snappy", lambda: compress(b'{"metrics": []}'), HEADERS, 422, "WriteRequest"),
    ("truncated protobuf", lambda: compress(good_raw()[:-3]), HEADERS, 422, "WriteRequest"),
    ("unknown fields", unknown_fields, HEADERS, 422, "unknown field"),
    ("no __name__", without_name, HEADERS, 422, "__name__"),
]


@pytest.mark.parametrize(
    ("make_body", "headers", "status", "message"),
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
def test_bad_input_is_a_4xx_json_error_and_stores_nothing(
    client: TestClient, make_body: Any, headers: dict[str, str], status: int, message: str
) -> None:
    response = post(client, make_body(), headers)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert message in response.json()["error"]
    assert stored(client).height == 0


def test_a_body_over_the_limit_is_413_compressed_or_not(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", insecure_dev=True, max_body_bytes=4096)
    big = [(labels, [(1.0, recent())]) for labels in node_series(400)]
    with TestClient(create_app(settings)) as client:
        assert post(client, body(big)).status_code == 413  # ~5 KB compressed
        bomb = compress(b"\x00" * 20_000)  # a tiny body that would decompress past 4 x the limit
        assert len(bomb) < 4096
        response = post(client, bomb)
        assert response.status_code == 413
        assert "uncompressed size" in response.json()["error"]
        assert stored(client).height == 0


def test_writing_needs_the_writer_role(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    _, reader = create_key(settings, "grafana", "reader")
    _, writer = create_key(settings, "prometheus", "writer")
    with TestClient(create_app(settings)) as client:
        assert post(client, good_body()).status_code == 401
        assert post(client, good_body(), {**HEADERS, "Authorization": f"Bearer {reader}"}).status_code == 403
        response = post(client, good_body(), {**HEADERS, "Authorization": f"Bearer {writer}"})
        assert response.status_code == 200
        assert response.json()["stored"] == 1


# -- the decoder: the hand walk and the generated classes agree ------------------------------------------------------
def decoded_rows(decoder: RemoteWriteDecoder, raw: bytes) -> list[tuple[Any, ...]]:
    decoded = decoder.decode(raw)
    series = [s for s, count in zip(decoded.series, decoded.counts.tolist(), strict=True) for _ in range(count)]
    bits = decoded.values.view(np.uint64).tolist()
    return [
        (s.metric, s.tags, s.series_id, s.problem, b, t)
        for s, b, t in zip(series, bits, decoded.stamps_ms.tolist(), strict=True)
    ]


def oracle_rows(raw: bytes) -> list[tuple[Any, ...]]:
    """The same rows straight from the generated WriteRequest class."""
    rows = []
    for index, timeseries in enumerate(pb.WriteRequest.FromString(raw).timeseries):
        s = series_info([(label.name, label.value) for label in timeseries.labels], index)
        for sample in timeseries.samples:
            bits = struct.unpack("<Q", struct.pack("<d", sample.value))[0]
            rows.append((s.metric, s.tags, s.series_id, s.problem, bits, sample.timestamp))
    return rows


label_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=150)
series_strategy = st.tuples(
    st.dictionaries(st.from_regex(r"[a-z_][a-z0-9_]{0,20}", fullmatch=True), label_text, max_size=5).map(
        lambda d: {k: v for k, v in d.items() if k != "__name__"}
    ),
    st.from_regex(r"[a-z_][a-z0-9_]{0,30}", fullmatch=True),
    st.lists(
        st.tuples(
            st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.just(0.0), st.just(STALE_NAN)),
            st.one_of(st.integers(-(2**63), 2**63 - 1), st.just(0), st.integers(1_600_000_000_000, 1_900_000_000_000)),
        ),
        max_size=3,
    ),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(series_strategy, max_size=6), st.booleans())
def test_the_hand_walk_decodes_like_the_generated_classes(
    series: list[tuple[dict[str, str], str, list[tuple[float, int]]]], sorted_labels: bool
) -> None:
    request = write_request(
        [({**labels, "__name__": name}, samples) for labels, name, samples in series], sort_labels=sorted_labels
    )
    raw = request.SerializeToString()
    decoder = RemoteWriteDecoder()
    expected = oracle_rows(raw)
    assert decoded_rows(decoder, raw) == expected  # cold: labels walked
    assert decoded_rows(decoder, raw) == expected  # warm: the cached-label shortcut


def with_exemplars(request: pb.WriteRequest) -> bytes:
    """The request's bytes with an exemplar-like field 3 in every series (the hand walk does not take those)."""
    raw = bytearray()
    for timeseries in request.timeseries:
        inner = timeseries.SerializeToString() + b"\x1a\x02\x08\x01"
        raw += b"\x0a" + bytes([len(inner)]) + inner
    return bytes(raw)


def test_exemplars_and_other_fields_take_the_general_path() -> None:
    t0 = recent()
    request = write_request([({"__name__": "a", "job": "x"}, [(1.0, t0)]), ({"__name__": "b"}, [(2.0, t0)])])
    raw = with_exemplars(request)
    decoder = RemoteWriteDecoder()
    rows = decoded_rows(decoder, raw)
    assert rows == oracle_rows(request.SerializeToString())
    assert [r[0] for r in rows] == ["a", "b"]
    assert not decoder._series  # not cached: those bytes are no label region


def test_the_staleness_bit_pattern_survives_every_path() -> None:
    request = write_request(
        [({"__name__": "up"}, [(STALE_NAN, 1), (math.nan, 2)]), ({"__name__": "x"}, [(STALE_NAN, recent())])]
    )
    decoder = RemoteWriteDecoder()
    for raw in (
        request.SerializeToString(),
        request.SerializeToString(),
        with_exemplars(request),
    ):  # walk, cache, general
        bits = [row[4] for row in decoded_rows(decoder, raw)]
        assert bits[0] == bits[2] == STALE_NAN_BITS
        assert bits[1] != STALE_NAN_BITS


def test_a_malformed_series_is_refused_with_its_index(client: TestClient) -> None:
    request = write_request([({"__name__": "a"}, [(1.0, recent())]), ({"__name__": "b"}, [(2.0, recent())])])
    good, bad = (timeseries.SerializeToString() for timeseries in request.timeseries)
    broken = b"\x0a\x7f" + bad[2:]  # a label field longer than the series
    raw = b"\x0a" + bytes([len(good)]) + good + b"\x0a" + bytes([len(broken)]) + broken
    response = post(client, compress(raw))
    assert response.status_code == 422
    assert "timeseries[1] is not a prometheus.TimeSeries" in response.json()["error"]
    corrupt = bad[:-4] + b"\x12\x7f\x09\x01"  # the sample's own bytes are corrupt
    raw = b"\x0a" + bytes([len(good)]) + good + b"\x0a" + bytes([len(corrupt)]) + corrupt
    response = post(client, compress(raw))
    assert response.status_code == 422
    assert "sample 1 is not a prometheus.Sample" in response.json()["error"]
    assert stored(client).height == 0


def test_the_series_cache_is_bounded_and_starts_over_correctly() -> None:
    decoder = RemoteWriteDecoder(max_series=50)
    now = datetime.now(UTC)
    t0 = ms(now - timedelta(minutes=1))
    for round_ in range(3):
        labels = node_series(120, offset=round_ * 7)
        raw = write_request([(lab, [(float(i), t0)]) for i, lab in enumerate(labels)]).SerializeToString()
        frame = decoder.prepare(raw, now=now, retention_days=90, max_future_seconds=600).batch.frame
        assert len(decoder._series) <= 50
        got = {(row["tags"], row["value"]) for row in frame.iter_rows(named=True)}
        want = {
            (json.dumps({k: v for k, v in sorted(lab.items()) if k != "__name__"}, separators=(",", ":")), float(i))
            for i, lab in enumerate(labels)
        }
        assert got == want


def test_json_ingest_and_remote_write_share_one_flush(tmp_path: Path) -> None:
    """Both doors hand the writer frames of the same dtypes (the writer concatenates them per WAL segment)."""
    settings = Settings(data_dir=tmp_path / "data", insecure_dev=True, flush_seconds=3600)
    with TestClient(create_app(settings)) as client:
        point = {"metric_id": "json.metric", "value": 1, "timestamp": datetime.now(UTC).isoformat()}
        assert client.post("/api/v1/metrics", json={"metrics": [point]}).status_code == 200
        assert post(client, good_body()).status_code == 200
        assert client.app.state.store.flush() == 2  # type: ignore[attr-defined]
    reopened = MetricStore(settings, read_only=True).open()
    try:
        metrics = reopened.query_metrics("*").get_column("metric").cast(pl.String).to_list()
        assert sorted(m for m in metrics if not m.startswith("application.")) == ["good_metric", "json.metric"]
    finally:
        reopened.close()
