"""The compliance view of the key estate: every key with its state and ages, and the policy violations.

``metrics keys-report`` prints it as tables or JSON; the Python API returns it
(``await metrics.keys_report()``). Times are ISO 8601 (UTC); a creation time
the logs never showed reads ``None`` with ``created_before`` set to when the
key was first seen. Principals appear only as their pseudonyms.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from metrics.settings import Settings
from tasks.keys import inventory, policy
from tasks.keys.ledger import KeyLedger


def iso(micros: int | None) -> str | None:
    """Microseconds since the epoch as ISO 8601 UTC text (None stays None)."""
    if micros is None:
        return None
    return datetime.fromtimestamp(micros / 1_000_000, UTC).isoformat().replace("+00:00", "Z")


@dataclass
class KeysReport:
    """Keys, violations and a summary, ready for a table or JSON."""

    generated_at: str
    keys: list[dict[str, Any]]
    violations: list[dict[str, Any]]
    summary: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "generated_at": self.generated_at,
            "summary": self.summary,
            "keys": self.keys,
            "violations": self.violations,
        }


def key_row(record: inventory.KeyRecord, now_us: int, open_violations: int) -> dict[str, Any]:
    """One key of the report."""
    return {
        "key_id": record.key_id,
        "key_ref": record.key_ref,
        "source": record.source,
        "location": record.region or record.mount or "",
        "state": record.state,
        "key_type": record.key_type or "unknown",
        "algorithm": record.algorithm or "unknown",
        "created_at": iso(record.created_at),
        "created_before": None if record.created_at else iso(record.first_seen),
        "last_rotated_at": iso(record.rotated_at),
        "last_used_at": iso(record.last_used_at),
        "deletion_at": iso(record.deletion_at),
        "rotation_enabled": record.rotation_enabled,
        "age_days": round(record.age_days(now_us), 1),
        "days_since_rotation": round(record.days_since_rotation(now_us), 1),
        "events": record.events,
        "open_violations": open_violations,
    }


def keys_report(settings: Settings, *, open_only: bool = False, now_us: int | None = None) -> KeysReport:
    """The inventory and the violations as they stand (``open_only``: only violations still open)."""
    now_us = time.time_ns() // 1_000 if now_us is None else now_us
    ledger = KeyLedger(settings.state_dir)
    with ledger.transaction(write=False) as connection:
        records = inventory.load(connection)
        found = policy.violations(connection, open_only=open_only)
    open_per_key = Counter(v["key_ref"] for v in found if v["open"] and v["kind"] == policy.STATE)
    keys = [key_row(record, now_us, open_per_key[ref]) for ref, record in records.items()]
    names = {ref: record.key_id for ref, record in records.items()}
    rows = [
        {
            "key_id": names.get(v["key_ref"], v["key_ref"]),
            "policy": v["policy"],
            "kind": v["kind"],
            "open": v["open"],
            "count": v["count"],
            "first_at": iso(v["first_at"]),
            "last_at": iso(v["last_at"]),
            "detail": v["detail"],
        }
        for v in found
    ]
    summary = {
        "keys": len(keys),
        "by_state": dict(Counter(k["state"] for k in keys)),
        "by_algorithm": dict(Counter(k["algorithm"] for k in keys)),
        "open_violations": dict(Counter(v["policy"] for v in found if v["open"] and v["kind"] == policy.STATE)),
        "violations_counted": dict(_counts(found)),
        "rotation_overdue": sorted(
            names.get(v["key_ref"], v["key_ref"]) for v in found if v["policy"] == policy.ROTATION_OVERDUE and v["open"]
        ),
    }
    return KeysReport(iso(now_us) or "", keys, rows, summary)


def _counts(found: list[dict[str, Any]]) -> Counter[str]:
    totals: Counter[str] = Counter()
    for violation in found:
        totals[violation["policy"]] += violation["count"]
    return totals
