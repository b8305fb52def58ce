"""The flush policies' figures (``python -m storage.batching``), printed; simulated on a fake clock, so cheap."""

from __future__ import annotations

import json

import pytest

from storage.batching import PATTERNS, compare

pytestmark = pytest.mark.performance


def test_batching_figures() -> None:
    rows = compare()
    for row in rows:
        print(json.dumps(row))
    assert [(r["pattern"], r["policy"]) for r in rows] == [
        (name, policy) for name in PATTERNS for policy in ("fixed", "intelligent")
    ]
    for row in rows:
        assert row["files"] > 0
        assert row["rows"] >= 100_000  # enough rows for "files per 100k rows" to mean something
