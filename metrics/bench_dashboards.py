"""``metrics bench dashboards``: time to first render of each dashboard in headless Chromium, on a 10 M-sample lake.

The lake holds the demo's mix (system, latency and counter series, one sample a
minute for about a month), compacted as the hourly compaction leaves it (the
last half hour still in raw files), plus the demo's key audit logs. The API
runs as ``metrics serve``; Chromium (Debian's ``/usr/bin/chromium``, driven by
Playwright) logs in once, then loads each dashboard once (``first_load_ms``:
the closed days read from Parquet) and ``loads`` times more per range (the
rollup cache has them). The time is the page's own
``dashboard-rendered`` performance mark: from the start of navigation until
every panel has drawn (or said it has no data), HTML, scripts and every panel
query included. The end-to-end test drives the browser with the same helpers.
"""

from __future__ import annotations

import shutil
import statistics
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from metrics.web.boards import DASHBOARDS

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
RENDER_TIMEOUT_MS = 60_000
RAW_TAIL = timedelta(minutes=30)


@dataclass(frozen=True)
class Render:
    """One load of a dashboard: milliseconds to the rendered mark, and each panel's state and point count."""

    ms: float
    panels: dict[str, tuple[str, int]]


def chromium_path() -> str | None:
    """The system Chromium (Debian's package), or None when it is not installed."""
    return next((path for path in CHROMIUM_PATHS if Path(path).is_file()), shutil.which("chromium"))


def launch(executable: str) -> tuple[Any, Browser]:
    """Start Playwright and a headless Chromium; returns (playwright, browser) — stop both when done."""
    from playwright.sync_api import sync_playwright

    playwright = sync_playwright().start()
    browser = playwright.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
    return playwright, browser


def login(page: Page, base: str, credential: str, target: str = "/dashboards/system") -> None:
    """Log in through the form, as a person would; the page ends on ``target``."""
    page.goto(f"{base}{target}")
    page.fill("#credential", credential)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}{target}*")


def open_dashboard(page: Page, url: str, *, reload: bool = False) -> Render:
    """Load a dashboard page and wait until every panel has drawn; the time and what each panel showed."""
    if reload:
        page.reload()
    else:
        page.goto(url)
    page.wait_for_selector("main[data-rendered]", timeout=RENDER_TIMEOUT_MS)
    return Render(_mark(page), panel_states(page))


def wait_rerendered(page: Page) -> Render:
    """After a control changed (range, filter): wait for the new render."""
    page.wait_for_selector("main[data-rendered]", timeout=RENDER_TIMEOUT_MS)
    return Render(float(page.get_attribute("main", "data-rendered") or 0), panel_states(page))


def panel_states(page: Page) -> dict[str, tuple[str, int]]:
    """Each panel's ``data-state`` (ready, empty, error) and ``data-points``."""
    found = page.eval_on_selector_all(
        "article.panel", "els => els.map(e => [e.dataset.panel, e.dataset.state, Number(e.dataset.points || 0)])"
    )
    return {name: (state, points) for name, state, points in found}


def _mark(page: Page) -> float:
    started = page.evaluate("performance.getEntriesByName('dashboard-rendered')[0].startTime")
    return round(float(started), 1)


def slowest_panel(base: str, token: str, name: str, span: str) -> dict[str, Any]:
    """The panel of a dashboard whose query took longest on the server (``elapsed_ms``), asked one at a time."""
    import httpx

    timings: dict[str, float] = {}
    with httpx.Client(base_url=base, headers={"X-API-Key": token}, timeout=60, trust_env=False) as client:
        for panel in DASHBOARDS[name].panels:
            answer = client.get(f"/api/v1/dashboards/{name}/panels/{panel.id}", params={"start": span})
            answer.raise_for_status()
            timings[panel.id] = float(answer.json()["elapsed_ms"])
    slowest = max(timings, key=lambda panel: timings[panel])
    return {"panel": slowest, "ms": timings[slowest], "all_panels_ms": round(sum(timings.values()), 1)}


def build_lake(folder: Path, samples: int, console: Console) -> dict[str, Any]:
    """A lake of ``samples`` demo-mix samples, one a minute per series ending now, plus key logs.

    Compacted, as the hourly compaction leaves it, except the last :data:`RAW_TAIL`, which is in raw files.
    """
    import polars as pl

    from metrics.auditgen import write_demo_logs
    from metrics.bench import ingest_mix
    from metrics.settings import Settings
    from storage.store import MetricStore
    from tasks.collect.keys import collect_key_events

    now = datetime.now(UTC)
    series = 240
    console.log(f"generating {samples:,} samples ({series} series, one a minute)")
    frame = ingest_mix(samples, series=series, end=now, interval_s=60)
    settings = Settings(data_dir=folder, batch_size=1_000_000)
    started = time.perf_counter()
    # As the hourly compaction leaves a lake: compacted up to a while ago, the last half hour still raw files.
    recent = pl.col("ts") >= now - RAW_TAIL
    with MetricStore(settings).open(background_flush=False) as store:
        console.log("ingesting and compacting")
        stored = store.ingest_frame(frame.filter(~recent)).stored
        store.flush()
    logs = write_demo_logs(folder / "demo", now=now, hours=24)
    for source, path in (("cloudtrail", logs.cloudtrail), ("vault", logs.vault)):
        collect_key_events(settings, source, [path])
    with MetricStore(settings).open(background_flush=False) as store:
        store.compact(validate=False)
        stored += store.ingest_frame(frame.filter(recent)).stored
        store.flush()
    first = frame.get_column("ts").min()
    assert isinstance(first, datetime)
    return {
        "samples": stored,
        "series": series,
        "days": round((now - first) / timedelta(days=1), 1),
        "build_seconds": round(time.perf_counter() - started, 1),
    }


def bench_dashboards(
    samples: int = 10_000_000,
    *,
    loads: int = 5,
    ranges: tuple[str, ...] = ("1h", "30d"),
    data_dir: Path | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Time to first render, p50 and max over ``loads`` loads, of every dashboard at each range."""
    from metrics.api.keys import close_key_stores, create_key
    from metrics.bench import _workdir
    from metrics.loadgen import ApiServer
    from metrics.settings import Settings

    console = console or Console(stderr=True)
    executable = chromium_path()
    if executable is None:
        raise RuntimeError("Chromium is not installed: apt-get install chromium (Debian's package)")
    with _workdir(data_dir) as folder:
        lake = build_lake(folder, samples, console)
        _, token = create_key(Settings(data_dir=folder), "bench-viewer", "reader")
        close_key_stores()
        server = ApiServer(folder, workers=1, env={"METRICS_SELF_METRICS_INTERVAL": "5"}).start()
        playwright, browser = launch(executable)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            login(page, server.url, token)
            figures: dict[str, Any] = {}
            for name in DASHBOARDS:
                for span in ranges:
                    url = f"{server.url}/dashboards/{name}?range={span}"
                    # The first load reads the closed days from Parquet (and fills the rollup cache); the next
                    # ones, as a refresh or another person's visit would, find them kept.
                    first = open_dashboard(page, url)
                    renders = [open_dashboard(page, url, reload=True) for _ in range(loads)]
                    times = [render.ms for render in renders]
                    last = renders[-1].panels
                    figures[f"{name}@{span}"] = {
                        "p50_ms": round(statistics.median(times), 1),
                        "max_ms": max(times),
                        "first_load_ms": first.ms,
                        "panels": len(last),
                        "panels_with_data": sum(1 for state, _ in last.values() if state == "ready"),
                        "slowest_panel": slowest_panel(server.url, token, name, span),
                    }
                    console.log(f"{name} {span}: p50 {figures[f'{name}@{span}']['p50_ms']} ms")
        finally:
            browser.close()
            playwright.stop()
            server.stop()
    return {"lake": lake, "loads": loads, "dashboards": figures}
