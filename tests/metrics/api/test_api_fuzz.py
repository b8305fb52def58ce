"""Fuzz every operation of the OpenAPI spec with schemathesis: whatever a client sends, never a 5xx.

The real app over a temporary lake, with a real admin key (so every operation is
reached past authentication); a bounded number of examples per operation.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from metrics.api import create_app
from metrics.api.keys import close_key_stores, create_key
from metrics.settings import Settings

pytestmark = pytest.mark.slow

MAX_EXAMPLES = 25


@schemathesis.serializer("application/x-protobuf")
def _raw_bytes(ctx: Any, value: Any) -> bytes:
    """Remote-write bodies as generated (bytes, or text encoded): the server must refuse garbage, never fail."""
    if isinstance(value, bytes):
        return value
    return str(value).encode()


@pytest.fixture(scope="module")
def admin_token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, str]]:
    """Settings of a fresh lake and an admin key on it."""
    settings = Settings(data_dir=Path(tmp_path_factory.mktemp("fuzz")) / "data", flush_seconds=0.1)
    _, token = create_key(settings, "fuzz", "admin")
    yield settings, token
    close_key_stores()


@pytest.fixture(scope="module")
def fuzz_app(admin_token: tuple[Settings, str]) -> Iterator[Any]:
    """The app with its lifespan running (the store open) for the whole module."""
    app = create_app(admin_token[0])
    with TestClient(app):
        yield app


def operations(app: Any) -> list[Any]:
    """Every operation of the app's own OpenAPI document, loaded through ASGI."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    return [result.ok() for result in schema.get_all_operations()]


def fuzz_operation(operation: Any, mode: GenerationMode, headers: dict[str, str], statuses: Counter[str]) -> None:
    """Up to ``MAX_EXAMPLES`` generated requests of one operation; raises on the first 5xx."""

    @settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case: Any) -> None:
        response = case.call_and_validate(headers=headers, checks=[not_a_server_error])
        statuses[f"{operation.label} {response.status_code}"] += 1

    fuzz()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_no_server_errors(fuzz_app: Any, admin_token: tuple[Settings, str], mode: GenerationMode) -> None:
    headers = {"Authorization": f"Bearer {admin_token[1]}"}
    failures: list[str] = []
    statuses: Counter[str] = Counter()
    found = operations(fuzz_app)
    assert len(found) >= 5
    for operation in found:
        try:
            fuzz_operation(operation, mode, headers, statuses)
        except Unsatisfiable:  # nothing to negate (no parameters, or a schema with no invalid form)
            statuses[f"{operation.label} (no {mode.value} cases)"] += 1
        except Exception as exc:  # collect every failing operation, then fail once naming them all
            failures.append(f"{operation.label}: {type(exc).__name__}: {str(exc)[:2000]}")
    print(json.dumps(dict(sorted(statuses.items()))))
    assert not failures, "\n\n".join(failures)
