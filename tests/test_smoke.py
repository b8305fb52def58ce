"""The package imports lightly and exposes the spec's public names."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_model_does_not_import_the_system() -> None:
    code = (
        "import sys, metrics.model; print(any(m in sys.modules for m in ('duckdb', 'storage.query', 'metrics.system')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert result.stdout.strip() == "False"


def test_public_names_resolve_lazily() -> None:
    import metrics

    assert metrics.MetricType.COUNTER.value == "counter"
    assert callable(metrics.get_metrics_system)
    assert metrics.MetricDataPoint(metric_id="a.b", value=1.0).metric_id == "a.b"
