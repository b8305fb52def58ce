"""WebhookNotifier against a local HTTP receiver: the payload reads back as the notification; errors are mapped."""

from __future__ import annotations

import pytest

from alerts.notify import Notification
from alerts.notify.webhook import WebhookNotifier
from metrics.errors import ConfigError, DeliveryError
from tests.alerts.channels import NotificationFactory, Receiver, Reply

pytestmark = pytest.mark.integration
PATH = "/hooks/in/SECRETtoken42?key=qSECRET"
AUTH = "Bearer hdrSECRET99"


def hook(receiver: Receiver, timeout: float = 5.0) -> WebhookNotifier:
    return WebhookNotifier(receiver.url + PATH, timeout=timeout, headers={"Authorization": AUTH})


def no_secrets(error: DeliveryError) -> None:
    for secret in ("SECRETtoken42", "qSECRET", "hdrSECRET99", "/hooks"):
        assert secret not in str(error)


@pytest.mark.parametrize("resolved", [False, True])
def test_posts_the_versioned_payload_that_reads_back(
    receiver: Receiver, make_notification: NotificationFactory, resolved: bool
) -> None:
    notification = make_notification(resolved=resolved)
    hook(receiver).send(notification)
    [request] = receiver.wait_for(1)
    assert request.method == "POST"
    assert request.path == PATH
    assert request.headers["content-type"] == "application/json"
    assert request.headers["authorization"] == AUTH
    body = request.json()
    assert body["version"] == "1"
    assert body["notification"]["status"] == ("resolved" if resolved else "firing")
    assert Notification.from_dict(body["notification"]) == notification


@pytest.mark.parametrize(
    ("status", "permanent"),
    [(500, False), (502, False), (503, False), (429, False), (408, False), (400, True), (401, True), (404, True)],
)
def test_http_errors_are_mapped(
    receiver: Receiver, make_notification: NotificationFactory, status: int, permanent: bool
) -> None:
    receiver.answer(Reply(status, f"no {PATH}"))  # a server echoing the path does not leak it either
    with pytest.raises(DeliveryError, match=f"webhook at {receiver.url} answered HTTP {status}") as caught:
        hook(receiver).send(make_notification())
    assert caught.value.permanent is permanent
    no_secrets(caught.value)


def test_a_redirect_is_not_followed_and_is_permanent(
    receiver: Receiver, make_notification: NotificationFactory
) -> None:
    receiver.answer(Reply(302, "", {"Location": "http://elsewhere.example/"}))
    with pytest.raises(DeliveryError, match="redirect, not followed") as caught:
        hook(receiver).send(make_notification())
    assert caught.value.permanent
    assert len(receiver.requests) == 1


def test_500_then_200_delivers_on_the_retry(receiver: Receiver, make_notification: NotificationFactory) -> None:
    receiver.answer(500, 200)
    notifier = hook(receiver)
    with pytest.raises(DeliveryError) as caught:
        notifier.send(make_notification())
    assert not caught.value.permanent
    notifier.send(make_notification())
    first, second = receiver.wait_for(2)
    assert first.body == second.body


def test_connection_refused_is_retryable(closed_url: str, make_notification: NotificationFactory) -> None:
    with pytest.raises(DeliveryError, match="ConnectError") as caught:
        WebhookNotifier(closed_url, timeout=5.0).send(make_notification())
    assert not caught.value.permanent
    assert "secret-path-T0KEN" not in str(caught.value)


def test_timeout_is_retryable(receiver: Receiver, make_notification: NotificationFactory) -> None:
    receiver.answer(Reply(200, "ok", delay=3.0))
    with pytest.raises(DeliveryError, match="ReadTimeout") as caught:
        hook(receiver, timeout=0.3).send(make_notification())
    assert not caught.value.permanent
    no_secrets(caught.value)


def test_url_must_be_http() -> None:
    with pytest.raises(ConfigError, match="not an http"):
        WebhookNotifier("ftp://example.com/SECRET")
