"""Helpers for tests that run servers as subprocesses on loopback: ports, environments, start, wait, stop, apt.

A plain module (not a conftest): tests import what they use, ``from tests.servers import free_port, ...``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx

PROJECT = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"
SCRUBBED_PREFIXES = ("METRICS_", "PREFECT_", "PROMETHEUS_")
UVICORN_API = (sys.executable, "-m", "uvicorn", "metrics.api.app:create_app_from_env", "--factory")
APT_TIMEOUT = 600.0


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def scrubbed_env(prefixes: tuple[str, ...] = SCRUBBED_PREFIXES, **overrides: str) -> dict[str, str]:
    """This process's environment without the variables starting with ``prefixes``, plus ``overrides``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env.update(overrides)
    return env


def spawn(
    command: Sequence[str], log: Path, *, cwd: Path | None = None, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``command`` with its stdout and stderr going to ``log``."""
    with open(log, "wb") as sink:
        return subprocess.Popen(list(command), cwd=cwd, env=env, stdout=sink, stderr=subprocess.STDOUT)


def wait_for_http(
    url: str,
    process: subprocess.Popen[bytes],
    log: Path,
    *,
    timeout: float,
    what: str,
    interval: float = 0.2,
    headers: dict[str, str] | None = None,
) -> None:
    """Poll ``url`` until it answers 200, at most ``timeout`` s; fail with the end of ``log`` if the process exits."""
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, f"{what} exited: {log.read_text(errors='replace')[-3000:]}"
        try:
            if httpx.get(url, headers=headers, timeout=2, trust_env=False).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{what} did not answer {url} within {timeout} s"
        time.sleep(interval)


def stop_process(process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout`` s."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


@contextmanager
def uvicorn_api(
    log: Path, env: Mapping[str, str], *options: str, start_timeout: float, stop_timeout: float
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """The HTTP API under uvicorn on a free loopback port, healthy; yields (base URL, process), stops it afterwards."""
    port = free_port()
    process = spawn([*UVICORN_API, "--host", LOOPBACK, "--port", str(port), *options], log, cwd=PROJECT, env=env)
    base = f"http://{LOOPBACK}:{port}"
    try:
        wait_for_http(f"{base}/health", process, log, timeout=start_timeout, what="the API")
        yield base, process
    finally:
        stop_process(process, stop_timeout)


def _apt(*arguments: str, sudo: bool) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    prefix = ["sudo", "-n", "--preserve-env=DEBIAN_FRONTEND"] if sudo else []
    return subprocess.run(
        [*prefix, "apt-get", "-o", "DPkg::Lock::Timeout=120", *arguments],  # another install may hold the lock
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=APT_TIMEOUT,
        check=False,
    )


def _password_less_sudo() -> bool:
    if shutil.which("sudo") is None:
        return False
    done = subprocess.run(["sudo", "-n", "true"], capture_output=True, timeout=10, check=False)
    return done.returncode == 0


def apt_install(package: str, find: Callable[[], str | None], *, allow_sudo: bool = False) -> tuple[str | None, str]:
    """(the binary ``find`` returns, how it was found) after installing Debian's ``package`` if need be.

    ``apt-get update`` runs only when the plain install fails, each step bounded by ``APT_TIMEOUT``. Where it
    cannot be installed (no apt-get, not root and no password-less sudo if ``allow_sudo``, apt failing or
    too slow) the binary is None and the text says why: the caller's skip reason.
    """
    found = find()
    if found:
        return found, "already installed"
    if shutil.which("apt-get") is None:
        return None, f"{package} is not installed and there is no apt-get to install it"
    sudo = os.geteuid() != 0
    if sudo and not allow_sudo:
        return None, f"{package} is not installed and installing it needs root"
    if sudo and not _password_less_sudo():
        return None, f"{package} is not installed; installing it needs root or password-less sudo (apt-get)"
    started = time.monotonic()
    install = ("install", "-y", "--no-install-recommends", package)
    try:
        done = _apt(*install, sudo=sudo)
        if done.returncode != 0:  # missing or stale package lists: refresh them once and retry
            _apt("update", sudo=sudo)
            done = _apt(*install, sudo=sudo)
    except subprocess.TimeoutExpired as exc:
        step = "update" if "update" in exc.cmd else "install"
        return None, f"apt-get {step} did not finish within {APT_TIMEOUT:.0f} s installing {package}"
    found = find()
    if found is None:
        return None, f"apt-get install {package} failed: {(done.stderr or done.stdout).strip()[-500:]}"
    return found, f"installed with apt in {time.monotonic() - started:.1f} s"


ALERTMANAGER_PACKAGE = "prometheus-alertmanager"  # Debian's package; its binary has the same name


def alertmanager_binary() -> tuple[str | None, str]:
    """(the Alertmanager executable, how it was found), installing Debian's package if need be; None: why not."""
    return apt_install(
        ALERTMANAGER_PACKAGE,
        lambda: shutil.which("prometheus-alertmanager") or shutil.which("alertmanager"),
        allow_sudo=True,
    )


def alertmanager_config(webhook_url: str | None = None, match: str = 'am_test_recorder="yes"') -> str:
    """A minimal Alertmanager config: everything to a receiver that notifies nobody.

    With ``webhook_url``, alerts matching ``match`` go instead to that webhook (firing and resolved, grouped
    per alert, sent quickly), so a test can see what Alertmanager would notify.
    """
    config = 'route:\n  receiver: "null"\n'
    receivers = 'receivers:\n  - name: "null"\n'
    if webhook_url is not None:
        config += (
            "  routes:\n"
            "    - receiver: recorder\n"
            f"      matchers: [{match!r}]\n"
            '      group_by: ["..."]\n'
            "      group_wait: 100ms\n"
            "      group_interval: 1s\n"
            "      repeat_interval: 1h\n"
        )
        receivers += (
            "  - name: recorder\n"
            "    webhook_configs:\n"
            f"      - url: {webhook_url!r}\n"
            "        send_resolved: true\n"
            "        max_alerts: 0\n"
        )
    return config + receivers


@contextmanager
def alertmanager(
    binary: str,
    directory: Path,
    *,
    config: str | None = None,
    start_timeout: float = 30.0,
    stop_timeout: float = 10.0,
) -> Iterator[str]:
    """A Prometheus Alertmanager on a free loopback port, clustering off, ready; yields its base URL, stops it after.

    ``config`` is the YAML text (default: ``alertmanager_config()``); its data and log (``alertmanager.log``)
    live in ``directory``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    config_file = directory / "alertmanager.yml"
    config_file.write_text(alertmanager_config() if config is None else config)
    port = free_port()
    log = directory / "alertmanager.log"
    command = [
        binary,
        f"--config.file={config_file}",
        f"--storage.path={directory / 'data'}",
        f"--web.listen-address={LOOPBACK}:{port}",
        "--cluster.listen-address=",  # empty: no HA gossip, no second port
        "--log.level=info",
    ]
    process = spawn(command, log, cwd=directory, env=scrubbed_env())
    base = f"http://{LOOPBACK}:{port}"
    try:
        wait_for_http(f"{base}/-/ready", process, log, timeout=start_timeout, what="alertmanager")
        yield base
    finally:
        stop_process(process, stop_timeout)
