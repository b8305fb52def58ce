"""The ``metrics`` command line: a thin layer over :class:`storage.store.MetricStore`.

Every command has help text with an example (``metrics COMMAND --help``).
Domain errors print ``Error: …`` and exit with status 1, never a traceback.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import polars as pl
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from metrics.cli_alerts import alerts_app, rules_app
from metrics.cli_bench import bench_app
from metrics.cli_collect import collect_app, keys_report_command
from metrics.cli_forecast import capacity, forecast
from metrics.cli_keys import keys_app
from metrics.cli_models import anomalies, correlations, detect, eval_app, train
from metrics.errors import MetricsError, ValidationError
from metrics.settings import Settings
from metrics.timestamps import looks_like_duration, parse_duration, parse_timestamp

app = typer.Typer(
    name="metrics",
    help="Metrics System: collect, store, query and analyse metrics of cryptographic-key infrastructure.\n\n"
    "Example: metrics query 'crypto.key.*' --since 1h --agg rate --interval 5m",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
app.add_typer(bench_app, name="bench")
app.add_typer(keys_app, name="keys")
app.add_typer(collect_app, name="collect")
app.command("keys-report")(keys_report_command)
app.command("detect")(detect)
app.command("anomalies")(anomalies)
app.command("correlations")(correlations)
app.command("train")(train)
app.command("forecast")(forecast)
app.command("capacity")(capacity)
app.add_typer(eval_app, name="eval")
app.add_typer(rules_app, name="rules")
app.add_typer(alerts_app, name="alerts")

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


class _State:
    data_dir: Path | None = None


state = _State()


@app.callback()
def _main(
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="Data directory (default: METRICS_DATA_DIR or ./data).")
    ] = None,
) -> None:
    """Metrics System command line."""
    state.data_dir = data_dir


def settings() -> Settings:
    """Settings from the environment, with ``--data-dir`` applied."""
    overrides: dict[str, Any] = {}
    if state.data_dir is not None:
        overrides["data_dir"] = state.data_dir
    return Settings.from_env(None, **overrides)


@contextmanager
def open_store(*, read_only: bool = False) -> Iterator[Any]:
    """Open the lake for one command and close it afterwards."""
    from storage.store import MetricStore

    store = MetricStore(settings(), read_only=read_only)
    store.open(background_flush=False)
    try:
        yield store
    finally:
        store.close()


def parse_when(text: str | None, *, now: datetime) -> datetime | None:
    """A point in time: a duration ago (``1h``) or an absolute ISO 8601 / epoch timestamp."""
    if text is None:
        return None
    if looks_like_duration(text):
        return now - parse_duration(text)
    return parse_timestamp(text)


def parse_tags(items: list[str] | None) -> dict[str, list[str]] | None:
    """``k=v`` options into a filter; repeating a key means any of the values."""
    if not items:
        return None
    tags: dict[str, list[str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValidationError(f"--tag: {item!r} is not key=value")
        tags.setdefault(key.strip(), []).append(value.strip())
    return tags


def emit(frame: pl.DataFrame, fmt: str) -> None:
    """Print a frame as a table, CSV or JSON (one array of objects)."""
    fmt = fmt.lower()
    if fmt == "csv":
        sys.stdout.write(frame.write_csv())
    elif fmt == "json":  # NaN and infinities are not JSON: they print as null
        finite = frame.with_columns(
            pl.when(pl.col(c).is_finite()).then(pl.col(c)).otherwise(None).alias(c)
            for c, dtype in frame.schema.items()
            if dtype.is_float()
        )
        sys.stdout.write(json.dumps(finite.to_dicts(), default=_json_default, allow_nan=False) + "\n")
    elif fmt == "table":
        table = Table(show_lines=False, header_style="bold")
        for name in frame.columns:
            table.add_column(name, overflow="fold")
        for row in frame.iter_rows():
            table.add_row(*("" if v is None else str(v) for v in row))
        out.print(table)
        out.print(f"{frame.height} rows")
    else:
        raise ValidationError(f"--format: {fmt!r} is not one of table, csv, json")


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


FormatOption = Annotated[str, typer.Option("--format", "-f", help="Output format: table, csv or json.")]


@app.command()
def ingest(
    files: Annotated[list[Path], typer.Argument(help="CSV, Parquet, NDJSON or JSON batch files (.gz allowed).")],
    show_errors: Annotated[int, typer.Option(help="How many rejected rows to list per file.")] = 20,
) -> None:
    """Store samples from files; prints rows stored, rows rejected with reasons, samples/s.

    Example: metrics ingest samples.csv batch.json events.ndjson.gz
    """
    from metrics.files import check_file, count_rows_hint

    for path in files:  # refuse a bad file list before anything is stored
        check_file(path)
    total_stored = 0
    with (
        open_store() as store,
        Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err
        ) as progress,
    ):
        for path in files:
            task = progress.add_task(path.name, total=count_rows_hint(path))
            result = store.ingest_file(path, progress=lambda n, t=task: progress.advance(t, n))
            store.flush()
            progress.update(
                task, completed=result.stored + len(result.rejected), total=result.stored + len(result.rejected)
            )
            total_stored += result.stored
            rate = f"{result.samples_per_second:,.0f} samples/s" if result.seconds else ""
            out.print(f"{path}: {result.stored} rows stored, {len(result.rejected)} rejected  {rate}")
            for rejection in result.rejected[:show_errors]:
                out.print(f"  row {rejection.index}: {rejection.reason}")
            if len(result.rejected) > show_errors:
                out.print(f"  … and {len(result.rejected) - show_errors} more")
    out.print(f"{total_stored}")


@app.command()
def query(
    pattern: Annotated[str, typer.Argument(help="Metric name glob, e.g. 'crypto.key.*'.")],
    since: Annotated[str, typer.Option(help="Start: a duration ago (1h, 7d) or an ISO 8601 time.")] = "1h",
    until: Annotated[str | None, typer.Option(help="End (default now): duration ago or ISO 8601 time.")] = None,
    agg: Annotated[
        str | None, typer.Option(help="Aggregation: avg, min, max, sum, count, last, rate, increase, p50, p95, p99.")
    ] = None,
    interval: Annotated[str, typer.Option(help="Bucket width for --agg, e.g. 1m, 5m, 1h.")] = "1m",
    tag: Annotated[list[str] | None, typer.Option(help="Tag filter key=value (repeatable).")] = None,
    group_by: Annotated[
        list[str] | None, typer.Option(help="Group --agg results by these tags (repeatable); default per series.")
    ] = None,
    per_metric: Annotated[bool, typer.Option(help="Group --agg results per metric (all series together).")] = False,
    limit: Annotated[int | None, typer.Option(help="At most this many raw rows.")] = None,
    fmt: FormatOption = "table",
) -> None:
    """Query raw samples or bucketed aggregates.

    Example: metrics query 'system.cpu.*' --since 6h --agg avg --interval 5m --tag host=web-1 --format csv
    """
    now = datetime.now(UTC)
    start, end = parse_when(since, now=now), parse_when(until, now=now)
    tags = parse_tags(tag)
    with open_store(read_only=True) as store:
        if agg is None:
            frame = store.query_metrics(pattern, start, end, tags, limit=limit)
        else:
            groups = list(group_by) if group_by else ([] if per_metric else None)
            frame = store.query_aggregated(pattern, agg, interval, start, end, groups, tags)
    emit(frame, fmt)


@app.command()
def sql(
    statement: Annotated[
        str, typer.Argument(help="DuckDB SQL over the views samples, series, rollups_1m, rollups_1h.")
    ],
    fmt: FormatOption = "table",
) -> None:
    """Run ad-hoc SQL over the lake.

    Example: metrics sql "SELECT metric, count(*) FROM samples GROUP BY metric" --format csv
    """
    with open_store(read_only=True) as store:
        emit(store.sql(statement), fmt)


@app.command()
def compact(
    no_validate: Annotated[bool, typer.Option("--no-validate", help="Skip the data-quality suite.")] = False,
    fmt: FormatOption = "table",
) -> None:
    """Merge each day's small files into one sorted file, validate it and rebuild its rollups.

    Example: metrics compact
    """
    with open_store() as store:
        days = store.lake.partitions("samples")
        with Progress(
            TextColumn("compacting"), BarColumn(), MofNCompleteColumn(), console=err, transient=True
        ) as progress:
            task = progress.add_task("compact", total=len(days))
            results = store.compact(validate=not no_validate, progress=lambda _d: progress.advance(task))
    rows = [
        {
            **{k: v for k, v in r.to_dict().items() if k not in ("validation", "corrupt_files")},
            "corrupt": len(r.corrupt_files),
        }
        for r in results
    ]
    for r in results:
        for note in r.corrupt_files:
            err.print(f"{r.day}: unreadable file moved to quarantine: {note}", markup=False)
    frame = pl.DataFrame(
        rows,
        schema={
            "day": pl.String,
            "files_before": pl.Int64,
            "files_after": pl.Int64,
            "rows": pl.Int64,
            "bytes_before": pl.Int64,
            "bytes_after": pl.Int64,
            "quarantined": pl.Int64,
            "skipped_files": pl.Int64,
            "corrupt": pl.Int64,
        },
    )
    emit(frame, fmt)


@app.command()
def cleanup(
    older_than: Annotated[
        str | None, typer.Option(help="Drop partitions older than this (default METRICS_RETENTION_DAYS), e.g. 90d.")
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="Only list what would be removed.")] = False,
) -> None:
    """Apply retention: drop (or, with METRICS_ARCHIVE=true, archive) old day partitions.

    Example: metrics cleanup --older-than 90d --dry-run
    """
    age = parse_duration(older_than) if older_than else None
    with open_store() as store:
        result = store.cleanup(age, dry_run=dry_run)
    verb = "would remove" if dry_run else ("archived" if result.archived else "removed")
    out.print(
        f"cutoff {result.cutoff.isoformat()}: {verb} {len(result.partitions)} partitions, {result.bytes_freed} bytes"
    )
    for name in result.partitions:
        out.print(f"  {name}")


@app.command()
def reindex() -> None:
    """Rebuild every day's compacted file and its 1-minute and 1-hour rollups from the samples.

    Example: metrics reindex
    """
    with open_store() as store:
        results = store.reindex()
    out.print(f"rebuilt {len(results)} days: {sum(r.rows for r in results)} samples")


@app.command()
def backup(
    output: Annotated[Path, typer.Option(help="Where to write the backup (.tar.gz), outside the data directory.")],
) -> None:
    """Write a consistent backup (lake, WALs, state, models, settings) with a SHA-256 manifest.

    Example: metrics backup --output /backups/metrics-2026-11-28.tar.gz
    """
    from storage.backup import create_backup

    config = settings()
    with Progress(TextColumn("backing up"), BarColumn(), TimeElapsedColumn(), console=err, transient=True) as progress:
        task = progress.add_task("backup", total=_folder_bytes(config.data_dir))
        result = create_backup(config, output, progress=lambda n: progress.advance(task, n))
    out.print(
        f"{result.files} files, {result.bytes_in / 1e6:.1f} MB -> {result.bytes_out / 1e6:.1f} MB "
        f"in {result.seconds:.1f} s ({result.megabytes_per_second:.0f} MB/s), sha256 {result.sha256}"
    )
    print(result.path)


@app.command()
def restore(
    input_path: Annotated[Path, typer.Option("--input", help="The backup archive to restore.")],
    force: Annotated[bool, typer.Option(help="Replace a data directory that already holds data.")] = False,
) -> None:
    """Verify every checksum of a backup, then restore it into the data directory.

    Example: metrics --data-dir ./data restore --input /backups/metrics-2026-11-28.tar.gz
    """
    from storage.backup import restore_backup

    with Progress(TextColumn("restoring"), BarColumn(), TimeElapsedColumn(), console=err, transient=True) as progress:
        task = progress.add_task("restore", total=None)
        result = restore_backup(input_path, settings(), force=force, progress=lambda n: progress.advance(task, n))
    out.print(
        f"restored {result.files} files ({result.bytes / 1e6:.1f} MB, backup of {result.created_at}) "
        f"in {result.seconds:.1f} s ({result.megabytes_per_second:.0f} MB/s)"
    )


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind (default: METRICS_API_HOST, 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: METRICS_API_PORT, 8080).")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default: METRICS_API_WORKERS, 2).")] = None,
    tls_cert: Annotated[
        Path | None, typer.Option(help="TLS certificate (PEM); with --tls-key serves HTTPS, TLS 1.2+.")
    ] = (None),
    tls_key: Annotated[Path | None, typer.Option(help="TLS private key (PEM).")] = None,
    insecure_dev: Annotated[
        bool, typer.Option(help="Accept requests WITHOUT credentials (development only; warns on every start).")
    ] = False,
) -> None:
    """Run the HTTP API (ingest, query, remote-write, /health, /metrics; OpenAPI at /docs) until Ctrl-C.

    Example: metrics serve --host 127.0.0.1 --port 8080 --tls-cert cert.pem --tls-key key.pem
    """
    from dataclasses import replace

    from metrics.api.server import serve as run_server

    config = settings()
    if insecure_dev:
        config = replace(config, insecure_dev=True)
    if tls_cert is not None or tls_key is not None:  # both or neither: the settings refuse one alone
        config = replace(config, tls_cert=tls_cert, tls_key=tls_key)
    run_server(config, host=host, port=port, workers=workers)


@app.command()
def deploy(
    mode: Annotated[str, typer.Option(help="development (serve flows here) or production (work pool + workers).")] = (
        "development"
    ),
    storage: Annotated[str, typer.Option(help="Storage backend (only: lake).")] = "lake",
    infrastructure: Annotated[
        str, typer.Option(help="local runs here; docker / kubernetes render manifests and print the apply command.")
    ] = "local",
    enable_monitoring: Annotated[
        bool, typer.Option("--enable-monitoring/--disable-monitoring", help="Serve the collectors too.")
    ] = True,
    enable_prometheus: Annotated[
        bool, typer.Option(help="Also write a Prometheus config scraping the system.")
    ] = False,
    enable_grafana: Annotated[bool, typer.Option(help="Also write Grafana's data-source provisioning.")] = False,
    auto_tune: Annotated[bool, typer.Option(help="Batch size and workers from this machine's cores and memory.")] = (
        False
    ),
    setup_systemd: Annotated[
        bool, typer.Option(help="Write a systemd unit for this command and print how to install it.")
    ] = (False),
    output: Annotated[Path | None, typer.Option(help="Where rendered files go (default: DATA_DIR/deploy/...).")] = None,
    job: Annotated[list[str] | None, typer.Option(help="Serve only this job (repeatable).")] = None,
) -> None:
    """Start the Prefect server and serve every scheduled flow; stop it all with Ctrl-C or SIGTERM.

    Example: metrics deploy --mode development   (also: python -m metrics.deploy --mode=development)
    """
    from metrics.deploy import DeployOptions
    from metrics.deploy import deploy as run_deploy

    options = DeployOptions(
        mode=mode,
        storage=storage,
        infrastructure=infrastructure,
        enable_monitoring=enable_monitoring,
        enable_prometheus=enable_prometheus,
        enable_grafana=enable_grafana,
        auto_tune=auto_tune,
        setup_systemd=setup_systemd,
        output=output,
        jobs=tuple(job or ()),
    )
    code = run_deploy(settings(), options, echo=lambda line: out.print(line, markup=False, highlight=False))
    if code:
        raise typer.Exit(code)


@app.command()
def demo(
    hours: Annotated[float, typer.Option(help="Hours of history to generate when the lake is empty.")] = 6.0,
    series: Annotated[int, typer.Option(help="Number of series in the generated mix.")] = 300,
) -> None:
    """Run the system on embedded defaults: fill the lake with realistic metrics, compact, query.

    Generates key-usage, system and latency metrics up to now (continuing after the
    newest stored sample on a second run), stores them through the bulk path,
    compacts and validates the day partitions, and prints a few standard queries.

    Example: metrics demo --hours 6
    """
    from datetime import timedelta

    from metrics.bench import INTERVAL_S, ingest_mix

    now = datetime.now(UTC)
    with open_store() as store:
        newest = store.sql("SELECT max(ts) AS newest FROM samples").item()
        start = newest if newest is not None else now - timedelta(hours=hours)
        points = int((now - start).total_seconds() // INTERVAL_S)
        if points > 0:
            frame = ingest_mix(points * series, series=series, end=now)
            # Key metrics come from the demo's audit logs (below), never from generated numbers.
            frame = frame.filter(~pl.col("metric").cast(pl.String).str.starts_with("crypto.key."))
            result = store.ingest_frame(frame)
            store.flush()
            out.print(f"stored {result.stored:,} samples ({result.samples_per_second:,.0f} samples/s)")
        _demo_key_logs(settings(), now, hours)
        with Progress(
            TextColumn("compacting"), BarColumn(), MofNCompleteColumn(), console=err, transient=True
        ) as progress:
            days = store.lake.partitions("samples")
            task = progress.add_task("compact", total=len(days))
            compacted = store.compact(progress=lambda _d: progress.advance(task))
        for item in compacted:
            out.print(
                f"compacted {item.day}: {item.files_before} files -> 1, {item.rows:,} rows, "
                f"{item.bytes_after / max(item.rows, 1):.2f} bytes/sample, {item.quarantined} quarantined"
            )
        out.rule("Key operations in the last hour, top 5 keys (from the demo's CloudTrail and Vault logs)")
        ops = store.query_aggregated(
            "crypto.key.*_ops", "increase", "1h", now - timedelta(hours=1), now, ["source", "key_id"]
        )
        top = ops.group_by("source", "key_id").agg(pl.col("value").sum().alias("operations"))
        emit(top.sort("operations", descending=True).head(5), "table")
        out.rule("Average memory use per host, 1-hour buckets (first 5 hosts)")
        memory = store.query_aggregated(
            "system.memory.usage_percent", "avg", "1h", now - timedelta(hours=3), now, ["host"]
        )
        emit(memory.filter(pl.col("host").is_in(memory.get_column("host").unique().sort().head(5).implode())), "table")
        out.rule("Stored samples per metric")
        emit(store.sql("SELECT metric, count(*) AS samples FROM samples GROUP BY metric ORDER BY metric"), "table")
    data_dir = settings().data_dir
    out.print(
        f"\nThe lake is in {data_dir}/lake, the demo's audit logs in {data_dir}/demo. Try:\n"
        f"  metrics keys-report\n"
        f"  metrics query 'crypto.key.*_ops' --since 1h --agg rate --interval 5m --group-by source\n"
        f"  metrics query 'system.cpu.*' --since 1h --agg avg --interval 5m\n"
        f'  metrics sql "SELECT metric, count(*) FROM samples GROUP BY ALL"\n'
        f"  duckdb {settings().duckdb_path}   (views: samples, series, rollups_1m, rollups_1h)"
    )


def _demo_key_logs(config: Settings, now: datetime, hours: float) -> None:
    """Write (or continue) the demo's CloudTrail and Vault logs under DATA_DIR/demo and collect them."""
    from metrics.auditgen import write_demo_logs
    from tasks.collect.keys import collect_key_events

    logs = write_demo_logs(config.data_dir / "demo", now=now, hours=hours)
    out.print(f"wrote {logs.cloudtrail_files} CloudTrail files and {logs.vault_lines} Vault audit lines")
    for source, path in (("cloudtrail", logs.cloudtrail), ("vault", logs.vault)):
        summary = collect_key_events(config, source, [path])
        out.print(
            f"collected {source}: {summary.events:,} new events, {summary.keys_total} keys, "
            f"{summary.violations} policy violations, {summary.samples:,} samples",
            markup=False,
        )


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``metrics`` command; returns the exit status."""
    try:
        app(args=argv, prog_name="metrics")  # standalone: usage errors exit with status 2
    except MetricsError as exc:
        err.print(f"Error: {exc}", markup=False, highlight=False)
        return 1
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


def run() -> None:
    """Console-script wrapper that exits with :func:`main`'s status."""
    sys.exit(main())
