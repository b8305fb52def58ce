"""Metrics System: a metrics platform for cryptographic-key infrastructure.

The public API is loaded lazily, so ``import metrics.model`` stays light::

    from metrics import get_metrics_system, MetricDataPoint, MetricType
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from metrics.model import MetricDataPoint, MetricType
    from metrics.monitor import HealthMonitor, MonitoringTarget
    from metrics.settings import Settings
    from metrics.system import MetricsSystem, get_metrics_system

__all__ = [
    "HealthMonitor",
    "MetricDataPoint",
    "MetricType",
    "MetricsSystem",
    "MonitoringTarget",
    "Settings",
    "get_metrics_system",
]

_EXPORTS = {
    "MetricDataPoint": "metrics.model",
    "MetricType": "metrics.model",
    "MonitoringTarget": "metrics.monitor",
    "HealthMonitor": "metrics.monitor",
    "Settings": "metrics.settings",
    "MetricsSystem": "metrics.system",
    "get_metrics_system": "metrics.system",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'metrics' has no attribute {name!r}")
    return getattr(import_module(module), name)
