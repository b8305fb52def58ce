"""Tests of ``metrics deploy`` without a Prefect server: options, tuning, the children's environment, rendering,
the command line's refusals (bad flag, data directory in use, port taken), and the job table it serves.

Nothing here starts a process: ``Supervisor.start`` is replaced by a function that fails the test.
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import psutil
import pytest

from flows.deployments import GROUPS, JOBS, Job, select_jobs
from metrics import deploy as deploy_module
from metrics.cli import main
from metrics.deploy import (
    INFRASTRUCTURES,
    MODES,
    PROJECT_DIR,
    DeployOptions,
    Tuning,
    auto_tune,
    child_environment,
    deploy,
)
from metrics.errors import ConfigError
from metrics.settings import STORAGE_TYPES, Settings
from metrics.supervisor import InstanceLock, Supervisor

GiB = 2**30
SIGNALS = (signal.SIGINT, signal.SIGTERM)


@pytest.fixture
def no_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail the test if deploy starts any process; check that no child of this process appeared either."""
    before = {process.pid for process in psutil.Process().children(recursive=True)}
    handlers = {sig: signal.getsignal(sig) for sig in SIGNALS}

    def refuse(self: Supervisor, name: str, *args: object, **kwargs: object) -> None:
        raise AssertionError(f"deploy started {name!r}")

    monkeypatch.setattr(Supervisor, "start", refuse)
    yield
    after = {process.pid for process in psutil.Process().children(recursive=True)}
    assert after <= before, f"new child processes: {after - before}"
    assert {sig: signal.getsignal(sig) for sig in SIGNALS} == handlers, "deploy left its signal handlers installed"


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run the command line from an empty folder (no deployments/main.json) with no METRICS_* / PREFECT_* set."""
    for name in list(os.environ):
        if name.startswith(("METRICS_", "PREFECT_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("COLUMNS", "400")  # rich help unwrapped
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def held_port() -> Iterator[int]:
    """A loopback port something listens on for the duration of the test."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield int(holder.getsockname()[1])


# ---------------------------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("field", "value", "flag", "allowed"),
    [
        ("mode", "bogus", "--mode", MODES),
        ("mode", "Development", "--mode", MODES),
        ("storage", "sqlite", "--storage", STORAGE_TYPES),
        ("infrastructure", "nomad", "--infrastructure", INFRASTRUCTURES),
        ("infrastructure", "", "--infrastructure", INFRASTRUCTURES),
    ],
)
def test_options_refuse_unsupported_values(field: str, value: str, flag: str, allowed: tuple[str, ...]) -> None:
    flag_value: dict[str, Any] = {field: value}
    with pytest.raises(ConfigError) as caught:
        DeployOptions(**flag_value)
    assert str(caught.value) == f"{flag}={value!r} is not supported; allowed: {', '.join(allowed)}"


def test_options_accept_every_supported_combination() -> None:
    for mode in MODES:
        for storage in STORAGE_TYPES:
            for infrastructure in INFRASTRUCTURES:
                assert DeployOptions(mode=mode, storage=storage, infrastructure=infrastructure).mode == mode
    assert (MODES, INFRASTRUCTURES) == (("development", "production"), ("local", "docker", "kubernetes"))


# ---------------------------------------------------------------------------------------------- auto-tune


@pytest.mark.parametrize(
    ("cores", "available", "workers", "batch_size"),
    [
        (1, 0, 1, 10_000),  # no memory to speak of: the floor
        (2, 99_000_000, 2, 10_000),  # 9 900 rows would fit: still the floor
        (2, 100_000_000, 2, 10_000),  # exactly the floor
        (4, GiB, 4, 107_374),  # 1 % of 1 GiB at 100 B a row
        (8, 8 * GiB, 8, 858_993),
        (16, 10**10, 16, 1_000_000),  # exactly the ceiling
        (64, 64 * GiB, 64, 1_000_000),  # the ceiling
        (256, 2**40, 256, 1_000_000),
        (512, GiB, 256, 107_374),  # more cores than METRICS_WORKERS allows: capped
    ],
)
def test_auto_tune(cores: int, available: int, workers: int, batch_size: int) -> None:
    tuning = auto_tune(cores, available)
    assert (tuning.workers, tuning.batch_size) == (workers, batch_size)
    assert tuning.reason.startswith(f"{cores} cores -> {workers} workers; ")
    assert f"batches of {batch_size:,} rows" in tuning.reason
    Settings(batch_size=tuning.batch_size, workers=tuning.workers)  # always settings the system accepts


def test_auto_tune_reads_this_machine() -> None:
    tuning = auto_tune()
    assert tuning.workers == min(os.cpu_count() or 1, 256)
    assert 10_000 <= tuning.batch_size <= 1_000_000


def test_auto_tune_on_a_big_machine_still_deploys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_process: None
) -> None:
    monkeypatch.setattr(deploy_module.os, "cpu_count", lambda: 384)
    lines: list[str] = []
    options = DeployOptions(infrastructure="docker", auto_tune=True, output=tmp_path / "out")
    assert deploy(Settings(data_dir=tmp_path / "data"), options, echo=lines.append) == 0
    assert lines[0].startswith("auto-tune: 384 cores -> 256 workers; ")


# ---------------------------------------------------------------------------------------------- child environment

API = "http://127.0.0.1:4311/api"
BASE = {"PATH": "/usr/bin:/bin", "HOME": "/home/metrics", "LANG": "C.UTF-8", "PREFECT_API_URL": "http://other/api"}


def test_child_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings(data_dir=Path("rel/data"), prefect_port=4311)  # relative: the children get it absolute
    base = dict(BASE)
    env = child_environment(settings, base, api_url=API)
    data = (tmp_path / "rel" / "data").resolve()

    assert base == BASE  # not modified
    for name, value in BASE.items():
        if name != "PREFECT_API_URL":
            assert env[name] == value  # unrelated variables are kept
    assert env["PREFECT_HOME"] == str(data / "prefect")
    assert Path(env["PREFECT_HOME"]).is_absolute()
    assert env["PREFECT_API_URL"] == API  # ours wins over the inherited one
    assert env["PREFECT_UI_API_URL"] == API
    assert env["PREFECT_SERVER_API_HOST"] == "127.0.0.1"
    assert env["PREFECT_SERVER_API_PORT"] == "4311"
    assert env["PREFECT_API_DATABASE_CONNECTION_URL"] == f"sqlite+aiosqlite:///{data / 'prefect' / 'prefect.db'}"
    assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert env["DO_NOT_TRACK"] == "1"
    assert env["METRICS_DATA_DIR"] == str(data)
    assert env["METRICS_PROJECT_DIR"] == str(PROJECT_DIR)
    for absent in ("METRICS_CONFIG", "METRICS_BATCH_SIZE", "METRICS_WORKERS"):
        assert absent not in env


def test_child_environment_with_a_database_url_config_file_and_tuning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    url = "postgresql+asyncpg://prefect:secret@db.internal:5432/prefect"
    settings = Settings(data_dir=tmp_path / "data", prefect_database_url=url, config_file=Path("conf/main.json"))
    tuning = Tuning(batch_size=123_456, workers=3, reason="test")
    env = child_environment(settings, {**BASE, "METRICS_CONFIG": "stale.json"}, api_url=API, tuning=tuning)
    assert env["PREFECT_API_DATABASE_CONNECTION_URL"] == url
    assert env["METRICS_CONFIG"] == str((tmp_path / "conf" / "main.json").resolve())
    assert env["METRICS_BATCH_SIZE"] == "123456"
    assert env["METRICS_WORKERS"] == "3"
    assert Settings.from_env({k: v for k, v in env.items() if k != "METRICS_CONFIG"}).workers == 3


# ---------------------------------------------------------------------------------------------- rendering


@pytest.mark.parametrize(
    ("options", "expected", "command"),
    [
        (DeployOptions(infrastructure="docker"), ["docker-compose.yml", "main.json"], "docker compose -f "),
        (
            DeployOptions(infrastructure="docker", enable_prometheus=True, enable_grafana=True),
            ["docker-compose.yml", "prometheus/prometheus.yml", "grafana/provisioning/datasources/prometheus.yml"],
            "docker compose -f ",
        ),
        (DeployOptions(infrastructure="kubernetes"), ["k8s/"], "kubectl apply -f "),
        (DeployOptions(setup_systemd=True, mode="production"), ["metrics.service"], "sudo cp "),
    ],
    ids=["docker", "docker-monitoring", "kubernetes", "systemd"],
)
def test_render_only_deploys_write_files_and_print_the_command(
    options: DeployOptions, expected: list[str], command: str, tmp_path: Path, no_process: None
) -> None:
    output = tmp_path / "out"
    settings = Settings(data_dir=tmp_path / "data")
    lines: list[str] = []
    assert deploy(settings, replace(options, output=output), echo=lines.append) == 0

    written = [Path(line.removeprefix("wrote ")) for line in lines if line.startswith("wrote ")]
    applies = [line.removeprefix("apply with: ") for line in lines if line.startswith("apply with: ")]
    assert written
    assert lines[: len(written)] == [f"wrote {path}" for path in written]  # files first, the command last
    assert lines[-1] == f"apply with: {applies[-1]}"  # (what to do first, if anything, in between)
    for path in written:
        assert path.is_file()
        assert path.is_relative_to(output)
    names = [path.relative_to(output).as_posix() for path in written]
    for name in expected:
        assert any(n == name or (name.endswith("/") and n.startswith(name)) for n in names), (name, names)
    assert len(applies) == 1
    assert applies[0].startswith(command)
    assert not (settings.prefect_dir / "deploy.lock").exists()  # nothing ran: no lock was even taken


def test_render_goes_to_the_data_directory_by_default(tmp_path: Path, no_process: None) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    lines: list[str] = []
    assert deploy(settings, DeployOptions(infrastructure="kubernetes"), echo=lines.append) == 0
    assert lines
    assert all(
        Path(line.removeprefix("wrote ")).is_relative_to(tmp_path / "data" / "deploy" / "kubernetes")
        for line in lines
        if line.startswith("wrote ")
    )
    assert lines[-1].startswith("apply with: kubectl apply -f ")


def test_systemd_unit_runs_this_interpreter_in_the_chosen_mode(tmp_path: Path, no_process: None) -> None:
    lines: list[str] = []
    options = DeployOptions(setup_systemd=True, mode="production", output=tmp_path / "out")
    assert deploy(Settings(data_dir=tmp_path / "data"), options, echo=lines.append) == 0
    unit = (tmp_path / "out" / "metrics.service").read_text(encoding="utf-8")
    assert "-m metrics.deploy --mode=production" in unit
    assert f"Environment=METRICS_DATA_DIR={tmp_path / 'data'}" in unit
    assert lines[-1].endswith("sudo systemctl daemon-reload && sudo systemctl enable --now metrics.service")


# ---------------------------------------------------------------------------------------------- the command line


def test_cli_refuses_an_unsupported_mode(cli_env: Path, capsys: pytest.CaptureFixture[str], no_process: None) -> None:
    assert main(["deploy", "--mode", "bogus"]) == 1
    captured = capsys.readouterr()
    assert captured.err.strip() == "Error: --mode='bogus' is not supported; allowed: development, production"
    assert captured.out == ""


def test_cli_help_shows_the_example(cli_env: Path, capsys: pytest.CaptureFixture[str], no_process: None) -> None:
    assert main(["deploy", "--help"]) == 0
    out = capsys.readouterr().out
    assert "Example: metrics deploy --mode development" in out
    for flag in ("--mode", "--infrastructure", "--enable-monitoring", "--auto-tune", "--setup-systemd", "--job"):
        assert flag in out


def test_cli_refuses_a_second_deploy_on_the_same_data_directory(
    cli_env: Path, capsys: pytest.CaptureFixture[str], no_process: None
) -> None:
    data = cli_env / "data"
    with InstanceLock(Settings(data_dir=data).prefect_dir):
        assert main(["--data-dir", str(data), "deploy"]) == 1
    captured = capsys.readouterr()
    [error] = captured.err.strip().splitlines()
    assert error.startswith(f"Error: another `metrics deploy` runs on this data directory (pid {os.getpid()}, lock ")
    assert captured.out == ""  # refused before anything began (nothing to stop either)
    assert not (data / "prefect" / "logs").exists()


def test_cli_refuses_a_taken_prefect_port_and_starts_nothing(
    cli_env: Path,
    held_port: int,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    no_process: None,
) -> None:
    monkeypatch.setenv("METRICS_PREFECT_PORT", str(held_port))
    data = cli_env / "data"
    assert main(["--data-dir", str(data), "deploy"]) == 1
    captured = capsys.readouterr()
    [error] = captured.err.strip().splitlines()
    assert error.startswith(f"Error: METRICS_PREFECT_PORT={held_port}: the port is in use on 127.0.0.1")
    with InstanceLock(data / "prefect"):  # the lock was given back
        pass


# ---------------------------------------------------------------------------------------------- the job table


def test_select_jobs_by_group() -> None:
    assert select_jobs() == list(JOBS)
    assert [job.name for job in select_jobs(("monitoring",))] == [
        "collect-system-metrics",
        "scrape-targets",
        "collect-key-audit-logs",
        "health-checks",
        "score-anomalies",
        "forecast-capacity",
        "evaluate-alerts",
    ]
    assert [job.name for job in select_jobs(("maintenance",))] == [
        "train-models",
        "compact-lake",
        "retention-cleanup",
        "backup-lake",
    ]
    assert select_jobs(()) == []
    assert {job.group for job in JOBS} == set(GROUPS)


def test_select_jobs_by_name_keeps_the_given_order_and_ignores_groups() -> None:
    jobs = select_jobs(("monitoring",), ["backup-lake", "collect-system-metrics"])
    assert [job.name for job in jobs] == ["backup-lake", "collect-system-metrics"]


def test_select_jobs_refuses_an_unknown_name_listing_the_known_ones() -> None:
    with pytest.raises(ConfigError) as caught:
        select_jobs(GROUPS, ["compact-lake", "nope"])
    assert str(caught.value) == f"unknown job 'nope'; known jobs: {', '.join(job.name for job in JOBS)}"


def test_job_entrypoint_parsing() -> None:
    job = Job("x", "flows/sub/thing.py:run_it", "compact_interval", "maintenance", "d")
    assert (job.module, job.function) == ("flows.sub.thing", "run_it")


INTERVALS = {
    "system_interval": 7.5,
    "compact_interval": 600.0,
    "retention_interval": 7_200.0,
    "backup_interval": 43_200.0,
    "scrape_interval": 15.0,
    "security_interval": 120.0,
    "health_interval": 10.0,
    "anomaly_interval": 60.0,
    "train_interval": 3600.0,
    "forecast_interval": 900.0,
    "alert_interval": 30.0,
}


@pytest.mark.parametrize("job", JOBS, ids=[job.name for job in JOBS])
def test_each_job(job: Job) -> None:
    path, function = job.entrypoint.split(":")
    assert (PROJECT_DIR / path).is_file()
    assert job.module == path.removesuffix(".py").replace("/", ".")
    assert job.function == function
    assert job.group in GROUPS
    settings = Settings(
        system_interval=INTERVALS["system_interval"],
        compact_interval=INTERVALS["compact_interval"],
        retention_interval=INTERVALS["retention_interval"],
        backup_interval=INTERVALS["backup_interval"],
        scrape_interval=INTERVALS["scrape_interval"],
        security_interval=INTERVALS["security_interval"],
        health_interval=INTERVALS["health_interval"],
        anomaly_interval=INTERVALS["anomaly_interval"],
        train_interval=INTERVALS["train_interval"],
        forecast_interval=INTERVALS["forecast_interval"],
        alert_interval=INTERVALS["alert_interval"],
    )
    assert job.interval(settings) == timedelta(seconds=INTERVALS[job.interval_setting])
    assert job.interval(Settings()) == timedelta(seconds=getattr(Settings(), job.interval_setting))
