"""Tests of metrics.settings: environment parsing, defaults, errors that say what is allowed, secrets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from metrics.errors import ConfigError
from metrics.settings import Settings, get_settings

ALL_VARIABLES = (
    "METRICS_DATA_DIR",
    "METRICS_STORAGE_TYPE",
    "METRICS_DB_PATH",
    "METRICS_BATCH_SIZE",
    "METRICS_FLUSH_SECONDS",
    "METRICS_COMPRESSION",
    "METRICS_COMPRESSION_LEVEL",
    "METRICS_RETENTION_DAYS",
    "METRICS_ARCHIVE",
    "METRICS_MAX_FUTURE_SECONDS",
    "METRICS_API_HOST",
    "METRICS_API_PORT",
    "METRICS_PREFECT_PORT",
    "LOG_LEVEL",
    "SMTP_SERVER",
    "SMTP_PORT",
    "SMTP_USERNAME",
    "SMTP_PASSWORD",
    "SLACK_WEBHOOK_URL",
)

DEFAULTS: dict[str, Any] = {
    "data_dir": Path("data"),
    "storage_type": "lake",
    "db_path": None,
    "batch_size": 100_000,
    "flush_seconds": 2.0,
    "compression": "zstd",
    "compression_level": 3,
    "retention_days": 90,
    "archive": False,
    "max_future_seconds": 600,
    "query_cache_mb": 256,
    "api_host": "127.0.0.1",
    "api_port": 8080,
    "prefect_port": 4200,
    "log_level": "INFO",
    "smtp_server": None,
    "smtp_port": 25,
    "smtp_username": None,
    "smtp_password": None,
    "slack_webhook_url": None,
}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The process environment without any of the settings' variables."""
    for name in ALL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize("env", [{}, dict.fromkeys(ALL_VARIABLES, "")], ids=["unset", "empty"])
def test_defaults(env: dict[str, str]) -> None:
    settings = Settings.from_env(env)
    for name, value in DEFAULTS.items():
        assert getattr(settings, name) == value, name
    assert settings == Settings()
    assert settings.lake_dir == Path("data/lake")
    assert settings.wal_dir == Path("data/wal")
    assert settings.state_dir == Path("data/state")
    assert settings.archive_dir == Path("data/archive")
    assert settings.duckdb_path == Path("data/metrics.duckdb")


def test_defaults_from_the_process_environment(clean_env: pytest.MonkeyPatch) -> None:
    assert Settings.from_env() == Settings()
    assert get_settings() == Settings()


@pytest.mark.parametrize(
    ("name", "raw", "field", "value"),
    [
        ("METRICS_DATA_DIR", "/srv/metrics", "data_dir", Path("/srv/metrics")),
        ("METRICS_STORAGE_TYPE", "LAKE", "storage_type", "lake"),
        ("METRICS_DB_PATH", "/tmp/m.duckdb", "db_path", Path("/tmp/m.duckdb")),
        ("METRICS_BATCH_SIZE", "1", "batch_size", 1),
        ("METRICS_BATCH_SIZE", "250000", "batch_size", 250_000),
        ("METRICS_FLUSH_SECONDS", "0.5", "flush_seconds", 0.5),
        ("METRICS_FLUSH_SECONDS", "10", "flush_seconds", 10.0),
        ("METRICS_SCALING_TARGET_UTILISATION", "85.5", "scaling_target_utilisation", 85.5),
        ("METRICS_COMPRESSION", "Snappy", "compression", "snappy"),
        ("METRICS_COMPRESSION", "none", "compression", "none"),
        ("METRICS_COMPRESSION_LEVEL", "22", "compression_level", 22),
        ("METRICS_RETENTION_DAYS", "1", "retention_days", 1),
        ("METRICS_RETENTION_DAYS", "365", "retention_days", 365),
        ("METRICS_ARCHIVE", "true", "archive", True),
        ("METRICS_ARCHIVE", "YES", "archive", True),
        ("METRICS_ARCHIVE", "1", "archive", True),
        ("METRICS_ARCHIVE", "on", "archive", True),
        ("METRICS_ARCHIVE", "off", "archive", False),
        ("METRICS_ARCHIVE", " False ", "archive", False),
        ("METRICS_ARCHIVE", "0", "archive", False),
        ("METRICS_MAX_FUTURE_SECONDS", "0", "max_future_seconds", 0),
        ("METRICS_QUERY_CACHE_MB", "0", "query_cache_mb", 0),
        ("METRICS_API_HOST", "0.0.0.0", "api_host", "0.0.0.0"),
        ("METRICS_API_PORT", "1", "api_port", 1),
        ("METRICS_API_PORT", "65535", "api_port", 65535),
        ("METRICS_PREFECT_PORT", "4201", "prefect_port", 4201),
        ("LOG_LEVEL", "debug", "log_level", "DEBUG"),
        ("LOG_LEVEL", "Warning", "log_level", "WARNING"),
        ("SMTP_SERVER", "smtp.example.org", "smtp_server", "smtp.example.org"),
        ("SMTP_PORT", "587", "smtp_port", 587),
        ("SMTP_USERNAME", "alerts", "smtp_username", "alerts"),
        ("SMTP_PASSWORD", "pw", "smtp_password", "pw"),
        ("SLACK_WEBHOOK_URL", "https://hooks.example/x", "slack_webhook_url", "https://hooks.example/x"),
    ],
)
def test_good_values(name: str, raw: str, field: str, value: Any) -> None:
    assert getattr(Settings.from_env({name: raw}), field) == value


def test_db_path_overrides_the_database_file() -> None:
    assert Settings.from_env({"METRICS_DB_PATH": "/x/views.duckdb"}).duckdb_path == Path("/x/views.duckdb")
    assert Settings.from_env({"METRICS_DATA_DIR": "/d"}).duckdb_path == Path("/d/metrics.duckdb")


@pytest.mark.parametrize(
    ("name", "raw", "allowed"),
    [
        ("METRICS_BATCH_SIZE", "abc", ">= 1"),
        ("METRICS_BATCH_SIZE", "0", ">= 1"),
        ("METRICS_BATCH_SIZE", "-5", ">= 1"),
        ("METRICS_BATCH_SIZE", "1.5", ">= 1"),
        ("METRICS_RETENTION_DAYS", "-1", ">= 1"),
        ("METRICS_RETENTION_DAYS", "0", ">= 1"),
        ("METRICS_RETENTION_DAYS", "ninety", ">= 1"),
        ("METRICS_COMPRESSION", "brotli", "zstd, snappy, gzip, lz4, none"),
        ("METRICS_COMPRESSION_LEVEL", "23", "between 1 and 22"),
        ("METRICS_SCALING_TARGET_UTILISATION", "120", "> 0.0 and <= 100.0"),
        ("METRICS_SCALING_TARGET_UTILISATION", "high", "> 0.0 and <= 100.0"),
        ("METRICS_COMPRESSION_LEVEL", "0", "between 1 and 22"),
        ("METRICS_STORAGE_TYPE", "redis", "lake"),
        ("METRICS_STORAGE_TYPE", "postgres", "lake"),
        ("LOG_LEVEL", "LOUD", "DEBUG, INFO, WARNING, ERROR, CRITICAL"),
        ("LOG_LEVEL", "trace", "DEBUG, INFO, WARNING, ERROR, CRITICAL"),
        ("METRICS_ARCHIVE", "maybe", "true, false"),
        ("METRICS_ARCHIVE", "2", "true, false"),
        ("METRICS_API_PORT", "70000", "between 1 and 65535"),
        ("METRICS_API_PORT", "0", "between 1 and 65535"),
        ("METRICS_API_PORT", "http", ">= 1"),
        ("METRICS_PREFECT_PORT", "65536", "between 1 and 65535"),
        ("SMTP_PORT", "-25", "between 1 and 65535"),
        ("METRICS_FLUSH_SECONDS", "0", "> 0"),
        ("METRICS_FLUSH_SECONDS", "-1", "> 0"),
        ("METRICS_FLUSH_SECONDS", "soon", "> 0"),
        ("METRICS_FLUSH_SECONDS", "nan", "> 0"),
        ("METRICS_MAX_FUTURE_SECONDS", "-1", ">= 0"),
        ("METRICS_QUERY_CACHE_MB", "-5", "between 0 and 1048576"),
        ("METRICS_ANOMALY_DETECTOR", "magic", "zscore, seasonal, changepoint, iforest, ensemble, profile"),
    ],
)
def test_bad_values_name_the_variable_the_value_and_what_is_allowed(name: str, raw: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({name: raw})
    message = str(caught.value)
    assert name in message
    assert repr(raw) in message
    assert allowed in message


def test_bad_value_from_the_process_environment(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("METRICS_BATCH_SIZE", "abc")
    with pytest.raises(ConfigError, match="METRICS_BATCH_SIZE='abc'"):
        get_settings()


def test_overrides_win_over_the_environment() -> None:
    settings = Settings.from_env({"METRICS_BATCH_SIZE": "5", "METRICS_DATA_DIR": "/env"}, batch_size=7)
    assert settings.batch_size == 7
    assert settings.data_dir == Path("/env")
    assert Settings.from_env({}, data_dir=Path("/o")).data_dir == Path("/o")


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(AttributeError):
        settings.batch_size = 1  # type: ignore[misc]


SECRETS = {
    "SMTP_PASSWORD": "hunter2-Sup3r-S3cret",
    "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T0000/B0000/not-a-real-secret-value",
}


@pytest.mark.parametrize("source", ["mapping", "process"])
def test_secrets_never_appear_in_repr(clean_env: pytest.MonkeyPatch, source: str) -> None:
    env = {**SECRETS, "SMTP_SERVER": "smtp.example.org", "SMTP_USERNAME": "alerts"}
    if source == "process":
        for name, value in env.items():
            clean_env.setenv(name, value)
        settings = Settings.from_env()
    else:
        settings = Settings.from_env(env)
    assert settings.smtp_password == SECRETS["SMTP_PASSWORD"]
    assert settings.slack_webhook_url == SECRETS["SLACK_WEBHOOK_URL"]
    for text in (repr(settings), str(settings), f"{settings}", f"{settings!r}"):
        for secret in SECRETS.values():
            assert secret not in text
        assert "hunter2" not in text
        assert "hooks.slack.com" not in text
        assert "smtp.example.org" in text  # the rest of the repr is still there


@pytest.mark.parametrize("raw", ["inf", "1e300"])
def test_flush_seconds_must_be_finite(raw: str) -> None:
    with pytest.raises(ConfigError, match="METRICS_FLUSH_SECONDS"):
        Settings.from_env({"METRICS_FLUSH_SECONDS": raw})


@pytest.mark.parametrize(
    ("env", "overrides", "message"),
    [
        ({"METRICS_COMPRESSION": "gzip", "METRICS_COMPRESSION_LEVEL": "15"}, {}, "METRICS_COMPRESSION_LEVEL"),
        ({}, {"batch_sz": 5}, "unknown setting 'batch_sz'"),
        ({}, {"batch_size": 0}, "METRICS_BATCH_SIZE (batch_size)=0"),
        ({}, {"retention_days": -1}, "METRICS_RETENTION_DAYS (retention_days)=-1"),
        ({}, {"compression": "brotli2"}, "METRICS_COMPRESSION (compression)='brotli2'"),
        ({"METRICS_RETENTION_DAYS": "1000000"}, {}, "METRICS_RETENTION_DAYS"),
        ({}, {"scaling_target_utilisation": 0.5}, "METRICS_SCALING_TARGET_UTILISATION (scaling_target_utilisation)"),
        ({"METRICS_MAX_FUTURE_SECONDS": "999999999999"}, {}, "METRICS_MAX_FUTURE_SECONDS"),
        ({}, {"compression_level": 3.5}, "not a whole number"),
        ({}, {"batch_size": float("inf")}, "not a whole number"),
        ({}, {"data_dir": 5}, "not a path"),
    ],
)
def test_overrides_and_combinations_are_checked_too(
    env: dict[str, str], overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env, **overrides)
    assert message in str(caught.value)


def test_an_override_can_repair_an_invalid_environment_combination(tmp_path: Path) -> None:
    env = {"METRICS_COMPRESSION": "gzip", "METRICS_COMPRESSION_LEVEL": "15"}
    settings = Settings.from_env(env, compression="zstd", data_dir=str(tmp_path))
    assert settings.compression_level == 15
    assert settings.data_dir == tmp_path


# --- the configuration file (deployments/main.json) ------------------------------------------------


def write_config(tmp_path: Path, text: str) -> dict[str, str]:
    path = tmp_path / "main.json"
    path.write_text(text, encoding="utf-8")
    return {"METRICS_CONFIG": str(path)}


def test_the_shipped_main_json_holds_the_defaults() -> None:
    root = Path(__file__).resolve().parents[2]
    shipped = Settings.from_env({"METRICS_CONFIG": str(root / "deployments" / "main.json")})
    defaults = Settings()
    for name in ("batch_size", "retention_days", "compression", "api_port", "system_interval", "adaptive_sampling"):
        assert getattr(shipped, name) == getattr(defaults, name)


def test_the_file_sets_values_and_the_environment_overrides_it(tmp_path: Path) -> None:
    env = write_config(
        tmp_path, '{"storage": {"batch_size": 500, "retention_days": 30}, "collector": {"system_interval": 10}}'
    )
    from_file = Settings.from_env(env)
    assert (from_file.batch_size, from_file.retention_days, from_file.system_interval) == (500, 30, 10)
    overridden = Settings.from_env({**env, "METRICS_BATCH_SIZE": "700"}, retention_days=7)
    assert (overridden.batch_size, overridden.retention_days) == (700, 7)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"storage": {"batch_size": 5,}}', "invalid JSON at line 1"),
        ('{"storge": {}}', "unknown section 'storge'"),
        ('{"storage": {"batch_sz": 5}}', "unknown key 'storage.batch_sz'"),
        ('{"storage": {"batch_size": "many"}}', "'storage.batch_size' = 'many' has the wrong type"),
        ('{"collector": {"adaptive_sampling": "yes"}}', "'collector.adaptive_sampling'"),
        ('{"storage": {"retention_days": true}}', "'storage.retention_days' = True has the wrong type"),
        ('{"storage": {"compression": "brotli"}}', "main.json"),
        ("[1, 2]", "expected an object"),
    ],
)
def test_a_bad_config_file_names_the_file_key_and_reason(tmp_path: Path, text: str, message: str) -> None:
    env = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    assert message in str(caught.value)
    assert "main.json" in str(caught.value)


def test_a_missing_config_file_named_by_the_environment_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="METRICS_CONFIG"):
        Settings.from_env({"METRICS_CONFIG": str(tmp_path / "absent.json")})


@pytest.mark.parametrize(
    ("env", "field", "value"),
    [
        ({"METRICS_SECURITY_INTERVAL": "60"}, "security_interval", 60.0),
        ({"METRICS_CLOUDTRAIL_PATHS": "/logs/a, /logs/b"}, "cloudtrail_paths", ("/logs/a", "/logs/b")),
        ({"METRICS_VAULT_AUDIT_PATHS": "/var/log/vault"}, "vault_audit_paths", ("/var/log/vault",)),
        ({"METRICS_VAULT_TRANSIT_MOUNTS": "transit,crypto"}, "vault_transit_mounts", ("transit", "crypto")),
        ({"METRICS_HEALTH_INTERVAL": "10"}, "health_interval", 10.0),
        ({"METRICS_KEY_MAX_ROTATION_DAYS": "0"}, "key_max_rotation_days", 0),
        ({"METRICS_KEY_FORBIDDEN_ALGORITHMS": ""}, "key_forbidden_algorithms", ()),
        (
            {"METRICS_KEY_ALLOWED_PRINCIPALS": '{"alias/app": ["arn:aws:iam::1:role/app"]}'},
            "key_allowed_principals",
            {"alias/app": ("arn:aws:iam::1:role/app",)},
        ),
        ({"METRICS_KEY_FORBID_DISABLED_USE": "false"}, "key_forbid_disabled_use", False),
        (
            {
                "METRICS_HEALTH_TARGETS": '[{"target_id": "a", "name": "A", "target_type": "tcp", "endpoint": "db", '
                '"port": 5432}]'
            },
            "health_targets",
            ({"target_id": "a", "name": "A", "target_type": "tcp", "endpoint": "db", "port": 5432},),
        ),
    ],
)
def test_key_and_health_settings(env: dict[str, str], field: str, value: Any) -> None:
    assert getattr(Settings.from_env(env), field) == value


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"METRICS_SECURITY_INTERVAL": "0"}, "METRICS_SECURITY_INTERVAL"),
        ({"METRICS_KEY_MAX_ROTATION_DAYS": "-1"}, "METRICS_KEY_MAX_ROTATION_DAYS='-1' is out of range"),
        ({"METRICS_KEY_ALLOWED_PRINCIPALS": "[1]"}, "METRICS_KEY_ALLOWED_PRINCIPALS: expected a JSON object"),
        ({"METRICS_KEY_ALLOWED_PRINCIPALS": '{"k": "arn"}'}, r"\['k'\]: expected a list of principal patterns"),
        ({"METRICS_HEALTH_TARGETS": "{"}, "METRICS_HEALTH_TARGETS: not valid JSON"),
        ({"METRICS_HEALTH_TARGETS": '[{"target_id": "a"}]'}, r"health_targets\)\[0\]: required field 'name'"),
        (
            {
                "METRICS_HEALTH_TARGETS": '[{"target_id": "a", "name": "A", "target_type": "tcp", "endpoint": "db", '
                '"port": "5432"}]'
            },
            "port='5432' has the wrong type",
        ),
        (
            {
                "METRICS_HEALTH_TARGETS": '[{"target_id": "a", "name": "A", "target_type": "tcp", "endpoint": "db", '
                '"port": 1, "colour": "red"}]'
            },
            "unknown field 'colour'",
        ),
        (
            {
                "METRICS_HEALTH_TARGETS": '[{"target_id": "a", "name": "A", "target_type": "tcp", "endpoint": "db", '
                '"port": 1}, {"target_id": "a", "name": "B", "target_type": "tcp", "endpoint": "db", "port": 2}]'
            },
            "target_id 'a' is given twice",
        ),
    ],
)
def test_bad_key_and_health_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_key_policy_and_collector_sections_of_main_json(tmp_path: Path) -> None:
    config = tmp_path / "main.json"
    config.write_text(
        json.dumps(
            {
                "collector": {"security_interval": 120, "cloudtrail_paths": ["/ct"], "health_timeout": 2},
                "key_policy": {
                    "max_rotation_days": 90,
                    "forbidden_algorithms": ["SHA-1"],
                    "forbid_disabled_use": False,
                    "allowed_principals": {"*": ["arn:aws:iam::1:role/*"]},
                },
            }
        )
    )
    settings = Settings.from_env({"METRICS_CONFIG": str(config)})
    assert (settings.security_interval, settings.cloudtrail_paths, settings.health_timeout) == (120, ("/ct",), 2)
    assert (settings.key_max_rotation_days, settings.key_forbidden_algorithms) == (90, ("SHA-1",))
    assert settings.key_allowed_principals == {"*": ("arn:aws:iam::1:role/*",)}
    assert settings.key_forbid_disabled_use is False
    config.write_text(json.dumps({"key_policy": {"max_days": 3}}))
    with pytest.raises(ConfigError, match=r"unknown key 'key_policy\.max_days'"):
        Settings.from_env({"METRICS_CONFIG": str(config)})


def test_anomaly_settings() -> None:
    settings = Settings.from_env(
        {
            "METRICS_ANOMALY_METRICS": "system.*, crypto.key.*",
            "METRICS_ANOMALY_THRESHOLD": "0.8",
            "METRICS_TRAIN_DAYS": "7",
            "METRICS_ANOMALY_DETECTOR": "seasonal",
            "METRICS_ANOMALY_GROUP_TAGS": "host, service",
            "METRICS_TRAIN_WORKERS": "3",
        }
    )
    assert settings.anomaly_metrics == ("system.*", "crypto.key.*")
    assert (settings.anomaly_group_tags, settings.train_workers) == (("host", "service"), 3)
    assert Settings.from_env({"METRICS_ANOMALY_GROUP_TAGS": ""}).anomaly_group_tags == ()
    with pytest.raises(ConfigError, match="METRICS_TRAIN_WORKERS"):
        Settings.from_env({"METRICS_TRAIN_WORKERS": "-1"})
    assert (settings.anomaly_threshold, settings.train_days, settings.anomaly_detector) == (0.8, 7, "seasonal")
    with pytest.raises(ConfigError, match="METRICS_ANOMALY_THRESHOLD"):
        Settings.from_env({"METRICS_ANOMALY_THRESHOLD": "2"})
    with pytest.raises(ConfigError, match="METRICS_MODEL_KEEP"):
        Settings.from_env({"METRICS_MODEL_KEEP": "0"})
