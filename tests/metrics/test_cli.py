"""Tests of the ``metrics`` command line: in-process through ``metrics.cli.main`` and a few real subprocesses."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from tests.metrics.conftest import Cli, Result

MOMENT = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=20)
# cpu.usage: web-0 gets 0, 3, 6 and web-1 gets 1.5, 4.5, 7.5 (10 s apart); all inside one 5-minute bucket.
CSV_ROWS = [(MOMENT + timedelta(seconds=10 * i), i * 1.5, f"web-{i % 2}") for i in range(6)]
JSON_POINTS = [(MOMENT + timedelta(seconds=10 * i), float(10 * i)) for i in range(4)]  # a counter: 0, 10, 20, 30


def write_inputs(folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    csv = folder / "samples.csv"
    lines = ["metric,timestamp,value,type,host"]
    lines += [f"cpu.usage,{ts.isoformat().replace('+00:00', 'Z')},{v},gauge,{h}" for ts, v, h in CSV_ROWS]
    csv.write_text("\n".join(lines) + "\n")
    batch = folder / "batch.json"
    metrics = [
        {
            "metric_id": "crypto.key.access_count",
            "value": v,
            "metric_type": "counter",
            "timestamp": ts.isoformat(),
            "tags": {"key_type": "encryption", "algorithm": "AES-256"},
        }
        for ts, v in JSON_POINTS
    ]
    metrics.append({"metric_id": "bad name", "value": 1.0})
    batch.write_text(json.dumps({"metrics": metrics}))
    return csv, batch


@pytest.fixture
def loaded(cli: Cli, tmp_path: Path) -> Result:
    """The lake after ``metrics ingest samples.csv batch.json``."""
    csv, batch = write_inputs(tmp_path)
    result = cli("ingest", csv.name, batch.name)
    assert result.code == 0, result.err
    return result


def since() -> str:
    return (MOMENT - timedelta(minutes=5)).isoformat()


# --- ingest --------------------------------------------------------------------------


def test_ingest_prints_the_stored_count_last(loaded: Result) -> None:
    assert loaded.last_line == "10"
    assert "samples.csv: 6 rows stored, 0 rejected" in loaded.out
    assert "batch.json: 4 rows stored, 1 rejected" in loaded.out
    assert "row 4: metric" in loaded.out
    assert "Traceback" not in loaded.err


@pytest.mark.parametrize("which", ["csv", "json"])
def test_ingest_one_file(cli: Cli, tmp_path: Path, which: str) -> None:
    csv, batch = write_inputs(tmp_path)
    result = cli("ingest", str(csv if which == "csv" else batch))
    assert result.code == 0, result.err
    assert result.last_line == ("6" if which == "csv" else "4")


def test_ingest_show_errors_limits_the_listing(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"metrics": [{"metric_id": f"bad name {i}", "value": 1.0} for i in range(5)]}))
    result = cli("ingest", "--show-errors", "2", path.name)
    assert result.code == 0
    assert result.out.count("  row ") == 2
    assert "and 3 more" in result.out
    assert result.last_line == "0"


# --- query -----------------------------------------------------------------------------


def test_query_raw_csv(cli: Cli, loaded: Result) -> None:
    result = cli("query", "cpu.*", "--since", "1h", "--format", "csv")  # the data is 20 minutes old
    assert result.code == 0, result.err
    frame = pl.read_csv(io.StringIO(result.out))
    assert frame.columns == ["ts", "metric", "value", "type", "tags", "series_id"]
    assert sorted(frame.get_column("value").to_list()) == [v for _, v, _ in CSV_ROWS]
    assert set(frame.get_column("metric").to_list()) == {"cpu.usage"}


def test_query_raw_json_with_tag_and_limit(cli: Cli, loaded: Result) -> None:
    result = cli("query", "cpu.usage", "--since", since(), "--tag", "host=web-1", "--format", "json")
    assert result.code == 0, result.err
    rows = json.loads(result.last_line)
    assert [r["value"] for r in rows] == [1.5, 4.5, 7.5]
    assert {r["tags"] for r in rows} == {'{"host":"web-1"}'}
    assert datetime.fromisoformat(rows[0]["ts"]) == CSV_ROWS[1][0]
    both = cli("query", "cpu.usage", "--since", since(), "--tag", "host=web-1", "--tag", "host=web-0", "-f", "json")
    assert len(json.loads(both.last_line)) == 6
    limited = cli("query", "*", "--since", since(), "--limit", "2", "--format", "json")
    assert len(json.loads(limited.last_line)) == 2


def test_query_until_excludes_the_end(cli: Cli, loaded: Result) -> None:
    until = CSV_ROWS[3][0].isoformat()
    result = cli("query", "cpu.usage", "--since", since(), "--until", until, "--format", "json")
    assert sorted(r["value"] for r in json.loads(result.last_line)) == [0.0, 1.5, 3.0]


def test_query_table_format(cli: Cli, loaded: Result) -> None:
    result = cli("query", "crypto.key.*", "--since", since())
    assert result.code == 0, result.err
    assert result.last_line == "4 rows"
    for column in ("ts", "metric", "value", "type", "tags", "series_id"):
        assert column in result.out
    assert "crypto.key.access_count" in result.out


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["cpu.usage", "--agg", "avg", "--interval", "5m"], {'{"host":"web-0"}': 3.0, '{"host":"web-1"}': 4.5}),
        (["cpu.usage", "--agg", "max", "--interval", "5m", "--per-metric"], {"cpu.usage": 7.5}),
        (["cpu.usage", "--agg", "count", "--interval", "1h", "--group-by", "host"], {"web-0": 3.0, "web-1": 3.0}),
        (["cpu.*", "--agg", "sum", "--interval", "5m", "--tag", "host=web-0", "--per-metric"], {"cpu.usage": 9.0}),
        (["crypto.key.*", "--agg", "increase", "--interval", "5m", "--per-metric"], {"crypto.key.access_count": 30.0}),
        (["crypto.key.*", "--agg", "rate", "--interval", "5m", "--per-metric"], {"crypto.key.access_count": 0.1}),
        (["crypto.key.*", "--agg", "p50", "--interval", "5m", "--group-by", "algorithm"], {"AES-256": 15.0}),
        (
            ["*", "--agg", "last", "--interval", "5m", "--per-metric"],
            {"cpu.usage": 7.5, "crypto.key.access_count": 30.0},
        ),
    ],
)
def test_query_aggregated_json(cli: Cli, loaded: Result, args: list[str], expected: dict[str, float]) -> None:
    result = cli("query", *args, "--since", since(), "--format", "json")
    assert result.code == 0, result.err
    rows = json.loads(result.last_line)
    if "--group-by" in args:
        key = args[args.index("--group-by") + 1]
    elif "--per-metric" in args:
        key = "metric"
    else:
        key = "tags"
    got = {r[key]: r["value"] for r in rows}
    assert got == pytest.approx(expected)
    assert len(rows) == len(expected)  # everything falls in one bucket


def test_query_aggregated_csv_columns(cli: Cli, loaded: Result) -> None:
    per_series = cli("query", "cpu.usage", "--agg", "avg", "--since", since(), "--format", "csv")
    assert per_series.out.splitlines()[0] == "ts,metric,series_id,tags,value"
    grouped = cli("query", "cpu.usage", "--agg", "avg", "--group-by", "host", "--since", since(), "-f", "csv")
    assert grouped.out.splitlines()[0] == "ts,metric,host,value"


# --- sql, compact, reindex, cleanup -----------------------------------------------------------


def test_sql(cli: Cli, loaded: Result) -> None:
    result = cli("sql", "SELECT metric, count(*) AS n FROM samples GROUP BY metric ORDER BY metric", "--format", "csv")
    assert result.code == 0, result.err
    assert result.out.splitlines() == ["metric,n", "cpu.usage,6", "crypto.key.access_count,4"]
    table = cli("sql", "SELECT count(*) AS n FROM series")
    assert table.last_line == "1 rows"


def test_compact_then_reindex(cli: Cli, loaded: Result, data_dir: Path) -> None:
    result = cli("compact", "--no-validate", "--format", "json")
    assert result.code == 0, result.err
    (day,) = json.loads(result.last_line)
    assert day["day"] == MOMENT.date().isoformat()
    assert (day["files_before"], day["files_after"], day["rows"]) == (2, 1, 10)
    files = sorted(p.name for p in (data_dir / "lake" / "samples").rglob("*.parquet"))
    assert len(files) == 1
    assert files[0].startswith("c-")
    rollups = cli("sql", "SELECT sum(count) AS n FROM rollups_1m", "--format", "csv")
    assert rollups.out.splitlines() == ["n", "10"]
    again = cli("compact", "--no-validate", "--format", "json")
    assert json.loads(again.last_line) == []
    rebuilt = cli("reindex")
    assert rebuilt.code == 0, rebuilt.err
    assert rebuilt.last_line == "rebuilt 1 days: 10 samples"


def test_cleanup_dry_run_then_for_real(cli: Cli, loaded: Result, tmp_path: Path) -> None:
    old = tmp_path / "old.csv"
    old_ts = (datetime.now(UTC) - timedelta(days=10)).isoformat()
    old.write_text(f"metric,timestamp,value\nold.metric,{old_ts},1\n")
    assert cli("ingest", old.name).last_line == "1"
    keep = cli("cleanup", "--older-than", "90d", "--dry-run")
    assert keep.code == 0, keep.err
    assert "would remove 0 partitions" in keep.out
    dry = cli("cleanup", "--older-than", "5d", "--dry-run")
    assert "would remove 1 partitions" in dry.out
    assert "date=" in dry.out
    count = "SELECT count(*) AS n FROM samples"
    assert cli("sql", count, "-f", "csv").out.splitlines() == ["n", "11"]
    real = cli("cleanup", "--older-than", "5d")
    assert real.code == 0, real.err
    assert "removed 1 partitions" in real.out
    assert cli("sql", count, "-f", "csv").out.splitlines() == ["n", "10"]


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["ingest", "missing.csv"], "missing.csv: no such file"),
        (["ingest", "samples.txt"], "unsupported file type '.txt'"),
        (["ingest", "broken.json"], "invalid JSON"),
        (["query", "cpu.*", "--since", "yesterday-ish"], "timestamp"),
        (["query", "cpu.*", "--until", "soon"], "timestamp"),
        (["query", "cpu.*", "--tag", "novalue"], "--tag: 'novalue' is not key=value"),
        (["query", "cpu.*", "--tag", "=x"], "--tag"),
        (["query", "cpu.*", "--tag", "bad key=x"], "tags: key 'bad key'"),
        (["query", "cpu.*", "--format", "xml"], "--format: 'xml' is not one of table, csv, json"),
        (["query", "cpu.*", "--agg", "median"], "aggregation: 'median'"),
        (["query", "cpu.*", "--agg", "avg", "--interval", "1.5s"], "interval"),
        (["query", "cpu.*", "--agg", "avg", "--group-by", "bad key"], "group_by"),
        (["sql", "SELECT * FROM nope"], "Catalog Error"),
        (["sql", "SELEC 1"], "Parser Error"),
        (["sql", " "], "sql: empty statement"),
        (["sql", "SELECT 1", "--format", "yaml"], "--format"),
        (["cleanup", "--older-than", "abc"], "duration"),
    ],
)
def test_bad_input_exits_1_with_one_error_line(
    cli: Cli, loaded: Result, tmp_path: Path, args: list[str], fragment: str
) -> None:
    (tmp_path / "samples.txt").write_text("metric,timestamp,value\n")
    (tmp_path / "broken.json").write_text("{not json")
    result = cli(*args)
    assert result.code == 1
    assert "Traceback" not in result.err
    assert len(result.error_lines) == 1, result.err
    assert fragment in " ".join(result.err.split()), result.err


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["frobnicate"],
        ["query"],
        ["ingest"],
        ["query", "x", "--bogus"],
        ["query", "x", "--limit", "many"],
        ["bench", "ingest", "--samples", "lots"],
        ["compact", "extra-argument"],
    ],
)
def test_usage_errors_exit_2(cli: Cli, args: list[str]) -> None:
    result = cli(*args)
    assert result.code == 2
    assert "Traceback" not in result.err
    assert "Usage" in result.out + result.err


COMMANDS = [
    ["ingest"],
    ["query"],
    ["sql"],
    ["compact"],
    ["cleanup"],
    ["reindex"],
    ["demo"],
    ["bench", "ingest"],
    ["bench", "query"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
def test_every_command_help_has_an_example(cli: Cli, command: list[str]) -> None:
    result = cli(*command, "--help")
    assert result.code == 0
    assert "Example:" in result.out
    assert f"metrics {command[-1]}" in result.out or f"metrics {' '.join(command)}" in result.out


def test_the_bench_group_help_has_an_example(cli: Cli) -> None:
    result = cli("bench", "--help")
    assert result.code == 0
    assert "Example:" in result.out


# --- real processes ------------------------------------------------------------------------------


def run_module(args: list[str], data_dir: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m ARGS`` in a fresh process with METRICS_DATA_DIR; not a terminal, width not forced."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env["METRICS_DATA_DIR"] = str(data_dir)
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.integration
def test_subprocess_help(data_dir: Path, tmp_path: Path) -> None:
    done = run_module(["metrics", "--help"], data_dir, tmp_path)
    assert done.returncode == 0, done.stderr
    for command in ("ingest", "query", "sql", "compact", "cleanup", "reindex", "bench"):
        assert command in done.stdout
    assert not data_dir.exists()  # help touches no data


@pytest.mark.integration
def test_subprocess_cleanup_dry_run(loaded: Result, data_dir: Path, tmp_path: Path) -> None:
    done = run_module(["metrics.cleanup", "--older-than=90d", "--dry-run"], data_dir, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "would remove 0 partitions, 0 bytes" in done.stdout
    assert list((data_dir / "lake" / "samples").rglob("*.parquet"))


@pytest.mark.integration
def test_subprocess_compact(loaded: Result, data_dir: Path, tmp_path: Path) -> None:
    done = run_module(["metrics.compact", "--no-validate", "--format", "csv"], data_dir, tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("day,files_before,files_after,rows")
    assert lines[1].startswith(f"{MOMENT.date().isoformat()},2,1,10,")
    names = [p.name for p in (data_dir / "lake" / "samples").rglob("*.parquet")]
    assert len(names) == 1
    assert names[0].startswith("c-")


@pytest.mark.integration
def test_subprocess_reindex(loaded: Result, data_dir: Path, tmp_path: Path) -> None:
    done = run_module(["metrics.reindex"], data_dir, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "rebuilt 1 days: 10 samples"


@pytest.mark.integration
def test_subprocess_error_is_one_line_without_traceback(data_dir: Path, tmp_path: Path) -> None:
    done = run_module(["metrics", "query", "x", "--format", "xml"], data_dir, tmp_path)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == ["Error: --format: 'xml' is not one of table, csv, json"]


@pytest.mark.integration
def test_subprocess_long_error_stays_on_one_line(data_dir: Path, tmp_path: Path) -> None:
    table = "a_table_whose_name_is_long_enough_to_push_the_message_past_eighty_columns"
    done = run_module(["metrics", "sql", f"SELECT * FROM {table}"], data_dir, tmp_path)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("Error: Catalog Error:")
    assert table in lines[0]


def test_json_output_prints_nan_as_null(cli: Cli, tmp_path: Path) -> None:
    batch = tmp_path / "nan.json"
    stamp = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    batch.write_text(
        json.dumps(
            {"metrics": [{"metric_id": "rpc.latency", "timestamp": stamp, "value": "NaN", "metric_type": "summary"}]}
        ).replace('"NaN"', "NaN")
    )
    assert cli("ingest", batch.name).code == 0
    result = cli("query", "rpc.latency", "--since", "1h", "--format", "json")
    assert result.code == 0
    assert json.loads(result.out)[0]["value"] is None


@pytest.mark.parametrize("args", [("query", "x", "--since", "1000000d"), ("cleanup", "--older-than", "1000000d")])
def test_absurd_durations_are_refused_cleanly(cli: Cli, args: tuple[str, ...]) -> None:
    result = cli(*args)
    assert result.code == 1
    assert result.err.strip().startswith("Error: duration")


def test_demo_runs_end_to_end_and_again(cli: Cli) -> None:
    # What `make run` runs, small: generate, store, compact and validate, query; then once more at once.
    first = cli("demo", "--hours", "0.2", "--series", "30")
    assert first.code == 0, first.err
    assert "stored" in first.out
    assert "0 quarantined" in first.out
    again = cli("demo", "--hours", "0.2", "--series", "30")
    assert again.code == 0, again.err
    mix = "SELECT count(*) AS n, count(DISTINCT series_id) AS s FROM samples WHERE metric NOT LIKE 'crypto.key.%'"
    row = json.loads(cli("sql", mix, "--format", "json").out)[0]
    assert row["s"] <= 30  # the mix's own crypto.key.* series are left out: those come from the demo's audit logs
    keys = "SELECT DISTINCT metric FROM samples WHERE metric LIKE 'crypto.key.%' ORDER BY metric"
    found = {item["metric"] for item in json.loads(cli("sql", keys, "--format", "json").out)}
    assert {"crypto.key.access_count", "crypto.key.decryption_ops", "crypto.key.unauthorized_access"} <= found
    report = json.loads(cli("keys-report", "--format", "json").out)
    assert report["summary"]["rotation_overdue"], "the demo's legacy key was created more than a year ago"
    assert row["n"] >= row["s"] * 70  # 0.2 h at 10 s is 72 points per series
