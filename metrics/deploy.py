"""``metrics deploy`` / ``python -m metrics.deploy``: bring the whole system up with one command.

Development mode (what ``make run`` does) starts a Prefect server on
127.0.0.1 with its SQLite database under ``data/prefect``, waits until it is
healthy, and serves every scheduled job (``flows/deployments.py``) from one
runner process. Production mode registers ``deployments/prefect.yaml`` with
``prefect deploy --all`` against a process work pool and starts workers; it
uses an external server when ``PREFECT_API_URL`` is set, or runs one on
PostgreSQL when ``METRICS_PREFECT_DATABASE_URL`` is given. ``--infrastructure
docker|kubernetes`` and ``--setup-systemd`` only render files and print the
command that applies them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import psutil

from metrics.errors import ConfigError
from metrics.settings import STORAGE_TYPES, Settings
from metrics.supervisor import DeployError, InstanceLock, Supervisor, healthy, python_module, require_free_port

MODES = ("development", "production")
INFRASTRUCTURES = ("local", "docker", "kubernetes")
WORK_POOL = "metrics"
PROJECT_DIR = Path(__file__).resolve().parent.parent
PREFECT_FILE = PROJECT_DIR / "deployments" / "prefect.yaml"
MAX_WORKERS = 256  # the most METRICS_WORKERS accepts (see metrics.settings)


@dataclass(frozen=True)
class DeployOptions:
    """The flags of ``metrics deploy`` (see ``metrics deploy --help``).

    Args:
        mode: ``development`` (serve the flows from one process) or ``production`` (work pool and workers).
        storage: the storage backend; only ``lake`` exists.
        infrastructure: ``local`` runs here; ``docker`` and ``kubernetes`` render manifests into ``output``.
        enable_monitoring: serve the collectors (the ``monitoring`` jobs), not just lake maintenance.
        enable_prometheus: also write a Prometheus configuration that scrapes the system.
        enable_grafana: also write a Grafana data-source provisioning file.
        auto_tune: choose batch size and workers from this machine's cores and memory.
        setup_systemd: write a systemd unit running this command, and print how to install it.
        output: where rendered files go (default ``<data_dir>/deploy/<infrastructure>``).
        jobs: serve only these jobs (by name); empty means all of the enabled groups.
    """

    mode: str = "development"
    storage: str = "lake"
    infrastructure: str = "local"
    enable_monitoring: bool = True
    enable_prometheus: bool = False
    enable_grafana: bool = False
    auto_tune: bool = False
    setup_systemd: bool = False
    output: Path | None = None
    jobs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for flag, value, allowed in (
            ("--mode", self.mode, MODES),
            ("--storage", self.storage, STORAGE_TYPES),
            ("--infrastructure", self.infrastructure, INFRASTRUCTURES),
        ):
            if value not in allowed:
                raise ConfigError(f"{flag}={value!r} is not supported; allowed: {', '.join(allowed)}")


@dataclass(frozen=True)
class Tuning:
    """Batch size and worker count for this machine, with the reason."""

    batch_size: int
    workers: int
    reason: str


def auto_tune(cores: int | None = None, available_bytes: int | None = None) -> Tuning:
    """Workers = cores; batch size = rows that fit in 1 % of available memory at ~100 B a row (10 k … 1 M).

    Workers are capped at :data:`MAX_WORKERS`, the most ``METRICS_WORKERS`` accepts, so a big machine is not refused.
    """
    cores = cores or os.cpu_count() or 1
    workers = min(cores, MAX_WORKERS)
    available = available_bytes if available_bytes is not None else psutil.virtual_memory().available
    batch_size = int(min(1_000_000, max(10_000, available * 0.01 // 100)))
    reason = (
        f"{cores} cores -> {workers} workers; {available / 2**30:.1f} GiB available -> "
        f"batches of {batch_size:,} rows (1 % of it at ~100 B a buffered row)"
    )
    return Tuning(batch_size=batch_size, workers=workers, reason=reason)


def child_environment(
    settings: Settings, base: Mapping[str, str], *, api_url: str, tuning: Tuning | None = None
) -> dict[str, str]:
    """The environment of every child: Prefect pointed at our server, telemetry off, our settings made absolute."""
    env = dict(base)
    database = settings.prefect_database_url or f"sqlite+aiosqlite:///{(settings.prefect_dir / 'prefect.db').resolve()}"
    env.update(
        {
            "PREFECT_HOME": str(settings.prefect_dir.resolve()),
            "PREFECT_API_URL": api_url,
            "PREFECT_UI_API_URL": api_url,
            "PREFECT_SERVER_API_HOST": "127.0.0.1",
            "PREFECT_SERVER_API_PORT": str(settings.prefect_port),
            "PREFECT_API_DATABASE_CONNECTION_URL": database,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
            # The runner asks for due runs every 10 s by default: too coarse for a 30 s collector.
            "PREFECT_RUNNER_POLL_FREQUENCY": "2",
            "GX_ANALYTICS_ENABLED": "false",
            "METRICS_DATA_DIR": str(settings.data_dir.resolve()),
            "METRICS_PROJECT_DIR": str(PROJECT_DIR),
            "PYTHONUNBUFFERED": "1",
        }
    )
    if settings.config_file is not None:
        env["METRICS_CONFIG"] = str(settings.config_file.resolve())
    if tuning is not None:
        env["METRICS_BATCH_SIZE"] = str(tuning.batch_size)
        env["METRICS_WORKERS"] = str(tuning.workers)
    return env


def render_files(settings: Settings, options: DeployOptions, echo: Callable[[str], None]) -> None:
    """Write the manifests, monitoring configs or systemd unit the options ask for, and print how to apply them."""
    from metrics import manifests

    output = options.output or settings.data_dir / "deploy" / options.infrastructure
    rendered = []
    if options.infrastructure != "local" or options.enable_prometheus or options.enable_grafana:
        rendered.append(
            manifests.render(
                settings,
                options.infrastructure,
                output,
                prometheus=options.enable_prometheus,
                grafana=options.enable_grafana,
            )
        )
    if options.setup_systemd:
        rendered.append(
            manifests.render_systemd(
                settings,
                options.output or settings.data_dir / "deploy" / "systemd",
                project_dir=PROJECT_DIR,
                python=Path(sys.executable),
                mode=options.mode,
            )
        )
    for result in rendered:
        for path in result.files:
            echo(f"wrote {path}")
        for note in result.notes:
            echo(note)
        if result.command:
            echo(f"apply with: {result.command}")


def deploy(
    settings: Settings,
    options: DeployOptions,
    *,
    echo: Callable[[str], None] = print,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Run the system in the foreground until SIGINT / SIGTERM (or only render files); return the exit status."""
    tuning = auto_tune() if options.auto_tune else None
    if tuning is not None:
        echo(f"auto-tune: {tuning.reason}")
        settings = replace(settings, batch_size=tuning.batch_size, workers=tuning.workers)
    if (
        options.infrastructure != "local"
        or options.setup_systemd
        or options.enable_prometheus
        or options.enable_grafana
    ):
        render_files(settings, options, echo)
        if options.infrastructure != "local" or options.setup_systemd:
            return 0
    external = settings.prefect_api if options.mode == "production" else None
    api_url = external or f"http://127.0.0.1:{settings.prefect_port}/api"
    ui_url = api_url.removesuffix("/api")
    env = child_environment(settings, os.environ if environ is None else environ, api_url=api_url, tuning=tuning)
    lock = InstanceLock(settings.prefect_dir).acquire()
    supervisor = Supervisor(log_dir=settings.prefect_dir / "logs", env=env, echo=echo)
    try:
        supervisor.install_signal_handlers()
        require_free_port(settings, "api_port")
        if external is None:
            require_free_port(settings, "prefect_port")
            server = supervisor.start(
                "prefect-server",
                python_module(
                    "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(settings.prefect_port)
                ),
                stop_timeout=20,
            )
            seconds = supervisor.wait_healthy(server, f"{api_url}/health")
            echo(f"Prefect server healthy after {seconds:.1f} s")
        elif not healthy(f"{api_url}/health", timeout=10):
            raise DeployError(f"PREFECT_API_URL={api_url!r}: the Prefect server does not answer /health")
        api = _start_api(supervisor, settings)
        _start_jobs(supervisor, settings, options)
        echo(f"HTTP API:    {api}  (OpenAPI at {api}/docs)")
        echo(f"Dashboards:  {api}/  (log in with an API key)")
        if options.mode == "development":
            _print_bootstrap_key(settings, echo)
        echo(f"Prefect UI:  {ui_url}")
        echo(f"Prefect API: {api_url}")
        echo(f"Data:        {settings.data_dir.resolve()}")
        echo(f"Logs:        {supervisor.log_dir.resolve()}")
        echo("Running. Press Ctrl-C (or send SIGTERM) to stop.")
        supervisor.watch()
    finally:
        killed = supervisor.stop()
        supervisor.restore_signal_handlers()  # after stop(): a second Ctrl-C must not interrupt the shutdown
        lock.release()
        if killed:
            echo(f"stopped; had to kill {len(killed)} process(es) that ignored SIGTERM")
        else:
            echo("stopped")
    return 0 if supervisor.stop_reason in ("SIGINT", "SIGTERM") else 1


def _print_bootstrap_key(settings: Settings, echo: Callable[[str], None]) -> None:
    """Create the first admin API key (once per data directory) and show it; later starts say where keys are."""
    from metrics.api.keys import ensure_admin_key

    token = ensure_admin_key(settings)
    if token is None:
        echo("API keys:    metrics keys list / metrics keys create --role reader|writer|admin --name NAME")
    else:
        echo("Admin API key, shown only this once (send it as 'Authorization: Bearer <key>'):")
        echo(f"  {token}")


def _start_api(supervisor: Supervisor, settings: Settings) -> str:
    """Start ``metrics serve`` and wait until its ``/health`` answers; return its base URL."""
    api = supervisor.start("api", python_module("metrics", "serve"), stop_timeout=15)
    scheme = "https" if settings.tls_cert is not None else "http"
    host = "127.0.0.1" if settings.api_host in ("0.0.0.0", "::", "") else settings.api_host
    url = f"{scheme}://{host}:{settings.api_port}"
    seconds = supervisor.wait_healthy(api, f"{url}/health")
    supervisor.echo(f"HTTP API healthy after {seconds:.1f} s")
    return url


def _start_jobs(supervisor: Supervisor, settings: Settings, options: DeployOptions) -> None:
    """Development: one runner serving the jobs. Production: work pool, ``prefect deploy --all``, workers."""
    from flows.deployments import GROUPS, select_jobs

    groups = GROUPS if options.enable_monitoring else tuple(g for g in GROUPS if g != "monitoring")
    jobs = select_jobs(groups, options.jobs)
    if options.mode == "development":
        names = [job.name for job in jobs]
        supervisor.start("flow-runner", python_module("flows.serve", "--limit", str(settings.workers), *names))
        supervisor.echo(f"serving {len(jobs)} deployments: {', '.join(names)}")
        return
    prefect = python_module("prefect", "--no-prompt")
    supervisor.run_once(
        "work-pool", [*prefect, "work-pool", "create", WORK_POOL, "--type", "process", "--overwrite"], timeout=120
    )
    supervisor.run_once(
        "prefect-deploy",
        [*prefect, "deploy", "--all", "--prefect-file", str(PREFECT_FILE)],
        cwd=PROJECT_DIR,
        timeout=300,
    )
    for number in range(1, settings.workers + 1):
        supervisor.start(
            f"worker-{number}",
            [*prefect, "worker", "start", "--pool", WORK_POOL, "--type", "process", "--name", f"metrics-{number}"],
            stop_timeout=20,
        )
    supervisor.echo(f"registered {PREFECT_FILE.name}; worker(s) on pool {WORK_POOL!r}: {settings.workers}")


if __name__ == "__main__":
    from metrics.cli import main

    sys.exit(main(["deploy", *sys.argv[1:]]))
