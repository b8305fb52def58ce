"""``deployments/grafana/``: the dashboards are sound and every series their panels query is one the API exports.

(a) each dashboard's structure: unique panel ids, every panel and query on the provisioned data source,
template variables defined and used only as label-matcher regexes; (b) the real app, after an ingest (with
a rejected row), a query and a 401, exports every metric each panel and variable query names, with the
labels they match on and group by; (c) ``promtool`` parses every expression as a recording rule and checks
the example ``prometheus.yml`` (Debian's ``prometheus`` package is installed for it if need be).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from metrics.api import create_app
from metrics.api.keys import close_key_stores, create_key
from metrics.settings import Settings
from tests.servers import apt_install

GRAFANA = Path(__file__).resolve().parents[3] / "deployments" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yaml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "metrics-system.yaml"
PROMETHEUS_CONFIG = GRAFANA / "prometheus.yml"
PROMTOOL_TIMEOUT = 60.0

# Labels Prometheus itself attaches to every scraped series (never in the exposition).
TARGET_LABELS = frozenset({"job", "instance"})
GRAFANA_INTERVALS = re.compile(r"\$__(?:rate_interval|interval|range)\b|\$\{__(?:rate_interval|interval|range)\}")
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")
REQUIRED_VARIABLES = {"job", "instance", "route"}
AGGREGATIONS = frozenset(
    {"sum", "avg", "min", "max", "count", "group", "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values"}
)
# PromQL's functions (Prometheus 2.x) and aggregation operators: anything else called is a typo.
FUNCTIONS = AGGREGATIONS | {
    "abs", "absent", "absent_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh", "avg_over_time",
    "ceil", "changes", "clamp", "clamp_max", "clamp_min", "cos", "cosh", "count_over_time", "day_of_month",
    "day_of_week", "day_of_year", "days_in_month", "deg", "delta", "deriv", "exp", "floor", "histogram_quantile",
    "holt_winters", "hour", "idelta", "increase", "irate", "label_join", "label_replace", "last_over_time", "ln",
    "log10", "log2", "max_over_time", "min_over_time", "minute", "month", "pi", "predict_linear",
    "present_over_time", "quantile_over_time", "rad", "rate", "resets", "round", "scalar", "sgn", "sin", "sinh",
    "sort", "sort_desc", "sqrt", "stddev_over_time", "stdvar_over_time", "sum_over_time", "tan", "tanh", "time",
    "timestamp", "vector", "year",
}  # fmt: skip
KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "inf", "nan"})  # lower-cased

STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
SELECTOR = re.compile(r"(?<![\w:])([A-Za-z_:][\w:]*)?\s*\{([^{}]*)\}")
MATCHER = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)\s*\"\"")
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
RANGE = re.compile(r"\[[^\]]*\]")
IDENTIFIER = re.compile(r"(?<![\w:.])([A-Za-z_:][\w:]*)(\s*\()?")
LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")
LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(.+?)\s*,\s*)?(\w+)\s*\)\s*$")


@dataclass
class Parsed:
    """What one PromQL expression refers to."""

    metrics: set[str] = field(default_factory=set)
    calls: set[str] = field(default_factory=set)
    matchers: list[tuple[str, set[str]]] = field(default_factory=list)  # (metric, label names it matches)
    grouping: set[str] = field(default_factory=set)  # labels of by / without / on / ignoring / group_*
    by: set[str] = field(default_factory=set)  # labels of `by (...)` alone


def parse_promql(expr: str) -> Parsed:
    """Metric names, called functions, matcher and grouping labels of ``expr`` (template variables allowed)."""
    parsed = Parsed()
    text = STRING.sub('""', expr)  # label values (and variables in them) never look like names
    for name, body in SELECTOR.findall(text):
        assert name, f"a selector without a metric name in {expr!r}"
        parsed.matchers.append((name, set(MATCHER.findall(body))))
        leftover = MATCHER.sub("", body).replace(",", "").strip()
        assert not leftover, f"unparsed matchers {leftover!r} in {expr!r}"
    text = SELECTOR.sub(lambda match: match.group(1) or "", text)
    for keyword, labels in GROUPING.findall(text):
        names = {label.strip() for label in labels.split(",") if label.strip()}
        parsed.grouping |= names
        if keyword == "by":
            parsed.by |= names
    text = RANGE.sub("", GROUPING.sub(" ", text))
    for name, call in IDENTIFIER.findall(text):
        if call:
            parsed.calls.add(name)
        elif name.lower() not in KEYWORDS:
            parsed.metrics.add(name)
    return parsed


def test_the_parser_tells_metrics_from_functions_and_labels() -> None:
    parsed = parse_promql(
        'histogram_quantile(0.95, sum by (le, route) (rate(a_bucket{job=~"$job", route!="x,y"}[$__rate_interval])))'
        " / on (route) group_left(status) sum(b_total offset 5m) > bool 1e-3 and c:rule unless absent(d)"
    )
    assert parsed.metrics == {"a_bucket", "b_total", "c:rule", "d"}
    assert parsed.calls == {"histogram_quantile", "sum", "rate", "absent"}
    assert parsed.matchers == [("a_bucket", {"job", "route"})]
    assert parsed.grouping == {"le", "route", "status"}
    assert parsed.by == {"le", "route"}


def load(path: Path) -> dict[str, Any]:
    document = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def provisioned_datasource() -> dict[str, Any]:
    document = yaml.safe_load(DATASOURCES.read_text(encoding="utf-8"))
    (source,) = document["datasources"]
    return dict(source)


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside rows included."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(where, panel, target) of every Prometheus query of a dashboard's panels."""
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            yield f"{dashboard['uid']} panel {panel['id']} {panel['title']!r} {target['refId']}", panel, target


def variable_selectors(dashboard: dict[str, Any]) -> Iterator[tuple[str, str | None, str]]:
    """(variable, the selector of its ``label_values(selector, label)`` query or None, label) per variable."""
    for variable in dashboard["templating"]["list"]:
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        assert variable.get("definition", text) == text, f"{dashboard['uid']} ${variable['name']}: definition differs"
        match = LABEL_VALUES.match(text)
        assert match, f"{dashboard['uid']} ${variable['name']}: not a label_values(...) query: {text!r}"
        yield variable["name"], match.group(1), match.group(2)


def for_promtool(expr: str) -> str:
    """``expr`` as Prometheus sees it: Grafana's intervals 5m, every other variable the regex ``.*``."""
    return VARIABLE.sub(".*", GRAFANA_INTERVALS.sub("5m", expr))


def every_expression() -> list[tuple[str, str]]:
    """(where, PromQL) of every panel query and every variable query's selector, variables replaced."""
    found: list[tuple[str, str]] = []
    for path in DASHBOARDS:
        dashboard = load(path)
        found += [(where, for_promtool(target["expr"])) for where, _, target in queries(dashboard)]
        found += [
            (f"{dashboard['uid']} ${name}", for_promtool(selector))
            for name, selector, _ in variable_selectors(dashboard)
            if selector
        ]
    return found


# -- (a) the files themselves -------------------------------------------------------------------------------------
def test_provisioning_names_the_datasource_and_the_dashboard_folder() -> None:
    source = provisioned_datasource()
    assert source["type"] == "prometheus"
    assert source["uid"] == "metrics-prometheus"
    assert source["url"] == "${PROMETHEUS_URL}"  # expanded by Grafana from its environment
    (provider,) = yaml.safe_load(PROVIDERS.read_text(encoding="utf-8"))["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards/metrics-system"
    readme = (GRAFANA.parent / "README.md").read_text(encoding="utf-8")
    assert f"grafana/dashboards:{provider['options']['path']}" in readme  # the mount the README shows


def test_the_dashboards_are_sound() -> None:
    assert len(DASHBOARDS) >= 2
    expected = {"type": "prometheus", "uid": provisioned_datasource()["uid"]}
    uids = [load(path)["uid"] for path in DASHBOARDS]
    assert len(set(uids)) == len(uids), uids
    for path in DASHBOARDS:
        dashboard = load(path)
        assert 36 <= dashboard["schemaVersion"] <= 41, path.name
        assert dashboard["id"] is None, f"{path.name}: a provisioned dashboard has no database id"
        ids = [panel["id"] for panel in panels(dashboard)]
        assert len(ids) == len(set(ids)), f"{path.name}: panel ids repeat: {ids}"
        assert {panel["type"] for panel in panels(dashboard)} >= {"timeseries", "stat"}, path.name
        for panel in panels(dashboard):
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == expected, f"{path.name} panel {panel['id']}"
            assert panel.get("targets"), f"{path.name} panel {panel['id']} has no query"
            refs = [target["refId"] for target in panel["targets"]]
            assert len(refs) == len(set(refs)), f"{path.name} panel {panel['id']}: refIds repeat"
        variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
        assert set(variables) >= REQUIRED_VARIABLES, path.name
        for variable in variables.values():
            assert variable["datasource"] == expected, f"{path.name} ${variable['name']}"
        for where, _, target in queries(dashboard):
            assert target["datasource"] == expected, where
            expr = target["expr"]
            used = {a or b for a, b in VARIABLE.findall(GRAFANA_INTERVALS.sub("", expr))}
            assert used <= set(variables), f"{where}: undefined variables {used - set(variables)}"
            # a variable may only be a label matcher's regex: `label=~"$var"` (its All value is `.*`)
            outside = re.sub(r'=~\s*"[^"]*"', "", expr)
            outside = re.sub(r"\[\s*\$__(?:rate_interval|interval|range)\s*\]", "", outside)
            assert "$" not in outside, f"{where}: a variable outside a =~ matcher or range: {expr!r}"
            for name in used:
                assert re.search(rf'=~\s*"[^"]*\${name}\b', expr), f"{where}: ${name} not used with =~"


# -- (b) the series exist ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exposition(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """Sample name -> label names, from the real app's ``/metrics`` after an ingest, a query and a 401."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("grafana") / "data", flush_seconds=3600)
    try:
        _, reader = create_key(settings, "prometheus-scrape", "reader")
        _, writer = create_key(settings, "grafana-test-ingest", "writer")
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            now = datetime.now(UTC).isoformat()
            batch = [
                {"metric_id": "grafana.test", "value": 1.0, "timestamp": now},
                {"metric_id": "grafana.test", "value": "high", "timestamp": now},  # rejected: reason "value"
            ]
            ingest = client.post("/api/v1/metrics", json={"metrics": batch}, headers={"X-API-Key": writer})
            assert ingest.status_code == 200, ingest.text
            assert ingest.json()["stored"] == 1
            query = client.get(
                "/api/v1/query",
                params={"metric_pattern": "grafana.*", "start_time": "1h"},
                headers={"Authorization": f"Bearer {reader}"},
            )
            assert query.status_code == 200, query.text
            assert client.get("/api/v1/query", params={"metric_pattern": "grafana.*"}).status_code == 401
            response = client.get("/metrics", headers={"Authorization": f"Bearer {reader}"})
    finally:
        close_key_stores()
    assert response.status_code == 200, response.text
    samples: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, set()).update(sample.labels)
    assert "metrics_http_requests_total" in samples  # the scrape saw the requests above
    return samples


def check_expression(where: str, expr: str, exposition: dict[str, set[str]], legend: str = "") -> None:
    parsed = parse_promql(expr)
    assert parsed.metrics, f"{where}: no metric in {expr!r}"
    missing = parsed.metrics - set(exposition)
    assert not missing, f"{where}: {sorted(missing)} not in /metrics (exported: {sorted(exposition)})"
    unknown = parsed.calls - FUNCTIONS
    assert not unknown, f"{where}: unknown PromQL functions {sorted(unknown)}"
    for metric, labels in parsed.matchers:
        extra = labels - exposition[metric] - TARGET_LABELS
        assert not extra, f"{where}: {metric} has no label {sorted(extra)}"
    known = set().union(*(exposition[metric] for metric in parsed.metrics)) | TARGET_LABELS
    assert parsed.grouping <= known, f"{where}: grouping by labels {sorted(parsed.grouping - known)} no series has"
    # an aggregation keeps only its `by` labels: a legend can show those, else any label of the series
    shown = parsed.by if parsed.calls & AGGREGATIONS else known
    legend_labels = set(LEGEND_LABEL.findall(legend))
    assert legend_labels <= shown, f"{where}: legend {legend!r} shows labels the result lacks"


def test_every_panel_queries_series_the_api_exports(exposition: dict[str, set[str]]) -> None:
    checked = 0
    for path in DASHBOARDS:
        dashboard = load(path)
        for where, _, target in queries(dashboard):
            check_expression(where, target["expr"], exposition, target.get("legendFormat", ""))
            checked += 1
        for name, selector, label in variable_selectors(dashboard):
            assert selector, f"{dashboard['uid']} ${name}: label_values without a metric scans every series"
            check_expression(f"{dashboard['uid']} ${name}", selector, exposition)
            metric = parse_promql(selector).metrics.pop()
            assert label in exposition[metric] | TARGET_LABELS, f"{dashboard['uid']} ${name}: {metric} has no {label}"
    assert checked >= 20


def test_the_dashboards_cover_what_the_api_exports(exposition: dict[str, set[str]]) -> None:
    referenced = {name for _, expr in every_expression() for name in parse_promql(expr).metrics}
    ours = {name for name in exposition if name.startswith("metrics_") and not name.endswith("_created")}
    families = {re.sub(r"_(bucket|sum|count|total)$", "", name) for name in ours}
    covered = {re.sub(r"_(bucket|sum|count|total)$", "", name) for name in referenced}
    assert families <= covered, f"exported but on no dashboard: {sorted(families - covered)}"
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes"} <= referenced


# -- (c) promtool --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def promtool() -> str:
    """The ``promtool`` executable (Debian's ``prometheus`` package ships it): installed now if need be."""
    found, how = apt_install("prometheus", lambda: shutil.which("promtool"), allow_sudo=True)
    if found is None:
        pytest.skip(f"promtool unavailable: {how}")
    return found


def run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=PROMTOOL_TIMEOUT, check=False)


@pytest.mark.integration
@pytest.mark.slow
def test_promtool_parses_every_expression(promtool: str, tmp_path: Path) -> None:
    expressions = every_expression()
    rules = [{"record": f"grafana_check:expr_{i}", "expr": expr} for i, (_, expr) in enumerate(expressions)]
    path = tmp_path / "dashboards.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "grafana-dashboards", "rules": rules}]}), encoding="utf-8")
    done = run([promtool, "check", "rules", str(path)])
    lines = "\n".join(f"expr_{i}: {where}: {expr}" for i, (where, expr) in enumerate(expressions))
    assert done.returncode == 0, f"{done.stdout}{done.stderr}\n{lines}"
    assert f"SUCCESS: {len(rules)} rules found" in done.stdout


@pytest.mark.integration
@pytest.mark.slow
def test_promtool_accepts_the_example_scrape_config(promtool: str, tmp_path: Path) -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert set(job["authorization"]) == {"type", "credentials_file"}  # the reader key, never inline
    syntax = run([promtool, "check", "config", "--syntax-only", str(PROMETHEUS_CONFIG)])
    assert syntax.returncode == 0, syntax.stdout + syntax.stderr
    key = tmp_path / "metrics-reader.key"
    key.write_text("mk_000000000000_example\n", encoding="utf-8")
    job["authorization"]["credentials_file"] = str(key)
    local = tmp_path / "prometheus.yml"
    local.write_text(yaml.safe_dump(config), encoding="utf-8")
    full = run([promtool, "check", "config", str(local)])  # also checks the key file exists
    assert full.returncode == 0, full.stdout + full.stderr
