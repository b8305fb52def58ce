"""``/health``: liveness plus readiness of the write-ahead log, the lake and the disk (no credentials needed)."""

from __future__ import annotations

import os
import shutil
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from metrics.api.app import JSONResponse, store_of

router = APIRouter(tags=["health"])

# Below this much free space the API reports itself not ready: a full disk fails fsyncs.
MIN_FREE_BYTES = 512 * 1024 * 1024


def check_health(request: Request) -> dict[str, Any]:
    """Each check's status; ready when all pass."""
    store = store_of(request)
    settings = store.settings
    checks: dict[str, dict[str, Any]] = {}
    wal = store.writer.wal.folder
    checks["wal"] = {"ok": wal.is_dir() and os.access(wal, os.W_OK), "bytes": store.writer.wal_bytes()}
    lake = settings.lake_dir
    checks["lake"] = {"ok": lake.is_dir() and os.access(lake, os.W_OK | os.R_OK)}
    usage = shutil.disk_usage(settings.data_dir)
    checks["disk"] = {"ok": usage.free >= MIN_FREE_BYTES, "free_bytes": usage.free, "total_bytes": usage.total}
    return {"status": "ok" if all(c["ok"] for c in checks.values()) else "degraded", "checks": checks}


@router.get("/health", summary="Liveness and readiness")
async def health(request: Request) -> JSONResponse:
    """200 with each check when the WAL, the lake and the disk are usable; 503 with the failing check otherwise."""
    report = await run_in_threadpool(check_health, request)
    return JSONResponse(report, status_code=200 if report["status"] == "ok" else 503)
