"""``POST /api/v1/metrics``: the spec's JSON batch; good rows stored, bad rows reported by index and reason.

Batches are validated and written on one thread per process (``INGEST_THREAD``),
not on the shared thread pool: the work is CPU-bound Python, so more threads would
only take the GIL from each other (and from the event loop) and queue on the
writer's lock; one thread keeps the batches of a process flowing in arrival order.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from metrics.api.app import JSONResponse, store_of
from metrics.api.auth import Principal, Role, requires
from metrics.errors import UnsupportedMediaTypeError, ValidationError

router = APIRouter(prefix="/api/v1", tags=["ingest"])
INGEST_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest")


class Sample(BaseModel):
    """One sample of the spec's batch."""

    metric_id: str = Field(examples=["crypto.key.encryption_ops"])
    value: float = Field(examples=[42.0])
    metric_type: str = Field("gauge", examples=["counter"])
    timestamp: str | float | None = Field(None, examples=["2026-11-28T03:00:00Z"])
    tags: dict[str, str] = Field(default_factory=dict, examples=[{"key_id": "k-1", "algorithm": "AES-256"}])


class Batch(BaseModel):
    """The spec's batch: ``{"metrics": [...]}``."""

    metrics: list[Sample]


class RowError(BaseModel):
    """A refused row: its index in the batch and why."""

    index: int
    reason: str


class IngestReport(BaseModel):
    """What happened to a batch."""

    stored: int
    rejected: int
    errors: list[RowError]
    seconds: float


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """A model's JSON schema with its ``$defs`` inlined (a local ``#/$defs/…`` does not resolve inside OpenAPI)."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            reference = node.get("$ref", "")
            if reference.startswith("#/$defs/"):
                return resolve(definitions[reference.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


def parse_batch(body: bytes, content_type: str | None) -> list[Any]:
    """The list under ``metrics`` of a JSON body; refuses other content types and shapes with the reason."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media not in ("application/json", ""):
        raise UnsupportedMediaTypeError(f"content type {media!r}: send application/json")
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ValidationError(f"body is not valid JSON: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("metrics"), list):
        raise ValidationError('body: expected {"metrics": [...]} with a list of samples')
    return document["metrics"]


@router.post(
    "/metrics",
    response_model=IngestReport,
    openapi_extra={"requestBody": {"content": {"application/json": {"schema": inline_schema(Batch)}}}},
    summary="Store a batch of samples",
)
async def ingest_batch(request: Request, principal: Principal = Depends(requires(Role.WRITER))) -> JSONResponse:
    """Store the good rows of a batch durably (fsynced) and report each refused row with its index and reason.

    Example body: ``{"metrics": [{"metric_id": "crypto.key.encryption_ops", "value": 42,
    "metric_type": "counter", "tags": {"key_id": "k-1"}}]}``.
    """
    items = parse_batch(await request.body(), request.headers.get("content-type"))
    result = await asyncio.get_running_loop().run_in_executor(INGEST_THREAD, store_of(request).ingest_points, items)
    request.state.ingested = result.stored
    request.state.rejected_reasons = [r.reason for r in result.rejected]
    return JSONResponse(result.to_dict())
