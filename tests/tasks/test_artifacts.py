"""Artifact helpers: links to the web UI's dashboards, the dashboard of each metric, charts kept as files."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest

from metrics.errors import ValidationError
from metrics.settings import Settings
from tasks.artifacts import (
    DASHBOARDS,
    dashboard_filters,
    dashboard_for,
    dashboard_link,
    dashboard_url,
    publish_chart,
    range_param,
)

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("settings", "name", "params", "expected"),
    [
        (Settings(), "system", {}, "[system dashboard](http://127.0.0.1:8080/dashboards/system)"),
        (
            Settings(api_host="0.0.0.0", api_port=9000),
            "alerts",
            {},
            "[alerts dashboard](http://0.0.0.0:9000/dashboards/alerts)",
        ),
        (
            Settings(dashboard_url="https://metrics.example.com/ui/"),
            "system",
            {"range": "24h", "host": "web-1"},
            "[system dashboard](https://metrics.example.com/ui/dashboards/system?range=24h&host=web-1)",
        ),
        (
            Settings(dashboard_url="https://metrics.example.com"),
            "keys",
            {"key_id": "arn:aws:kms:eu/key 1", "algorithm": None},  # None is left out
            "[keys dashboard](https://metrics.example.com/dashboards/keys?key_id=arn%3Aaws%3Akms%3Aeu%2Fkey%201)",
        ),
        (
            Settings(),
            "performance",
            {"range": "7d"},
            "[performance dashboard](http://127.0.0.1:8080/dashboards/performance?range=7d)",
        ),
    ],
)
def test_dashboard_link(settings: Settings, name: str, params: dict[str, str | None], expected: str) -> None:
    assert dashboard_link(settings, name, **params) == expected


def test_parameters_are_encoded_so_the_link_stays_one_markdown_link() -> None:
    url = dashboard_url(Settings(), "security", host="a)b&c=d [x]")
    assert not set(url.split("?")[1]) & set(")[] &")
    assert dict(parse_qsl(urlsplit(url).query)) == {"host": "a)b&c=d [x]"}


def test_every_dashboard_has_a_link_and_an_unknown_one_is_refused() -> None:
    assert DASHBOARDS == ("system", "security", "keys", "performance", "alerts")
    for name in DASHBOARDS:
        assert urlsplit(dashboard_url(Settings(), name)).path == f"/dashboards/{name}"
    with pytest.raises(ValidationError, match="unknown dashboard 'cpu'"):
        dashboard_link(Settings(), "cpu")


@pytest.mark.parametrize(
    ("metric", "dashboard"),
    [
        ("system.cpu.usage_total", "system"),
        ("system.disk.usage_percent", "system"),
        ("crypto.key.access_count", "keys"),
        ("crypto.key.days_since_rotation", "keys"),
        ("crypto.kms.call_latency_seconds", "keys"),
        ("crypto.key.unauthorized_access", "security"),
        ("crypto.key.policy_violations", "security"),
        ("crypto.key.security_events", "security"),
        ("application.api.auth_failures", "security"),
        ("application.api.response_time", "performance"),
        ("application.api.error_rate", "performance"),
        ("http.request.latency_seconds", "performance"),
        ("health.target.response_time_ms", "performance"),
        ("forecast.days_to_exhaustion", "system"),
        ("app.latency", "system"),
        ("up", "system"),
        ("", "system"),
    ],
)
def test_the_dashboard_of_a_metric(metric: str, dashboard: str) -> None:
    assert dashboard_for(metric) == dashboard
    assert dashboard_for(metric) in DASHBOARDS


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        ({}, {}),
        ({"host": "web-1", "mount": "/"}, {"host": "web-1"}),
        (
            {"key_id": "k1", "algorithm": "AES_256", "principal": "bob", "host": ""},
            {"key_id": "k1", "algorithm": "AES_256"},
        ),
    ],
)
def test_dashboard_filters_keep_the_tags_a_dashboard_filters_by(tags: dict[str, str], expected: dict[str, str]) -> None:
    assert dashboard_filters(tags) == expected


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (3600, "1h"),
        (86_400, "1d"),
        (72 * 3600, "3d"),
        (7 * 86_400, "7d"),
        (36 * 3600, "36h"),
        (5400, "90m"),
        (45, "45s"),
        (0.2, "1s"),
    ],
)
def test_range_param(seconds: float, expected: str) -> None:
    assert range_param(seconds) == expected


def test_a_chart_is_kept_as_a_file_outside_a_run_too(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    target = publish_chart(settings, "some-chart", PNG + b"rest", filename="some.png", title="T", description="d")
    assert target == tmp_path / "charts" / "some.png"
    assert target.read_bytes() == PNG + b"rest"
