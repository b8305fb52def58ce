"""Label matchers, as in Alertmanager and PromQL: ``host=web-1``, ``host!=web-1``, ``host=~web-.*``, ``host!~db-.*``.

Silences, routes and inhibition rules match alerts' labels with them; alert
rules match series' tags with them (``matchers: ["region=eu-west-1"]``). A
regular expression matches the whole value; a missing label is the empty
string.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from metrics.errors import ValidationError

MATCHER = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*(=~|!~|!=|=)\s*(.*?)\s*$")


@dataclass(frozen=True)
class Matcher:
    """One condition on an alert's label: equal (or not) to a value, or matching (or not) a regex."""

    name: str
    value: str
    regex: bool = False
    equal: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValidationError(f"matcher name: {self.name!r} must be a label name")
        if not isinstance(self.value, str):
            raise ValidationError(f"matcher {self.name}: value {self.value!r} is not text")
        if self.regex:
            try:
                re.compile(self.value)
            except re.error as exc:
                raise ValidationError(
                    f"matcher {self.name}: {self.value!r} is not a regular expression: {exc}"
                ) from None

    @classmethod
    def parse(cls, text: str) -> Matcher:
        """``host=web-1``, ``host!=web-1``, ``host=~web-.*`` or ``host!~web-.*``."""
        found = MATCHER.match(text)
        if found is None:
            raise ValidationError(f"matcher: {text!r} is not name=value, name!=value, name=~regex or name!~regex")
        name, operator, value = found.groups()
        return cls(name, value.strip("\"'"), regex=operator in ("=~", "!~"), equal=operator in ("=", "=~"))

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether the labels satisfy this matcher (a missing label is the empty string)."""
        actual = labels.get(self.name, "")
        hit = re.fullmatch(self.value, actual) is not None if self.regex else actual == self.value
        return hit == self.equal

    def __str__(self) -> str:
        operator = ("=~" if self.regex else "=") if self.equal else ("!~" if self.regex else "!=")
        return f"{self.name}{operator}{self.value}"
