"""Tests of metrics.manifests: the committed deployment files, and what every render writes.

No container engine or cluster runs here, so the files are checked by parsing
them and by following every reference inside them (services, volumes, secrets,
modules, flows) to what it names.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import shlex
from pathlib import Path
from typing import Any

import prefect
import pytest
import yaml
from prefect.cli.deploy._models import PrefectYamlModel
from prefect.utilities.templating import apply_values

from flows.deployments import JOBS
from metrics import manifests
from metrics.errors import ConfigError
from metrics.manifests import (
    INFRASTRUCTURES,
    Rendered,
    committed_files,
    config_document,
    render,
    render_docker,
    render_kubernetes,
    render_systemd,
    write_committed,
)
from metrics.settings import Settings, load_config

ROOT = manifests.PROJECT_ROOT
DEPLOYMENTS = ROOT / "deployments"
SECRETS = {
    "smtp_password": "smtp-pw-Zq81xK",
    "slack_webhook_url": "https://hooks.example.invalid/T000/B000/slack-hook-Wv42pQ",
    "prefect_database_url": "postgresql+asyncpg://prefect:db-pw-Hm07tR@db.example.invalid/prefect",
}
SECRET_MARKERS = ("smtp-pw-Zq81xK", "slack-hook-Wv42pQ", "db-pw-Hm07tR")
# (infrastructure, prometheus, grafana): every combination a user can ask for.
RENDERS = [(infra, prom, graf) for infra in INFRASTRUCTURES for prom in (False, True) for graf in (False, True)]


def _docs(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def _k8s(folder: Path) -> list[dict[str, Any]]:
    return [doc for path in sorted(folder.glob("*.yaml")) for doc in _docs(path)]


def _by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def _containers(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        c
        for doc in docs
        if doc["kind"] in ("Deployment", "StatefulSet")
        for c in doc["spec"]["template"]["spec"]["containers"]
    ]


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


# --- the committed files ---


def test_committed_files_equal_a_fresh_render_with_default_settings() -> None:
    stale = [str(path) for path, text in committed_files().items() if (ROOT / path).read_text(encoding="utf-8") != text]
    assert not stale, f"out of date (run `make manifests`): {stale}"
    rendered = {path.name for path in committed_files() if path.parent.name == "k8s"}
    assert {path.name for path in (DEPLOYMENTS / "k8s").glob("*.yaml")} == rendered


def test_committed_kubernetes_and_compose_leave_out_prometheus_and_grafana() -> None:
    compose = _docs(DEPLOYMENTS / "docker-compose.yml")[0]
    assert set(compose["services"]) == {"postgres", "prefect-server", "metrics"}
    kinds = {(doc["kind"], doc["metadata"]["name"]) for doc in _k8s(DEPLOYMENTS / "k8s")}
    assert ("Deployment", "prometheus") not in kinds
    assert ("Deployment", "grafana") not in kinds


@pytest.mark.parametrize("path", sorted(str(p) for p in committed_files()), ids=lambda p: Path(p).name)
def test_every_committed_yaml_parses(path: str) -> None:
    assert _docs(ROOT / path), f"{path} holds no YAML document"


def test_write_committed_rewrites_and_drops_only_its_own_stale_files(tmp_path: Path) -> None:
    k8s = tmp_path / "deployments" / "k8s"
    k8s.mkdir(parents=True)
    (k8s / "70-old.yaml").write_text(manifests.HEADER + "kind: ConfigMap\n", encoding="utf-8")
    (k8s / "mine.yaml").write_text("kind: ConfigMap\n", encoding="utf-8")
    written = write_committed(tmp_path)
    assert {path.relative_to(tmp_path) for path in written} == set(committed_files(tmp_path))
    assert not (k8s / "70-old.yaml").exists()
    assert (k8s / "mine.yaml").exists()


def test_main_rewrites_the_project_and_refuses_arguments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(manifests, "PROJECT_ROOT", tmp_path)
    assert manifests.main([]) == 0
    assert "deployments/docker-compose.yml" in capsys.readouterr().out.splitlines()
    compose = _docs(tmp_path / "deployments" / "docker-compose.yml")[0]
    assert compose["services"]["metrics"]["build"]["context"] == ".."
    assert manifests.main(["--force"]) == 2


# --- prefect.yaml ---


@pytest.fixture(scope="module")
def prefect_yaml() -> dict[str, Any]:
    document = yaml.safe_load((DEPLOYMENTS / "prefect.yaml").read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def test_prefect_yaml_is_a_valid_prefect_project(prefect_yaml: dict[str, Any]) -> None:
    model = PrefectYamlModel.model_validate(prefect_yaml)  # what `prefect deploy` validates the file with
    assert model.name == "metrics-system"
    assert model.prefect_version == prefect.__version__
    assert not model.build
    assert not model.push
    assert prefect_yaml["pull"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": "{{ $METRICS_PROJECT_DIR }}"}}
    ]
    pool = prefect_yaml["definitions"]["work_pool"]
    assert pool["name"] == "metrics"
    assert pool["work_queue_name"] == "default"
    assert all(d.work_pool is not None and d.work_pool.name == "metrics" for d in model.deployments)
    assert all(deployment["work_pool"] == pool for deployment in prefect_yaml["deployments"])


def test_prefect_yaml_pull_step_takes_the_project_dir_from_the_environment(
    prefect_yaml: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METRICS_PROJECT_DIR", "/srv/metrics-system")
    (step,) = apply_values(prefect_yaml["pull"], {})  # how Prefect resolves the step's inputs
    assert step == {"prefect.deployments.steps.set_working_directory": {"directory": "/srv/metrics-system"}}


def test_prefect_yaml_deployments_match_the_jobs_and_their_intervals(prefect_yaml: dict[str, Any]) -> None:
    deployments = {d["name"]: d for d in prefect_yaml["deployments"]}
    assert len(deployments) == len(prefect_yaml["deployments"]), "duplicate deployment names"
    assert set(deployments) == {job.name for job in JOBS}
    for job in JOBS:
        deployment = deployments[job.name]
        assert deployment["entrypoint"] == job.entrypoint
        assert deployment["description"] == job.description
        assert deployment["tags"] == ["metrics", job.group]
        assert [s["interval"] for s in deployment["schedules"]] == [getattr(Settings(), job.interval_setting)]


@pytest.mark.parametrize("job", JOBS, ids=lambda job: job.name)
def test_every_prefect_yaml_entrypoint_is_a_flow(prefect_yaml: dict[str, Any], job: Any) -> None:
    (entrypoint,) = [d["entrypoint"] for d in prefect_yaml["deployments"] if d["name"] == job.name]
    path, function = entrypoint.split(":")
    assert (ROOT / path).is_file(), f"{path} does not exist"
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    flow = getattr(module, function, None)
    assert isinstance(flow, prefect.Flow), f"{entrypoint} is not a Prefect flow"
    assert flow.name == job.name


# --- every render ---


def _render(settings: Settings, infra: str, out: Path, prometheus: bool, grafana: bool) -> Rendered:
    return render(settings, infra, out, prometheus=prometheus, grafana=grafana)


@pytest.mark.parametrize(("infra", "prometheus", "grafana"), RENDERS)
def test_every_rendered_file_parses_and_is_listed(tmp_path: Path, infra: str, prometheus: bool, grafana: bool) -> None:
    rendered = _render(Settings(), infra, tmp_path, prometheus, grafana)
    assert sorted(rendered.files) == sorted(p for p in tmp_path.rglob("*") if p.is_file())
    for path in rendered.files:
        if path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
        else:
            assert _docs(path), f"{path} holds no YAML document"


@pytest.mark.parametrize(("infra", "prometheus", "grafana"), RENDERS)
def test_no_secret_is_ever_rendered(tmp_path: Path, infra: str, prometheus: bool, grafana: bool) -> None:
    settings = Settings(**SECRETS)
    rendered = _render(settings, infra, tmp_path / "out", prometheus, grafana)
    unit = render_systemd(settings, tmp_path / "unit", project_dir=ROOT, python=Path("/usr/bin/python3"), user="me")
    texts = [path.read_text(encoding="utf-8") for path in [*rendered.files, *unit.files]]
    texts += [rendered.command, unit.command, *rendered.notes]
    assert rendered.files
    for marker in SECRET_MARKERS:
        assert not [t for t in texts if marker in t], f"secret {marker!r} was rendered"
    assert not set(SECRETS) & {key for section in config_document(settings).values() for key in section}


def test_rendered_main_json_is_read_back_by_the_settings(tmp_path: Path) -> None:
    settings = Settings(batch_size=5000, retention_days=30, workers=4, compact_interval=600.0, smtp_server="mail")
    (path,) = render(settings, "local", tmp_path).files
    assert path.name == "main.json"
    values = load_config(path)  # the same validation `metrics` applies to deployments/main.json
    for name in ("batch_size", "retention_days", "workers", "compact_interval", "smtp_server", "data_dir"):
        assert str(values[name]) == str(getattr(settings, name)) or values[name] == getattr(settings, name)


def test_a_container_main_json_keeps_everything_under_the_data_volume(tmp_path: Path) -> None:
    settings = Settings(data_dir=Path("/srv/metrics"), db_path=Path("/srv/db.duckdb"), backup_dir=Path("/mnt/b"))
    render_docker(settings, tmp_path)
    values = load_config(tmp_path / "main.json")
    assert values["data_dir"] == "/data"
    assert values["db_path"] is None
    assert values["backup_dir"] is None
    assert values["api_host"] == "0.0.0.0"


@pytest.mark.parametrize("infra", ["swarm", "", "Docker", "k8s"])
def test_unknown_infrastructure_is_refused_with_the_allowed_ones(tmp_path: Path, infra: str) -> None:
    with pytest.raises(ConfigError) as raised:
        render(Settings(), infra, tmp_path)
    assert repr(infra) in str(raised.value)
    assert all(name in str(raised.value) for name in INFRASTRUCTURES)
    assert not list(tmp_path.iterdir())


def test_local_writes_the_config_and_runs_nothing(tmp_path: Path) -> None:
    rendered = render(Settings(api_host="0.0.0.0", api_port=9100), "local", tmp_path, prometheus=True, grafana=True)
    assert rendered.command == ""
    assert {p.relative_to(tmp_path).as_posix() for p in rendered.files} == {
        "main.json",
        "prometheus/prometheus.yml",
        "grafana/provisioning/datasources/prometheus.yml",
    }
    prometheus = _docs(tmp_path / "prometheus" / "prometheus.yml")[0]
    assert prometheus["scrape_configs"][0]["static_configs"][0]["targets"] == ["127.0.0.1:9100"]


# --- Docker Compose ---


def test_compose_references_resolve(tmp_path: Path) -> None:
    settings = Settings(prefect_port=4300, api_port=9000, workers=5)
    rendered = render_docker(settings, tmp_path / "out", prometheus=True, grafana=True)
    assert rendered.command == f"docker compose -f {shlex.quote(str(tmp_path / 'out' / 'docker-compose.yml'))} up -d"
    compose = _docs(tmp_path / "out" / "docker-compose.yml")[0]
    services = compose["services"]
    assert set(services) == {"postgres", "prefect-server", "metrics", "prometheus", "grafana"}
    for name, service in services.items():
        for dependency in service.get("depends_on", []):
            assert dependency in services, f"{name} depends on unknown {dependency}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (tmp_path / "out" / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in compose["volumes"], f"{name} uses undeclared volume {source}"
        if "build" in service:
            context = (tmp_path / "out" / service["build"]["context"]).resolve()
            assert context == ROOT
            assert (context / service["build"]["dockerfile"]).is_file()
    server, worker = services["prefect-server"], services["metrics"]
    assert server["command"][-2:] == ["--port", "4300"]
    assert "4300:4300" in server["ports"]
    assert "/api/health" in " ".join(server["healthcheck"]["test"])
    assert server["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"].startswith(
        "postgresql+asyncpg://prefect:${POSTGRES_PASSWORD}@postgres:5432/"
    )
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
    assert worker["command"] == ["python", "-m", "metrics.deploy", "--mode=production"]
    assert worker["environment"]["PREFECT_API_URL"] == "http://prefect-server:4300/api"
    assert worker["environment"]["METRICS_DATA_DIR"] == "/data"
    assert worker["environment"]["METRICS_WORKERS"] == "5"
    assert "./main.json:/app/deployments/main.json:ro" in worker["volumes"]
    assert worker["depends_on"]["prefect-server"]["condition"] == "service_healthy"
    targets = _docs(tmp_path / "out" / "prometheus" / "prometheus.yml")[0]["scrape_configs"][0]
    assert targets["static_configs"][0]["targets"] == ["metrics:9000"]
    assert targets["metrics_path"] == "/metrics"
    datasource = _docs(tmp_path / "out" / "grafana" / "provisioning" / "datasources" / "prometheus.yml")[0]
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    assert any("GRAFANA_ADMIN_PASSWORD" in note for note in rendered.notes)


# --- Kubernetes ---


@pytest.mark.parametrize(("prometheus", "grafana"), [(False, False), (True, True)])
def test_kubernetes_references_resolve(tmp_path: Path, prometheus: bool, grafana: bool) -> None:
    settings = Settings(prefect_port=4300, api_port=9000)
    rendered = render_kubernetes(settings, tmp_path, prometheus=prometheus, grafana=grafana)
    assert rendered.command == f"kubectl apply -f {shlex.quote(str(tmp_path / 'k8s'))}/"
    docs = _k8s(tmp_path / "k8s")
    assert sorted(tmp_path.joinpath("k8s").iterdir())[0].name == "00-namespace.yaml"  # applied first
    assert not _by_kind(docs, "Secret"), "a secret must never be rendered"
    for doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= set(doc)
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "metrics"
    services, maps = _by_kind(docs, "Service"), _by_kind(docs, "ConfigMap")
    claims = _by_kind(docs, "PersistentVolumeClaim")
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet"):
            pod = doc["spec"]["template"]
            assert doc["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
            for volume in pod["spec"].get("volumes", []):
                if "configMap" in volume:
                    assert volume["configMap"]["name"] in maps
                if "persistentVolumeClaim" in volume:
                    assert volume["persistentVolumeClaim"]["claimName"] in claims
    for service in services.values():
        selected = [
            d
            for d in docs
            if d["kind"] in ("Deployment", "StatefulSet") and d["metadata"]["name"] == service["metadata"]["name"]
        ]
        assert selected, f"service {service['metadata']['name']} selects no workload"
        container_ports = {
            p["containerPort"] for c in selected[0]["spec"]["template"]["spec"]["containers"] for p in c["ports"]
        }
        assert {p["port"] for p in service["spec"]["ports"]} <= container_ports
    containers = {c["name"]: c for c in _containers(docs)}
    worker, server = containers["metrics"], containers["prefect-server"]
    assert worker["command"] == ["python", "-m", "metrics.deploy", "--mode=production"]
    assert _env(worker)["PREFECT_API_URL"] == "http://prefect-server:4300/api"
    assert _env(worker)["METRICS_DATA_DIR"] == "/data"
    assert {"mountPath": "/data", "name": "data"} in worker["volumeMounts"]
    assert server["readinessProbe"]["httpGet"] == {"path": "/api/health", "port": 4300}
    assert _env(server)["POSTGRES_PASSWORD"] == {"secretKeyRef": {"name": "metrics-postgres", "key": "password"}}
    url = _env(server)["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert url == "postgresql+asyncpg://prefect:$(POSTGRES_PASSWORD)@postgres:5432/prefect"
    names = [e["name"] for e in server["env"]]
    assert names.index("POSTGRES_PASSWORD") < names.index("PREFECT_API_DATABASE_CONNECTION_URL")  # $(…) order
    main_json = json.loads(maps["metrics-config"]["data"]["main.json"])
    assert main_json["storage"]["data_dir"] == "/data"
    assert ("prometheus" in containers, "grafana" in containers) == (prometheus, grafana)
    if prometheus:
        scrape = yaml.safe_load(maps["prometheus-config"]["data"]["prometheus.yml"])
        assert scrape["scrape_configs"][0]["static_configs"][0]["targets"] == ["metrics:9000"]
    if grafana:
        source = yaml.safe_load(maps["grafana-datasources"]["data"]["prometheus.yml"])
        assert source["datasources"][0]["url"] == "http://prometheus:9090"


def test_kubernetes_render_removes_monitoring_it_no_longer_renders(tmp_path: Path) -> None:
    render_kubernetes(Settings(), tmp_path, prometheus=True, grafana=True)
    rendered = render_kubernetes(Settings(), tmp_path)
    assert sorted(tmp_path.joinpath("k8s").iterdir()) == sorted(rendered.files)


# --- modules the files run ---


def _python_modules(argv: list[str]) -> list[str]:
    """The X of every ``python… -m X`` in ``argv``."""
    pairs = zip(argv, argv[1:], argv[2:], strict=False)
    return [module for python, flag, module in pairs if flag == "-m" and Path(python).name.startswith("python")]


def _commands(tmp_path: Path) -> dict[str, list[str]]:
    commands: dict[str, list[str]] = {}
    compose = _docs(DEPLOYMENTS / "docker-compose.yml")[0]
    for name, service in compose["services"].items():
        if "command" in service:
            commands[f"compose {name}"] = service["command"]
    for container in _containers(_k8s(DEPLOYMENTS / "k8s")):
        if "command" in container:
            commands[f"k8s {container['name']}"] = container["command"]
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    (cmd,) = re.findall(r"^CMD (\[.*\])$", dockerfile, re.MULTILINE)
    commands["Dockerfile CMD"] = json.loads(cmd)
    unit = render_systemd(Settings(), tmp_path, project_dir=ROOT, python=Path("/opt/venv/bin/python"), user="me")
    (exec_start,) = re.findall(r"^ExecStart=(.*)$", unit.files[0].read_text(encoding="utf-8"), re.MULTILINE)
    commands["systemd"] = shlex.split(exec_start)
    return commands


def test_every_python_module_run_by_the_files_exists(tmp_path: Path) -> None:
    commands = _commands(tmp_path)
    modules = {where: _python_modules(argv) for where, argv in commands.items()}
    assert {where for where, found in modules.items() if found} >= {
        "compose metrics",
        "k8s metrics",
        "Dockerfile CMD",
        "systemd",
    }
    missing = [
        f"{where}: {m}" for where, found in modules.items() for m in found if importlib.util.find_spec(m) is None
    ]
    assert not missing, f"no such module: {missing}"


def test_dockerfile_builds_from_the_lock_as_a_non_root_user() -> None:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.11-slim$", text, re.MULTILINE)
    steps = re.findall(r"^(COPY .*|RUN uv sync .*|RUN npm .*)$", text, re.MULTILINE)
    assert steps == [
        "COPY web/package.json web/package-lock.json ./",  # the chart library's stage, from the npm lock
        "RUN npm ci --no-audit --no-fund --loglevel=error",
        "COPY pyproject.toml uv.lock ./",
        "RUN uv sync --frozen --no-dev --no-install-project",
        "COPY . .",
        "COPY --from=web /web/node_modules/uplot/dist/uPlot.iife.min.js /web/node_modules/uplot/dist/uPlot.min.css \\",
        "RUN uv sync --frozen --no-dev",
    ]
    assert re.search(r"^FROM node:20-slim AS web$", text, re.MULTILINE)
    assert "metrics/web/static/vendor/" in text
    assert re.search(r"^USER (?!root)\w+$", text, re.MULTILINE)
    assert re.search(r"^WORKDIR /app$", text, re.MULTILINE)
    for setting in ("PATH=/app/.venv/bin:$PATH", "PREFECT_SERVER_ANALYTICS_ENABLED=false", "DO_NOT_TRACK=1"):
        assert setting in text
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert {"data/", ".venv/", ".git/"} <= set(ignored)


# --- systemd ---


@pytest.mark.parametrize(
    ("python", "mode", "exec_start"),
    [
        (
            "/opt/metrics/.venv/bin/python",
            "development",
            "/opt/metrics/.venv/bin/python -m metrics.deploy --mode=development",
        ),
        ("/srv/my env/bin/python", "production", '"/srv/my env/bin/python" -m metrics.deploy --mode=production'),
        ("/srv/100%/bin/python", "production", "/srv/100%%/bin/python -m metrics.deploy --mode=production"),
    ],
)
def test_systemd_unit_runs_deploy_with_the_given_python(
    tmp_path: Path, python: str, mode: str, exec_start: str
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    rendered = render_systemd(
        Settings(), tmp_path / "out", project_dir=project, python=Path(python), mode=mode, user="metrics"
    )
    (unit,) = rendered.files
    lines = unit.read_text(encoding="utf-8").splitlines()
    assert f"ExecStart={exec_start}" in lines
    assert f"WorkingDirectory={project.resolve()}" in lines
    assert f"Environment=METRICS_DATA_DIR={project.resolve() / 'data'}" in lines
    for line in (
        "User=metrics",
        "Restart=on-failure",
        "KillSignal=SIGTERM",
        "TimeoutStopSec=60",
        "NoNewPrivileges=true",
        "PrivateTmp=true",
        "WantedBy=multi-user.target",
    ):
        assert line in lines
    assert rendered.command == (
        f"sudo cp {shlex.quote(str(unit))} /etc/systemd/system/ && sudo systemctl daemon-reload"
        " && sudo systemctl enable --now metrics.service"
    )


def test_systemd_unit_keeps_an_absolute_data_dir_and_defaults_to_the_project_owner(tmp_path: Path) -> None:
    settings = Settings(data_dir=Path("/var/lib/metrics"))
    rendered = render_systemd(settings, tmp_path, project_dir=tmp_path, python=Path("/usr/bin/python3"))
    lines = rendered.files[0].read_text(encoding="utf-8").splitlines()
    assert "Environment=METRICS_DATA_DIR=/var/lib/metrics" in lines
    assert f"User={tmp_path.owner()}" in lines


def test_systemd_refuses_an_unknown_mode(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'staging'.*development, production"):
        render_systemd(Settings(), tmp_path, project_dir=tmp_path, python=Path("python"), mode="staging")
