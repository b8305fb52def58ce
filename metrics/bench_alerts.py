"""``metrics bench alerts``: one evaluation cycle of many threshold rules over a large lake, and notification latency.

**Cycle.** The lake holds ``samples`` of the ingest benchmark's realistic mix
(5,000 series, 10 s apart, ending now; compacted as the hourly job leaves
it). ``rules`` threshold rules each watch one series — its metric by a
literal pattern, its ``host`` and device or key by tag matchers, as rules of
a large Prometheus setup do — with a mix of comparisons, durations (0 to
10 min), aggregations (the sample itself, ``avg``/``max`` over a window, a
counter's ``rate``) and thresholds near each series' level, so that a share
of them pend and fire. The first cycle (every firing alert is new: states,
outbox and ``alert_events`` written) and the median of the steady cycles
after it are reported, with the time spent judging the samples (the DuckDB
queries and the state machine) apart from the rest.

**Latency.** A breaching sample is ingested through the store, and the time
until a local HTTP receiver standing in for Slack's webhook holds the
message is measured with the cycle run at once (the processing latency);
under the default schedule a sample also waits for the next run (the
``alert_interval``, 60 s: 30 s on average) and its group's ``group_wait``.
"""

from __future__ import annotations

import gc
import json
import statistics
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from rich.console import Console

from metrics.bench import _workdir, ingest_mix
from metrics.settings import Settings
from storage.store import MetricStore

AGGREGATION_MIX = (("last", 0.0, 0.6), ("avg", 300.0, 0.2), ("max", 60.0, 0.1))
DURATIONS = (0.0, 60.0, 300.0, 600.0)


def bench_alerts(
    samples: int = 10_000_000,
    rules: int = 10_000,
    *,
    cycles: int = 5,
    data_dir: Path | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Time evaluation cycles of ``rules`` threshold rules over ``samples`` samples, and the notification latency."""
    from alerts.engine import AlertEvaluator
    from alerts.routing import Route, Routing
    from alerts.store import AlertStore

    say = (console or Console(stderr=True)).log
    with _workdir(data_dir) as folder:
        (folder / "rules.yaml").write_text("rules: []\n")
        (folder / "remediation.yaml").write_text("actions: {}\n")
        settings = Settings(
            data_dir=folder / "data",
            batch_size=1_000_000,
            alert_rules_file=folder / "rules.yaml",
            remediation_file=folder / "remediation.yaml",
        )
        store = MetricStore(settings).open(background_flush=False)
        try:
            now = datetime.now(UTC).replace(microsecond=0)
            say(f"writing {samples:,} samples and compacting")
            frame = ingest_mix(samples, end=now - timedelta(seconds=10))
            stored = store.ingest_frame(frame).stored
            del frame  # what the flow's process would not hold either
            store.flush()
            store.compact()
            alerts = AlertStore(settings)
            chosen = generated_rules(store, rules, now)
            say(f"adding {len(chosen):,} rules")
            alerts.add_rules(chosen)
            routing = Routing(Route(channels=("slack",), group_wait=0.0, group_interval=0.0))
            evaluator = AlertEvaluator(settings, store, alerts=alerts, routing=routing)
            gc.collect()
            say(f"{cycles + 1} evaluation cycles")
            first = evaluator.evaluate(now)
            steady = [evaluator.evaluate(now + timedelta(seconds=10 * (i + 1))) for i in range(cycles)]
            latency = notification_latency(settings, store)
        finally:
            store.close()
    seconds = [cycle.seconds for cycle in steady]
    return {
        "rules": len(chosen),
        "samples": stored,
        "seconds": round(statistics.median(seconds), 4),
        "evaluate_seconds": round(statistics.median(c.evaluate_seconds for c in steady), 4),
        "first_cycle_seconds": round(first.seconds, 4),
        "cycles": [round(s, 4) for s in seconds],
        "series_groups_observed": first.observed,
        "firing": first.firing,
        "pending": first.pending,
        "notifications_first_cycle": first.notifications,
        **latency,
    }


def generated_rules(store: MetricStore, count: int, now: datetime) -> list[Any]:
    """``count`` rules, each on one series (round robin), thresholds near the series' level of the last 10 min."""
    from alerts.rules import AlertRule

    levels = store.sql(
        "SELECT series_id, any_value(metric) AS metric, any_value(tags) AS tags, any_value(type) AS type, "
        "median(value) AS level FROM samples WHERE ts > ? GROUP BY series_id ORDER BY series_id",
        [now - timedelta(minutes=10)],
    )
    rng = np.random.default_rng(3)
    rows = levels.to_dicts()
    made = []
    for index in range(count):
        series = rows[index % len(rows)]
        tags = json.loads(series["tags"])
        matchers = [f"{name}={tags[name]}" for name in ("host", "device", "key_id") if name in tags]
        aggregation, window = "last", 0.0
        if series["type"] == "counter":
            aggregation, window = "rate", 300.0
        else:
            pick = rng.random()
            for name, seconds, share in AGGREGATION_MIX:
                if pick < share:
                    aggregation, window = name, seconds
                    break
                pick -= share
        level = float(series["level"])
        if aggregation == "rate":
            level = level / 1e5  # a rate is far below the counter's total: most rate rules fire
        made.append(
            AlertRule(
                rule_id=f"bench_{index:05d}",
                name=f"Bench rule {index}",
                metric_pattern=series["metric"].replace(".", r"\."),
                threshold_value=round(level * float(rng.choice([0.9, 1.0, 1.1])), 3),
                comparison=str(rng.choice([">", ">", ">=", "<"])),
                duration_seconds=float(rng.choice(DURATIONS)),
                aggregation=aggregation,
                window_seconds=window,
                matchers=tuple(matchers),
                priority=str(rng.choice(["LOW", "MEDIUM", "HIGH", "CRITICAL"])),  # type: ignore[arg-type]
            )
        )
    return made


def notification_latency(settings: Settings, store: MetricStore, runs: int = 5) -> dict[str, Any]:
    """Seconds from a breaching sample being stored to a local Slack webhook holding the message (cycle run at once)."""
    from alerts.engine import AlertEvaluator
    from alerts.notify.slack import SlackNotifier
    from alerts.outbox import Outbox
    from alerts.routing import Route, Routing
    from alerts.rules import AlertRule
    from alerts.store import AlertStore

    arrived: list[float] = []
    lock = threading.Condition()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with lock:
                arrived.append(time.perf_counter())
                lock.notify_all()
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    own = replace(settings, data_dir=settings.data_dir.parent / "latency")
    alerts = AlertStore(own)
    alerts.add_rules([AlertRule("latency", "Latency probe", metric_pattern=r"probe\.value", threshold_value=90)])
    slack = SlackNotifier(webhook_url=f"http://127.0.0.1:{server.server_address[1]}/services/T/B/x", timeout=5)
    routing = Routing(Route(channels=("slack",), group_wait=0.0, group_interval=0.0))  # no grouping: each at once
    timings = []
    probe = MetricStore(own).open(background_flush=False)
    try:
        for run in range(runs):
            moment = datetime.now(UTC)
            value = 95.0 if run % 2 == 0 else 10.0  # firing, resolved, firing, …: each run one notification
            started = time.perf_counter()
            probe.ingest_frame(
                pl.DataFrame(
                    {"ts": [moment], "metric": ["probe.value"], "value": [value]},
                    schema_overrides={"ts": pl.Datetime("us", "UTC")},
                )
            )
            probe.flush()
            AlertEvaluator(own, probe, alerts=alerts, routing=routing).evaluate(moment)
            Outbox(alerts, {"slack": slack}).dispatch()
            with lock:
                lock.wait_for(partial(_reached, arrived, run + 1), timeout=10)
            timings.append(arrived[run] - started)
            time.sleep(0.05)
    finally:
        probe.close()
        server.shutdown()
        server.server_close()
    processing = statistics.median(timings)
    interval = settings.alert_interval
    group_wait = 30.0  # the default route of deployments/alert-routing.yaml (CRITICAL: 10 s)
    return {
        "latency_processing_seconds": round(processing, 4),
        "latency_default_schedule_seconds": {
            "p50": round(settings.flush_seconds / 2 + interval / 2 + group_wait + processing, 1),
            "max": round(settings.flush_seconds + interval + group_wait + processing, 1),
            "critical_p50": round(settings.flush_seconds / 2 + interval / 2 + 10.0 + processing, 1),
        },
    }


def _reached(items: list[float], count: int) -> bool:
    return len(items) >= count
