"""The Prometheus scrape collector against loopback targets: exact stored rows, honor_labels, failing targets."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from metrics.errors import ConfigError, ScrapeError
from metrics.settings import Settings, split_scrape_target
from storage.store import MetricStore
from tasks.collect.prometheus import (
    DEFAULT_JOB,
    ScrapeSummary,
    ScrapeTarget,
    merge_labels,
    parse_exposition,
    resolve_targets,
    scrape_targets,
)
from tests.exposition import ExpositionServer, Route
from tests.servers import free_port

# A sample with its own timestamp (milliseconds, as the text format has them), two minutes ago.
OWN_TS_MS = (int(time.time()) - 120) * 1000 + 123
EXPOSITION = rf"""# HELP http_requests_total The total number of HTTP requests.
# TYPE http_requests_total counter
http_requests_total{{method="post",code="200"}} 1027 {OWN_TS_MS}
http_requests_total{{method="post",code="400"}} 3
# HELP jobs_processed A counter exposed without the _total suffix.
# TYPE jobs_processed counter
jobs_processed 7
# TYPE process_open_fds gauge
process_open_fds 12
# TYPE request_duration_seconds histogram
request_duration_seconds_bucket{{le="0.1"}} 2
request_duration_seconds_bucket{{le="1"}} 5
request_duration_seconds_bucket{{le="+Inf"}} 6
request_duration_seconds_sum 4.25
request_duration_seconds_count 6
# TYPE rpc_latency_seconds summary
rpc_latency_seconds{{quantile="0.5"}} 0.05
rpc_latency_seconds{{quantile="0.99"}} NaN
rpc_latency_seconds_sum 1.5
rpc_latency_seconds_count 30
untyped_metric{{path="C:\\dir\\\"quoted\"\nline",empty=""}} 42
# TYPE federated_up gauge
federated_up{{job="node",instance="10.0.0.1:9100"}} 1
""".encode()
# The scraped rows other than `up` & co.: metric, type, the sample's own tags, value ("ts" checked apart).
EXPECTED = [
    ("federated_up", "gauge", {"job": "node", "instance": "10.0.0.1:9100"}, 1.0),
    ("http_requests_total", "counter", {"method": "post", "code": "200"}, 1027.0),
    ("http_requests_total", "counter", {"method": "post", "code": "400"}, 3.0),
    ("jobs_processed", "counter", {}, 7.0),
    ("process_open_fds", "gauge", {}, 12.0),
    ("request_duration_seconds_bucket", "histogram", {"le": "+Inf"}, 6.0),
    ("request_duration_seconds_bucket", "histogram", {"le": "0.1"}, 2.0),
    ("request_duration_seconds_bucket", "histogram", {"le": "1"}, 5.0),
    ("request_duration_seconds_count", "histogram", {}, 6.0),
    ("request_duration_seconds_sum", "histogram", {}, 4.25),
    ("rpc_latency_seconds", "summary", {"quantile": "0.5"}, 0.05),
    ("rpc_latency_seconds", "summary", {"quantile": "0.99"}, math.nan),
    ("rpc_latency_seconds_count", "summary", {}, 30.0),
    ("rpc_latency_seconds_sum", "summary", {}, 1.5),
    ("untyped_metric", "gauge", {"path": 'C:\\dir\\"quoted"\nline'}, 42.0),
]
META = ("up", "scrape_duration_seconds", "scrape_samples_scraped")
OWN_TS_OPENMETRICS = int(time.time()) - 60 + 0.5  # OpenMetrics timestamps are in seconds
OPENMETRICS = f"""# TYPE build info
build_info{{version="1.2"}} 1
# TYPE events counter
events_total 5 {OWN_TS_OPENMETRICS}
# EOF
""".encode()


@pytest.fixture
def target_server() -> Iterator[ExpositionServer]:
    """Loopback targets: the exposition above, garbage, an HTTP error, a slow one, a protected one, OpenMetrics."""
    routes = {
        "/metrics": Route(EXPOSITION),
        "/garbage": Route(b"<html><body>Not metrics</body></html>\n", content_type="text/html"),
        "/error": Route(b"boom\n", status=500),
        "/slow": Route(EXPOSITION, delay=2.0),
        "/protected": Route(b"# TYPE secret_gauge gauge\nsecret_gauge 1\n", token="s3cret"),
        "/openmetrics": Route(OPENMETRICS, content_type="application/openmetrics-text; version=1.0.0; charset=utf-8"),
        "/bad-values": Route(b"ok_gauge 1\nnan_gauge NaN\nok_gauge 2\n"),
    }
    with ExpositionServer(routes) as server:
        yield server


@pytest.fixture
def scrape_settings(settings: Settings) -> Settings:
    """Settings with a short scrape timeout (the slow target answers after 2 s)."""
    return replace(settings, scrape_timeout=0.5)


@pytest.mark.parametrize("url", ["http://a..b/metrics", "http://\u2603.invalid/metrics", "http://" + "a" * 70 + "/m"])
def test_a_host_name_that_cannot_be_resolved_or_encoded_is_down(scrape_settings: Settings, url: str) -> None:
    (result,) = scrape_targets.fn(scrape_settings, [url]).targets
    assert not result.up
    assert result.error


class _AnyDuration:
    def __eq__(self, other: object) -> bool:
        return isinstance(other, float) and other >= 0

    def __hash__(self) -> int:
        return 0

    def __repr__(self) -> str:
        return "<any duration>"


ANY = _AnyDuration()


def rows(settings: Settings, where: str = "TRUE") -> list[dict[str, Any]]:
    with MetricStore(settings, read_only=True).open(background_flush=False) as store:
        frame = store.sql(f"SELECT metric, type, tags, value, ts FROM samples WHERE {where} ORDER BY metric, tags")
    return [{**row, "tags": json.loads(row["tags"])} for row in frame.iter_rows(named=True)]


def meta(settings: Settings, job: str) -> dict[str, float]:
    """``up``, ``scrape_duration_seconds``, ``scrape_samples_scraped`` of one job."""
    found = rows(settings, "metric IN ('up', 'scrape_duration_seconds', 'scrape_samples_scraped')")
    return {row["metric"]: row["value"] for row in found if row["tags"]["job"] == job}


def same(left: float, right: float) -> bool:
    return (math.isnan(left) and math.isnan(right)) or left == right


@pytest.mark.parametrize("honor_labels", [False, True])
def test_every_sample_is_stored_with_its_type_tags_and_timestamp(
    scrape_settings: Settings, target_server: ExpositionServer, honor_labels: bool
) -> None:
    target = ScrapeTarget(target_server.url(), job="app", honor_labels=honor_labels, labels={"env": "ci"})
    before = datetime.now(UTC)
    summary = scrape_targets.fn(scrape_settings, [target])
    after = datetime.now(UTC)
    instance = f"127.0.0.1:{target_server.port}"
    assert target.instance == instance
    (result,) = summary.targets
    assert (result.up, result.samples, result.stored, result.rejected, result.error) == (True, 15, 15, 0, None)
    assert summary.stored == 15 + len(META)
    stored = rows(scrape_settings, "metric NOT IN ('up', 'scrape_duration_seconds', 'scrape_samples_scraped')")
    target_labels = {"job": "app", "instance": instance, "env": "ci"}
    expected = []
    for metric, kind, tags, value in EXPECTED:
        if metric == "federated_up":  # the conflicting job/instance labels
            tags = (
                {**tags, "env": "ci"}
                if honor_labels
                else {**target_labels, "exported_job": "node", "exported_instance": "10.0.0.1:9100"}
            )
        else:
            tags = {**tags, **target_labels}
        expected.append((metric, kind, tags, value))
    expected.sort(key=lambda row: (row[0], json.dumps(row[2], sort_keys=True, separators=(",", ":"))))
    assert [(r["metric"], r["type"], r["tags"]) for r in stored] == [(m, k, t) for m, k, t, _ in expected]
    assert all(same(r["value"], v) for r, (*_, v) in zip(stored, expected, strict=True))
    own = [r["ts"] for r in stored if r["tags"].get("code") == "200"]
    assert own == [datetime.fromtimestamp(OWN_TS_MS / 1000, UTC)]  # the sample's own timestamp, to the ms
    scrape_times = {r["ts"] for r in stored if r["tags"].get("code") != "200"}
    (scraped_at,) = scrape_times  # one scrape time for the rest, taken when the scrape started
    assert before <= scraped_at <= after
    figures = meta(scrape_settings, "app")
    assert figures["up"] == 1.0
    assert figures["scrape_samples_scraped"] == 15.0
    assert 0 < figures["scrape_duration_seconds"] == pytest.approx(result.duration_seconds)


def test_the_request_asks_for_the_text_format_with_the_timeout(
    scrape_settings: Settings, target_server: ExpositionServer
) -> None:
    scrape_targets.fn(scrape_settings, [target_server.url()])
    (headers,) = target_server.requests
    assert headers["Accept"].startswith("text/plain;version=0.0.4")
    assert headers["X-Prometheus-Scrape-Timeout-Seconds"] == "0.5"
    assert "Authorization" not in headers


def test_a_dead_target_is_down_and_the_others_are_stored(
    scrape_settings: Settings, target_server: ExpositionServer
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/metrics"
    summary = scrape_targets.fn(scrape_settings, [f"dead={dead}", f"live={target_server.url()}"])
    down, live = summary.targets
    assert (down.job, down.up, down.samples, down.stored) == ("dead", False, 0, 0)
    assert down.error is not None
    assert "ConnectError" in down.error
    assert live.up
    assert live.stored == 15
    assert summary.up == 1
    assert meta(scrape_settings, "dead") == {"up": 0.0, "scrape_samples_scraped": 0.0, "scrape_duration_seconds": ANY}
    assert {r["metric"] for r in rows(scrape_settings) if r["tags"]["job"] == "dead"} == set(META)


@pytest.mark.parametrize(
    ("path", "error"),
    [
        ("/garbage", "not the Prometheus exposition format"),
        ("/error", "HTTP 500"),
        ("/slow", "timed out after 0.5 s"),
        ("/missing", "HTTP 404"),
    ],
)
def test_a_failing_target_is_down_with_the_reason(
    scrape_settings: Settings, target_server: ExpositionServer, path: str, error: str
) -> None:
    started = time.monotonic()
    summary = scrape_targets.fn(scrape_settings, [f"bad={target_server.url(path)}"])
    assert time.monotonic() - started < 2.0  # the slow target is given up on at the timeout
    (result,) = summary.targets
    assert not result.up
    assert result.error is not None
    assert error in result.error
    assert result.row()["error"] == result.error
    assert meta(scrape_settings, "bad")["up"] == 0.0
    assert {r["metric"] for r in rows(scrape_settings)} == set(META)  # nothing of the body is stored


def test_a_bearer_token_from_the_settings_is_sent(scrape_settings: Settings, target_server: ExpositionServer) -> None:
    url = target_server.url("/protected")
    without = scrape_targets.fn(scrape_settings, [url])
    assert not without.targets[0].up
    assert "HTTP 401" in (without.targets[0].error or "")
    with_token = replace(scrape_settings, scrape_bearer_token="s3cret")
    summary = scrape_targets.fn(with_token, [url])
    assert summary.targets[0].up
    assert target_server.requests[-1]["Authorization"] == "Bearer s3cret"
    assert "s3cret" not in repr(resolve_targets(with_token, [url]))
    assert "s3cret" not in json.dumps(summary.to_dict())


def test_an_openmetrics_answer_is_parsed_as_openmetrics(
    scrape_settings: Settings, target_server: ExpositionServer
) -> None:
    summary = scrape_targets.fn(scrape_settings, [f"om={target_server.url('/openmetrics')}"])
    assert summary.targets[0].up, summary.targets[0].error
    found = {(r["metric"], r["type"], r["value"]) for r in rows(scrape_settings) if r["metric"] not in META}
    assert found == {("build_info", "gauge", 1.0), ("events_total", "counter", 5.0)}
    (event,) = rows(scrape_settings, "metric = 'events_total'")
    assert event["ts"] == datetime.fromtimestamp(OWN_TS_OPENMETRICS, UTC)


def test_samples_the_model_refuses_are_counted_and_the_rest_stored(
    scrape_settings: Settings, target_server: ExpositionServer
) -> None:
    summary = scrape_targets.fn(scrape_settings, [f"vals={target_server.url('/bad-values')}"])
    (result,) = summary.targets
    assert result.up
    assert (result.samples, result.stored, result.rejected) == (3, 1, 2)  # NaN gauge refused, duplicate dropped
    assert result.rejection is not None
    assert "duplicate" in result.rejection or "NaN" in result.rejection
    assert summary.rejected == 1  # the store refused one row; the duplicate never reached it
    stored = rows(scrape_settings, "metric = 'ok_gauge'")
    assert [r["value"] for r in stored] == [1.0]  # the first of two samples of one series, as Prometheus keeps
    assert meta(scrape_settings, "vals")["scrape_samples_scraped"] == 3.0


def test_no_targets_means_nothing_is_done(scrape_settings: Settings) -> None:
    summary = scrape_targets.fn(scrape_settings)
    assert summary == ScrapeSummary()
    assert not scrape_settings.lake_dir.exists()  # the store was never opened


# --- pieces -------------------------------------------------------------------------------------


def test_conflicting_labels_follow_prometheus_honor_labels() -> None:
    target = {"job": "app", "instance": "h:1"}
    scraped = {"job": "node", "exported_job": "older", "instance": "", "mode": "idle"}
    assert merge_labels(scraped, target, honor_labels=True) == {
        "job": "node",
        "exported_job": "older",
        "instance": "h:1",  # an empty scraped label is no label: the target's applies
        "mode": "idle",
    }
    assert merge_labels(scraped, target, honor_labels=False) == {
        "job": "app",
        "exported_job": "older",
        "exported_exported_job": "node",
        "instance": "h:1",
        "mode": "idle",
    }


def test_a_counter_keeps_the_name_it_was_exposed_with() -> None:
    text = "# TYPE a counter\na 1\n# TYPE b_total counter\nb_total 2\n"
    assert [(s.name, s.type.value) for s in parse_exposition(text)] == [("a", "counter"), ("b_total", "counter")]


def test_a_malformed_exposition_raises_a_scrape_error() -> None:
    with pytest.raises(ScrapeError, match="exposition format"):
        parse_exposition('metric{label="unterminated} 1\n')


@pytest.mark.parametrize(
    ("text", "job", "url"),
    [
        ("http://127.0.0.1:9100/metrics", None, "http://127.0.0.1:9100/metrics"),
        ("node=http://127.0.0.1:9100/metrics", "node", "http://127.0.0.1:9100/metrics"),
        (" api = https://h/metrics?format=text", None, None),
        ("api=https://h/m?x=1", "api", "https://h/m?x=1"),
        ("https://h/m?x=1", None, "https://h/m?x=1"),
    ],
)
def test_target_strings(text: str, job: str | None, url: str | None) -> None:
    if url is None:
        with pytest.raises(ConfigError, match="METRICS_SCRAPE_TARGETS"):
            split_scrape_target(text)
    else:
        assert split_scrape_target(text) == (job, url)


@pytest.mark.parametrize("text", ["ftp://h/metrics", "node=", "127.0.0.1:9100", "http://h:99999/metrics", "a b"])
def test_a_bad_target_fails_at_start_naming_the_variable(text: str) -> None:
    with pytest.raises(ConfigError, match=r"METRICS_SCRAPE_TARGETS: .* is not a scrape target"):
        Settings.from_env({"METRICS_SCRAPE_TARGETS": f"http://ok:1/m,{text}"})


def test_scrape_settings_come_from_the_environment() -> None:
    env = {
        "METRICS_SCRAPE_TARGETS": "node=http://127.0.0.1:9100/metrics, http://[::1]:8080/metrics",
        "METRICS_SCRAPE_TIMEOUT": "3",
        "METRICS_SCRAPE_HONOR_LABELS": "true",
        "METRICS_SCRAPE_BEARER_TOKEN": "tok",
    }
    settings = Settings.from_env(env)
    assert (settings.scrape_timeout, settings.scrape_honor_labels) == (3.0, True)
    assert "tok" not in repr(settings)
    node, local = resolve_targets(settings)
    assert (node.job, node.instance, node.honor_labels, node.bearer_token) == ("node", "127.0.0.1:9100", True, "tok")
    assert (local.job, local.instance) == (DEFAULT_JOB, "[::1]:8080")
    assert ScrapeTarget("https://user:pw@h/m").display_url == "https://h/m"
    assert ScrapeTarget("https://h/m").instance == "h:443"
