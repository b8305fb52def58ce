"""The ingest, query and health routes of the real app over a temporary lake, and the one error shape."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from metrics.api import create_app
from metrics.api.routes import health
from metrics.settings import Settings


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    """The app over a fresh lake, without credentials (insecure_dev), with a quick flush."""
    settings = Settings(data_dir=tmp_path / "data", insecure_dev=True, flush_seconds=0.1)
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


def sample(i: int, **overrides: Any) -> dict[str, Any]:
    moment = datetime.now(UTC) - timedelta(seconds=60 - i)
    item = {
        "metric_id": "crypto.key.encryption_ops",
        "value": float(i),
        "metric_type": "counter",
        "timestamp": moment.isoformat(),
        "tags": {"key_id": f"k-{i % 3}", "algorithm": "AES-256"},
    }
    return {**item, **overrides}


def test_a_batch_stores_the_good_rows_and_reports_the_bad_ones(client: TestClient) -> None:
    batch = [sample(i) for i in range(10)]
    batch[3] = sample(3, value="high")
    batch[7] = sample(7, tags={"key_id": {"nested": "no"}})
    response = client.post("/api/v1/metrics", json={"metrics": batch})
    assert response.status_code == 200
    report = response.json()
    assert report["stored"] == 8
    assert report["rejected"] == 2
    assert [e["index"] for e in report["errors"]] == [3, 7]
    assert "value" in report["errors"][0]["reason"]
    assert "key_id" in report["errors"][1]["reason"]
    rows = client.get("/api/v1/query", params={"metric_pattern": "crypto.key.*", "start_time": "1h"}).json()
    assert rows["rows"] == 8
    assert rows["data"][0]["tags"]["algorithm"] == "AES-256"
    assert isinstance(rows["data"][0]["series_id"], str)


@pytest.mark.parametrize(
    ("body", "content_type", "status", "message"),
    [
        (b"{not json", "application/json", 422, "not valid JSON"),
        (b'{"metrics": {"a": 1}}', "application/json", 422, "list of samples"),
        (b"[1, 2]", "application/json", 422, "list of samples"),
        (b'{"metrics": []}', "text/plain", 415, "application/json"),
        (b"\xff\xfe\x00garbage", "application/json", 422, "not valid JSON"),
    ],
)
def test_bad_bodies_are_refused_with_a_json_error(
    client: TestClient, body: bytes, content_type: str, status: int, message: str
) -> None:
    response = client.post("/api/v1/metrics", content=body, headers={"content-type": content_type})
    assert response.status_code == status
    assert message in response.json()["error"]


def test_nan_and_infinity_are_refused_per_row(client: TestClient) -> None:
    body = b'{"metrics": [{"metric_id": "a.b", "value": NaN}, {"metric_id": "a.b", "value": 1.0}]}'
    response = client.post("/api/v1/metrics", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422  # NaN is not JSON: the whole body is refused, nothing stored
    assert client.get("/api/v1/query", params={"metric_pattern": "a.*", "start_time": "1h"}).json()["rows"] == 0


def test_query_by_parameters_and_by_body_agree(client: TestClient) -> None:
    client.post("/api/v1/metrics", json={"metrics": [sample(i) for i in range(30)]})
    params = {"metric_pattern": "crypto.*", "start_time": "2h", "aggregation": "max", "interval": "1m"}
    by_get = client.get("/api/v1/query", params={**params, "group_by": "key_id", "tag": "algorithm=AES-256"})
    by_post = client.post("/api/v1/query", json={**params, "group_by": ["key_id"], "tags": {"algorithm": "AES-256"}})
    assert by_get.status_code == by_post.status_code == 200
    assert by_get.json() == by_post.json()
    assert by_get.json()["rows"] > 0
    assert "key_id" in by_get.json()["columns"]


@pytest.mark.parametrize(
    ("params", "status", "message"),
    [
        ({"start_time": "yesterday-ish"}, 422, "start_time"),
        ({"aggregation": "median"}, 422, "aggregation"),
        ({"tag": "no-equals-sign"}, 422, "key=value"),
        ({"limit": "0"}, 422, "limit"),
        ({"aggregation": "avg", "interval": "-5m"}, 400, "interval"),
    ],
)
def test_bad_queries_name_the_problem(client: TestClient, params: dict[str, str], status: int, message: str) -> None:
    response = client.get("/api/v1/query", params=params)
    assert response.status_code == status
    assert message in str(response.json())


def test_an_unknown_body_field_is_refused(client: TestClient) -> None:
    response = client.post("/api/v1/query", json={"metric_pattern": "*", "bogus": 1})
    assert response.status_code == 422
    assert "bogus" in response.json()["error"]


def test_health_reports_each_check(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    report = client.get("/health").json()
    assert report["status"] == "ok"
    assert set(report["checks"]) == {"wal", "lake", "disk"}
    monkeypatch.setattr(health, "MIN_FREE_BYTES", 1 << 62)  # no disk is that big: not ready
    degraded = client.get("/health")
    assert degraded.status_code == 503
    assert degraded.json()["checks"]["disk"]["ok"] is False


def test_openapi_documents_the_routes(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert {"/api/v1/metrics", "/api/v1/query", "/health"} <= set(spec["paths"])
    assert "requestBody" in spec["paths"]["/api/v1/metrics"]["post"]
    assert client.get("/docs").status_code == 200


def test_an_unexpected_error_is_a_500_that_names_no_internals(client: TestClient) -> None:
    def explode() -> None:
        raise RuntimeError("secret internal detail")

    client.app.add_api_route("/explode", explode)  # type: ignore[attr-defined]
    response = client.get("/explode")
    assert response.status_code == 500
    assert "secret" not in response.text
    assert response.json() == {"error": "internal error; see the server log"}


def test_unknown_routes_use_the_same_error_shape(client: TestClient) -> None:
    response = client.get("/api/v1/nothing-here")
    assert response.status_code == 404
    assert response.json() == {"error": "Not Found"}
