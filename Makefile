# Metrics System — `make run` runs the system on embedded defaults; `make test` runs the suite.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_VERSION := 3.11
UV_BIN := $(CURDIR)/.uv-bin
UV := $(shell command -v uv 2>/dev/null || echo $(UV_BIN)/uv)
VENV := .venv
WEB_VENDOR := metrics/web/static/vendor
TEST_WORKERS ?= 2  # pytest-xdist processes; each test file runs whole in one of them (--dist loadfile)
PY := $(VENV)/bin/python
export UV_PYTHON_PREFERENCE := system
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export GX_ANALYTICS_ENABLED := false

.PHONY: help setup run demo test lint typecheck format requirements bench manifests clean proto

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(UV):
	@echo "uv not found: installing it into $(UV_BIN)"
	@mkdir -p $(UV_BIN)
	@python3 -m pip install --quiet --target $(UV_BIN)/pkg uv && ln -sf $(UV_BIN)/pkg/bin/uv $(UV)

$(VENV)/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --python $(PYTHON_VERSION)
	@touch $@

# The dashboards' chart library (uPlot), pinned with its integrity hash in web/package-lock.json.
$(WEB_VENDOR)/.installed: web/package.json web/package-lock.json
	@command -v npm >/dev/null || { echo "npm not found: the dashboards' chart library is installed with npm (Node.js 18+)"; exit 1; }
	npm ci --prefix web --no-audit --no-fund --loglevel=error
	@mkdir -p $(WEB_VENDOR)
	cp web/node_modules/uplot/dist/uPlot.iife.min.js web/node_modules/uplot/dist/uPlot.min.css web/node_modules/uplot/LICENSE $(WEB_VENDOR)/
	@touch $@

setup: $(VENV)/.synced $(WEB_VENDOR)/.installed ## Create the virtual environment from the lock file, install the chart library

run: setup ## Run the whole system: Prefect server + UI and every scheduled flow (Ctrl-C stops it)
	$(PY) -m metrics.deploy --mode=development

demo: setup ## Load realistic demo data, compact it and run the standard queries
	$(PY) -m metrics demo

test: setup ## Lint, type-check and run the test suite with coverage
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --cov --cov-report=term $(PYTEST_ARGS)

lint: setup ## ruff and mypy only
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: setup ## Format the code
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

requirements: setup ## Export requirements.txt and requirements-dev.txt from the lock
	$(UV) export --frozen --no-dev --no-hashes -o requirements.txt >/dev/null
	$(UV) export --frozen --only-group dev --no-hashes --no-emit-project -o requirements-dev.txt >/dev/null && sed -i "3i -r requirements.txt" requirements-dev.txt

bench: setup ## Run the ingest and query benchmarks (10 M samples each)
	$(PY) -m metrics bench ingest --json
	$(PY) -m metrics bench query --json

proto: setup ## Regenerate metrics/api/remote_pb2.py(i) from remote.proto (Prometheus remote-write)
	$(PY) -m grpc_tools.protoc -I metrics/api --python_out=metrics/api --pyi_out=metrics/api metrics/api/remote.proto

manifests: setup ## Regenerate deployments/docker-compose.yml, deployments/k8s/ and deployments/prefect.yaml
	$(PY) -m metrics.manifests

clean: ## Remove the environment and caches (keeps data/)
	rm -rf $(VENV) $(UV_BIN) .mypy_cache .ruff_cache .coverage .coverage.* htmlcov web/node_modules $(WEB_VENDOR)
