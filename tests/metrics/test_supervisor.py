"""Tests of metrics.supervisor: ports, health checks, the instance lock, and starting / stopping process trees.

Every child is a short ``python -c`` script on this machine (nothing listens
beyond loopback); every wait is bounded, and a fixture stops whatever a test
leaves behind, so a failing test cannot leak a process.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import pytest

from metrics import supervisor as supervisor_module
from metrics.errors import ConfigError
from metrics.settings import Settings
from metrics.supervisor import (
    LOCK_FILE,
    Child,
    DeployError,
    InstanceLock,
    Supervisor,
    healthy,
    port_is_free,
    require_free_port,
)

# Starts processes and loopback servers; every test is still well under a second except the SIGKILL escalation.
pytestmark = pytest.mark.integration

PROJECT = Path(__file__).resolve().parents[2]
PY = sys.executable
SLEEPER = "import time; time.sleep(30)"
# Ignores SIGTERM, then says so (a test must not signal it before the handler is in place).
IGNORES_TERM = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(30)"
)
WAIT = 15.0  # upper bound of every wait on a process; the happy path takes milliseconds


def wait_for(condition: Callable[[], bool], timeout: float = WAIT) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def gone(process: psutil.Process) -> bool:
    """Whether the process has ended (a zombie waiting for its reaper counts as ended)."""
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def log_text(child: Child) -> str:
    return child.log_path.read_text(encoding="utf-8", errors="replace") if child.log_path.exists() else ""


def log_has(child: Child, text: str) -> bool:
    return text in log_text(child)


def closed_port() -> int:
    """A loopback port nothing listens on (it was free a moment ago)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run_watch(supervisor: Supervisor, timeout: float = WAIT) -> None:
    """``supervisor.watch()`` in a thread, failing the test (not hanging it) when it does not return in time."""
    thread = threading.Thread(target=supervisor.watch, kwargs={"poll_seconds": 0.05}, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        supervisor.request_stop("test gave up")
        thread.join(5)
        pytest.fail(f"watch() did not return within {timeout} s")


@pytest.fixture
def lines() -> list[str]:
    """What the supervisor echoed."""
    return []


@pytest.fixture
def strays() -> Iterator[list[psutil.Process]]:
    """Processes a test knows about outside the supervisor's children; killed at teardown if still running."""
    found: list[psutil.Process] = []
    yield found
    left = [process for process in found if not gone(process)]
    for process in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(left, timeout=5)


@pytest.fixture
def supervisor(tmp_path: Path, lines: list[str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Supervisor]:
    """A supervisor logging into ``tmp_path/logs``; whatever the test left running is stopped afterwards.

    A process group gets 1 s (not 5 s) after SIGTERM before SIGKILL, to keep the escalation tests short.
    """
    monkeypatch.setattr(supervisor_module, "GROUP_GRACE_SECONDS", 1.0)
    supervisor = Supervisor(log_dir=tmp_path / "logs", env=dict(os.environ), echo=lines.append)
    yield supervisor
    supervisor.stop()


# ---------------------------------------------------------------------------------------------- ports and health


@pytest.mark.parametrize("listening", [True, False], ids=["listening", "bound"])
def test_a_taken_port_is_refused_naming_its_variable(listening: bool) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        if listening:
            holder.listen()
        port = int(holder.getsockname()[1])
        assert not port_is_free(port)
        with pytest.raises(ConfigError) as caught:
            require_free_port(Settings(prefect_port=port), "prefect_port")
    message = str(caught.value)
    assert message.startswith(f"METRICS_PREFECT_PORT={port}: ")
    assert "in use" in message


def test_a_free_port_passes() -> None:
    port = closed_port()
    assert port_is_free(port)
    require_free_port(Settings(prefect_port=port), "prefect_port")


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status = 200 if self.path == "/ok" else 500
        body = b"ok" if status == 200 else b"broken"
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # keep the test output clean
        pass


@pytest.fixture
def http_url() -> Iterator[str]:
    """A tiny HTTP server on loopback: 200 on /ok, 500 elsewhere."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_healthy_only_on_200(http_url: str) -> None:
    assert healthy(f"{http_url}/ok", timeout=5)
    assert not healthy(f"{http_url}/bad", timeout=5)


def test_healthy_is_false_on_a_closed_port_or_a_bad_url() -> None:
    started = time.monotonic()
    assert not healthy(f"http://127.0.0.1:{closed_port()}/api/health", timeout=2)
    assert not healthy("not a url")
    assert time.monotonic() - started < 5


# ---------------------------------------------------------------------------------------------- the instance lock


def test_lock_is_refused_to_a_second_holder_in_the_same_process(tmp_path: Path) -> None:
    first = InstanceLock(tmp_path).acquire()  # flock is per open file: a second open() conflicts even here
    try:
        with pytest.raises(ConfigError) as caught:
            InstanceLock(tmp_path).acquire()
        message = str(caught.value)
        assert f"(pid {os.getpid()}, lock {tmp_path / LOCK_FILE})" in message
        assert "METRICS_DATA_DIR" in message
        assert (tmp_path / LOCK_FILE).read_text(encoding="utf-8") == str(os.getpid())  # the refusal keeps it
    finally:
        first.release()
    with InstanceLock(tmp_path) as again:  # released: free for the next one
        assert again.path == tmp_path / LOCK_FILE
    with InstanceLock(tmp_path):
        pass


def test_lock_creates_its_folder_and_release_is_idempotent(tmp_path: Path) -> None:
    lock = InstanceLock(tmp_path / "data" / "prefect").acquire()
    assert (tmp_path / "data" / "prefect" / LOCK_FILE).is_file()
    lock.release()
    lock.release()


HOLDER = (
    "import sys; from pathlib import Path; from metrics.supervisor import InstanceLock; "
    "lock = InstanceLock(Path(sys.argv[1])).acquire(); print('locked', flush=True); sys.stdin.read()"
)


def test_lock_held_by_another_process_is_refused_with_its_pid(tmp_path: Path) -> None:
    with subprocess.Popen(
        [PY, "-c", HOLDER, str(tmp_path)], cwd=PROJECT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as holder:
        assert holder.stdin is not None
        assert holder.stdout is not None
        try:
            readable, _, _ = select.select([holder.stdout], [], [], WAIT)
            assert readable, "the holder did not take the lock in time"
            assert holder.stdout.readline().strip() == "locked"
            with pytest.raises(ConfigError, match=rf"\(pid {holder.pid}, lock "):
                InstanceLock(tmp_path).acquire()
        finally:
            holder.stdin.close()  # the holder exits, and the kernel drops its lock
            try:
                holder.wait(WAIT)
            except subprocess.TimeoutExpired:
                holder.kill()
                holder.wait(5)
    with InstanceLock(tmp_path):
        pass


# ---------------------------------------------------------------------------------------------- start and stop


def test_start_runs_a_child_in_its_own_group_with_its_log(supervisor: Supervisor, tmp_path: Path) -> None:
    child = supervisor.start("sleeper", [PY, "-c", f"print('hello', flush=True); {SLEEPER}"], stop_timeout=5)
    assert child.alive
    assert child.log_path == tmp_path / "logs" / "sleeper.log"
    assert os.getpgid(child.process.pid) == child.process.pid  # its own process group (and session)
    assert wait_for(lambda: log_has(child, "hello"))
    assert supervisor.children == [child]
    assert child.process.pid in supervisor._seen

    assert supervisor.stop() == []  # ended by SIGTERM: nothing had to be killed
    assert not child.alive
    assert child.process.returncode == -signal.SIGTERM
    assert child.log_file.closed
    assert supervisor.children == []


def test_log_is_appended_across_starts(supervisor: Supervisor) -> None:
    for word in ("first", "second"):
        supervisor.run_once("setup", [PY, "-c", f"print({word!r})"], timeout=WAIT)
    assert (supervisor.log_dir / "setup.log").read_text(encoding="utf-8").split() == ["first", "second"]


# Says when SIGTERM reached it (CLOCK_MONOTONIC is one clock for every process), then exits.
REPORTS_TERM = (
    "import signal, sys, time\n"
    "def bye(*_): print('term', time.monotonic(), flush=True); sys.exit(0)\n"
    "signal.signal(signal.SIGTERM, bye); print('ready', flush=True); time.sleep(30)"
)


def test_stop_goes_in_reverse_order(supervisor: Supervisor) -> None:
    server = supervisor.start("server", [PY, "-c", REPORTS_TERM], stop_timeout=5)
    runner = supervisor.start("runner", [PY, "-c", REPORTS_TERM], stop_timeout=5)
    assert wait_for(lambda: log_has(server, "ready") and log_has(runner, "ready"))
    assert supervisor.stop() == []

    def stopped_at(child: Child) -> float:
        words = log_text(child).split()
        return float(words[words.index("term") + 1])

    assert stopped_at(runner) < stopped_at(server)  # the runner first, then the server it talks to
    assert server.process.returncode == runner.process.returncode == 0


def test_a_child_ignoring_sigterm_is_killed_and_reported(supervisor: Supervisor) -> None:
    child = supervisor.start("stubborn", [PY, "-c", IGNORES_TERM], stop_timeout=1)
    assert wait_for(lambda: log_has(child, "ready"))
    started = time.monotonic()
    killed = supervisor.stop()
    assert killed == [child.process.pid]
    assert child.process.returncode == -signal.SIGKILL
    assert time.monotonic() - started < WAIT


GRANDCHILD_IN_NEW_SESSION = f"""
import pathlib, subprocess, sys, time
grandchild = subprocess.Popen([sys.executable, "-c", {IGNORES_TERM!r}], start_new_session=True)
print("grandchild", grandchild.pid, flush=True)
release = pathlib.Path(sys.argv[1])
deadline = time.monotonic() + 20
while not release.exists() and time.monotonic() < deadline:
    time.sleep(0.02)
"""


def grandchild_of(child: Child, strays: list[psutil.Process]) -> psutil.Process:
    """The grandchild a leader script announced in its log (``grandchild PID``), once it is ready."""
    assert wait_for(lambda: log_has(child, "ready") and log_has(child, "grandchild")), log_text(child)
    words = log_text(child).split()
    process = psutil.Process(int(words[words.index("grandchild") + 1]))
    strays.append(process)
    return process


def test_a_daemonised_grandchild_in_a_new_session_is_swept(
    supervisor: Supervisor, tmp_path: Path, lines: list[str], strays: list[psutil.Process]
) -> None:
    release = tmp_path / "release"
    leader = supervisor.start("leader", [PY, "-c", GRANDCHILD_IN_NEW_SESSION, str(release)], stop_timeout=5)
    grandchild = grandchild_of(leader, strays)
    assert os.getsid(grandchild.pid) != os.getsid(leader.process.pid)  # out of reach of the group signals

    # watch() records the tree while it polls; once the grandchild is recorded, the leader exits and orphans it.
    watcher = threading.Thread(target=supervisor.watch, kwargs={"poll_seconds": 0.05}, daemon=True)
    watcher.start()
    try:
        assert wait_for(lambda: grandchild.pid in supervisor._seen)
        release.touch()
        watcher.join(WAIT)
        assert not watcher.is_alive(), "watch() did not notice the leader's exit"
    finally:
        supervisor.request_stop("test over")
        watcher.join(5)
    assert supervisor.stop_reason == "leader exited"
    assert "leader exited with 0; stopping. Its log:" in lines
    assert grandchild.ppid() != leader.process.pid  # reparented: no longer in the leader's tree
    assert not gone(grandchild)

    killed = supervisor.stop()
    assert grandchild.pid in killed
    assert wait_for(lambda: gone(grandchild), timeout=5)


def test_remember_records_a_grandchild_that_stop_then_sweeps(
    supervisor: Supervisor, tmp_path: Path, strays: list[psutil.Process]
) -> None:
    release = tmp_path / "release"
    leader = supervisor.start("leader", [PY, "-c", GRANDCHILD_IN_NEW_SESSION, str(release)], stop_timeout=5)
    grandchild = grandchild_of(leader, strays)
    supervisor._remember(leader.process.pid)
    release.touch()
    assert wait_for(lambda: not leader.alive)
    tree = list(supervisor._seen.values())
    assert supervisor.stop() == [grandchild.pid]
    assert all(gone(process) for process in tree)


# A leader whose helper double-forks: the grandchild stays in the leader's process group but leaves its tree.
MIDDLE = (
    "import subprocess, sys; "
    f"g = subprocess.Popen([sys.executable, '-c', {IGNORES_TERM!r}]); "
    "print('grandchild', g.pid, flush=True)"
)
GRANDCHILD_IN_GROUP = f"""
import subprocess, sys, time
subprocess.run([sys.executable, "-c", {MIDDLE!r}], check=True)
time.sleep(30)
"""


def test_an_orphan_left_in_the_childs_group_is_killed(supervisor: Supervisor, strays: list[psutil.Process]) -> None:
    leader = supervisor.start("leader", [PY, "-c", GRANDCHILD_IN_GROUP], stop_timeout=5)
    grandchild = grandchild_of(leader, strays)
    assert os.getpgid(grandchild.pid) == leader.process.pid
    assert wait_for(lambda: grandchild.ppid() != leader.process.pid)  # the middle process is gone
    assert grandchild.pid not in supervisor._seen

    killed = supervisor.stop()  # the leader obeys SIGTERM; the orphan ignores the group's SIGTERM
    assert leader.process.returncode == -signal.SIGTERM
    assert grandchild.pid in killed
    assert wait_for(lambda: gone(grandchild), timeout=5)


def test_stop_leaves_no_process_of_a_tree_alive(supervisor: Supervisor, strays: list[psutil.Process]) -> None:
    script = (
        "import subprocess, sys, time; "
        f"[subprocess.Popen([sys.executable, '-c', {SLEEPER!r}]) for _ in range(3)]; "
        "print('spawned', flush=True); time.sleep(30)"
    )
    leader = supervisor.start("tree", [PY, "-c", script], stop_timeout=5)
    assert wait_for(lambda: log_has(leader, "spawned"))
    root = psutil.Process(leader.process.pid)
    assert wait_for(lambda: len(root.children()) == 3)
    tree = [root, *root.children(recursive=True)]
    strays.extend(tree[1:])
    assert supervisor.stop() == []  # all obeyed SIGTERM (the leader's or the group's): none reported as killed
    assert wait_for(lambda: all(gone(process) for process in tree), timeout=5)


# ---------------------------------------------------------------------------------------------- run_once


def test_run_once_success(supervisor: Supervisor) -> None:
    supervisor.run_once("work-pool", [PY, "-c", "print('pool created')"], timeout=WAIT)
    assert (supervisor.log_dir / "work-pool.log").read_text(encoding="utf-8").strip() == "pool created"
    assert supervisor.children == []


def test_run_once_failure_raises_with_the_tail_of_the_log(supervisor: Supervisor) -> None:
    script = "import sys\nfor i in range(30): print(f'line {i}')\nprint('boom: bad config', flush=True)\nsys.exit(3)"
    with pytest.raises(DeployError) as caught:
        supervisor.run_once("prefect-deploy", [PY, "-c", script], timeout=WAIT)
    message = str(caught.value).splitlines()
    assert message[0] == "prefect-deploy failed (exit 3):"
    assert message[1:] == [*(f"line {i}" for i in range(11, 30)), "boom: bad config"]  # the last 20 lines
    assert supervisor.children == []


def test_run_once_timeout_kills_and_reaps_the_command(supervisor: Supervisor) -> None:
    started = time.monotonic()
    with pytest.raises(DeployError, match=r"^slow failed \(timed out\):"):
        supervisor.run_once("slow", [PY, "-c", SLEEPER], timeout=0.5)
    assert time.monotonic() - started < 5
    [pid] = supervisor._seen
    assert pid not in {process.pid for process in psutil.Process().children()}  # killed and reaped: no zombie
    assert supervisor.children == []


# ---------------------------------------------------------------------------------------------- wait_healthy


def test_wait_healthy_returns_once_the_url_answers(supervisor: Supervisor, http_url: str) -> None:
    child = supervisor.start("server", [PY, "-c", SLEEPER], stop_timeout=5)
    seconds = supervisor.wait_healthy(child, f"{http_url}/ok", timeout=WAIT)
    assert 0 <= seconds < WAIT


def test_wait_healthy_raises_with_the_log_when_the_child_exits(supervisor: Supervisor) -> None:
    script = "import sys; print('address already in use', flush=True); sys.exit(4)"
    child = supervisor.start("prefect-server", [PY, "-c", script], stop_timeout=5)
    with pytest.raises(DeployError) as caught:
        supervisor.wait_healthy(child, f"http://127.0.0.1:{closed_port()}/api/health", timeout=WAIT)
    assert str(caught.value) == "prefect-server exited with 4:\naddress already in use"


def test_wait_healthy_times_out(supervisor: Supervisor, http_url: str) -> None:
    child = supervisor.start("server", [PY, "-c", f"print('starting', flush=True); {SLEEPER}"], stop_timeout=5)
    started = time.monotonic()
    with pytest.raises(DeployError) as caught:
        supervisor.wait_healthy(child, f"{http_url}/bad", timeout=0.5)
    assert time.monotonic() - started < 5
    assert str(caught.value).startswith(f"server was not healthy at {http_url}/bad after ")
    assert child.alive  # a timeout does not stop the child; stop() does


def test_wait_healthy_gives_up_when_a_stop_is_requested(supervisor: Supervisor) -> None:
    child = supervisor.start("server", [PY, "-c", SLEEPER], stop_timeout=5)
    supervisor.request_stop("SIGINT")
    with pytest.raises(DeployError, match=r"^stopped while waiting for server \(SIGINT\)$"):
        supervisor.wait_healthy(child, f"http://127.0.0.1:{closed_port()}/", timeout=WAIT)


# ---------------------------------------------------------------------------------------------- watch and stop requests


def test_watch_returns_when_a_child_dies(supervisor: Supervisor, lines: list[str]) -> None:
    supervisor.start("server", [PY, "-c", SLEEPER], stop_timeout=5)
    supervisor.start("runner", [PY, "-c", "import sys, time; time.sleep(0.2); print('crashed'); sys.exit(5)"])
    run_watch(supervisor)
    assert supervisor.stop_reason == "runner exited"
    assert lines == ["runner exited with 5; stopping. Its log:", "crashed"]
    assert supervisor.stop() == []


def test_request_stop_makes_watch_return(supervisor: Supervisor) -> None:
    child = supervisor.start("server", [PY, "-c", SLEEPER], stop_timeout=5)
    timer = threading.Timer(0.2, supervisor.request_stop, args=("SIGTERM",))
    timer.start()
    try:
        run_watch(supervisor)
    finally:
        timer.cancel()
    assert supervisor.stop_reason == "SIGTERM"
    assert child.alive  # watch only returns; stop() ends the children
    supervisor.request_stop("SIGINT")
    assert supervisor.stop_reason == "SIGTERM"  # the first reason is kept


def test_signal_handlers_request_a_stop_and_are_restored(supervisor: Supervisor) -> None:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        supervisor.install_signal_handlers()
        assert signal.getsignal(signal.SIGTERM) is not before[signal.SIGTERM]
        os.kill(os.getpid(), signal.SIGTERM)
        assert wait_for(lambda: supervisor.stop_reason == "SIGTERM", timeout=5)
        run_watch(supervisor, timeout=5)  # returns at once: the stop was requested
        supervisor.restore_signal_handlers()
        assert {sig: signal.getsignal(sig) for sig in before} == before
    finally:  # whatever happened, leave this process as it was
        for sig, handler in before.items():
            if handler is not None:
                signal.signal(sig, handler)
