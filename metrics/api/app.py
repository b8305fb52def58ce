"""The FastAPI application: one store per process, routers per resource, one error handler for all.

Every domain error (``metrics.errors``) becomes a JSON body ``{"error": …,
"detail": …}`` with the 4xx status of :data:`STATUS_BY_ERROR`; request
validation errors are 422 in the same shape; anything unexpected is a 500
whose body names no internals (the traceback goes to the log). Routers are
mounted from :data:`ROUTERS`, so a new resource (the alert endpoints) is one
module plus one line.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from metrics.api.limits import install_security
from metrics.api.telemetry import install_telemetry
from metrics.errors import (
    AuthenticationError,
    ConfigError,
    ConflictError,
    MetricsError,
    NotFoundError,
    PermissionDeniedError,
    QueryError,
    RateLimitedError,
    RequestTooLargeError,
    StorageError,
    UnsupportedMediaTypeError,
    ValidationError,
)
from metrics.settings import Settings, get_settings
from storage.store import MetricStore

log = logging.getLogger(__name__)

# Most specific first: the first class an error is an instance of decides its status.
STATUS_BY_ERROR: tuple[tuple[type[MetricsError], int], ...] = (
    (AuthenticationError, 401),
    (PermissionDeniedError, 403),
    (NotFoundError, 404),
    (ConflictError, 409),
    (RequestTooLargeError, 413),
    (UnsupportedMediaTypeError, 415),
    (RateLimitedError, 429),
    (ValidationError, 422),
    (QueryError, 400),
    (ConfigError, 400),
    (StorageError, 503),
    (MetricsError, 400),
)


class JSONResponse(Response):
    """JSON via orjson (fast; NaN and infinities become null)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)


def error_response(status: int, error: str, detail: Any = None, headers: dict[str, str] | None = None) -> JSONResponse:
    """The one error body shape: ``{"error": short, "detail": longer or structured}``."""
    body: dict[str, Any] = {"error": error}
    if detail is not None:
        body["detail"] = detail
    return JSONResponse(body, status_code=status, headers=headers)


def status_of(exc: MetricsError) -> int:
    """The HTTP status of a domain error."""
    return next(status for kind, status in STATUS_BY_ERROR if isinstance(exc, kind))


async def _domain_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, MetricsError)
    status = status_of(exc)
    headers = None
    if isinstance(exc, RateLimitedError):
        headers = {"Retry-After": str(max(1, round(exc.retry_after)))}
    if isinstance(exc, AuthenticationError):
        headers = {"WWW-Authenticate": "Bearer"}
    return error_response(status, str(exc), headers=headers)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    problems = [
        {"field": ".".join(str(part) for part in error.get("loc", ())), "reason": error.get("msg", "invalid")}
        for error in exc.errors()
    ]
    summary = "; ".join(f"{p['field']}: {p['reason']}" for p in problems[:3])
    return error_response(422, f"invalid request: {summary}", problems)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    return error_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal error; see the server log")


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API over the lake of ``settings`` (default: from the environment).

    Args:
        settings: where the lake is and how the API behaves (limits, auth, TLS); with
            ``insecure_dev`` requests need no credentials (development only; logged as a warning).
    """
    settings = settings or get_settings()
    insecure_dev = settings.insecure_dev

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = MetricStore(settings).open()
        app.state.store = store
        # What exists now (modules, the app, the store) lives as long as the server: keep it out of the cyclic
        # GC, whose full collections would walk it all every few ingest batches (pauses of 100+ ms).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            gc.unfreeze()
            store.close()

    app = FastAPI(
        title="Metrics System",
        version="1",
        description="Collect, store and query metrics of cryptographic-key infrastructure.",
        lifespan=lifespan,
        default_response_class=JSONResponse,
    )
    app.state.settings = settings
    app.state.insecure_dev = insecure_dev
    if insecure_dev:
        log.warning("--insecure-dev: the API accepts requests WITHOUT credentials; never use this in production")
    app.add_exception_handler(MetricsError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
    install_security(app, settings)  # keys, JWT, allow-list, body and rate limits, audit log
    install_telemetry(app, settings)  # outermost: /metrics and self-metrics see every response, refusals included
    for router in routers():
        app.include_router(router)
    from metrics.web.pages import static_files

    app.mount("/static", static_files(), name="static")  # the dashboards' script, styles and chart library
    return app


def routers() -> list[Any]:
    """Every router of the API, in mounting order (a new resource adds one line)."""
    from metrics.api.routes import alerts, analysis, dashboards, exposition, health, ingest, query, remote_write
    from metrics.web import pages

    return [
        health.router,
        ingest.router,
        query.router,
        analysis.router,
        alerts.router,
        dashboards.router,
        remote_write.router,
        exposition.router,
        pages.router,
    ]


def store_of(request: Request) -> MetricStore:
    """The process's store (opened by the app's lifespan)."""
    store: MetricStore = request.app.state.store
    return store


def create_app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` worker processes: settings from the environment."""
    return create_app(get_settings())
