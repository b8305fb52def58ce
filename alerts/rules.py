"""Alert rules: what to watch, when it counts as a breach, and what to do about it.

An :class:`AlertRule` has the original spec's fields (``rule_id``, ``name``,
``description``, ``metric_pattern`` — a regular expression matched against
the whole metric name —, ``threshold_value``, ``comparison``,
``duration_seconds``, ``priority``, ``use_anomaly_detection``,
``ml_sensitivity``) and what Prometheus and Alertmanager users rely on:

- ``matchers`` on the series' tags (``["region=eu-west-1", "host=~web-.*"]``,
  the syntax of silences);
- ``aggregation`` over the trailing ``window_seconds`` at each sample
  (``last``: the sample itself; ``avg max min sum count p95``; ``rate`` and
  ``increase`` of a counter, resets handled), and ``group_by`` tags: the
  samples of a group's series are judged together (``None``: each series
  alone; ``[]``: all matching series as one);
- ``labels`` and ``annotations`` with templates (``{{ value }}``,
  ``{{ threshold }}``, ``{{ series }}``, ``{{ labels.host }}``; Prometheus'
  ``$value`` / ``$labels.host`` spellings work too);
- ``resolve_threshold`` (hysteresis: a firing alert resolves only past it),
  ``keep_firing_for`` (seconds the condition must stay clear to resolve),
  ``missing_data`` (``keep`` the state, ``alert``, or ``resolve`` when a
  series stops reporting);
- ``predicted_breach``: fire when the newest forecast gives at least this
  probability of crossing the threshold within its horizon;
- ``remediation`` (the name of an action of the remediation config),
  ``escalation`` (steps: after N unacknowledged seconds, notify more channels
  or raise the priority) and ``channels`` (empty: the routing tree decides).

Rules come from ``deployments/alert-rules.yaml`` (:func:`load_rules_file`)
and from the API / CLI, kept in SQLite (:mod:`alerts.store`). Every problem
is a :class:`RuleError` naming the field and the reason.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any, Self

import yaml

from alerts.matchers import Matcher
from metrics.errors import ValidationError

COMPARISONS = (">", ">=", "<", "<=", "==", "!=")
AGGREGATIONS = ("last", "avg", "max", "min", "sum", "count", "rate", "increase", "p95")
COUNTER_AGGREGATIONS = ("rate", "increase")
MISSING_DATA = ("keep", "alert", "resolve")
RULE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
TAG_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$")
TEMPLATE = re.compile(r"\{\{\s*\$?([A-Za-z_][A-Za-z0-9_.]*)\s*\}\}")
TEMPLATE_NAMES = ("value", "threshold", "comparison", "series", "metric", "priority", "rule_id", "name")
REGEX_SPECIAL = frozenset(".^$*+?{}[]|()")
MAX_WINDOW_SECONDS = 7 * 86_400
MAX_DURATION_SECONDS = 7 * 86_400


class RuleError(ValidationError):
    """A rule was refused; the message names the field and the reason."""


class AlertPriority(StrEnum):
    """How urgent an alert is; CRITICAL inhibits lower alerts of the same group."""

    LOW = "LOW"
    MEDIUM = "MEDIUM"
    HIGH = "HIGH"
    CRITICAL = "CRITICAL"

    @property
    def rank(self) -> int:
        """0 for LOW … 3 for CRITICAL."""
        return list(AlertPriority).index(self)

    @classmethod
    def parse(cls, value: Any) -> AlertPriority:
        """A priority from its name in any case (``high``) or itself."""
        if isinstance(value, AlertPriority):
            return value
        if isinstance(value, str) and value.strip().upper() in cls.__members__:
            return cls[value.strip().upper()]
        raise RuleError(f"priority: {value!r} is not a priority; allowed: {', '.join(p.value for p in cls)}")


@dataclass(frozen=True)
class EscalationStep:
    """After ``after_seconds`` unacknowledged, also notify ``channels`` and/or raise the alert to ``priority``."""

    after_seconds: float
    channels: tuple[str, ...] = ()
    priority: AlertPriority | None = None


@dataclass(frozen=True)
class AlertRule:
    """One alert rule (see the module for every field).

    Args:
        rule_id: unique id (letters, digits, ``_ . : -``; at most 128).
        name: what people see.
        description: what it means and what to check.
        metric_pattern: regular expression matched against the whole metric name.
        threshold_value: the level compared against.
        comparison: one of ``> >= < <= == !=``.
        duration_seconds: how long the condition must hold, judged on the samples' timestamps.
        priority: LOW, MEDIUM, HIGH or CRITICAL.
        use_anomaly_detection: fire on the anomaly detectors' findings instead of the threshold.
        ml_sensitivity: 0 (only the surest anomalies, score ≥ 0.9) … 1 (score ≥ 0.5).
        aggregation: of the samples in the trailing ``window_seconds`` (see :data:`AGGREGATIONS`).
        window_seconds: the aggregation's window (0 with ``last``).
        group_by: tags whose values make one alert (None: one per series; empty: one for the rule).
        labels: extra labels (templates allowed), for routing and the notification.
        annotations: ``summary``, ``description``, ``runbook`` … (templates allowed).
        resolve_threshold: a firing alert resolves only once the value is past this (hysteresis).
        keep_firing_for: seconds the condition must stay clear before the alert resolves.
        missing_data: ``keep``, ``alert`` or ``resolve`` when a series has no sample in the window.
        predicted_breach: fire when the forecast's probability of a breach within its horizon reaches this.
        remediation: the remediation action to run on firing (its name in the remediation config).
        escalation: steps for an alert nobody acknowledges.
        channels: notify these channels (empty: the routing tree decides).
        enabled: a disabled rule is kept but not evaluated.
        matchers: conditions on the series' tags (``host=web-1``, ``region=~eu-.*``), all of which must hold.
    """

    rule_id: str
    name: str
    description: str = ""
    metric_pattern: str = ".*"
    threshold_value: float = 0.0
    comparison: str = ">"
    duration_seconds: float = 0.0
    priority: AlertPriority = AlertPriority.MEDIUM
    use_anomaly_detection: bool = False
    ml_sensitivity: float = 0.5
    aggregation: str = "last"
    window_seconds: float = 0.0
    group_by: tuple[str, ...] | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    resolve_threshold: float | None = None
    keep_firing_for: float = 0.0
    missing_data: str = "keep"
    predicted_breach: float | None = None
    remediation: str | None = None
    escalation: tuple[EscalationStep, ...] = ()
    channels: tuple[str, ...] = ()
    enabled: bool = True
    matchers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        """Check and normalise every field; a bad one is a :class:`RuleError` naming it."""
        where = f"rule {self.rule_id!r}: " if isinstance(self.rule_id, str) else ""
        try:
            self._check()
        except RuleError as exc:
            raise RuleError(f"{where}{exc}") from None

    def _check(self) -> None:
        if not isinstance(self.rule_id, str) or not RULE_ID.match(self.rule_id):
            raise RuleError(
                f"rule_id: {self.rule_id!r} must be 1-128 letters, digits or _ . : - (a letter or digit first)"
            )
        for name in ("name", "description"):
            if not isinstance(getattr(self, name), str):
                raise RuleError(f"{name}: {getattr(self, name)!r} is not text")
        if not self.name.strip():
            raise RuleError("name: must not be empty")
        if not isinstance(self.metric_pattern, str) or not self.metric_pattern:
            raise RuleError(f"metric_pattern: {self.metric_pattern!r} must be a non-empty regular expression")
        try:
            re.compile(self.metric_pattern)
        except re.error as exc:
            raise RuleError(f"metric_pattern: {self.metric_pattern!r} is not a regular expression: {exc}") from None
        self._set("threshold_value", _number(self.threshold_value, "threshold_value"))
        if self.comparison not in COMPARISONS:
            raise RuleError(f"comparison: {self.comparison!r} is not one of {' '.join(COMPARISONS)}")
        self._set("duration_seconds", _seconds(self.duration_seconds, "duration_seconds", MAX_DURATION_SECONDS))
        self._set("priority", AlertPriority.parse(self.priority))
        if not isinstance(self.use_anomaly_detection, bool):
            raise RuleError(f"use_anomaly_detection: {self.use_anomaly_detection!r} is not true or false")
        sensitivity = _number(self.ml_sensitivity, "ml_sensitivity")
        if not 0 <= sensitivity <= 1:
            raise RuleError(f"ml_sensitivity: {sensitivity!r} must be between 0 and 1")
        self._set("ml_sensitivity", sensitivity)
        if self.aggregation not in AGGREGATIONS:
            raise RuleError(f"aggregation: {self.aggregation!r} is not one of {', '.join(AGGREGATIONS)}")
        self._set("window_seconds", _seconds(self.window_seconds, "window_seconds", MAX_WINDOW_SECONDS))
        if self.aggregation != "last" and self.window_seconds <= 0:
            raise RuleError(f"window_seconds: aggregation {self.aggregation!r} needs a window > 0 seconds")
        if self.group_by is not None:
            self._set("group_by", _names(self.group_by, "group_by"))
        self._set("labels", _templates(self.labels, "labels"))
        self._set("annotations", _templates(self.annotations, "annotations"))
        if self.resolve_threshold is not None:
            level = _number(self.resolve_threshold, "resolve_threshold")
            self._set("resolve_threshold", level)
            if (self.comparison in (">", ">=") and level > self.threshold_value) or (
                self.comparison in ("<", "<=") and level < self.threshold_value
            ):
                raise RuleError(
                    f"resolve_threshold: {level:g} would resolve before the alert fires "
                    f"(threshold {self.comparison} {self.threshold_value:g})"
                )
            if self.comparison in ("==", "!="):
                raise RuleError(f"resolve_threshold: has no meaning with comparison {self.comparison!r}")
        self._set("keep_firing_for", _seconds(self.keep_firing_for, "keep_firing_for", MAX_DURATION_SECONDS))
        if self.missing_data not in MISSING_DATA:
            raise RuleError(f"missing_data: {self.missing_data!r} is not one of {', '.join(MISSING_DATA)}")
        if self.predicted_breach is not None:
            chance = _number(self.predicted_breach, "predicted_breach")
            if not 0 < chance <= 1:
                raise RuleError(f"predicted_breach: {chance!r} must be a probability in (0, 1]")
            if self.use_anomaly_detection:
                raise RuleError("predicted_breach: a rule is either anomaly-based or forecast-based, not both")
            self._set("predicted_breach", chance)
        if self.remediation is not None and (not isinstance(self.remediation, str) or not self.remediation):
            raise RuleError(f"remediation: {self.remediation!r} must be the name of an action")
        steps = tuple(_step(item, i) for i, item in enumerate(self.escalation))
        self._set("escalation", tuple(sorted(steps, key=lambda step: step.after_seconds)))
        self._set("channels", _names(self.channels, "channels"))
        if not isinstance(self.enabled, bool):
            raise RuleError(f"enabled: {self.enabled!r} is not true or false")
        matchers = _sequence(self.matchers, "matchers")
        try:
            parsed = tuple(Matcher.parse(item) if isinstance(item, str) else item for item in matchers)
        except ValidationError as exc:
            raise RuleError(f"matchers: {exc}") from None
        if not all(isinstance(item, Matcher) for item in parsed):
            raise RuleError(f"matchers: {matchers!r} is not a list of tag matchers such as host=web-1")
        self._set("matchers", tuple(str(item) for item in parsed))
        self._set("_tag_matchers", parsed)
        self._set("_literal", literal_of(self.metric_pattern))

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    @property
    def tag_matchers(self) -> tuple[Matcher, ...]:
        """The parsed ``matchers``."""
        parsed: tuple[Matcher, ...] = self.__dict__["_tag_matchers"]
        return parsed

    @property
    def kind(self) -> str:
        """``threshold``, ``anomaly`` or ``forecast``: which evaluation the rule takes."""
        if self.use_anomaly_detection:
            return "anomaly"
        return "forecast" if self.predicted_breach is not None else "threshold"

    @property
    def literal_metric(self) -> str | None:
        """The one metric name the pattern matches when it has no wildcard (``system\\.cpu\\.usage``), else None."""
        literal: str | None = self.__dict__["_literal"]
        return literal

    @property
    def anomaly_score(self) -> float:
        """The least anomaly score an anomaly rule fires on: 0.9 at sensitivity 0 … 0.5 at 1."""
        return 0.9 - 0.4 * self.ml_sensitivity

    def to_dict(self) -> dict[str, Any]:
        """The rule as plain data, in the shape of ``alert-rules.yaml`` (defaults included)."""
        data = asdict(self)
        data["matchers"] = list(self.matchers)
        data["priority"] = self.priority.value
        data["group_by"] = None if self.group_by is None else list(self.group_by)
        data["labels"] = dict(self.labels)
        data["annotations"] = dict(self.annotations)
        data["channels"] = list(self.channels)
        data["escalation"] = [
            {
                "after_seconds": step.after_seconds,
                "channels": list(step.channels),
                "priority": None if step.priority is None else step.priority.value,
            }
            for step in self.escalation
        ]
        return data

    @classmethod
    def from_stored(cls, data: Mapping[str, Any]) -> Self:
        """A rule from its own :meth:`to_dict`, as stored after validation: rebuilt without validating again.

        Reading 10,000 stored rules this way takes a tenth of the time validation does; anything not written
        by :meth:`to_dict` of a validated rule goes through :meth:`from_dict`.
        """
        rule = object.__new__(cls)
        values = dict(data)
        values["priority"] = AlertPriority(values["priority"])
        values["group_by"] = None if values["group_by"] is None else tuple(values["group_by"])
        values["channels"] = tuple(values["channels"])
        values["matchers"] = tuple(values.get("matchers", ()))
        values["escalation"] = tuple(
            EscalationStep(
                step["after_seconds"],
                tuple(step["channels"]),
                None if step["priority"] is None else AlertPriority(step["priority"]),
            )
            for step in values["escalation"]
        )
        for name in FIELD_NAMES:
            object.__setattr__(rule, name, values[name])
        object.__setattr__(rule, "_tag_matchers", tuple(Matcher.parse(item) for item in values["matchers"]))
        object.__setattr__(rule, "_literal", literal_of(values["metric_pattern"]))
        return rule

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "rule") -> Self:
        """A rule from plain data (YAML, JSON); unknown keys are refused, naming ``where``."""
        if not isinstance(data, Mapping):
            raise RuleError(f"{where}: {data!r} is not a mapping of rule fields")
        known = set(FIELD_NAMES)
        unknown = sorted(set(data) - known)
        if unknown:
            raise RuleError(f"{where}: unknown field {unknown[0]!r}; known: {', '.join(sorted(known))}")
        for required in ("rule_id", "name"):
            if required not in data:
                raise RuleError(f"{where}: {required} is required")
        values = dict(data)
        for name in ("channels", "escalation", "matchers"):
            if name in values:
                values[name] = _sequence(values[name], name)
        if values.get("group_by") is not None:
            values["group_by"] = _sequence(values["group_by"], "group_by")
        try:
            return cls(**values)
        except RuleError as exc:
            raise RuleError(f"{where}: {exc}") from None


FIELD_NAMES = tuple(f.name for f in fields(AlertRule))


def literal_of(pattern: str) -> str | None:
    """The string a regular expression matches exactly, when it is a plain literal; None otherwise."""
    characters: list[str] = []
    escaped = False
    for character in pattern:
        if escaped:
            if character.isalnum():
                return None  # \d, \w, \b …: a class or an anchor, not a character
            characters.append(character)
            escaped = False
        elif character == "\\":
            escaped = True
        elif character in REGEX_SPECIAL:
            return None
        else:
            characters.append(character)
    return None if escaped else "".join(characters)


def render(template: str, context: Mapping[str, Any]) -> str:
    """Fill ``{{ name }}`` / ``{{ labels.host }}`` placeholders from ``context`` (numbers to 4 significant digits)."""

    def value_of(match: re.Match[str]) -> str:
        name = match.group(1)
        value: Any = context
        for part in name.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        if value is None:
            return ""
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    return TEMPLATE.sub(value_of, template)


def load_rules_file(path: Path) -> list[AlertRule]:
    """The rules of an ``alert-rules.yaml`` (``rules: [...]`` or a bare list); errors name the file and rule."""
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise RuleError(f"{path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise RuleError(f"{path}: not valid YAML: {exc}") from None
    return parse_rules(document, str(path))


def parse_rules(document: Any, source: str) -> list[AlertRule]:
    """Rules from a parsed YAML/JSON document (``{"rules": [...]}``, a list, or one rule)."""
    if document is None:
        return []
    if isinstance(document, Mapping) and "rules" in document:
        extra = sorted(set(document) - {"rules"})
        if extra:
            raise RuleError(f"{source}: unknown top-level key {extra[0]!r}; expected only 'rules'")
        document = document["rules"]
    items = [document] if isinstance(document, Mapping) else document
    if not isinstance(items, list):
        raise RuleError(f"{source}: expected a list of rules under 'rules'")
    rules = [AlertRule.from_dict(item, f"{source}: rule {index}") for index, item in enumerate(items)]
    seen: set[str] = set()
    for rule in rules:
        if rule.rule_id in seen:
            raise RuleError(f"{source}: rule_id {rule.rule_id!r} is given twice")
        seen.add(rule.rule_id)
    return rules


def dump_rules(rules: Sequence[AlertRule]) -> str:
    """Rules as ``alert-rules.yaml`` text (what ``metrics rules list --format yaml`` prints)."""
    # ASCII with escapes: PyYAML writes some Unicode line breaks (U+0085) raw, and reads them back as breaks.
    return yaml.safe_dump({"rules": [rule.to_dict() for rule in rules]}, sort_keys=False, allow_unicode=False)


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RuleError(f"{name}: {value!r} is not a finite number")
    return float(value)


def _seconds(value: Any, name: str, maximum: float) -> float:
    seconds = _number(value, name)
    if seconds < 0:
        raise RuleError(f"{name}: {seconds:g} must not be negative")
    if seconds > maximum:
        raise RuleError(f"{name}: {seconds:g} is more than {maximum:g} seconds")
    return seconds


def _sequence(value: Any, name: str) -> tuple[Any, ...]:
    if isinstance(value, tuple | list):
        return tuple(value)
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Sequence):
        raise RuleError(f"{name}: {value!r} is not a list")
    return tuple(value)


def _names(value: Any, name: str) -> tuple[str, ...]:
    items = _sequence(value, name)
    for item in items:
        if not isinstance(item, str) or not TAG_NAME.match(item):
            raise RuleError(f"{name}: {item!r} is not a name (letters, digits, _ . -)")
    return items


def _templates(value: Any, name: str) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise RuleError(f"{name}: {value!r} is not a mapping of names to text")
    checked: dict[str, str] = {}
    for key, text in value.items():
        if not isinstance(key, str) or not TAG_NAME.match(key):
            raise RuleError(f"{name}: {key!r} is not a name (letters, digits, _ . -)")
        if not isinstance(text, str | int | float) or isinstance(text, bool):
            raise RuleError(f"{name}.{key}: {text!r} is not text")
        for match in TEMPLATE.finditer(str(text)):
            placeholder = match.group(1)
            if placeholder not in TEMPLATE_NAMES and not placeholder.startswith("labels."):
                allowed = ", ".join([*TEMPLATE_NAMES, "labels.<tag>"])
                raise RuleError(f"{name}.{key}: unknown placeholder {{{{ {placeholder} }}}}; allowed: {allowed}")
        checked[key] = str(text)
    return checked


def _step(item: Any, index: int) -> EscalationStep:
    where = f"escalation[{index}]"
    if isinstance(item, EscalationStep):
        data: Mapping[str, Any] = asdict(item)
    elif isinstance(item, Mapping):
        data = item
    else:
        raise RuleError(f"{where}: {item!r} is not a mapping with after_seconds, channels, priority")
    unknown = sorted(set(data) - {"after_seconds", "channels", "priority"})
    if unknown:
        raise RuleError(f"{where}: unknown field {unknown[0]!r}; known: after_seconds, channels, priority")
    after = _seconds(data.get("after_seconds", -1), f"{where}.after_seconds", MAX_DURATION_SECONDS)
    channels = _names(data.get("channels", ()), f"{where}.channels")
    priority = None if data.get("priority") is None else AlertPriority.parse(data["priority"])
    if not channels and priority is None:
        raise RuleError(f"{where}: names neither channels nor a priority, so it would do nothing")
    return EscalationStep(after, channels, priority)
