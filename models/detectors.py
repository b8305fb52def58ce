"""Every anomaly detector by name, and how to build one: the registry the CLI, API and flows choose from."""

from __future__ import annotations

from typing import Any

from models.base import Detector
from models.ensemble import MEMBERS, Ensemble
from models.names import DEFAULT_DETECTOR
from models.profile import HourOfWeekProfile

DETECTORS: dict[str, type[Detector]] = {**MEMBERS, Ensemble.name: Ensemble, HourOfWeekProfile.name: HourOfWeekProfile}
__all__ = ["DEFAULT_DETECTOR", "DETECTORS", "make_detector"]


def make_detector(name: str = DEFAULT_DETECTOR, **params: Any) -> Detector:
    """A new detector ``name`` with ``params``; an unknown name or parameter raises ValueError naming it."""
    cls = DETECTORS.get(name)
    if cls is None:
        raise ValueError(f"detector: {name!r} is not one of {', '.join(DETECTORS)}")
    try:
        return cls(**params)
    except TypeError as exc:
        raise ValueError(f"detector {name}: {exc}") from None
