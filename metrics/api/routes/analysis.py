"""``GET /api/v1/anomalies``, ``/correlations`` (series that move together) and ``/forecasts`` (the newest ones)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from metrics.api.app import JSONResponse, store_of
from metrics.api.auth import Principal, Role, requires
from metrics.api.routes.query import QueryResult, as_result

router = APIRouter(prefix="/api/v1", tags=["analysis"])


class CorrelationResult(BaseModel):
    """Correlated series, strongest first."""

    primary_metric: str
    pairs: list[dict[str, Any]]


@router.get("/anomalies", response_model=QueryResult, summary="Anomalies found by the detectors")
async def anomalies(
    request: Request,
    metric_pattern: str = Query("*", max_length=512, description="Glob over metric names, e.g. crypto.key.*"),
    sensitivity: float = Query(0.5, ge=0, le=1, description="0: only the surest (score ≥ 0.9) … 1: score ≥ 0.5"),
    window_hours: float = Query(24.0, gt=0, le=24 * 90, description="How far back to look, in hours"),
    principal: Principal = Depends(requires(Role.READER)),
) -> JSONResponse:
    """The anomalies the ``score-anomalies`` flow wrote for matching metrics, highest score first.

    Example: ``GET /api/v1/anomalies?metric_pattern=crypto.key.*&sensitivity=0.7&window_hours=6``.
    """
    from metrics.analysis import detect_anomalies  # the models load on first use, not at the API's start

    settings = request.app.state.settings
    frame = await run_in_threadpool(
        detect_anomalies, settings, store_of(request), metric_pattern, sensitivity, window_hours
    )
    return JSONResponse(as_result(frame))


@router.get("/correlations", response_model=CorrelationResult, summary="Series correlated with a metric")
async def correlations(
    request: Request,
    primary_metric: str = Query(..., max_length=512, description="The metric (glob) compared against"),
    secondary: list[str] = Query(..., description="Globs of the candidate series (repeatable)"),
    correlation_threshold: float = Query(0.7, ge=0, le=1, description="Least |Pearson| or |Spearman| reported"),
    window_hours: float = Query(24.0, gt=0, le=24 * 90),
    interval: str = Query("5m", max_length=32, description="Bucket width the series are resampled to"),
    max_lag: int = Query(12, ge=0, le=288, description="Lags tried in each direction, in buckets"),
    principal: Principal = Depends(requires(Role.READER)),
) -> JSONResponse:
    """Pearson and Spearman correlations at the best lag, for every series matching ``secondary``.

    Example: ``GET /api/v1/correlations?primary_metric=system.cpu.usage_total&secondary=crypto.key.*_ops``.
    """

    def run() -> list[dict[str, Any]]:
        from metrics.analysis import find_correlations

        found = find_correlations(
            store_of(request),
            primary_metric,
            secondary,
            correlation_threshold,
            window_hours=window_hours,
            interval=interval,
            max_lag=max_lag,
        )
        return [item.to_dict() for item in found]

    return JSONResponse({"primary_metric": primary_metric, "pairs": await run_in_threadpool(run)})


@router.get("/forecasts", response_model=QueryResult, summary="The newest forecasts of matching series")
async def forecasts(
    request: Request,
    metric_pattern: str = Query("*", max_length=512, description="Glob over metric names, e.g. system.disk.*"),
    horizon: int = Query(48, ge=1, le=24 * 366, description="Hours ahead (at most what the flow forecast)"),
    principal: Principal = Depends(requires(Role.READER)),
) -> JSONResponse:
    """The ``forecast-capacity`` flow's newest forecast per series: yhat with 80 % and 95 % intervals, the model.

    Example: ``GET /api/v1/forecasts?metric_pattern=system.disk.*&horizon=24``.
    """
    from metrics.analysis import forecast  # the models load on first use, not at the API's start

    settings = request.app.state.settings
    frame = await run_in_threadpool(forecast, settings, store_of(request), metric_pattern, horizon)
    return JSONResponse(as_result(frame))
