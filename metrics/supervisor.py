"""Run the system's processes: the Prefect server, the flow runner or workers, and stop all of them cleanly.

``metrics deploy`` (``python -m metrics.deploy``) builds on this. Every child
runs in its own process group with its output in ``data/prefect/<name>.log``;
on SIGINT / SIGTERM the supervisor stops them in order (runner first, so runs
in flight are cancelled and marked, then the server), escalates to SIGKILL for
whatever ignores SIGTERM, and sweeps up any descendant left behind, so no
process outlives it. One supervisor at a time holds a data directory
(``data/prefect/deploy.lock``); a second one is refused with the holder's pid.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

import psutil

from metrics.errors import ConfigError, MetricsError
from metrics.settings import ENV_NAMES, Settings

log = logging.getLogger(__name__)

LOCK_FILE = "deploy.lock"
HEALTH_TIMEOUT_SECONDS = 120.0
GROUP_GRACE_SECONDS = 5.0  # from SIGTERM to a child's process group until SIGKILL


class DeployError(MetricsError):
    """A process of the system could not be started, or died."""


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether nothing listens on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def require_free_port(settings: Settings, name: str) -> None:
    """Refuse to start when the port of setting ``name`` is taken, naming its variable."""
    port = getattr(settings, name)
    if not port_is_free(port):
        raise ConfigError(
            f"{ENV_NAMES[name]}={port}: the port is in use on 127.0.0.1; stop what listens there or choose another port"
        )


def healthy(url: str, timeout: float = 2.0) -> bool:
    """Whether GET ``url`` answers 200 within ``timeout`` seconds."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


@dataclass
class Child:
    """One supervised process."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]
    stop_timeout: float

    @property
    def alive(self) -> bool:
        """Whether the process still runs."""
        return self.process.poll() is None


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _group_members(pgid: int) -> list[psutil.Process]:
    """Every process in process group ``pgid``, also those that left the leader's tree."""
    members = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(process.pid) == pgid:
                members.append(process)
    return members


def _running(process: psutil.Process) -> bool:
    """Whether ``process`` still runs (a zombie waiting for its reaper does not)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@dataclass
class Supervisor:
    """Starts children, watches them, and stops them all (see module docstring).

    Args:
        log_dir: where each child's ``<name>.log`` goes.
        env: the environment every child gets.
        echo: prints a line for the user (status, URLs).
    """

    log_dir: Path
    env: Mapping[str, str]
    echo: Callable[[str], None] = print
    children: list[Child] = field(default_factory=list)
    _seen: dict[int, psutil.Process] = field(default_factory=dict)
    # A plain flag, not a threading.Event: a signal handler calling Event.set() can deadlock on the
    # Event's lock if the signal lands while the main thread is inside Event.wait().
    _stopping: bool = False
    _previous_handlers: dict[signal.Signals, Callable[[int, FrameType | None], Any] | int | None] = field(
        default_factory=dict
    )
    stop_reason: str = ""

    def start(self, name: str, argv: Sequence[str], *, stop_timeout: float = 20.0, cwd: Path | None = None) -> Child:
        """Start ``argv`` as child ``name`` in a new process group, its output appended to ``<log_dir>/<name>.log``."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        log_file = open(log_path, "ab")
        process = subprocess.Popen(
            list(argv),
            env=dict(self.env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        child = Child(name, process, log_path, log_file, stop_timeout)
        self.children.append(child)
        self._remember(process.pid)
        return child

    def run_once(self, name: str, argv: Sequence[str], *, timeout: float = 300.0, cwd: Path | None = None) -> None:
        """Run a setup command to completion; a failure raises with the tail of its log."""
        child = self.start(name, argv, cwd=cwd, stop_timeout=5.0)
        try:
            code = child.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
        self.children.remove(child)
        child.log_file.close()
        if code != 0:
            _signal_group(child.process.pid, signal.SIGKILL)
            child.process.wait(timeout=10)  # reap it: no zombie, no "still running" ResourceWarning
            raise DeployError(f"{name} failed ({'timed out' if code is None else f'exit {code}'}):\n{self.tail(child)}")

    def _remember(self, pid: int) -> None:
        """Record a process and its descendants, so the final sweep finds them even when reparented."""
        try:
            root = psutil.Process(pid)
            for process in (root, *root.children(recursive=True)):
                self._seen.setdefault(process.pid, process)
        except psutil.Error:
            pass

    def wait_healthy(self, child: Child, url: str, timeout: float = HEALTH_TIMEOUT_SECONDS) -> float:
        """Wait until ``url`` answers 200; return the seconds it took. Raises if the child dies or time runs out."""
        started = time.monotonic()
        deadline = started + timeout
        while time.monotonic() < deadline and not self._stopping:
            if not child.alive:
                raise DeployError(f"{child.name} exited with {child.process.returncode}:\n{self.tail(child)}")
            if healthy(url):
                return time.monotonic() - started
            time.sleep(0.25)
        if self._stopping:
            raise DeployError(f"stopped while waiting for {child.name} ({self.stop_reason})")
        raise DeployError(f"{child.name} was not healthy at {url} after {timeout:.0f} s:\n{self.tail(child)}")

    def tail(self, child: Child, lines: int = 20) -> str:
        """The last lines of a child's log."""
        try:
            text = child.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def install_signal_handlers(self) -> None:
        """SIGINT and SIGTERM ask the supervisor to stop (once; it then stops everything)."""

        def handler(signum: int, frame: FrameType | None) -> None:
            self.request_stop(signal.Signals(signum).name)

        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous_handlers.setdefault(sig, signal.getsignal(sig))
            signal.signal(sig, handler)

    def restore_signal_handlers(self) -> None:
        """Put back the handlers :meth:`install_signal_handlers` replaced (for callers that live on)."""
        for sig, previous in self._previous_handlers.items():
            if previous is not None:
                signal.signal(sig, previous)
        self._previous_handlers.clear()

    def request_stop(self, reason: str) -> None:
        """Make :meth:`watch` return (thread- and signal-safe)."""
        self.stop_reason = self.stop_reason or reason
        self._stopping = True

    def watch(self, poll_seconds: float = 1.0) -> None:
        """Block until a stop is requested or a child dies (which is reported with its log)."""
        tick = min(poll_seconds, 0.2)
        next_check = time.monotonic()
        while not self._stopping:
            time.sleep(tick)
            if time.monotonic() < next_check:
                continue
            next_check = time.monotonic() + poll_seconds
            for child in self.children:
                self._remember(child.process.pid)
                if not child.alive:
                    self.echo(f"{child.name} exited with {child.process.returncode}; stopping. Its log:")
                    self.echo(self.tail(child))
                    self.request_stop(f"{child.name} exited")
                    return

    def stop(self) -> list[int]:
        """Stop every child; return the pids that had to be killed.

        The first child started (the server the others talk to) stops last;
        all the others (runner, workers) stop together before it, so shutting
        down takes the longest stop timeout once, not their sum.
        """
        killed = self._stop_together(self.children[1:]) + self._stop_together(self.children[:1])
        killed += self._sweep()
        self.children.clear()
        return killed

    def _stop_together(self, children: list[Child]) -> list[int]:
        """SIGTERM the leaders, then their groups, then SIGKILL what is left; return the leaders that were killed."""
        killed: list[int] = []
        for child in children:
            self._remember(child.process.pid)
            if child.alive:
                child.process.send_signal(signal.SIGTERM)  # the leader first: it shuts its own children down
        for child in children:
            try:
                child.process.wait(timeout=child.stop_timeout)
            except subprocess.TimeoutExpired:
                killed.append(child.process.pid)
        for child in children:
            _signal_group(child.process.pid, signal.SIGTERM)  # what the leaders left behind in their groups
        for child in children:
            self._wait_group(child, GROUP_GRACE_SECONDS)
            if child.alive:
                _signal_group(child.process.pid, signal.SIGKILL)
                child.process.wait(timeout=10)
            for process in _group_members(child.process.pid):  # e.g. a double-forked helper ignoring SIGTERM
                self._seen[process.pid] = process
            child.log_file.close()
        return killed

    @staticmethod
    def _wait_group(child: Child, timeout: float) -> None:
        """Wait until the child and the rest of its process group have exited, at most ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.process.wait(timeout=timeout)
        members = _group_members(child.process.pid)
        while any(_running(process) for process in members) and time.monotonic() < deadline:
            time.sleep(0.05)

    def _sweep(self) -> list[int]:
        """Kill any process this supervisor ever started (or its descendants) that still runs."""
        left = [process for process in self._seen.values() if _running(process)]
        for process in left:
            with contextlib.suppress(psutil.Error):
                process.kill()
        psutil.wait_procs(left, timeout=5)
        return [process.pid for process in left]


class InstanceLock:
    """One ``metrics deploy`` per data directory: an exclusive ``flock`` on ``data/prefect/deploy.lock``."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK_FILE
        self._handle: IO[str] | None = None

    def acquire(self) -> InstanceLock:
        """Take the lock or raise, naming the running instance's pid."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise ConfigError(
                f"another `metrics deploy` runs on this data directory (pid {holder}, lock {self.path}); "
                "stop it first, or set METRICS_DATA_DIR to run a second instance elsewhere"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        """Let the lock go."""
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def __enter__(self) -> InstanceLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def python_module(module: str, *args: str) -> list[str]:
    """``python -m module args`` with this interpreter."""
    return [sys.executable, "-m", module, *args]
