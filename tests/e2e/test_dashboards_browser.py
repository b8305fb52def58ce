"""The dashboards end to end in headless Chromium (Debian's package, driven by Playwright) on the demo's lake.

One module-scoped site: ``metrics demo`` fills a lake (6 h of system, latency and
key metrics from its audit logs), the anomaly and forecast tasks run over it,
alert rules are evaluated every 10 minutes of that history (alerts fire and
resolve), and the API runs under uvicorn. The browser logs in, opens every
dashboard, checks that every panel drew data, changes the time range, acts on
an alert, and saves a screenshot per dashboard under ``build/test-output/dashboards``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import yaml

from metrics.api.keys import close_key_stores, create_key
from metrics.bench_dashboards import chromium_path, launch, login, open_dashboard, wait_rerendered
from metrics.settings import Settings
from metrics.web.boards import DASHBOARDS
from tests.servers import PROJECT, apt_install, scrubbed_env, uvicorn_api

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCREENSHOTS = PROJECT / "build" / "test-output" / "dashboards"
RULES = {
    "rules": [
        {
            "rule_id": "busy_cpu",
            "name": "Busy CPU",
            "metric_pattern": r"system\.cpu\.usage_total",
            "threshold_value": 66,
            "comparison": ">",
            "priority": "HIGH",
            "resolve_threshold": 60,
        },
        {
            "rule_id": "full_memory",
            "name": "Memory filling",
            "metric_pattern": r"system\.memory\.usage_percent",
            "threshold_value": 75,
            "comparison": ">",
            "priority": "MEDIUM",
        },
    ]
}


@dataclass
class Site:
    """The running API over the demo lake, and a key of each role."""

    base: str
    settings: Settings
    tokens: dict[str, str]


def _chromium() -> str:
    found, how = apt_install("chromium", chromium_path)
    if found is None:
        pytest.skip(f"headless Chromium unavailable: {how}")
    return found


def _evaluate_history(settings: Settings) -> None:
    """Evaluate the rules as the flow would have every 10 minutes over the demo's 6 hours, then now."""
    from alerts.engine import AlertEvaluator
    from alerts.store import AlertStore
    from storage.store import MetricStore

    alerts = AlertStore(settings)
    alerts.sync_rules_file()
    store = MetricStore(settings).open(background_flush=False)
    try:
        evaluator = AlertEvaluator(settings, store, alerts=alerts)
        now = datetime.now(UTC)
        for minutes in range(350, -10, -10):
            evaluator.evaluate(now - timedelta(minutes=max(minutes, 0)))
    finally:
        store.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    chromium = _chromium()
    folder = tmp_path_factory.mktemp("dashboards")
    rules = folder / "alert-rules.yaml"
    rules.write_text(yaml.safe_dump(RULES))
    env = scrubbed_env(
        METRICS_DATA_DIR=str(folder / "data"),
        METRICS_ALERT_RULES_FILE=str(rules),
        METRICS_SELF_METRICS_INTERVAL="1",
        METRICS_ANOMALY_METRICS="http.request.latency_seconds,system.cpu.usage_total",
        METRICS_FORECAST_METRICS="system.disk.usage_percent",
        METRICS_FORECAST_MAX_SERIES="40",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
    )
    demo = subprocess.run(
        [sys.executable, "-m", "metrics", "demo", "--hours", "6"],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
    settings = Settings(
        data_dir=folder / "data",
        alert_rules_file=rules,
        anomaly_metrics=("http.request.latency_seconds", "system.cpu.usage_total"),
        forecast_metrics=("system.disk.usage_percent",),
        forecast_max_series=40,
    )
    tokens = {role: create_key(settings, f"{role}-person", role)[1] for role in ("reader", "writer")}
    close_key_stores()
    log = folder / "uvicorn.log"
    with uvicorn_api(log, env, "--no-access-log", start_timeout=120, stop_timeout=30) as (base, _):
        # The API's own figures accumulate (one sample a second) while the analyses run.
        with httpx.Client(base_url=base, timeout=30, trust_env=False) as client:
            batch = {"metrics": [{"metric_id": "e2e.probe", "value": 1.0, "tags": {"host": "e2e"}}]}
            assert client.post("/api/v1/metrics", json=batch, headers={"X-API-Key": tokens["writer"]}).status_code < 300
            assert client.get("/api/v1/dashboards", headers={"X-API-Key": "mk_000000000000_wrong"}).status_code == 401
            from tasks.anomalies import score_anomalies_task
            from tasks.forecasts import forecast_capacity_task

            score_anomalies_task.fn(settings)
            forecast_capacity_task.fn(settings)
            _evaluate_history(settings)
            client.post("/api/v1/metrics", json=batch, headers={"X-API-Key": tokens["writer"]})
            silence = {"matchers": ["host=host-001"], "comment": "e2e maintenance", "duration_seconds": 3600}
            made = client.post("/api/v1/alerts/silences", json=silence, headers={"X-API-Key": tokens["writer"]})
            assert made.status_code == 201
            _wait_for_self_metrics(client, tokens["reader"])
        yield Site(base, settings, tokens)
    close_key_stores()
    assert chromium


def _wait_for_self_metrics(client: httpx.Client, token: str) -> None:
    """Until the ingest counter has samples in three 15-second buckets (at most 60 s)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        answer = client.get(
            "/api/v1/query",
            params={"metric_pattern": "application.ingest.samples", "start_time": "5m", "aggregation": "last",
                    "interval": "15s", "group_by": []},
            headers={"X-API-Key": token},
        )  # fmt: skip
        if answer.status_code == 200 and answer.json()["rows"] >= 3:
            return
        time.sleep(1)
    raise AssertionError("the API stored no self-metrics within 60 s")


@pytest.fixture(scope="module")
def browser(site: Site) -> Iterator[Any]:
    chromium = chromium_path()
    assert chromium is not None
    playwright, opened = launch(chromium)
    try:
        yield opened
    finally:
        opened.close()
        playwright.stop()


def unexpected(message: Any) -> bool:
    """A console error other than the browser's note of a refused login (a 401 is that page's answer)."""
    return bool(message.type == "error" and "status of 401" not in message.text)


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    opened = context.new_page()
    opened.on("pageerror", lambda error: errors.append(str(error)))
    opened.on("console", lambda message: errors.append(message.text) if unexpected(message) else None)
    yield opened
    context.close()
    assert not errors, errors


def test_wrong_credentials_get_the_login_page_not_data(site: Site, page: Any) -> None:
    page.goto(f"{site.base}/dashboards/system")
    assert page.url.startswith(f"{site.base}/login?next=")
    page.fill("#credential", "mk_000000000000_not-a-key")
    page.click("button[type=submit]")
    page.wait_for_load_state()
    assert "/login" in page.url
    assert page.locator("p.error").inner_text() == "That API key or token was not accepted."
    assert page.locator("article.panel").count() == 0
    page.goto(f"{site.base}/dashboards/keys")
    assert "/login" in page.url


def test_every_dashboard_draws_data_and_follows_the_time_range(site: Site, page: Any) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    login(page, site.base, site.tokens["writer"])
    renders: dict[str, float] = {}
    for name, board in DASHBOARDS.items():
        render = open_dashboard(page, f"{site.base}/dashboards/{name}?range=1h")
        renders[name] = render.ms
        assert set(render.panels) == {panel.id for panel in board.panels}
        empty = {panel: state for panel, (state, points) in render.panels.items() if state != "ready" or points < 1}
        assert not empty, f"{name}: panels without data: {empty}"
        assert page.locator("canvas").count() >= sum(1 for p in board.panels if p.kind == "timeseries")
        shot = SCREENSHOTS / f"{name}.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"time to first render (ms): {renders}")

    # anomalies are marked and the disk forecast is drawn on the System dashboard
    page.goto(f"{site.base}/dashboards/system?range=6h")
    wait_rerendered(page)
    legend = page.locator("#panel-disk .u-legend").inner_text()
    assert "forecast" in legend
    assert "80% high" in legend

    # the range picker: a new range re-draws with wider buckets and lands in the URL
    page.goto(f"{site.base}/dashboards/system?range=1h")
    wait_rerendered(page)
    assert "15s buckets" in page.locator("#panel-cpu .note").inner_text()
    page.select_option("#range", "6h")
    page.wait_for_function("() => document.querySelector('#panel-cpu .note').innerText.includes('120s buckets')")
    assert "range=6h" in page.url
    state = wait_rerendered(page)
    assert all(state == "ready" for state, _ in state.panels.values())

    # a custom range: from 3 hours ago to 1 hour ago (the inputs are local time)
    page.select_option("#range", "custom")
    offset = page.evaluate("new Date().getTimezoneOffset()")
    local = datetime.now(UTC) - timedelta(minutes=offset)
    page.fill("#from", (local - timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M"))
    page.fill("#to", (local - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M"))
    page.click("#apply")
    page.wait_for_function("() => document.querySelector('#panel-cpu .note').innerText.includes('30s buckets')")
    assert "start=" in page.url
    assert "end=" in page.url
    assert all(state == "ready" for state, _ in wait_rerendered(page).panels.values())
    page.select_option("#range", "6h")
    wait_rerendered(page)

    # a tag filter narrows every panel to the host
    page.select_option("select.filter[data-tag=host]", index=1)
    page.wait_for_function("() => document.querySelectorAll('#panel-cpu .u-legend .u-series').length === 2")
    assert "host=" in page.url

    # arriving at the login page with a live session (a cross-site link withholds the Strict cookie): on we go
    page.goto(f"{site.base}/login?next=%2Fdashboards%2Fkeys%3Frange%3D6h")
    page.wait_for_url(f"{site.base}/dashboards/keys?range=6h")

    page.goto(f"{site.base}/dashboards/system?range=6h")
    wait_rerendered(page)
    # the query behind a chart, as SQL for `metrics sql`
    page.click("#panel-cpu .show-sql")
    page.wait_for_selector("#panel-cpu .sql:not([hidden])")
    assert "FROM samples" in page.locator("#panel-cpu .sql").inner_text()


def test_alerts_can_be_acknowledged_from_the_dashboard(site: Site, page: Any) -> None:
    login(page, site.base, site.tokens["writer"], "/dashboards/alerts")
    open_dashboard(page, f"{site.base}/dashboards/alerts?range=6h")
    buttons = page.locator("#panel-active button", has_text="Acknowledge")
    before = buttons.count()
    assert before >= 1
    buttons.first.click()
    page.wait_for_function(
        f"() => document.querySelectorAll('#panel-active button.small').length < {before}", timeout=30_000
    )
    assert "writer-person" in page.locator("#panel-active table").inner_text()
    assert "e2e maintenance" in page.locator("#panel-silences").inner_text()
    # a new silence from the form (a writer's session, with the CSRF token), then expired again
    page.fill(".silence-form input[name=matchers]", "host=host-042, rule_id=busy_cpu")
    page.fill(".silence-form input[name=comment]", "from the browser")
    page.click(".silence-form button")
    page.wait_for_function("() => document.querySelector('#panel-silences').innerText.includes('from the browser')")
    assert "host=host-042, rule_id=busy_cpu" in page.locator("#panel-silences table").inner_text()
    row = page.locator("#panel-silences tr", has_text="from the browser")
    row.locator("button", has_text="Expire").click()
    page.wait_for_function(
        "() => [...document.querySelectorAll('#panel-silences tr')]"
        ".some((r) => r.innerText.includes('from the browser') && r.innerText.includes('expired'))"
    )


def test_a_reader_sees_alerts_but_no_buttons(site: Site, page: Any) -> None:
    login(page, site.base, site.tokens["reader"], "/dashboards/alerts")
    render = open_dashboard(page, f"{site.base}/dashboards/alerts?range=6h")
    assert render.panels["active"][1] >= 1
    assert page.locator("#panel-active .body button, #panel-silences .body button").count() == 0
    assert page.locator(".silence-form").count() == 0
