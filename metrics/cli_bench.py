"""``metrics bench …``: measure the system on this machine; ``--json`` prints one JSON object on the last line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

bench_app = typer.Typer(
    help="Measure the system on this machine; `--json` prints one JSON object on the last line.\n\n"
    "Example: metrics bench ingest --samples 10000000 --json"
)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


@bench_app.command("ingest")
def bench_ingest_command(
    samples: Annotated[int, typer.Option(help="Samples to generate and ingest.")] = 10_000_000,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON on the last line.")] = False,
    keep: Annotated[Path | None, typer.Option(help="Keep the lake in this folder instead of a temporary one.")] = None,
) -> None:
    """Bulk ingest of a realistic metric mix into durable Parquet: samples/s and bytes per sample.

    Example: metrics bench ingest --samples 10000000 --json
    """
    from metrics.bench import bench_ingest

    figures = bench_ingest(samples, data_dir=keep, console=err)
    _print_figures(figures, as_json)


@bench_app.command("query")
def bench_query_command(
    samples: Annotated[int, typer.Option(help="Samples (100 hosts x 10 cpu metrics, 10 s apart).")] = 10_000_000,
    repeats: Annotated[int, typer.Option(help="Timed runs per query.")] = 30,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON on the last line.")] = False,
    keep: Annotated[Path | None, typer.Option(help="Keep the lake in this folder instead of a temporary one.")] = None,
) -> None:
    """Latency of the standard queries (TSBS cpu-only style), next to plain DuckDB on one sorted file.

    Example: metrics bench query --samples 10000000 --json
    """
    from metrics.bench import bench_query

    figures = bench_query(samples, repeats=repeats, data_dir=keep, console=err)
    _print_figures(figures, as_json)


@bench_app.command("http")
def bench_http_command(
    seconds: Annotated[float, typer.Option(help="Measured time, after one second of warm-up.")] = 20.0,
    concurrency: Annotated[int, typer.Option(help="Concurrent keep-alive connections.")] = 16,
    batch: Annotated[int, typer.Option(help="Samples per request.")] = 1000,
    workers: Annotated[int | None, typer.Option(help="Server worker processes (default: api_workers).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON on the last line.")] = False,
    keep: Annotated[Path | None, typer.Option(help="Keep the lake in this folder instead of a temporary one.")] = None,
) -> None:
    """HTTP JSON ingest through `metrics serve`: accepted samples/s and request latency (p50, p99).

    Example: metrics bench http --seconds 20 --concurrency 16 --json
    """
    from metrics.bench import bench_http

    figures = bench_http(seconds, concurrency=concurrency, batch=batch, workers=workers, data_dir=keep, console=err)
    _print_figures(figures, as_json)


@bench_app.command("flows")
def bench_flows_command(
    runs: Annotated[int, typer.Option(help="Completed scheduled runs to measure.")] = 10,
    interval: Annotated[float, typer.Option(help="Schedule interval of the measured flow, seconds.")] = 5.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON on the last line.")] = False,
) -> None:
    """Time to healthy of `metrics deploy` and the overhead (seconds, memory) of one scheduled flow run.

    Example: metrics bench flows --runs 10 --json
    """
    from metrics.bench import bench_flows

    _print_figures(bench_flows(runs, interval=interval, console=err), as_json)


@bench_app.command("keys")
def bench_keys_command(
    events: Annotated[int, typer.Option(help="KMS events in the generated CloudTrail log set.")] = 1_000_000,
    repeats: Annotated[int, typer.Option(help="Timed parses (the median is reported).")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON on the last line.")] = False,
    keep: Annotated[Path | None, typer.Option(help="Keep logs and lake in this folder instead of a temporary one.")] = (
        None
    ),
) -> None:
    """CloudTrail parsing and collection throughput (events/s), re-run and re-delivery counted once.

    Example: metrics bench keys --events 1000000 --json
    """
    from metrics.bench_keys import bench_keys

    _print_figures(bench_keys(events, parse_repeats=repeats, data_dir=keep, console=err), as_json)


@bench_app.command("key-lag")
def bench_key_lag_command(
    drops: Annotated[int, typer.Option(help="CloudTrail files dropped, one at a random moment per interval.")] = 3,
    interval: Annotated[float, typer.Option(help="Schedule of collect-key-audit-logs, seconds (default 300).")] = (
        300.0
    ),
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON on the last line.")] = False,
) -> None:
    """Seconds from a new CloudTrail file to its metrics being queryable, under `metrics deploy`'s schedule.

    Example: metrics bench key-lag --drops 3 --interval 300 --json
    """
    from metrics.bench_keys import bench_key_lag

    _print_figures(bench_key_lag(drops, interval=interval, console=err), as_json)


@bench_app.command("anomalies")
def bench_anomalies_command(
    hosts: Annotated[int, typer.Option(help="Hosts, each a group of metrics following one daily load.")] = 10,
    metrics: Annotated[int, typer.Option(help="Gauges per host.")] = 4,
    days: Annotated[int, typer.Option(help="Days of five-minute history per series.")] = 14,
    workers: Annotated[int | None, typer.Option(help="Training processes compared with one (default: cores).")] = (
        None
    ),
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON on the last line.")] = False,
) -> None:
    """Anomaly model training (one process vs several, same models) and scoring time over a generated lake.

    Example: metrics bench anomalies --hosts 10 --metrics 4 --days 14 --json
    """
    from metrics.bench_anomalies import bench_anomalies

    _print_figures(bench_anomalies(hosts, metrics, days, workers=workers, console=err), as_json)


@bench_app.command("alerts")
def bench_alerts_command(
    samples: Annotated[int, typer.Option(help="Samples in the lake (the ingest benchmark's mix).")] = 10_000_000,
    rules: Annotated[int, typer.Option(help="Threshold rules, each on one series.")] = 10_000,
    cycles: Annotated[int, typer.Option(help="Steady cycles timed after the first.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON on the last line.")] = False,
) -> None:
    """One evaluation cycle of many threshold rules over a large lake; notification latency to a local Slack hook.

    Example: metrics bench alerts --samples 10000000 --rules 10000 --json
    """
    from metrics.bench_alerts import bench_alerts

    _print_figures(bench_alerts(samples, rules, cycles=cycles, console=err), as_json)


@bench_app.command("dashboards")
def bench_dashboards_command(
    samples: Annotated[
        int, typer.Option(help="Samples in the lake (the demo mix, one a minute per series).")
    ] = 10_000_000,
    loads: Annotated[int, typer.Option(help="Timed loads of each dashboard per range.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON on the last line.")] = False,
) -> None:
    """Time to first render of each dashboard in headless Chromium (p50 over the loads), at 1 hour and 30 days.

    Needs Debian's chromium package. Example: metrics bench dashboards --samples 10000000 --json
    """
    from metrics.bench_dashboards import bench_dashboards

    _print_figures(bench_dashboards(samples, loads=loads, console=err), as_json)


def _print_figures(figures: dict[str, Any], as_json: bool) -> None:
    if not as_json:
        out.print_json(data=figures)
    print(json.dumps(figures))
