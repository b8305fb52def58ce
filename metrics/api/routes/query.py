"""``GET|POST /api/v1/query``: raw samples, or bucketed aggregates when ``aggregation`` is given."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

import orjson
import polars as pl
from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from metrics.api.app import JSONResponse, store_of
from metrics.api.auth import Principal, Role, requires
from metrics.errors import ValidationError
from metrics.timestamps import looks_like_duration, parse_duration, parse_timestamp

router = APIRouter(prefix="/api/v1", tags=["query"])

Aggregation = Literal["avg", "min", "max", "sum", "count", "last", "rate", "increase", "p50", "p95", "p99"]
MAX_ROWS = 1_000_000


class QueryRequest(BaseModel):
    """A query, as the JSON body of ``POST /query`` (the same fields as ``GET /query``'s parameters)."""

    model_config = ConfigDict(extra="forbid")

    metric_pattern: str = Field("*", max_length=512, examples=["crypto.key.*"])
    start_time: str | None = Field(None, max_length=64, examples=["1h", "2026-11-28T00:00:00Z"])
    end_time: str | None = Field(None, max_length=64, examples=["2026-11-28T03:00:00Z"])
    tags: dict[str, str | list[str]] = Field(default_factory=dict, examples=[{"host": ["web-1", "web-2"]}])
    aggregation: Aggregation | None = Field(None, examples=["rate"])
    interval: str = Field("1m", max_length=32, examples=["5m"])
    group_by: list[str] = Field(default_factory=list, examples=[["key_id"]])
    limit: int = Field(10_000, ge=1, le=MAX_ROWS)


class QueryResult(BaseModel):
    """Rows of the answer, column by name, with the row count."""

    rows: int
    columns: list[str]
    data: list[dict[str, Any]]


def when(text: str | None, field: str, now: datetime) -> datetime | None:
    """A duration ago (``1h``) or an absolute ISO 8601 / epoch timestamp; errors name ``field``."""
    if text is None or text == "":
        return None
    try:
        return now - parse_duration(text) if looks_like_duration(text) else parse_timestamp(text)
    except ValidationError as exc:
        raise ValidationError(f"{field}: {exc}") from None


def run_query(request: Request, query: QueryRequest) -> pl.DataFrame:
    """Answer ``query`` from the store (blocking: call it in a thread)."""
    store = store_of(request)
    now = datetime.now(UTC)
    start, end = when(query.start_time, "start_time", now), when(query.end_time, "end_time", now)
    tags = query.tags or None
    if query.aggregation is None:
        return store.query_metrics(query.metric_pattern, start, end, tags, limit=query.limit)
    frame = store.query_aggregated(
        query.metric_pattern, query.aggregation, query.interval, start, end, query.group_by or None, tags
    )
    return frame.head(query.limit)


def as_result(frame: pl.DataFrame) -> dict[str, Any]:
    """A frame as ``{"rows", "columns", "data"}``: ISO 8601 timestamps, tags as objects, series ids as strings.

    Series ids are 64-bit: as JSON numbers JavaScript would round them.
    """
    frame = frame.with_columns(
        pl.col(name).dt.to_string("%Y-%m-%dT%H:%M:%S%.6fZ")
        for name, dtype in frame.schema.items()
        if isinstance(dtype, pl.Datetime)
    )
    if "series_id" in frame.columns:
        frame = frame.with_columns(pl.col("series_id").cast(pl.String))
    rows = frame.to_dicts()
    if "tags" in frame.columns:
        for row in rows:
            if isinstance(row["tags"], str):
                row["tags"] = orjson.loads(row["tags"])
    return {"rows": frame.height, "columns": frame.columns, "data": rows}


@router.get("/query", response_model=QueryResult, summary="Query samples (parameters)")
async def query_get(
    request: Request,
    metric_pattern: str = Query("*", max_length=512, description="Glob over metric names, e.g. crypto.key.*"),
    start_time: str | None = Query(None, max_length=64, description="Duration ago (1h) or ISO 8601 / epoch"),
    end_time: str | None = Query(None, max_length=64, description="Duration ago or ISO 8601 / epoch (default now)"),
    tag: list[str] = Query(default_factory=list, description="key=value filter; repeat a key for any of the values"),
    aggregation: Aggregation | None = Query(None, description="Bucket aggregation; omit for raw samples"),
    interval: str = Query("1m", max_length=32, description="Bucket width, e.g. 5m"),
    group_by: list[str] = Query(default_factory=list, description="Tags to group by (repeatable)"),
    limit: int = Query(10_000, ge=1, le=MAX_ROWS),
    principal: Principal = Depends(requires(Role.READER)),
) -> JSONResponse:
    """Raw samples of the matching series, or aggregates per bucket (and group) when ``aggregation`` is given.

    Example: ``GET /api/v1/query?metric_pattern=crypto.key.*&start_time=1h&aggregation=rate&interval=5m``.
    """
    tags: dict[str, list[str]] = {}
    for item in tag:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValidationError(f"tag: {item!r} is not key=value")
        tags.setdefault(key.strip(), []).append(value.strip())
    query = QueryRequest(
        metric_pattern=metric_pattern,
        start_time=start_time,
        end_time=end_time,
        tags=dict(tags),
        aggregation=aggregation,
        interval=interval,
        group_by=group_by,
        limit=limit,
    )
    return JSONResponse(as_result(await run_in_threadpool(run_query, request, query)))


@router.post("/query", response_model=QueryResult, summary="Query samples (JSON body)")
async def query_post(
    request: Request, query: QueryRequest, principal: Principal = Depends(requires(Role.READER))
) -> JSONResponse:
    """The same as ``GET /query`` with a JSON body, e.g. ``{"metric_pattern": "system.cpu.*", "start_time": "1h",
    "aggregation": "avg", "interval": "5m", "group_by": ["host"]}``."""
    return JSONResponse(as_result(await run_in_threadpool(run_query, request, query)))
