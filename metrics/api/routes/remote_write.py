"""``POST /api/v1/write``: Prometheus remote-write 1.0 (snappy block-compressed ``prometheus.WriteRequest``).

Point Prometheus' ``remote_write`` at it. A request is all or nothing for
protocol errors (wrong content type or encoding: 415; empty, corrupt snappy,
not a WriteRequest, a series without ``__name__``: 422; too large: 413 — none
of them stores anything); rows that break the model's rules are refused one
by one and reported, the rest stored (200). Prometheus retries only 5xx and
429, so a refused request is never resent.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from metrics.api.app import JSONResponse, store_of
from metrics.api.auth import Principal, Role, requires
from metrics.api.remote import RemoteWriteDecoder, decompress
from metrics.errors import RequestTooLargeError, UnsupportedMediaTypeError

router = APIRouter(prefix="/api/v1", tags=["ingest"])

PROTOBUF = "application/x-protobuf"
WRITE_REQUEST_V1 = "prometheus.WriteRequest"
# The uncompressed message may be this many times METRICS_MAX_BODY_BYTES (snappy rarely shrinks more than 8x).
DECOMPRESSED_FACTOR = 4
MAX_REPORTED_ERRORS = 100


class RemoteWriteReport(BaseModel):
    """What happened to a remote-write request (Prometheus ignores the body; people reading logs do not)."""

    stored: int
    rejected: int
    stale_dropped: int
    series: int
    errors: list[dict[str, Any]]
    seconds: float


def check_headers(content_type: str | None, encoding: str | None, version: str | None) -> None:
    """Refuse what is not remote-write 1.0: another content type, encoding or protocol version (415)."""
    media, _, params = (content_type or "").partition(";")
    media = media.strip().lower()
    if media != PROTOBUF:
        raise UnsupportedMediaTypeError(f"content type {media or 'missing'!r}: send {PROTOBUF} (remote-write 1.0)")
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() == "proto" and value.strip() != WRITE_REQUEST_V1:
            raise UnsupportedMediaTypeError(
                f"protobuf message {value.strip()!r}: only {WRITE_REQUEST_V1} (remote-write 1.0) is supported"
            )
    if (encoding or "").strip().lower() != "snappy":
        raise UnsupportedMediaTypeError(f"content encoding {encoding or 'missing'!r}: send snappy (block format)")
    if version and not version.strip().startswith("0.1"):
        raise UnsupportedMediaTypeError(f"remote-write version {version!r}: this receiver speaks 0.1.0 (1.0)")


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise RequestTooLargeError(f"body: {declared} bytes is above the limit of {limit} (METRICS_MAX_BODY_BYTES)")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestTooLargeError(f"body: more than {limit} bytes (METRICS_MAX_BODY_BYTES)")
        chunks.append(chunk)
    return b"".join(chunks)


def decoder_of(request: Request) -> RemoteWriteDecoder:
    """The app's decoder (its series cache and metadata types live as long as the app)."""
    decoder: RemoteWriteDecoder | None = getattr(request.app.state, "remote_write_decoder", None)
    if decoder is None:
        decoder = request.app.state.remote_write_decoder = RemoteWriteDecoder()
    return decoder


def store_request(request: Request, body: bytes) -> dict[str, Any]:
    """Decode, validate and store one request (blocking: call it in a thread); the report."""
    started = time.perf_counter()
    store = store_of(request)
    settings = store.settings
    raw = decompress(body, settings.max_body_bytes * DECOMPRESSED_FACTOR)
    prepared = decoder_of(request).prepare(
        raw,
        now=datetime.now(UTC),
        retention_days=settings.retention_days,
        max_future_seconds=settings.max_future_seconds,
    )
    result = store.store_batch(prepared.batch, started)
    request.state.ingested = result.stored
    request.state.rejected_reasons = [r.reason for r in result.rejected]
    request.state.stale_dropped = prepared.stale_dropped
    return {
        "stored": result.stored,
        "rejected": len(result.rejected),
        "stale_dropped": prepared.stale_dropped,
        "series": prepared.series,
        "errors": [r.to_dict() for r in result.rejected[:MAX_REPORTED_ERRORS]],
        "seconds": round(time.perf_counter() - started, 6),
    }


@router.post(
    "/write",
    response_model=RemoteWriteReport,
    summary="Prometheus remote-write 1.0",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {PROTOBUF: {"schema": {"type": "string", "format": "binary"}}},
            "description": "A snappy (block format) compressed prometheus.WriteRequest protobuf",
        }
    },
)
async def remote_write(request: Request, principal: Principal = Depends(requires(Role.WRITER))) -> JSONResponse:
    """Store the samples of a Prometheus remote-write request; refused rows are listed (at most 100) by index.

    Headers: ``Content-Type: application/x-protobuf``, ``Content-Encoding: snappy``,
    ``X-Prometheus-Remote-Write-Version: 0.1.0``. Staleness markers are dropped (``stale_dropped``).
    """
    headers = request.headers
    check_headers(
        headers.get("content-type"), headers.get("content-encoding"), headers.get("x-prometheus-remote-write-version")
    )
    body = await read_body(request, store_of(request).settings.max_body_bytes)
    return JSONResponse(await run_in_threadpool(store_request, request, body))
