"""``metrics serve``: run the API under uvicorn — worker processes, TLS 1.2+, graceful shutdown.

Each worker process builds its own app from the environment
(:func:`metrics.api.app.create_app_from_env`), so it has its own store and
write-ahead log, as the lake expects of concurrent writers. Options given on
the command line reach the workers as the environment variables the settings
module reads.
"""

from __future__ import annotations

import logging
import os
import shutil
import ssl
from collections.abc import Callable
from pathlib import Path

import uvicorn

from metrics.errors import ConfigError
from metrics.settings import ENV_NAMES, Settings

log = logging.getLogger(__name__)

APP_FACTORY = "metrics.api.app:create_app_from_env"


def tls_context(config: uvicorn.Config, default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
    """uvicorn's TLS context with TLS 1.2 as the oldest protocol it accepts."""
    context = default()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def worker_environment(settings: Settings) -> dict[str, str]:
    """The variables that carry ``settings``' command-line choices to the worker processes."""
    env = {
        ENV_NAMES["data_dir"]: str(settings.data_dir.resolve()),
        ENV_NAMES["insecure_dev"]: "true" if settings.insecure_dev else "false",
    }
    if settings.config_file is not None:
        env["METRICS_CONFIG"] = str(settings.config_file.resolve())
    return env


def check_tls_files(settings: Settings) -> None:
    """Refuse unreadable certificate or key files before starting, naming the variable."""
    for name in ("tls_cert", "tls_key"):
        path: Path | None = getattr(settings, name)
        if path is not None and not path.is_file():
            raise ConfigError(f"{ENV_NAMES[name]}={str(path)!r}: no such file")


def multiprocess_folder(settings: Settings, workers: int) -> Path | None:
    """A fresh, empty folder for prometheus_client's multiprocess files when several workers serve ``/metrics``.

    Without one, each worker's ``/metrics`` would show only its own requests.
    An explicitly configured ``PROMETHEUS_MULTIPROC_DIR`` is used as it is.
    """
    if settings.prometheus_multiproc_dir is not None or workers < 2:
        return None
    folder = settings.data_dir.resolve() / "run" / f"prometheus-{os.getpid()}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def serve(
    settings: Settings,
    *,
    host: str | None = None,
    port: int | None = None,
    workers: int | None = None,
) -> None:
    """Serve the API until SIGINT / SIGTERM (in-flight requests finish, up to 10 s).

    Args:
        settings: the lake, limits, TLS files and whether ``insecure_dev`` is on.
        host: address to bind (default ``settings.api_host``).
        port: port to bind (default ``settings.api_port``).
        workers: worker processes (default ``settings.api_workers``).
    """
    check_tls_files(settings)
    workers = workers or settings.api_workers
    os.environ.update(worker_environment(settings))  # uvicorn's worker processes inherit it
    metrics_folder = multiprocess_folder(settings, workers)
    if metrics_folder is not None:
        os.environ[ENV_NAMES["prometheus_multiproc_dir"]] = str(metrics_folder)
    if settings.insecure_dev:
        log.warning("--insecure-dev: the API accepts requests WITHOUT credentials; never use this in production")
    tls = settings.tls_cert is not None
    try:
        _run(settings, host, port, workers, tls)
    finally:
        if metrics_folder is not None:
            shutil.rmtree(metrics_folder, ignore_errors=True)


def _run(settings: Settings, host: str | None, port: int | None, workers: int, tls: bool) -> None:
    uvicorn.run(
        APP_FACTORY,
        factory=True,
        host=host or settings.api_host,
        port=port or settings.api_port,
        workers=workers,
        ssl_certfile=str(settings.tls_cert) if tls else None,
        ssl_keyfile=str(settings.tls_key) if tls else None,
        ssl_context_factory=tls_context if tls else None,
        access_log=False,  # the audit log records what matters; an access line per ingest batch costs throughput
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=10,
        server_header=False,
    )
