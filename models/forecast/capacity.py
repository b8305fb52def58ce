"""Answers an operator acts on: when a gauge reaches its limit, how likely a breach is, how many replicas to run.

**Time to exhaustion** (:func:`time_to_limit`) — the trend of the recent
history (least squares over the last ``window`` points, after removing the
series' daily pattern when it has one) extended to the limit: ``(limit −
level) / slope``, with the 80 % interval from the slope's own 80 %
confidence interval (Student's t). A series moving away from its limit, or
whose slope is indistinguishable from zero at 80 %, gets no date. A rising
gauge approaches an upper limit (disk full); a falling one a lower limit
(available memory reaching zero) when ``falling=True``.

**Breach probability** (:func:`breach_probability`) — from a forecast's
distribution: each step's probability of being beyond the threshold under
the normal law its 95 % interval implies; the horizon's probability is the
largest of them (errors of neighbouring steps are strongly correlated, so the
largest single step is the honest estimate, where treating steps as
independent would add them up to near certainty).

**Scaling** (:func:`scaling_advice`) — replicas to run so that the forecast
peak (its 80 % upper bound) sits at the target utilisation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from metrics.errors import ValidationError
from models.forecast.forecaster import Z_95, Forecast, clean_history
from models.forecast.seasonality import is_seasonal

SECONDS_PER_DAY = 86_400.0
CONFIDENCE = 0.80


@dataclass(frozen=True)
class Exhaustion:
    """When a series reaches its limit: seconds from its last point (None: not heading there), with 80 % bounds."""

    limit: float
    level: float
    slope_per_day: float
    seconds: float | None
    earliest_seconds: float | None
    latest_seconds: float | None  # None with ``seconds`` set: perhaps never (the slope's interval reaches 0)

    @property
    def days(self) -> float | None:
        """Days to the limit, or None."""
        return None if self.seconds is None else self.seconds / SECONDS_PER_DAY

    def describe(self, subject: str) -> str:
        """One sentence: ``disk / on host-3 full in 9.2 days, 80 %: 7.5–11.4``."""
        if self.seconds is None:
            trend = f"{self.slope_per_day:+.3g}/day"
            return f"{subject}: not heading for {self.limit:g} (level {self.level:.3g}, trend {trend})"
        earliest = _days(self.earliest_seconds)
        latest = "never" if self.latest_seconds is None else _days(self.latest_seconds)
        return f"{subject} reaches {self.limit:g} in {_days(self.seconds)} days, 80 %: {earliest}–{latest}"


def _days(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds / SECONDS_PER_DAY:.1f}"


def time_to_limit(
    values: np.ndarray,
    step_seconds: float,
    limit: float,
    *,
    falling: bool = False,
    window: int | None = None,
    period: int = 24,
) -> Exhaustion:
    """When the trend of ``values`` (one every ``step_seconds``) reaches ``limit`` (see the module).

    Args:
        values: the history, oldest first (NaNs interpolated).
        step_seconds: the time between points.
        limit: the level that counts as exhausted (100 for a percentage).
        falling: the series approaches the limit from above (available bytes reaching 0).
        window: points of recent history the trend is fitted on (default: a week of ``step_seconds``, at least 24).
        period: the daily period in points, removed first when the series shows it.
    """
    if not step_seconds > 0:
        raise ValidationError(f"step_seconds: {step_seconds!r} must be > 0")
    history = clean_history(values)
    size = window or max(24, int(7 * SECONDS_PER_DAY / step_seconds))
    recent = history[-size:]
    if period > 1 and is_seasonal(recent, period):
        phase = np.arange(len(recent)) % period
        profile = np.array([recent[phase == p].mean() for p in range(period)])
        recent = recent - profile[phase] + profile.mean()
    level = float(recent[-1]) if len(recent) < 3 else float(np.mean(recent[-max(3, len(recent) // 20) :]))
    if len(recent) < 3 or np.ptp(recent) == 0:
        return Exhaustion(limit, level, 0.0, None, None, None)
    x = np.arange(len(recent), dtype=float)
    fit = stats.linregress(x, recent)
    slope, error = float(fit.slope), float(fit.stderr)
    level = float(fit.intercept + fit.slope * x[-1])
    quantile = float(stats.t.ppf(0.5 + CONFIDENCE / 2, len(recent) - 2))
    toward = -1.0 if falling else 1.0
    gap = (limit - level) * toward  # how far the limit still is, in the direction of travel
    speed, low, high = slope * toward, (slope - quantile * error) * toward, (slope + quantile * error) * toward
    per_day = slope * SECONDS_PER_DAY / step_seconds
    if gap <= 0:
        return Exhaustion(limit, level, per_day, 0.0, 0.0, 0.0)
    slowest, fastest = min(low, high), max(low, high)
    if speed <= 0 or fastest <= 0:
        return Exhaustion(limit, level, per_day, None, None, None)
    seconds = gap / speed * step_seconds
    earliest = gap / fastest * step_seconds
    latest = gap / slowest * step_seconds if slowest > 0 else None
    return Exhaustion(limit, level, per_day, seconds, earliest, latest)


def breach_probability(forecast: Forecast, threshold: float, *, above: bool = True) -> float:
    """The probability that the forecast goes beyond ``threshold`` (above, or below) within its horizon."""
    if not len(forecast):
        return 0.0
    spread = np.maximum((forecast.upper_95 - forecast.mean) / Z_95, 0.0)
    distance = (threshold - forecast.mean) if above else (forecast.mean - threshold)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(spread > 0, distance / np.where(spread > 0, spread, 1.0), np.where(distance < 0, -np.inf, np.inf))
    return float(np.max(stats.norm.sf(z)))


@dataclass(frozen=True)
class ScalingAdvice:
    """Replicas to run next, and why, in one sentence."""

    current: int
    recommended: int
    peak: float
    target: float
    reason: str


def scaling_advice(
    forecast: Forecast, *, current_replicas: int, target_utilisation: float, subject: str = "load", unit: str = "%"
) -> ScalingAdvice:
    """Replicas so that the forecast peak (80 % upper bound) of a per-replica utilisation sits at the target.

    Args:
        forecast: the utilisation forecast (percent of one replica's capacity, averaged over replicas).
        current_replicas: replicas running now (the utilisation is measured across them).
        target_utilisation: the utilisation to aim for at the peak (percent, e.g. 70).
        subject: what the utilisation is of, for the sentence.
        unit: the utilisation's unit, for the sentence.
    """
    if current_replicas < 1:
        raise ValidationError(f"current_replicas: {current_replicas!r} must be >= 1")
    if not 0 < target_utilisation <= 100:
        raise ValidationError(f"target_utilisation: {target_utilisation!r} must be in (0, 100]")
    peak = float(np.max(forecast.upper_80)) if len(forecast) else 0.0
    needed = max(1, math.ceil(current_replicas * peak / target_utilisation - 1e-9))
    verb = "keep" if needed == current_replicas else ("scale up to" if needed > current_replicas else "scale down to")
    reason = (
        f"{subject} is forecast to peak at {float(np.max(forecast.mean)):.0f}{unit} "
        f"(80 % bound {peak:.0f}{unit}) on {current_replicas} replica(s); at a {target_utilisation:g}{unit} "
        f"target, {verb} {needed}."
    )
    return ScalingAdvice(current_replicas, needed, peak, target_utilisation, reason)
