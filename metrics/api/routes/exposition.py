"""``GET /metrics``: the API's own Prometheus metrics (text or OpenMetrics, as the scraper asks); role reader.

Prometheus scrapes it with the reader key as ``authorization: {credentials: …}``
in the scrape config. See :mod:`metrics.api.telemetry` for what is exported.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from metrics.api.auth import Principal, Role, requires
from metrics.api.telemetry import Telemetry

router = APIRouter(tags=["health"])


@router.get(
    "/metrics",
    response_class=Response,
    summary="Prometheus exposition of the API's own metrics",
    responses={200: {"content": {"text/plain": {}, "application/openmetrics-text": {}}}},
)
async def metrics(request: Request, principal: Principal = Depends(requires(Role.READER))) -> Response:
    """Request counts and durations per route, ingest and rejection counts, WAL size, flush and query latency."""
    telemetry: Telemetry = request.app.state.telemetry
    body, content_type = await run_in_threadpool(telemetry.exposition, request.headers.get("accept"))
    return Response(body, media_type=content_type)
