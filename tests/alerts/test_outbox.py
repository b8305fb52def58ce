"""The durable outbox: written before sending, retried with backoff, delivered once across failures and crashes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import datetime, timedelta
from email import message_from_bytes
from pathlib import Path

from aiosmtpd.controller import Controller

from alerts.notify import Notification
from alerts.notify.email import EmailNotifier
from alerts.notify.slack import SlackNotifier
from alerts.outbox import KEEP_SECONDS, Outbox, combine, enqueue
from alerts.store import AlertStore
from metrics.errors import DeliveryError
from metrics.settings import Settings
from storage.store import MetricStore
from tests.alerts.channels import LOOPBACK, Mailbox, NotificationFactory, Receiver
from tests.alerts.conftest import Recorder, WriteSeries
from tests.servers import PROJECT, free_port, scrubbed_env


class Clock:
    """Seconds since the epoch, moved by hand."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def put(alerts: AlertStore, notification: Notification, event: str, channels: tuple[str, ...], now: float) -> int:
    with alerts.transaction(immediate=True) as connection:
        return enqueue(connection, notification, event, channels, now)


def test_writing_the_same_notification_twice_is_a_no_op(
    alerts: AlertStore, make_notification: NotificationFactory
) -> None:
    note = make_notification()
    assert put(alerts, note, "firing:1", ("slack", "email"), 0.0) == 2
    assert put(alerts, note, "firing:1", ("slack", "email"), 5.0) == 0
    assert put(alerts, note, "resolved:1", ("slack",), 5.0) == 1


def test_a_failing_channel_is_retried_with_backoff_and_delivered_once(
    alerts: AlertStore, make_notification: NotificationFactory
) -> None:
    clock, slack = Clock(), Recorder()
    outbox = Outbox(alerts, {"slack": slack}, base_delay=5, max_delay=60, clock=clock)
    put(alerts, make_notification(), "firing:1", ("slack",), clock.now)
    slack.failing = DeliveryError("slack: 503 from https://hooks.slack.com")
    delays = []
    for _ in range(5):
        assert outbox.dispatch().retrying == 1
        (row,) = outbox.rows()
        due = alerts_next_attempt(alerts, row["id"])
        delays.append(round(due - clock.now))
        assert outbox.dispatch().retrying == 0  # not due before its backoff
        clock.now = due
    assert delays == [5, 10, 20, 40, 60]  # doubling, capped
    slack.failing = None
    assert outbox.dispatch().delivered == 1
    assert outbox.dispatch().delivered == 0
    assert len(slack.sent) == 1
    (row,) = outbox.rows()
    assert row["attempts"] == 6
    assert row["delivered_at"] is not None
    assert row["last_error"] is None


def alerts_next_attempt(alerts: AlertStore, row_id: int) -> float:
    with alerts.transaction() as connection:
        return float(connection.execute("SELECT next_attempt_at FROM outbox WHERE id = ?", (row_id,)).fetchone()[0])


def test_permanent_failures_unknown_channels_and_too_many_attempts_give_up(
    alerts: AlertStore, make_notification: NotificationFactory
) -> None:
    clock = Clock()
    refusing, flaky = Recorder("email"), Recorder("webhook")
    refusing.failing = DeliveryError("email: recipients refused", permanent=True)
    flaky.failing = RuntimeError("a notifier bug")
    outbox = Outbox(alerts, {"email": refusing, "webhook": flaky}, max_attempts=2, base_delay=1, clock=clock)
    put(alerts, make_notification(), "firing:1", ("email", "webhook", "pager"), clock.now)
    first = outbox.dispatch()
    assert (first.failed, first.retrying) == (2, 1)  # email refused, pager unknown; the bug is retried
    clock.now += 2
    assert outbox.dispatch().failed == 1  # second attempt: given up
    errors = {row["channel"]: row["last_error"] for row in outbox.rows()}
    assert errors == {
        "email": "email: recipients refused",
        "webhook": "unexpected error: RuntimeError",
        "pager": "channel 'pager' is not configured",
    }
    assert outbox.waiting() == 0


def test_a_dispatcher_that_died_mid_send_gives_its_rows_back_after_the_lease(
    alerts: AlertStore, make_notification: NotificationFactory
) -> None:
    clock, slack = Clock(), Recorder()
    put(alerts, make_notification(), "firing:1", ("slack",), clock.now)
    dead = Outbox(alerts, {"slack": slack}, claim_seconds=120, clock=clock)
    assert len(dead._claim(10)) == 1  # claimed, then the process died before sending
    survivor = Outbox(alerts, {"slack": slack}, clock=clock)
    assert survivor.dispatch().delivered == 0  # still leased
    clock.now += 121
    assert survivor.dispatch().delivered == 1
    assert len(slack.sent) == 1


def test_old_delivered_rows_are_purged(alerts: AlertStore, make_notification: NotificationFactory) -> None:
    clock, slack = Clock(), Recorder()
    outbox = Outbox(alerts, {"slack": slack}, clock=clock)
    put(alerts, make_notification(), "firing:1", ("slack",), clock.now)
    outbox.dispatch()
    clock.now += KEEP_SECONDS + 1
    outbox.dispatch()
    assert outbox.rows() == []


def test_combine_summarises_a_batch(make_notification: NotificationFactory) -> None:
    batch = [
        make_notification(alert_id="a1", series="cpu host=a", labels={"host": "a", "team": "sre"}),
        make_notification(alert_id="a2", series="cpu host=b", priority="CRITICAL", labels={"host": "b", "team": "sre"}),
        make_notification(alert_id="a3", resolved=True, series="cpu host=c", labels={"host": "c", "team": "sre"}),
    ]
    message = combine(batch)
    assert (message.status, message.priority, message.labels) == ("firing", "CRITICAL", {"team": "sre"})
    assert message.summary == "High CPU: 3 alerts (2 firing, 1 resolved)"
    assert message.description.splitlines()[2].startswith("[RESOLVED] cpu host=c")
    assert combine(batch[:1]) is batch[0]


def test_slack_down_then_up_is_delivered_once_after_recovery(
    alerts: AlertStore, make_notification: NotificationFactory, receiver: Receiver
) -> None:
    clock = Clock()
    receiver.answer(500, 503)
    slack = SlackNotifier(webhook_url=f"{receiver.url}/services/T0/B0/secret", timeout=5)
    outbox = Outbox(alerts, {"slack": slack}, base_delay=1, clock=clock)
    put(alerts, make_notification(), "firing:1", ("slack",), clock.now)
    for _ in range(2):
        assert outbox.dispatch().retrying == 1
        clock.now += 10
    assert outbox.dispatch().delivered == 1
    assert outbox.dispatch().delivered == 0
    requests = receiver.wait_for(3)
    assert len(receiver.requests) == 3
    assert all(r.path == "/services/T0/B0/secret" for r in requests)
    assert "secret" not in (outbox.rows()[0]["last_error"] or "")


def test_email_server_down_then_up_is_delivered_once(
    alerts: AlertStore, make_notification: NotificationFactory
) -> None:
    clock, port = Clock(), free_port()
    email = EmailNotifier(
        server=LOOPBACK, port=port, sender="alerts@example.org", recipients=("oncall@example.org",), timeout=5
    )
    outbox = Outbox(alerts, {"email": email}, base_delay=1, clock=clock)
    put(alerts, make_notification(), "firing:1", ("email",), clock.now)
    assert outbox.dispatch().retrying == 1  # nobody listens yet
    mailbox = Mailbox()
    controller = Controller(mailbox, hostname=LOOPBACK, port=port, ready_timeout=10)
    controller.start()
    try:
        clock.now += 5
        assert outbox.dispatch().delivered == 1
        assert outbox.dispatch().delivered == 0
    finally:
        controller.stop()
    (mail,) = mailbox.mails
    parsed = message_from_bytes(mail.content)
    assert "[FIRING HIGH]" in str(parsed["Subject"])
    assert mail.rcpt_tos == ["oncall@example.org"]


CRASHING_CYCLE = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from metrics.settings import Settings
    from storage.store import MetricStore
    from alerts.engine import AlertEvaluator
    from alerts.routing import Route, Routing

    if __name__ == "__main__":
        data, rules, routing = (Path(p) for p in sys.argv[1:4])
        settings = Settings(data_dir=data, alert_rules_file=rules, alert_routing_file=routing)
        store = MetricStore(settings).open(background_flush=False)
        cycle = AlertEvaluator(settings, store, routing=Routing(Route(channels=("slack",), group_wait=0))).evaluate()
        print(cycle.notifications, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # written to the outbox, never sent
    """
)


def test_a_process_killed_between_writing_and_sending_delivers_once_after_restart(
    alert_settings: Settings,
    alert_store: MetricStore,
    alerts: AlertStore,
    write_series: WriteSeries,
    tmp_path: Path,
) -> None:
    from tests.alerts.test_engine import cpu_rule

    alerts.add_rules([cpu_rule(duration_seconds=0)])
    write_series("system.cpu.usage_total", [95] * 5, datetime.now().astimezone() - timedelta(seconds=5), host="a")
    script = tmp_path / "crash.py"
    script.write_text(CRASHING_CYCLE)
    assert alert_settings.alert_rules_file
    assert alert_settings.alert_routing_file
    done = subprocess.run(
        [
            sys.executable,
            str(script),
            str(alert_settings.data_dir),
            str(alert_settings.alert_rules_file),
            str(alert_settings.alert_routing_file),
        ],
        cwd=PROJECT,
        env=scrubbed_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == -9, done.stderr
    assert done.stdout.strip() == "1"
    slack = Recorder()
    restarted = Outbox(AlertStore(alert_settings), {"slack": slack})
    assert restarted.dispatch().delivered == 1
    assert restarted.dispatch().delivered == 0
    assert [n.status for n in slack.sent] == ["firing"]
