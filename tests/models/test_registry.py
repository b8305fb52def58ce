"""The model registry: round trip, versions, pruning, and a clear refusal of models from other library versions."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from models.detectors import make_detector
from models.registry import MODEL_FILE, ModelError, ModelRegistry, ModelVersionError

START = datetime(2026, 11, 1, tzinfo=UTC)


def trained() -> tuple[object, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    ts = (START.timestamp() * 1e6 + np.arange(600) * 300e6).astype(np.int64)
    values = 10 + rng.normal(0, 1, 600)
    return make_detector("zscore").fit((ts, values)), ts, values


def test_a_model_round_trips_and_keeps_scoring_where_it_stopped(tmp_path: Path) -> None:
    model, ts, _ = trained()
    registry = ModelRegistry(tmp_path)
    info = registry.save(model, 42, data_start=START, data_end=START + timedelta(days=2), rows=600, now=START)
    loaded, meta = registry.load("zscore", 42)
    assert meta == info
    assert (meta.rows, meta.params["window_seconds"], meta.data_start) == (600, 86_400.0, START.isoformat())
    more_ts, more = ts[-1] + (np.arange(1, 50) * 300e6).astype(np.int64), 10 + np.zeros(49)
    np.testing.assert_allclose(loaded.score((more_ts, more)), model.score((more_ts, more)))


def test_versions_are_sorted_by_time_and_pruned(tmp_path: Path) -> None:
    model, _, _ = trained()
    registry = ModelRegistry(tmp_path)
    for day in range(5):
        registry.save(model, 7, data_start=None, data_end=None, rows=1, now=START + timedelta(days=day))
    versions = registry.versions("zscore", 7)
    assert versions == sorted(versions)
    assert len(versions) == 5
    assert registry.prune("zscore", 7, keep=2) == versions[:3]
    assert registry.versions("zscore", 7) == versions[3:]
    assert registry.info("zscore", 7).version == versions[-1]
    assert registry.series("zscore") == [7]


def test_a_model_from_other_library_versions_is_refused_by_name(tmp_path: Path) -> None:
    model, _, _ = trained()
    registry = ModelRegistry(tmp_path)
    info = registry.save(model, 1, data_start=None, data_end=None, rows=1, now=START)
    meta = registry.folder("zscore", 1, info.version) / "meta.json"
    document = json.loads(meta.read_text())
    document["libraries"]["scikit-learn"] = "0.1.0"
    meta.write_text(json.dumps(document))
    with pytest.raises(ModelVersionError, match=r"written with scikit-learn 0\.1\.0; this is .*: retrain it"):
        registry.load("zscore", 1)


def test_missing_and_damaged_models(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    with pytest.raises(ModelError, match="no zscore model for series 5"):
        registry.load("zscore", 5)
    model, _, _ = trained()
    info = registry.save(model, 5, data_start=None, data_end=None, rows=1, now=START)
    (registry.folder("zscore", 5, info.version) / MODEL_FILE).write_bytes(b"not a pickle")
    with pytest.raises(ModelError, match="cannot load the model"):
        registry.load("zscore", 5)
    with pytest.raises(ValueError, match="keep"):
        registry.prune("zscore", 5, keep=0)
