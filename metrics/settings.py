"""Every setting of the system, read from ``METRICS_*`` (and the spec's) environment variables.

This is the only module that reads the environment. A bad value fails at start
with the variable's name, its value and what is allowed.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from metrics.errors import ConfigError
from models.names import DETECTOR_NAMES

STORAGE_TYPES = ("lake",)
_PORTS = ("api_port", "prefect_port", "smtp_port")
# Levels each codec accepts (snappy, lz4 and none ignore the level).
COMPRESSION_LEVELS = {"zstd": (1, 22), "gzip": (1, 9)}
# The environment variable behind each setting, for error messages.
ENV_NAMES = {
    "data_dir": "METRICS_DATA_DIR",
    "storage_type": "METRICS_STORAGE_TYPE",
    "db_path": "METRICS_DB_PATH",
    "batch_size": "METRICS_BATCH_SIZE",
    "flush_seconds": "METRICS_FLUSH_SECONDS",
    "compression": "METRICS_COMPRESSION",
    "compression_level": "METRICS_COMPRESSION_LEVEL",
    "retention_days": "METRICS_RETENTION_DAYS",
    "archive": "METRICS_ARCHIVE",
    "max_future_seconds": "METRICS_MAX_FUTURE_SECONDS",
    "query_cache_mb": "METRICS_QUERY_CACHE_MB",
    "api_host": "METRICS_API_HOST",
    "api_port": "METRICS_API_PORT",
    "prefect_port": "METRICS_PREFECT_PORT",
    "log_level": "LOG_LEVEL",
    "smtp_port": "SMTP_PORT",
    "smtp_require_tls": "SMTP_REQUIRE_TLS",
    "slack_webhook_url": "SLACK_WEBHOOK_URL",
    "slack_bot_token": "SLACK_BOT_TOKEN",
    "slack_channel": "SLACK_CHANNEL",
    "alert_email_to": "METRICS_ALERT_EMAIL_TO",
    "alert_email_from": "METRICS_ALERT_EMAIL_FROM",
    "alertmanager_url": "METRICS_ALERTMANAGER_URL",
    "alert_webhook_url": "METRICS_ALERT_WEBHOOK_URL",
    "dashboard_url": "METRICS_DASHBOARD_URL",
    "alert_interval": "METRICS_ALERT_INTERVAL",
    "alert_rules_file": "METRICS_ALERT_RULES_FILE",
    "alert_routing_file": "METRICS_ALERT_ROUTING_FILE",
    "remediation_file": "METRICS_REMEDIATION_FILE",
    "notify_timeout": "METRICS_NOTIFY_TIMEOUT",
    "remediation_dry_run": "METRICS_REMEDIATION_DRY_RUN",
    "system_interval": "METRICS_SYSTEM_INTERVAL",
    "adaptive_sampling": "METRICS_ADAPTIVE_SAMPLING",
    "intelligent_batching": "METRICS_INTELLIGENT_BATCHING",
    "compact_interval": "METRICS_COMPACT_INTERVAL",
    "retention_interval": "METRICS_RETENTION_INTERVAL",
    "backup_interval": "METRICS_BACKUP_INTERVAL",
    "backup_dir": "METRICS_BACKUP_DIR",
    "backup_keep": "METRICS_BACKUP_KEEP",
    "prefect_database_url": "METRICS_PREFECT_DATABASE_URL",
    "workers": "METRICS_WORKERS",
    "prefect_api": "PREFECT_API_URL",
    "api_workers": "METRICS_API_WORKERS",
    "tls_cert": "METRICS_TLS_CERT",
    "tls_key": "METRICS_TLS_KEY",
    "allowed_ips": "METRICS_ALLOWED_IPS",
    "rate_limit": "METRICS_RATE_LIMIT",
    "max_body_bytes": "METRICS_MAX_BODY_BYTES",
    "jwt_secret": "METRICS_JWT_SECRET",
    "jwt_public_key": "METRICS_JWT_PUBLIC_KEY",
    "session_secret": "METRICS_SESSION_SECRET",
    "session_ttl": "METRICS_SESSION_TTL",
    "pii_tags": "METRICS_PII_TAGS",
    "pii_secret": "METRICS_PII_SECRET",
    "scrape_targets": "METRICS_SCRAPE_TARGETS",
    "scrape_interval": "METRICS_SCRAPE_INTERVAL",
    "scrape_timeout": "METRICS_SCRAPE_TIMEOUT",
    "scrape_honor_labels": "METRICS_SCRAPE_HONOR_LABELS",
    "scrape_bearer_token": "METRICS_SCRAPE_BEARER_TOKEN",
    "insecure_dev": "METRICS_INSECURE_DEV",
    "self_metrics_interval": "METRICS_SELF_METRICS_INTERVAL",
    "prometheus_multiproc_dir": "PROMETHEUS_MULTIPROC_DIR",
    "security_interval": "METRICS_SECURITY_INTERVAL",
    "cloudtrail_paths": "METRICS_CLOUDTRAIL_PATHS",
    "vault_audit_paths": "METRICS_VAULT_AUDIT_PATHS",
    "vault_transit_mounts": "METRICS_VAULT_TRANSIT_MOUNTS",
    "health_interval": "METRICS_HEALTH_INTERVAL",
    "health_timeout": "METRICS_HEALTH_TIMEOUT",
    "health_targets": "METRICS_HEALTH_TARGETS",
    "key_max_rotation_days": "METRICS_KEY_MAX_ROTATION_DAYS",
    "key_forbidden_algorithms": "METRICS_KEY_FORBIDDEN_ALGORITHMS",
    "key_allowed_principals": "METRICS_KEY_ALLOWED_PRINCIPALS",
    "key_forbid_disabled_use": "METRICS_KEY_FORBID_DISABLED_USE",
    "anomaly_detector": "METRICS_ANOMALY_DETECTOR",
    "anomaly_metrics": "METRICS_ANOMALY_METRICS",
    "anomaly_max_series": "METRICS_ANOMALY_MAX_SERIES",
    "anomaly_threshold": "METRICS_ANOMALY_THRESHOLD",
    "anomaly_interval": "METRICS_ANOMALY_INTERVAL",
    "score_warmup_hours": "METRICS_SCORE_WARMUP_HOURS",
    "train_interval": "METRICS_TRAIN_INTERVAL",
    "train_days": "METRICS_TRAIN_DAYS",
    "train_min_points": "METRICS_TRAIN_MIN_POINTS",
    "model_keep": "METRICS_MODEL_KEEP",
    "anomaly_group_tags": "METRICS_ANOMALY_GROUP_TAGS",
    "train_workers": "METRICS_TRAIN_WORKERS",
    "forecast_interval": "METRICS_FORECAST_INTERVAL",
    "forecast_metrics": "METRICS_FORECAST_METRICS",
    "forecast_horizon": "METRICS_FORECAST_HORIZON",
    "forecast_history_days": "METRICS_FORECAST_HISTORY_DAYS",
    "forecast_max_series": "METRICS_FORECAST_MAX_SERIES",
    "scaling_target_utilisation": "METRICS_SCALING_TARGET_UTILISATION",
}
# A health target's fields (the spec's MonitoringTarget): name -> (accepted JSON types, required).
HEALTH_TARGET_FIELDS: dict[str, tuple[type | tuple[type, ...], bool]] = {
    "target_id": (str, True),
    "name": (str, True),
    "target_type": (str, True),
    "endpoint": (str, True),
    "port": (int, True),
    "health_endpoint": ((str, type(None)), False),
    "expected_status_code": (int, False),
    "expected_response_time_ms": ((int, float), False),
}
COMPRESSIONS = ("zstd", "snappy", "gzip", "lz4", "none")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _int(env: Mapping[str, str], name: str, default: int, *, minimum: int, maximum: int | None = None) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer; expected a whole number >= {minimum}") from None
    if value < minimum or (maximum is not None and value > maximum):
        allowed = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise ConfigError(f"{name}={raw!r} is out of range; allowed: {allowed}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, *, minimum: float, maximum: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number; expected a number > {minimum} and <= {maximum}") from None
    if not minimum < value <= maximum:
        raise ConfigError(f"{name}={raw!r} is out of range; allowed: a number > {minimum} and <= {maximum}")
    return value


def _choice(env: Mapping[str, str], name: str, default: str, allowed: tuple[str, ...], *, upper: bool = False) -> str:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    value = raw.upper() if upper else raw.lower()
    if value not in allowed:
        raise ConfigError(f"{name}={raw!r} is not allowed; allowed: {', '.join(allowed)}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean; allowed: true, false, 1, 0, yes, no, on, off")


def _list(env: Mapping[str, str], name: str, default: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """A comma-separated list (``a, b``); an empty string means an empty list."""
    raw = env.get(name)
    if raw is None:
        return tuple(default)
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _json_value(env: Mapping[str, str], name: str, default: Any, expected: type, shape: str) -> Any:
    """A JSON document in a variable (``[…]`` or ``{…}``); an empty or unset variable gives ``default``."""
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{name}: not valid JSON ({exc.msg} at column {exc.colno}); expected {shape}") from None
    if not isinstance(value, expected):
        raise ConfigError(f"{name}: expected {shape}, got {type(value).__name__}")
    return value


def check_health_target(item: Any, where: str) -> dict[str, Any]:
    """A health target as a dict of the spec's fields; a bad one raises :class:`ConfigError` naming ``where``."""
    if not isinstance(item, Mapping):
        raise ConfigError(f"{where}: expected an object with {', '.join(HEALTH_TARGET_FIELDS)}")
    unknown = sorted(set(item) - set(HEALTH_TARGET_FIELDS))
    if unknown:
        raise ConfigError(f"{where}: unknown field {unknown[0]!r}; allowed: {', '.join(HEALTH_TARGET_FIELDS)}")
    for key, (accepted, required) in HEALTH_TARGET_FIELDS.items():
        if key not in item:
            if required:
                raise ConfigError(f"{where}: required field {key!r} is missing")
            continue
        value = item[key]
        kinds = accepted if isinstance(accepted, tuple) else (accepted,)
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise ConfigError(f"{where}: {key}={value!r} has the wrong type")
    return dict(item)


_SCRAPE_TARGET_RE = re.compile(r"^(?:(?P<job>[A-Za-z0-9_.-]+)=)?(?P<url>.+)$")


def split_scrape_target(text: str) -> tuple[str | None, str]:
    """``job=url`` or ``url`` -> (job or None, url); a bad entry raises :class:`ConfigError` naming it."""
    match = _SCRAPE_TARGET_RE.fullmatch(text.strip())
    url = match.group("url") if match else text
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError:
        parts = None
    if match is None or parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"{ENV_NAMES['scrape_targets']}: {text!r} is not a scrape target; "
            "expected http(s)://host:port/path, optionally prefixed with a job name (job=http://…)"
        )
    return match.group("job"), url


def _label(name: str) -> str:
    env = ENV_NAMES.get(name)
    return f"{env} ({name})" if env else name


def _check_range(settings: Any, name: str, low: float, high: float | None, context: str = "") -> None:
    value = getattr(settings, name)
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise ConfigError(f"{_label(name)}={value!r} is not a number")
    if value < low or (high is not None and value > high):
        allowed = f"{low} to {high}" if high is not None else f">= {low}"
        raise ConfigError(f"{_label(name)}={value!r} is out of range{context}; allowed: {allowed}")


def _check_choice(settings: Any, name: str, allowed: tuple[str, ...]) -> None:
    value = getattr(settings, name)
    if value not in allowed:
        raise ConfigError(f"{_label(name)}={value!r} is not allowed; allowed: {', '.join(allowed)}")


@dataclass(frozen=True)
class Settings:
    """Resolved configuration. Build it with :meth:`Settings.from_env`."""

    data_dir: Path = Path("data")
    storage_type: str = "lake"
    db_path: Path | None = None
    batch_size: int = 100_000
    flush_seconds: float = 2.0
    compression: str = "zstd"
    compression_level: int = 3
    retention_days: int = 90
    archive: bool = False
    max_future_seconds: int = 600
    query_cache_mb: int = 256  # memory each query engine keeps for long ranges' closed parts (0: no cache)
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    prefect_port: int = 4200
    log_level: str = "INFO"
    smtp_server: str | None = None
    smtp_port: int = 25
    smtp_username: str | None = None
    smtp_password: str | None = field(default=None, repr=False)
    slack_webhook_url: str | None = field(default=None, repr=False)
    slack_bot_token: str | None = field(default=None, repr=False)  # Web API token (with slack_channel)
    slack_channel: str | None = None
    smtp_require_tls: bool = False  # refuse to send mail when the server offers no STARTTLS
    alert_email_to: tuple[str, ...] = ()
    alert_email_from: str | None = None  # default: metrics@<this host>
    alertmanager_url: str | None = None  # Prometheus Alertmanager base URL (POST /api/v2/alerts)
    alert_webhook_url: str | None = field(default=None, repr=False)  # generic JSON webhook
    dashboard_url: str | None = None  # base URL linked from notifications (default: the API's address)
    alert_interval: float = 60.0  # seconds between evaluate-alerts runs
    alert_rules_file: Path | None = None  # default: deployments/alert-rules.yaml when it exists
    alert_routing_file: Path | None = None  # default: deployments/alert-routing.yaml when it exists
    remediation_file: Path | None = None  # default: deployments/remediation.yaml when it exists
    notify_timeout: float = 10.0  # seconds one delivery attempt may take
    remediation_dry_run: bool = True  # remediation actions are logged and audited, not run
    system_interval: float = 30.0
    adaptive_sampling: bool = True
    intelligent_batching: bool = True
    compact_interval: float = 3600.0
    retention_interval: float = 86_400.0
    backup_interval: float = 86_400.0
    backup_dir: Path | None = None
    backup_keep: int = 7
    prefect_database_url: str | None = field(default=None, repr=False)
    workers: int = 2
    prefect_api: str | None = None
    api_workers: int = 2
    tls_cert: Path | None = None
    tls_key: Path | None = None
    allowed_ips: tuple[str, ...] = ()
    rate_limit: float | None = None  # requests per second per key; None: no limit
    max_body_bytes: int = 16 * 1024 * 1024
    jwt_secret: str | None = field(default=None, repr=False)
    jwt_public_key: Path | None = None
    session_secret: str | None = field(default=None, repr=False)  # signs dashboard sessions; None: state/session.key
    session_ttl: float = 8 * 3600.0  # seconds a dashboard login lasts
    pii_tags: tuple[str, ...] = ("user", "principal", "source_ip", "caller")
    pii_secret: str | None = field(default=None, repr=False)
    scrape_targets: tuple[str, ...] = ()
    scrape_interval: float = 30.0
    scrape_timeout: float = 10.0  # capped at scrape_interval
    scrape_honor_labels: bool = False
    scrape_bearer_token: str | None = field(default=None, repr=False)
    insecure_dev: bool = False  # the API without credentials: `metrics serve --insecure-dev` only
    self_metrics_interval: float = 10.0  # seconds between the API's application.api.* samples
    prometheus_multiproc_dir: Path | None = None  # set: /metrics sums all worker processes (prometheus_client)
    security_interval: float = 300.0  # key audit logs: collection interval and counter bucket width
    cloudtrail_paths: tuple[str, ...] = ()
    vault_audit_paths: tuple[str, ...] = ()
    vault_transit_mounts: tuple[str, ...] = ("transit",)
    health_interval: float = 30.0
    health_timeout: float = 5.0  # capped at health_interval
    health_targets: tuple[dict[str, Any], ...] = field(default=(), hash=False)
    key_max_rotation_days: int = 365  # 0: no rotation policy
    key_forbidden_algorithms: tuple[str, ...] = ("RSA-1024", "3DES", "SHA-1")
    key_allowed_principals: dict[str, tuple[str, ...]] = field(default_factory=dict, hash=False)
    key_forbid_disabled_use: bool = True
    anomaly_detector: str = "ensemble"
    anomaly_metrics: tuple[str, ...] = ("*",)  # globs of the metrics scored for anomalies
    anomaly_max_series: int = 2000  # per run, most recently active first
    anomaly_threshold: float = 0.7  # a score at least this is an anomaly (sensitivity 0.5)
    anomaly_interval: float = 300.0
    score_warmup_hours: float = 72.0  # history a series without a model is scored over
    train_interval: float = 86_400.0
    train_days: int = 14
    train_min_points: int = 500
    model_keep: int = 3
    anomaly_group_tags: tuple[str, ...] = ("host", "key_id")  # series sharing one are also scored together
    train_workers: int = 0  # processes fitting models (anomaly training, forecasts); 0: one per core
    forecast_interval: float = 3600.0
    forecast_metrics: tuple[str, ...] = ("system.*", "crypto.key.days_since_rotation")  # globs forecast hourly
    forecast_horizon: int = 48  # hours ahead
    forecast_history_days: int = 14  # history a forecast is fitted on
    forecast_max_series: int = 500  # per run, most recently active first
    scaling_target_utilisation: float = 70.0  # percent of CPU the forecast peak should use after scaling
    config_file: Path | None = field(default=None, compare=False)  # where values came from, not a value

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read settings from ``env`` (default: ``os.environ``); keyword overrides win."""
        env = os.environ if env is None else env
        config_file = _config_file(env)
        # Precedence: built-in defaults < the config file < environment variables < keyword overrides.
        base = {**_DEFAULTS, **(load_config(config_file) if config_file else {})}
        db_default = base["db_path"]
        values: dict[str, Any] = {
            "data_dir": Path(env.get("METRICS_DATA_DIR") or base["data_dir"]),
            "storage_type": _choice(env, "METRICS_STORAGE_TYPE", base["storage_type"], STORAGE_TYPES),
            "db_path": Path(env["METRICS_DB_PATH"]) if env.get("METRICS_DB_PATH") else db_default and Path(db_default),
            "batch_size": _int(env, "METRICS_BATCH_SIZE", base["batch_size"], minimum=1),
            "flush_seconds": _float(env, "METRICS_FLUSH_SECONDS", base["flush_seconds"], minimum=0.0, maximum=86_400.0),
            "compression": _choice(env, "METRICS_COMPRESSION", base["compression"], COMPRESSIONS),
            "compression_level": _int(
                env, "METRICS_COMPRESSION_LEVEL", base["compression_level"], minimum=1, maximum=22
            ),
            "retention_days": _int(env, "METRICS_RETENTION_DAYS", base["retention_days"], minimum=1),
            "archive": _bool(env, "METRICS_ARCHIVE", base["archive"]),
            "max_future_seconds": _int(env, "METRICS_MAX_FUTURE_SECONDS", base["max_future_seconds"], minimum=0),
            "query_cache_mb": _int(env, "METRICS_QUERY_CACHE_MB", base["query_cache_mb"], minimum=0, maximum=1_048_576),
            "api_host": env.get("METRICS_API_HOST") or base["api_host"],
            "api_port": _int(env, "METRICS_API_PORT", base["api_port"], minimum=1, maximum=65535),
            "prefect_port": _int(env, "METRICS_PREFECT_PORT", base["prefect_port"], minimum=1, maximum=65535),
            "log_level": _choice(env, "LOG_LEVEL", base["log_level"], LOG_LEVELS, upper=True),
            "smtp_server": env.get("SMTP_SERVER") or base["smtp_server"],
            "smtp_port": _int(env, "SMTP_PORT", base["smtp_port"], minimum=1, maximum=65535),
            "smtp_username": env.get("SMTP_USERNAME") or base["smtp_username"],
            "smtp_password": env.get("SMTP_PASSWORD") or None,  # secrets come from the environment only
            "slack_webhook_url": env.get("SLACK_WEBHOOK_URL") or None,
            "slack_bot_token": env.get("SLACK_BOT_TOKEN") or None,
            "slack_channel": env.get("SLACK_CHANNEL") or base["slack_channel"],
            "smtp_require_tls": _bool(env, "SMTP_REQUIRE_TLS", base["smtp_require_tls"]),
            "alert_email_to": _list(env, "METRICS_ALERT_EMAIL_TO", base["alert_email_to"]),
            "alert_email_from": env.get("METRICS_ALERT_EMAIL_FROM") or base["alert_email_from"],
            "alertmanager_url": env.get("METRICS_ALERTMANAGER_URL") or base["alertmanager_url"],
            "alert_webhook_url": env.get("METRICS_ALERT_WEBHOOK_URL") or None,
            "dashboard_url": env.get("METRICS_DASHBOARD_URL") or base["dashboard_url"],
            "alert_interval": _float(
                env, "METRICS_ALERT_INTERVAL", base["alert_interval"], minimum=0.0, maximum=366 * 86_400.0
            ),
            "alert_rules_file": Path(env["METRICS_ALERT_RULES_FILE"])
            if env.get("METRICS_ALERT_RULES_FILE")
            else base["alert_rules_file"] and Path(base["alert_rules_file"]),
            **{
                name: Path(env[ENV_NAMES[name]]) if env.get(ENV_NAMES[name]) else base[name] and Path(base[name])
                for name in ("alert_routing_file", "remediation_file")
            },
            "notify_timeout": _float(env, "METRICS_NOTIFY_TIMEOUT", base["notify_timeout"], minimum=0.0, maximum=600.0),
            "remediation_dry_run": _bool(env, "METRICS_REMEDIATION_DRY_RUN", base["remediation_dry_run"]),
            "system_interval": _float(
                env, "METRICS_SYSTEM_INTERVAL", base["system_interval"], minimum=0.0, maximum=86_400.0
            ),
            "adaptive_sampling": _bool(env, "METRICS_ADAPTIVE_SAMPLING", base["adaptive_sampling"]),
            "intelligent_batching": _bool(env, "METRICS_INTELLIGENT_BATCHING", base["intelligent_batching"]),
            **{
                name: _float(env, ENV_NAMES[name], base[name], minimum=0.0, maximum=366 * 86_400.0)
                for name in ("compact_interval", "retention_interval", "backup_interval")
            },
            "backup_dir": Path(env["METRICS_BACKUP_DIR"])
            if env.get("METRICS_BACKUP_DIR")
            else base["backup_dir"] and Path(base["backup_dir"]),
            "backup_keep": _int(env, "METRICS_BACKUP_KEEP", base["backup_keep"], minimum=1, maximum=10_000),
            # A database URL may carry a password: the environment only, never main.json.
            "prefect_database_url": env.get("METRICS_PREFECT_DATABASE_URL") or None,
            "workers": _int(env, "METRICS_WORKERS", base["workers"], minimum=1, maximum=256),
            "prefect_api": env.get("PREFECT_API_URL") or None,  # an external Prefect server (production)
            "api_workers": _int(env, "METRICS_API_WORKERS", base["api_workers"], minimum=1, maximum=64),
            **{
                name: Path(env[ENV_NAMES[name]]) if env.get(ENV_NAMES[name]) else base[name] and Path(base[name])
                for name in ("tls_cert", "tls_key", "jwt_public_key")
            },
            **{name: _list(env, ENV_NAMES[name], base[name]) for name in ("allowed_ips", "pii_tags", "scrape_targets")},
            "rate_limit": _float(env, "METRICS_RATE_LIMIT", base["rate_limit"], minimum=0.0, maximum=1e9)
            if env.get("METRICS_RATE_LIMIT")
            else base["rate_limit"],
            "max_body_bytes": _int(env, "METRICS_MAX_BODY_BYTES", base["max_body_bytes"], minimum=1024),
            # Secrets: the environment only, never main.json.
            "jwt_secret": env.get("METRICS_JWT_SECRET") or None,
            "pii_secret": env.get("METRICS_PII_SECRET") or None,
            "session_secret": env.get("METRICS_SESSION_SECRET") or None,
            "session_ttl": _float(env, "METRICS_SESSION_TTL", base["session_ttl"], minimum=60.0, maximum=30 * 86_400.0),
            "insecure_dev": _bool(env, "METRICS_INSECURE_DEV", False),  # never from main.json
            "self_metrics_interval": _float(
                env, "METRICS_SELF_METRICS_INTERVAL", base["self_metrics_interval"], minimum=0.0, maximum=3600.0
            ),
            # prometheus_client reads this variable itself (at import): the settings only mirror it.
            "prometheus_multiproc_dir": Path(env["PROMETHEUS_MULTIPROC_DIR"])
            if env.get("PROMETHEUS_MULTIPROC_DIR")
            else None,
            "scrape_interval": _float(
                env, "METRICS_SCRAPE_INTERVAL", base["scrape_interval"], minimum=0.0, maximum=86_400.0
            ),
            "scrape_timeout": _float(
                env, "METRICS_SCRAPE_TIMEOUT", base["scrape_timeout"], minimum=0.0, maximum=86_400.0
            ),
            "scrape_honor_labels": _bool(env, "METRICS_SCRAPE_HONOR_LABELS", base["scrape_honor_labels"]),
            "scrape_bearer_token": env.get("METRICS_SCRAPE_BEARER_TOKEN") or None,  # a secret: environment only
            **{
                name: _float(env, ENV_NAMES[name], base[name], minimum=0.0, maximum=86_400.0)
                for name in ("security_interval", "health_interval", "health_timeout")
            },
            **{
                name: _list(env, ENV_NAMES[name], base[name])
                for name in (
                    "cloudtrail_paths",
                    "vault_audit_paths",
                    "vault_transit_mounts",
                    "key_forbidden_algorithms",
                )
            },
            "health_targets": _json_value(
                env, "METRICS_HEALTH_TARGETS", base["health_targets"], list, "a JSON array of target objects"
            ),
            "key_max_rotation_days": _int(
                env, "METRICS_KEY_MAX_ROTATION_DAYS", base["key_max_rotation_days"], minimum=0, maximum=36_500
            ),
            "key_allowed_principals": _json_value(
                env,
                "METRICS_KEY_ALLOWED_PRINCIPALS",
                base["key_allowed_principals"],
                dict,
                'a JSON object of key selector -> list of principals ({"alias/app": ["arn:aws:iam::1:role/app"]})',
            ),
            "key_forbid_disabled_use": _bool(env, "METRICS_KEY_FORBID_DISABLED_USE", base["key_forbid_disabled_use"]),
            "anomaly_detector": env.get("METRICS_ANOMALY_DETECTOR") or base["anomaly_detector"],
            "anomaly_metrics": _list(env, "METRICS_ANOMALY_METRICS", base["anomaly_metrics"]),
            "anomaly_max_series": _int(env, "METRICS_ANOMALY_MAX_SERIES", base["anomaly_max_series"], minimum=1),
            "anomaly_threshold": _float(
                env, "METRICS_ANOMALY_THRESHOLD", base["anomaly_threshold"], minimum=0.0, maximum=1.0
            ),
            **{
                name: _float(env, ENV_NAMES[name], base[name], minimum=0.0, maximum=366 * 86_400.0)
                for name in ("anomaly_interval", "train_interval", "score_warmup_hours")
            },
            "train_days": _int(env, "METRICS_TRAIN_DAYS", base["train_days"], minimum=1, maximum=3650),
            "train_min_points": _int(env, "METRICS_TRAIN_MIN_POINTS", base["train_min_points"], minimum=10),
            "model_keep": _int(env, "METRICS_MODEL_KEEP", base["model_keep"], minimum=1, maximum=1000),
            "anomaly_group_tags": _list(env, "METRICS_ANOMALY_GROUP_TAGS", base["anomaly_group_tags"]),
            "train_workers": _int(env, "METRICS_TRAIN_WORKERS", base["train_workers"], minimum=0, maximum=256),
            "forecast_interval": _float(
                env, "METRICS_FORECAST_INTERVAL", base["forecast_interval"], minimum=1.0, maximum=366 * 86_400.0
            ),
            "forecast_metrics": _list(env, "METRICS_FORECAST_METRICS", base["forecast_metrics"]),
            "forecast_horizon": _int(
                env, "METRICS_FORECAST_HORIZON", base["forecast_horizon"], minimum=1, maximum=8784
            ),
            "forecast_history_days": _int(
                env, "METRICS_FORECAST_HISTORY_DAYS", base["forecast_history_days"], minimum=1, maximum=3650
            ),
            "forecast_max_series": _int(
                env, "METRICS_FORECAST_MAX_SERIES", base["forecast_max_series"], minimum=1, maximum=1_000_000
            ),
            "scaling_target_utilisation": _float(
                env,
                "METRICS_SCALING_TARGET_UTILISATION",
                base["scaling_target_utilisation"],
                minimum=0.0,
                maximum=100.0,
            ),
            "config_file": config_file,
        }
        unknown = sorted(set(overrides) - {f.name for f in fields(cls)})
        if unknown:
            known = ", ".join(f.name for f in fields(cls))
            raise ConfigError(f"unknown setting {unknown[0]!r}; known settings: {known}")
        try:
            return cls(**{**values, **overrides})  # one construction: overrides may repair the environment
        except ConfigError as exc:
            if config_file is None:
                raise
            raise ConfigError(f"{exc} (set in the environment or in {config_file})") from None

    def __post_init__(self) -> None:
        """Check every value, however the settings were built (environment or keyword overrides)."""
        for name in (
            "data_dir",
            "db_path",
            "backup_dir",
            "tls_cert",
            "tls_key",
            "jwt_public_key",
            "prometheus_multiproc_dir",
            "alert_rules_file",
            "alert_routing_file",
            "remediation_file",
        ):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, Path(value))
            elif value is not None and not isinstance(value, Path):
                raise ConfigError(f"{_label(name)}={value!r} is not a path")
        whole = (
            "batch_size",
            "retention_days",
            "max_future_seconds",
            "query_cache_mb",
            "compression_level",
            "backup_keep",
            "workers",
            "api_workers",
            "max_body_bytes",
        )
        for name in (*whole, *_PORTS):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{_label(name)}={value!r} is not a whole number")
        _check_range(self, "batch_size", 1, 100_000_000)
        _check_range(self, "retention_days", 1, 36_500)
        _check_range(self, "max_future_seconds", 0, 7 * 86_400)
        _check_range(self, "query_cache_mb", 0, 1_048_576)
        _check_range(self, "flush_seconds", 0.001, 86_400)
        _check_range(self, "system_interval", 0.1, 86_400)
        for name in ("compact_interval", "retention_interval", "backup_interval"):
            _check_range(self, name, 1, 366 * 86_400)
        _check_range(self, "backup_keep", 1, 10_000)
        _check_range(self, "workers", 1, 256)
        _check_range(self, "api_workers", 1, 64)
        _check_range(self, "max_body_bytes", 1024, 2**31)
        _check_range(self, "scrape_interval", 0.1, 86_400)
        _check_range(self, "scrape_timeout", 0.1, 86_400)
        _check_range(self, "self_metrics_interval", 0.01, 3600)
        if self.rate_limit is not None:
            _check_range(self, "rate_limit", 0.001, 1e9)
        _check_range(self, "security_interval", 1, 86_400)
        _check_range(self, "health_interval", 0.1, 86_400)
        _check_range(self, "health_timeout", 0.01, 86_400)
        if isinstance(self.key_max_rotation_days, bool) or not isinstance(self.key_max_rotation_days, int):
            raise ConfigError(f"{_label('key_max_rotation_days')}={self.key_max_rotation_days!r} is not a whole number")
        _check_range(self, "key_max_rotation_days", 0, 36_500)
        if not isinstance(self.key_forbid_disabled_use, bool):
            raise ConfigError(f"{_label('key_forbid_disabled_use')}={self.key_forbid_disabled_use!r} is not a boolean")
        self._check_key_and_health_settings()
        self._check_anomaly_settings()
        self._check_alert_settings()
        for name in (
            "allowed_ips",
            "pii_tags",
            "scrape_targets",
            "cloudtrail_paths",
            "vault_audit_paths",
            "vault_transit_mounts",
            "key_forbidden_algorithms",
            "anomaly_metrics",
            "anomaly_group_tags",
            "forecast_metrics",
            "alert_email_to",
        ):
            value = getattr(self, name)
            if isinstance(value, str) or not all(isinstance(item, str) for item in value):
                raise ConfigError(f"{_label(name)}={value!r} is not a list of strings")
            object.__setattr__(self, name, tuple(value))
        for network in self.allowed_ips:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ConfigError(
                    f"{_label('allowed_ips')}: {network!r} is not an IP address or CIDR network (e.g. 10.0.0.0/8)"
                ) from None
        for target in self.scrape_targets:
            split_scrape_target(target)
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("METRICS_TLS_CERT and METRICS_TLS_KEY: give both (a certificate and its key) or neither")
        for port in _PORTS:
            _check_range(self, port, 1, 65_535)
        _check_choice(self, "storage_type", STORAGE_TYPES)
        _check_choice(self, "compression", COMPRESSIONS)
        _check_choice(self, "log_level", LOG_LEVELS)
        low, high = COMPRESSION_LEVELS.get(self.compression, (1, 22))
        _check_range(self, "compression_level", low, high, f" for {self.compression}")

    def _check_anomaly_settings(self) -> None:
        """The detector's name, thresholds and counts of anomaly detection."""
        _check_choice(self, "anomaly_detector", DETECTOR_NAMES)
        _check_range(self, "anomaly_threshold", 0, 1)
        for name, low, high in (
            ("anomaly_max_series", 1, 1_000_000),
            ("train_days", 1, 3650),
            ("train_min_points", 10, 10_000_000),
            ("model_keep", 1, 1000),
            ("train_workers", 0, 256),
            ("forecast_horizon", 1, 8784),
            ("forecast_history_days", 1, 3650),
            ("forecast_max_series", 1, 1_000_000),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{_label(name)}={value!r} is not a whole number")
            _check_range(self, name, low, high)
        for name in ("anomaly_interval", "train_interval", "forecast_interval"):
            _check_range(self, name, 1, 366 * 86_400)
        _check_range(self, "score_warmup_hours", 1, 24 * 365)
        _check_range(self, "scaling_target_utilisation", 1, 100)

    def _check_alert_settings(self) -> None:
        """Alerting: the schedule, delivery timeout and the URLs notifications go to or link to."""
        _check_range(self, "alert_interval", 1, 86_400)
        _check_range(self, "notify_timeout", 0.1, 600)
        _check_range(self, "session_ttl", 60, 30 * 86_400)
        if self.session_secret is not None and len(self.session_secret) < 32:
            raise ConfigError("METRICS_SESSION_SECRET=<hidden> is too short; allowed: at least 32 characters")
        for name in ("smtp_require_tls", "remediation_dry_run"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{_label(name)}={getattr(self, name)!r} is not a boolean")
        for name in ("slack_webhook_url", "alertmanager_url", "alert_webhook_url", "dashboard_url"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, str) and value.startswith(("http://", "https://"))):
                shown = "<hidden>" if name in ("slack_webhook_url", "alert_webhook_url") else repr(value)
                raise ConfigError(f"{_label(name)}={shown} is not an http(s):// URL")
        if self.slack_bot_token is not None and not self.slack_channel:
            raise ConfigError(f"{_label('slack_channel')} must be set with SLACK_BOT_TOKEN (the channel to post to)")

    def _check_key_and_health_settings(self) -> None:
        """Health targets and allowed principals: their shape, each entry named in the error."""
        targets = self.health_targets
        if isinstance(targets, Mapping) or not isinstance(targets, list | tuple):
            raise ConfigError(f"{_label('health_targets')}={targets!r} is not a list of target objects")
        checked = tuple(check_health_target(item, f"{_label('health_targets')}[{i}]") for i, item in enumerate(targets))
        ids = [item["target_id"] for item in checked]
        if len(set(ids)) != len(ids):
            twice = next(i for i in ids if ids.count(i) > 1)
            raise ConfigError(f"{_label('health_targets')}: target_id {twice!r} is given twice")
        object.__setattr__(self, "health_targets", checked)
        principals = self.key_allowed_principals
        if not isinstance(principals, Mapping):
            raise ConfigError(f"{_label('key_allowed_principals')}={principals!r} is not an object")
        normalised: dict[str, tuple[str, ...]] = {}
        for selector, allowed in principals.items():
            if (
                isinstance(allowed, str)
                or not isinstance(allowed, list | tuple)
                or not all(isinstance(p, str) for p in allowed)
            ):
                raise ConfigError(
                    f"{_label('key_allowed_principals')}[{selector!r}]: expected a list of principal patterns"
                )
            normalised[str(selector)] = tuple(allowed)
        object.__setattr__(self, "key_allowed_principals", normalised)

    @property
    def lake_dir(self) -> Path:
        """Root of the Parquet lake."""
        return self.data_dir / "lake"

    @property
    def wal_dir(self) -> Path:
        """Root of the per-process write-ahead logs."""
        return self.data_dir / "wal"

    @property
    def state_dir(self) -> Path:
        """Mutable state in SQLite (alert states, keys, checkpoints)."""
        return self.data_dir / "state"

    @property
    def archive_dir(self) -> Path:
        """Where retention moves expired partitions when archiving is on."""
        return self.data_dir / "archive"

    @property
    def backups_dir(self) -> Path:
        """Where the scheduled backup writes its archives (outside the backed-up folders)."""
        return self.backup_dir if self.backup_dir is not None else self.data_dir / "backups"

    @property
    def prefect_dir(self) -> Path:
        """Prefect's home when ``metrics deploy`` runs the server: its SQLite database and logs."""
        return self.data_dir / "prefect"

    @property
    def prefect_api_url(self) -> str:
        """The Prefect API: ``PREFECT_API_URL`` when set, else the server ``metrics deploy`` runs on loopback."""
        return self.prefect_api or f"http://127.0.0.1:{self.prefect_port}/api"

    @property
    def duckdb_path(self) -> Path:
        """The DuckDB database file holding views over the lake."""
        return self.db_path if self.db_path is not None else self.data_dir / "metrics.duckdb"


# The configuration file's shape: section -> key -> (setting, accepted JSON type).
CONFIG_SCHEMA: dict[str, dict[str, tuple[str, type | tuple[type, ...]]]] = {
    "deployment": {
        "api_host": ("api_host", str),
        "api_port": ("api_port", int),
        "prefect_port": ("prefect_port", int),
        "log_level": ("log_level", str),
        "workers": ("workers", int),
        "api_workers": ("api_workers", int),
        "tls_cert": ("tls_cert", (str, type(None))),
        "tls_key": ("tls_key", (str, type(None))),
        "allowed_ips": ("allowed_ips", list),
        "rate_limit": ("rate_limit", (int, float, type(None))),
        "max_body_bytes": ("max_body_bytes", int),
        "jwt_public_key": ("jwt_public_key", (str, type(None))),
        "compact_interval": ("compact_interval", (int, float)),
        "train_interval": ("train_interval", (int, float)),
        "forecast_interval": ("forecast_interval", (int, float)),
        "anomaly_interval": ("anomaly_interval", (int, float)),
        "alert_interval": ("alert_interval", (int, float)),
        "retention_interval": ("retention_interval", (int, float)),
        "backup_interval": ("backup_interval", (int, float)),
    },
    "collector": {
        "system_interval": ("system_interval", (int, float)),
        "adaptive_sampling": ("adaptive_sampling", bool),
        "intelligent_batching": ("intelligent_batching", bool),
        "scrape_targets": ("scrape_targets", list),
        "scrape_interval": ("scrape_interval", (int, float)),
        "scrape_timeout": ("scrape_timeout", (int, float)),
        "scrape_honor_labels": ("scrape_honor_labels", bool),
        "security_interval": ("security_interval", (int, float)),
        "cloudtrail_paths": ("cloudtrail_paths", list),
        "vault_audit_paths": ("vault_audit_paths", list),
        "vault_transit_mounts": ("vault_transit_mounts", list),
        "health_interval": ("health_interval", (int, float)),
        "health_timeout": ("health_timeout", (int, float)),
    },
    "storage": {
        "type": ("storage_type", str),
        "data_dir": ("data_dir", str),
        "db_path": ("db_path", (str, type(None))),
        "batch_size": ("batch_size", int),
        "flush_seconds": ("flush_seconds", (int, float)),
        "compression": ("compression", str),
        "compression_level": ("compression_level", int),
        "retention_days": ("retention_days", int),
        "archive": ("archive", bool),
        "max_future_seconds": ("max_future_seconds", int),
        "query_cache_mb": ("query_cache_mb", int),
        "backup_dir": ("backup_dir", (str, type(None))),
        "backup_keep": ("backup_keep", int),
    },
    "monitoring": {
        "smtp_server": ("smtp_server", (str, type(None))),
        "smtp_port": ("smtp_port", int),
        "smtp_username": ("smtp_username", (str, type(None))),
        "smtp_require_tls": ("smtp_require_tls", bool),
        "slack_channel": ("slack_channel", (str, type(None))),
        "alert_email_to": ("alert_email_to", list),
        "alert_email_from": ("alert_email_from", (str, type(None))),
        "alertmanager_url": ("alertmanager_url", (str, type(None))),
        "dashboard_url": ("dashboard_url", (str, type(None))),
        "alert_rules_file": ("alert_rules_file", (str, type(None))),
        "alert_routing_file": ("alert_routing_file", (str, type(None))),
        "remediation_file": ("remediation_file", (str, type(None))),
        "notify_timeout": ("notify_timeout", (int, float)),
        "session_ttl": ("session_ttl", (int, float)),
        "remediation_dry_run": ("remediation_dry_run", bool),
        "pii_tags": ("pii_tags", list),
        "health_targets": ("health_targets", list),
    },
    "anomaly": {
        "detector": ("anomaly_detector", str),
        "metrics": ("anomaly_metrics", list),
        "max_series": ("anomaly_max_series", int),
        "threshold": ("anomaly_threshold", (int, float)),
        "score_warmup_hours": ("score_warmup_hours", (int, float)),
        "train_days": ("train_days", int),
        "train_min_points": ("train_min_points", int),
        "model_keep": ("model_keep", int),
        "group_tags": ("anomaly_group_tags", list),
        "train_workers": ("train_workers", int),
    },
    "forecast": {
        "metrics": ("forecast_metrics", list),
        "horizon": ("forecast_horizon", int),
        "history_days": ("forecast_history_days", int),
        "max_series": ("forecast_max_series", int),
        "scaling_target_utilisation": ("scaling_target_utilisation", (int, float)),
    },
    "key_policy": {
        "max_rotation_days": ("key_max_rotation_days", int),
        "forbidden_algorithms": ("key_forbidden_algorithms", list),
        "allowed_principals": ("key_allowed_principals", dict),
        "forbid_disabled_use": ("key_forbid_disabled_use", bool),
    },
}
# The built-in defaults are the dataclass's own: one place to change them.
_DEFAULTS: dict[str, Any] = {
    f.name: f.default_factory() if f.default is MISSING and f.default_factory is not MISSING else f.default
    for f in fields(Settings)
}
DEFAULT_CONFIG_FILE = Path("deployments") / "main.json"


def _config_file(env: Mapping[str, str]) -> Path | None:
    """``METRICS_CONFIG`` (which must exist), else ``deployments/main.json`` when present."""
    named = env.get("METRICS_CONFIG")
    if named:
        path = Path(named)
        if not path.is_file():
            raise ConfigError(f"METRICS_CONFIG={named!r}: no such file")
        return path
    return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None


def load_config(path: Path) -> dict[str, Any]:
    """Read a ``main.json``: settings by name; errors name the file, the key and the reason."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: expected an object with sections {', '.join(CONFIG_SCHEMA)}")
    values: dict[str, Any] = {}
    for section, entries in document.items():
        schema = CONFIG_SCHEMA.get(section)
        if schema is None:
            raise ConfigError(f"{path}: unknown section {section!r}; allowed: {', '.join(CONFIG_SCHEMA)}")
        if not isinstance(entries, dict):
            raise ConfigError(f"{path}: section {section!r} must be an object")
        for key, value in entries.items():
            if key not in schema:
                raise ConfigError(f"{path}: unknown key '{section}.{key}'; allowed: {', '.join(schema)}")
            name, accepted = schema[key]
            if isinstance(value, bool) and bool not in (accepted if isinstance(accepted, tuple) else (accepted,)):
                raise ConfigError(f"{path}: '{section}.{key}' = {value!r} has the wrong type")
            if not isinstance(value, accepted):
                raise ConfigError(f"{path}: '{section}.{key}' = {value!r} has the wrong type")
            values[name] = value
    return values


def get_settings(**overrides: Any) -> Settings:
    """Settings from the process environment, with optional overrides."""
    return Settings.from_env(None, **overrides)
