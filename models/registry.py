"""The model registry: trained detectors on disk, by detector, series and version, with what they were trained on.

Layout: ``<root>/<detector>/<series_id>/<version>/`` holding ``model.pkl`` (the
pickled detector, learned state included) and ``meta.json``: the version,
when it was trained, the data range and row count it saw, its parameters, the
training figures, and the versions of the libraries that wrote it. Versions
are UTC timestamps (``20261202T053000Z``), so they sort by age; a write goes
to a temporary folder renamed into place, so a reader never sees half a model.

Loading refuses a model written by another version of this package or of a
library whose objects it pickles (scikit-learn, statsmodels, numpy, pandas):
unpickling across versions can silently give wrong answers, so the registry
raises :class:`ModelVersionError` naming both versions instead, and the next
training run writes a fresh model. Only files this system wrote are loaded
(pickle runs code): the registry lives under ``data/models/``, which only the
system writes.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, TypeVar

from metrics.errors import MetricsError
from models.base import Detector
from models.joint import JointForest

MODEL_FILE = "model.pkl"
META_FILE = "meta.json"
VERSION_FORMAT = "%Y%m%dT%H%M%S%fZ"
TRACKED_PACKAGES = ("metrics-system", "scikit-learn", "statsmodels", "numpy", "pandas", "ruptures")

Model = Detector | JointForest
M = TypeVar("M", Detector, JointForest)


class ModelError(MetricsError):
    """A model is missing, unreadable or was written by incompatible library versions."""


class ModelVersionError(ModelError):
    """A model was written by other versions of the libraries it depends on."""


def library_versions() -> dict[str, str]:
    """The installed versions of the packages a pickled model depends on."""
    found: dict[str, str] = {}
    for package in TRACKED_PACKAGES:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "absent"
    return found


@dataclass(frozen=True)
class ModelInfo:
    """What is known about one stored model.

    Args:
        detector: the detector's name.
        series_id: the series it was trained on.
        version: the version (its training time, sortable).
        trained_at: ISO 8601 UTC time of training.
        data_start, data_end: the first and last timestamp of the training rows (ISO 8601).
        rows: training rows.
        params: the detector's parameters.
        figures: training figures (anomaly rate on the history, seconds).
        libraries: the library versions that wrote it.
    """

    detector: str
    series_id: int
    version: str
    trained_at: str
    data_start: str | None
    data_end: str | None
    rows: int
    params: dict[str, Any]
    figures: dict[str, Any] = field(default_factory=dict)
    libraries: dict[str, str] = field(default_factory=dict)


class ModelRegistry:
    """Trained detectors under ``root`` (``data/models``)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def folder(self, detector: str, series_id: int, model_version: str | None = None) -> Path:
        """Where a series' models (or one version) live."""
        base = self.root / detector / str(series_id)
        return base / model_version if model_version else base

    def save(
        self,
        model: Model,
        series_id: int,
        *,
        data_start: datetime | None,
        data_end: datetime | None,
        rows: int,
        figures: dict[str, Any] | None = None,
        now: datetime | None = None,
    ) -> ModelInfo:
        """Store a trained detector as a new version; returns its metadata."""
        moment = now or datetime.now(UTC)
        model_version = moment.strftime(VERSION_FORMAT)
        info = ModelInfo(
            detector=model.name,
            series_id=series_id,
            version=model_version,
            trained_at=moment.isoformat(),
            data_start=data_start.isoformat() if data_start else None,
            data_end=data_end.isoformat() if data_end else None,
            rows=rows,
            params={
                k: v if isinstance(v, int | float | str | bool | type(None)) else repr(v)
                for k, v in model.params().items()
            },
            figures=figures or {},
            libraries=library_versions(),
        )
        final = self.folder(model.name, series_id, model_version)
        temporary = final.with_name(f".{model_version}.partial")
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.mkdir(parents=True)
        with open(temporary / MODEL_FILE, "wb") as handle:
            pickle.dump(model, handle, protocol=pickle.HIGHEST_PROTOCOL)
            handle.flush()
            os.fsync(handle.fileno())
        (temporary / META_FILE).write_text(json.dumps(asdict(info), indent=1, sort_keys=True))
        os.replace(temporary, final)
        return info

    def versions(self, detector: str, series_id: int) -> list[str]:
        """The stored versions of a series' model, oldest first."""
        base = self.folder(detector, series_id)
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))

    def info(self, detector: str, series_id: int, model_version: str | None = None) -> ModelInfo:
        """The metadata of one version (default: the newest)."""
        chosen = model_version or self._newest(detector, series_id)
        path = self.folder(detector, series_id, chosen) / META_FILE
        try:
            return ModelInfo(**json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError, TypeError) as exc:
            raise ModelError(f"{path}: cannot read the model's metadata: {exc}") from None

    def load(self, detector: str, series_id: int, model_version: str | None = None) -> tuple[Detector, ModelInfo]:
        """A stored detector (default: the newest version) and its metadata; see :meth:`load_as`."""
        model, info = self._load(Detector, detector, series_id, model_version)
        return model, info

    def load_as(
        self, kind: type[M], detector: str, series_id: int, model_version: str | None = None
    ) -> tuple[M, ModelInfo]:
        """A stored model of class ``kind`` (default: the newest version) and its metadata."""
        model, info = self._load(kind, detector, series_id, model_version)
        return model, info

    def _load(self, kind: type[Any], detector: str, series_id: int, model_version: str | None) -> tuple[Any, ModelInfo]:
        """Load and check a model (``kind`` may be abstract: it is only an isinstance check).

        Raises:
            ModelError: there is no such model, or it cannot be read, or it is not a ``kind``.
            ModelVersionError: it was written by other library versions than these.
        """
        info = self.info(detector, series_id, model_version)
        current = library_versions()
        different = {k: (v, current.get(k)) for k, v in info.libraries.items() if current.get(k) != v}
        if different:
            name, (written, installed) = next(iter(sorted(different.items())))
            raise ModelVersionError(
                f"model {detector}/{series_id}/{info.version} was written with {name} {written}; "
                f"this is {installed}: retrain it (the train-models flow or `metrics train`)"
            )
        path = self.folder(detector, series_id, info.version) / MODEL_FILE
        try:
            with open(path, "rb") as handle:
                model = pickle.load(handle)
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError) as exc:
            raise ModelError(f"{path}: cannot load the model: {exc}") from None
        if not isinstance(model, kind) or model.name != detector:
            raise ModelError(f"{path}: not a {detector} model")
        return model, info

    def prune(self, detector: str, series_id: int, keep: int = 3) -> list[str]:
        """Remove all but the newest ``keep`` versions; return the removed ones."""
        if keep < 1:
            raise ValueError(f"keep: {keep!r} must be >= 1")
        removed = self.versions(detector, series_id)[:-keep]
        for model_version in removed:
            shutil.rmtree(self.folder(detector, series_id, model_version), ignore_errors=True)
        return removed

    def series(self, detector: str) -> list[int]:
        """Series with at least one stored model of ``detector``."""
        base = self.root / detector
        if not base.is_dir():
            return []
        return sorted(int(p.name) for p in base.iterdir() if p.is_dir() and p.name.lstrip("-").isdigit())

    def _newest(self, detector: str, series_id: int) -> str:
        found = self.versions(detector, series_id)
        if not found:
            raise ModelError(f"no {detector} model for series {series_id} under {self.root}")
        return found[-1]
