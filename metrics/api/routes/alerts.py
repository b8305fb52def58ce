"""``/api/v1/alerts``: alerts and their status, rules, acknowledgement, silences and history.

Roles: reading is ``reader`` or ``writer``; acknowledging and silencing
(on-call work) is ``writer``, so one writer key does an on-call person's
whole job; adding and deleting rules is ``admin``. Every change is in the
audit log (the middleware records each write with the route's detail).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from metrics.api.app import JSONResponse, store_of
from metrics.api.auth import Principal, Role, requires
from metrics.errors import ValidationError

router = APIRouter(prefix="/api/v1/alerts", tags=["alerts"])
US = 1_000_000


class SilenceRequest(BaseModel):
    """A silence to create: matchers (``host=web-1``, ``host=~web-.*``), how long or until when, and why."""

    matchers: list[str] = Field(min_length=1, description="label=value, label!=value, label=~regex, label!~regex")
    comment: str = Field(min_length=1, max_length=1000)
    duration_seconds: float | None = Field(None, gt=0, le=366 * 86_400, description="From now (or starts_at)")
    starts_at: datetime | None = None
    ends_at: datetime | None = None


def _alerts(request: Request) -> Any:
    from alerts.store import AlertStore

    return AlertStore(request.app.state.settings)


@router.get("", summary="Alerts pending, firing or recently resolved")
async def list_alerts(
    request: Request,
    status: str | None = Query(None, description="pending, firing or resolved"),
    principal: Principal = Depends(requires(Role.READER, Role.WRITER)),
) -> JSONResponse:
    """Alerts, most urgent first. Example: ``GET /api/v1/alerts?status=firing``."""
    frame = await run_in_threadpool(lambda: _alerts(request).listing(status))
    return JSONResponse({"alerts": frame.to_dicts(), "count": frame.height})


@router.get("/status", summary="Counts of alerts by status and priority, rules, notifications waiting")
async def alert_status(
    request: Request, principal: Principal = Depends(requires(Role.READER, Role.WRITER))
) -> JSONResponse:
    """How alerting stands: e.g. ``{"firing": 2, "pending": 1, "by_priority": {"HIGH": 2}, "rules": 7, …}``."""

    def run() -> dict[str, Any]:
        from alerts.outbox import Outbox

        alerts = _alerts(request)
        states = alerts.states()
        counts = {
            status: sum(1 for s in states if s["status"] == status) for status in ("pending", "firing", "resolved")
        }
        by_priority: dict[str, int] = {}
        for state in states:
            if state["status"] == "firing":
                by_priority[state["priority"]] = by_priority.get(state["priority"], 0) + 1
        return {
            **counts,
            "by_priority": by_priority,
            "acknowledged": sum(1 for s in states if s["status"] == "firing" and s["acknowledged_at"]),
            "rules": len(alerts.rules()),
            "notifications_waiting": Outbox(alerts, {}).waiting(),
        }

    return JSONResponse(await run_in_threadpool(run))


@router.get("/rules", summary="Every alert rule")
async def list_rules(
    request: Request, principal: Principal = Depends(requires(Role.READER, Role.WRITER))
) -> JSONResponse:
    """The rules, with where each came from (``file`` or ``api``)."""
    stored = await run_in_threadpool(lambda: _alerts(request).rules())
    return JSONResponse({"rules": [{**item.rule.to_dict(), "source": item.source} for item in stored]})


@router.post("/rules", status_code=201, summary="Add or update alert rules")
async def add_rules(
    request: Request,
    body: dict[str, Any] = Body(
        ...,
        examples=[
            {
                "rule_id": "high_latency",
                "name": "High API latency",
                "metric_pattern": r"application\.api\.response_time",
                "threshold_value": 500,
                "comparison": ">",
                "duration_seconds": 300,
                "priority": "HIGH",
            }
        ],
    ),
    principal: Principal = Depends(requires(Role.ADMIN)),
) -> JSONResponse:
    """One rule (the fields of ``alert-rules.yaml``) or ``{"rules": [...]}``; a bad rule is a 422 naming its field."""
    from alerts.rules import parse_rules

    rules = parse_rules(body, "body")
    if not rules:
        raise ValidationError("body: holds no rules")
    ids = await run_in_threadpool(lambda: _alerts(request).add_rules(rules))
    request.state.audit_detail = {"rule_ids": ids}
    return JSONResponse({"added": ids}, status_code=201)


@router.delete("/rules/{rule_id}", summary="Delete an alert rule")
async def delete_rule(
    request: Request, rule_id: str, principal: Principal = Depends(requires(Role.ADMIN))
) -> JSONResponse:
    """Delete a rule added through the API (404 when unknown, 409 when it is defined in the rules file)."""
    await run_in_threadpool(lambda: _alerts(request).delete_rule(rule_id))
    request.state.audit_detail = {"rule_id": rule_id}
    return JSONResponse({"deleted": rule_id})


@router.put("/{alert_id}/acknowledge", summary="Acknowledge a firing alert")
async def acknowledge(
    request: Request, alert_id: str, principal: Principal = Depends(requires(Role.WRITER))
) -> JSONResponse:
    """No repeats or escalation for this alert until it resolves (404 when not active, 409 when not firing)."""
    now_us = int(datetime.now(UTC).timestamp() * US)
    state = await run_in_threadpool(lambda: _alerts(request).acknowledge(alert_id, principal.name, now_us))
    request.state.audit_detail = {"alert_id": alert_id}
    return JSONResponse({"acknowledged": alert_id, "by": state["acknowledged_by"], "status": state["status"]})


@router.get("/silences", summary="Silences pending, active or expired in the last day")
async def list_silences(
    request: Request, principal: Principal = Depends(requires(Role.READER, Role.WRITER))
) -> JSONResponse:
    """Every silence with its state."""
    from alerts.silences import Silences

    now = datetime.now(UTC)
    found = await run_in_threadpool(lambda: Silences(_alerts(request)).all(now=now))
    return JSONResponse({"silences": [silence.to_dict(now) for silence in found]})


@router.post("/silences", status_code=201, summary="Silence alerts matching labels")
async def create_silence(
    request: Request, body: SilenceRequest, principal: Principal = Depends(requires(Role.WRITER))
) -> JSONResponse:
    """Give ``duration_seconds`` or ``ends_at``; the author is the caller."""
    from alerts.matchers import Matcher
    from alerts.silences import Silences

    now = datetime.now(UTC)
    start = body.starts_at or now
    if (body.duration_seconds is None) == (body.ends_at is None):
        raise ValidationError("give exactly one of duration_seconds or ends_at")
    end = body.ends_at or start + timedelta(seconds=body.duration_seconds or 0)
    matchers = [Matcher.parse(item) for item in body.matchers]
    silence = await run_in_threadpool(
        lambda: Silences(_alerts(request)).create(
            matchers, starts_at=start, ends_at=end, created_by=principal.name, comment=body.comment, now=now
        )
    )
    request.state.audit_detail = {"silence_id": silence.silence_id, "matchers": body.matchers}
    return JSONResponse(silence.to_dict(now), status_code=201)


@router.delete("/silences/{silence_id}", summary="Expire a silence now")
async def expire_silence(
    request: Request, silence_id: str, principal: Principal = Depends(requires(Role.WRITER))
) -> JSONResponse:
    """End a silence (404 when unknown)."""
    from alerts.silences import Silences

    silence = await run_in_threadpool(lambda: Silences(_alerts(request)).expire(silence_id))
    request.state.audit_detail = {"silence_id": silence_id}
    return JSONResponse(silence.to_dict())


@router.get("/history", summary="Alert state changes from the alert_events table")
async def history(
    request: Request,
    hours: float = Query(24.0, gt=0, le=24 * 90, description="How far back"),
    rule_id: str | None = Query(None, max_length=128),
    principal: Principal = Depends(requires(Role.READER, Role.WRITER)),
) -> JSONResponse:
    """State changes, newest first. Example: ``GET /api/v1/alerts/history?hours=168&rule_id=high_cpu_usage``."""
    from storage.alert_events import read_alert_events

    since = datetime.now(UTC) - timedelta(hours=hours)
    frame = await run_in_threadpool(lambda: read_alert_events(store_of(request), since, rule_id))
    return JSONResponse({"events": frame.to_dicts(), "count": frame.height})
