"""Who hears about an alert, when, and how often: the routing tree, grouping, inhibition and repeats.

The configuration is ``deployments/alert-routing.yaml`` (or
``METRICS_ALERT_ROUTING_FILE``), in Alertmanager's shape::

    route:                         # the root: every alert enters here
      channels: [slack]            # where alerts go when no child route matches
      group_by: [rule_id, host]    # alerts with equal values of these labels are sent together
      group_wait: 30               # seconds a new group waits for more alerts before its first message
      group_interval: 300          # seconds between messages about the same group
      repeat_interval: 14400       # seconds before a still-firing, unacknowledged alert is sent again
      routes:                      # children, first match wins (unless ``continue: true``)
        - matchers: ["priority=CRITICAL"]
          channels: [slack, email]
        - matchers: ["team=~security|keys"]
          channels: [email]
    inhibit_rules:                 # a firing source alert mutes matching target alerts
      - source_matchers: ["priority=CRITICAL"]
        target_matchers: ["priority!=CRITICAL"]
        equal: [host]

A child inherits the timing and ``group_by`` of its parent unless it sets
its own. Without a file, the root route sends every alert to every channel
the settings configure, with the default inhibition above (a firing
CRITICAL alert mutes the lower alerts of the same host). A rule's own
``channels`` bypass the tree.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from alerts.matchers import Matcher
from metrics.errors import ValidationError

PROJECT_ROUTING = Path(__file__).resolve().parents[1] / "deployments" / "alert-routing.yaml"
DEFAULT_GROUP_BY = ("rule_id",)
TIMING = ("group_wait", "group_interval", "repeat_interval")


@dataclass(frozen=True)
class Route:
    """A node of the routing tree: which alerts it takes, where they go, and its grouping and timing."""

    matchers: tuple[Matcher, ...] = ()
    channels: tuple[str, ...] = ()
    group_by: tuple[str, ...] = DEFAULT_GROUP_BY
    group_wait: float = 30.0
    group_interval: float = 300.0
    repeat_interval: float = 4 * 3600.0
    routes: tuple[Route, ...] = ()
    continue_matching: bool = False

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether every matcher of this route holds for the labels."""
        return all(matcher.matches(labels) for matcher in self.matchers)


@dataclass(frozen=True)
class InhibitRule:
    """While an alert matching ``source`` fires, alerts matching ``target`` with the same ``equal`` labels are muted."""

    source: tuple[Matcher, ...]
    target: tuple[Matcher, ...]
    equal: tuple[str, ...] = ()


DEFAULT_INHIBITION = InhibitRule(
    source=(Matcher("priority", "CRITICAL"),), target=(Matcher("priority", "CRITICAL", equal=False),), equal=("host",)
)


@dataclass(frozen=True)
class Delivery:
    """Where and how one alert is sent: its channels and the group (key and timing) it is sent with."""

    channels: tuple[str, ...]
    group_key: str
    group_wait: float
    group_interval: float
    repeat_interval: float


@dataclass(frozen=True)
class Routing:
    """The routing tree and inhibition rules in force."""

    root: Route
    inhibit_rules: tuple[InhibitRule, ...] = (DEFAULT_INHIBITION,)
    source: str = "settings"
    default_channels: tuple[str, ...] = field(default=())

    def deliveries(self, labels: Mapping[str, str], rule_channels: Sequence[str] = ()) -> list[Delivery]:
        """The deliveries of an alert: the matching routes' (first match, or all with ``continue``)."""
        routes = self._walk(self.root, labels)
        found = []
        for route in routes:
            channels = tuple(rule_channels) or route.channels or self.default_channels
            key_labels = ",".join(f"{name}={labels.get(name, '')}" for name in route.group_by)
            found.append(Delivery(channels, key_labels, route.group_wait, route.group_interval, route.repeat_interval))
        return found

    def _walk(self, route: Route, labels: Mapping[str, str]) -> list[Route]:
        if not route.matches(labels):
            return []
        chosen: list[Route] = []
        for child in route.routes:
            taken = self._walk(child, labels)
            chosen += taken
            if taken and not child.continue_matching:
                break
        return chosen or [route]

    def inhibited(self, labels: Mapping[str, str], firing: Sequence[Mapping[str, str]]) -> bool:
        """Whether a firing alert among ``firing`` (their labels) mutes an alert with these labels."""
        return self.inhibitor(firing)(labels)

    def inhibitor(self, firing: Sequence[Mapping[str, str]]) -> Callable[[Mapping[str, str]], bool]:
        """A test of whether the firing alerts (their labels) mute an alert; built once per cycle, O(1) a call.

        Per inhibition rule, the firing sources are counted by their values of the ``equal`` labels; a
        target is muted when a source other than itself has its values.
        """
        sources: list[dict[tuple[str, ...], int]] = []
        for rule in self.inhibit_rules:
            counts: dict[tuple[str, ...], int] = {}
            for source in firing:
                if all(matcher.matches(source) for matcher in rule.source):
                    key = tuple(source.get(name, "") for name in rule.equal)
                    counts[key] = counts.get(key, 0) + 1
            sources.append(counts)

        def muted(labels: Mapping[str, str]) -> bool:
            for rule, counts in zip(self.inhibit_rules, sources, strict=True):
                if not counts or not all(matcher.matches(labels) for matcher in rule.target):
                    continue
                found = counts.get(tuple(labels.get(name, "") for name in rule.equal), 0)
                itself = all(matcher.matches(labels) for matcher in rule.source)
                if found > (1 if itself else 0):
                    return True
            return False

        return muted


def load_routing(path: Path | None, default_channels: Sequence[str]) -> Routing:
    """The routing of ``path`` (default: the project's ``alert-routing.yaml`` when it exists; else settings)."""
    chosen = path or (PROJECT_ROUTING if PROJECT_ROUTING.exists() else None)
    if chosen is None:
        return Routing(Route(channels=tuple(default_channels)), default_channels=tuple(default_channels))
    try:
        document = yaml.safe_load(chosen.read_text()) or {}
    except OSError as exc:
        raise ValidationError(f"{chosen}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ValidationError(f"{chosen}: not valid YAML: {exc}") from None
    return parse_routing(document, str(chosen), default_channels)


def parse_routing(document: Any, source: str, default_channels: Sequence[str]) -> Routing:
    """Routing from a parsed document (see the module); errors name the source and the field."""
    if not isinstance(document, Mapping):
        raise ValidationError(f"{source}: expected a mapping with 'route' and 'inhibit_rules'")
    unknown = sorted(set(document) - {"route", "inhibit_rules"})
    if unknown:
        raise ValidationError(f"{source}: unknown key {unknown[0]!r}; known: route, inhibit_rules")
    root = _route(document.get("route") or {}, f"{source}: route", None)
    if not root.channels:
        root = replace(root, channels=tuple(default_channels))
    inhibitions = document.get("inhibit_rules")
    rules = (
        (DEFAULT_INHIBITION,)
        if inhibitions is None
        else tuple(_inhibit_rule(item, f"{source}: inhibit_rules[{i}]") for i, item in enumerate(inhibitions))
    )
    return Routing(root, rules, source, tuple(default_channels))


def _route(data: Any, where: str, parent: Route | None) -> Route:
    if not isinstance(data, Mapping):
        raise ValidationError(f"{where}: expected a mapping")
    known = {"matchers", "channels", "group_by", *TIMING, "routes", "continue"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValidationError(f"{where}: unknown key {unknown[0]!r}; known: {', '.join(sorted(known))}")
    base = parent or Route()
    values: dict[str, Any] = {
        "matchers": _matchers(data.get("matchers", ()), f"{where}.matchers"),
        "channels": tuple(_strings(data["channels"], f"{where}.channels")) if "channels" in data else base.channels,
        "group_by": tuple(_strings(data["group_by"], f"{where}.group_by")) if "group_by" in data else base.group_by,
        "continue_matching": bool(data.get("continue", False)),
    }
    for name in TIMING:
        value = data.get(name, getattr(base, name))
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ValidationError(f"{where}.{name}: {value!r} must be a number of seconds >= 0")
        values[name] = float(value)
    node = Route(**values)
    children = data.get("routes", [])
    if not isinstance(children, list):
        raise ValidationError(f"{where}.routes: expected a list of routes")
    return replace(node, routes=tuple(_route(child, f"{where}.routes[{i}]", node) for i, child in enumerate(children)))


def _inhibit_rule(data: Any, where: str) -> InhibitRule:
    if not isinstance(data, Mapping):
        raise ValidationError(f"{where}: expected a mapping with source_matchers, target_matchers, equal")
    unknown = sorted(set(data) - {"source_matchers", "target_matchers", "equal"})
    if unknown:
        raise ValidationError(f"{where}: unknown key {unknown[0]!r}; known: equal, source_matchers, target_matchers")
    return InhibitRule(
        _matchers(data.get("source_matchers", ()), f"{where}.source_matchers"),
        _matchers(data.get("target_matchers", ()), f"{where}.target_matchers"),
        tuple(_strings(data.get("equal", ()), f"{where}.equal")),
    )


def _matchers(value: Any, where: str) -> tuple[Matcher, ...]:
    items = _strings(value, where)
    try:
        return tuple(Matcher.parse(item) for item in items)
    except ValidationError as exc:
        raise ValidationError(f"{where}: {exc}") from None


def _strings(value: Any, where: str) -> list[str]:
    if isinstance(value, str) or not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ValidationError(f"{where}: {value!r} is not a list of strings")
    return list(value)
