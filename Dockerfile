# The Metrics System image: the Prefect server and the metrics worker run from it
# (deployments/docker-compose.yml, deployments/k8s/). Build from the repository root:
#   docker build -t metrics-system:latest .
# The dashboards' chart library (uPlot), from the npm lock file.
FROM node:20-slim AS web
WORKDIR /web
COPY web/package.json web/package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv \
    PATH=/app/.venv/bin:$PATH \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    DO_NOT_TRACK=1 \
    GX_ANALYTICS_ENABLED=false \
    METRICS_DATA_DIR=/data

RUN pip install --no-cache-dir uv==0.13.9

WORKDIR /app

# Dependencies first, from the lock only: this layer is rebuilt only when they change.
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen --no-dev --no-install-project

# Then the project itself, and the chart library the web UI serves.
COPY . .
COPY --from=web /web/node_modules/uplot/dist/uPlot.iife.min.js /web/node_modules/uplot/dist/uPlot.min.css \
     /web/node_modules/uplot/LICENSE metrics/web/static/vendor/
RUN uv sync --frozen --no-dev

# A non-root user owning only the data volume; the code stays read-only to it.
RUN groupadd --gid 10001 app \
    && useradd --create-home --uid 10001 --gid app app \
    && mkdir -p /data \
    && chown app:app /data
USER app
VOLUME ["/data"]
EXPOSE 4200 8080

CMD ["python", "-m", "metrics.deploy", "--mode=production"]
