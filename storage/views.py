"""DuckDB plumbing shared by every reader: connections, file lists, and the views over the lake.

``sql()`` users and external DuckDB clients see the lake as views named after
its tables (``samples``, ``series``, ``rollups_1m``, ``rollups_1h`` and, once
they hold data, ``anomalies``, ``forecasts``, ``alert_events``). A table with no
file yet gets an empty view with the right columns. The same views are kept in
a DuckDB database file (``data/metrics.duckdb``) so that ``duckdb
data/metrics.duckdb`` reads the lake directly.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb

from storage.encoding import VALUE_SQL
from storage.lake import SERIES_TABLE, TABLES, Lake
from storage.rollups import ROLLUP_SQL, ROLLUP_TABLES

SAMPLE_VIEW_COLUMNS = "metric VARCHAR, series_id BIGINT, ts TIMESTAMPTZ, value DOUBLE, type VARCHAR, tags VARCHAR"


_EMPTY_SCHEMAS = {
    "samples": SAMPLE_VIEW_COLUMNS + ", date DATE",
    "series": "series_id BIGINT, metric VARCHAR, type VARCHAR, tags VARCHAR, first_seen TIMESTAMPTZ",
    "rollups_1m": "metric VARCHAR, series_id BIGINT, ts TIMESTAMPTZ, count BIGINT, sum DOUBLE, min DOUBLE, "
    "max DOUBLE, first DOUBLE, last DOUBLE, last_ts TIMESTAMPTZ, increase DOUBLE, date DATE",
}


_EMPTY_SCHEMAS["rollups_1h"] = _EMPTY_SCHEMAS["rollups_1m"]


def connect(
    database: str = ":memory:", *, threads: int | None = None, sandbox: Path | None = None
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection for the lake: built-in extensions only (parquet, json, icu), UTC, metadata cache.

    With ``sandbox`` the connection may touch files under that folder only and
    its configuration is locked: what ad-hoc SQL runs on (no network, no other
    files, no extension loading).
    """
    config: dict[str, Any] = {"autoinstall_known_extensions": False, "autoload_known_extensions": False}
    if threads:
        config["threads"] = threads
    con = duckdb.connect(database, config=config)
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET parquet_metadata_cache = true")
    if sandbox is not None:
        con.execute(f"SET allowed_directories = [{sql_string(str(sandbox) + os.sep)}]")
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
    return con


def sql_string(text: str) -> str:
    """Quote ``text`` as a SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def file_list(paths: Sequence[Path | str]) -> str:
    return "[" + ", ".join(sql_string(str(p)) for p in paths) + "]"


def samples_source(files: Sequence[Path | str]) -> str:
    """A subquery reading sample files with their values decoded (see ``storage.encoding``)."""
    return f"(SELECT metric, series_id, ts, {VALUE_SQL} AS value, type, tags FROM read_parquet({file_list(files)}))"


def write_database_file(path: Path, statements: list[str]) -> bool:
    """Write a DuckDB database holding only the lake views (atomically replaced); False when already current.

    The statements are remembered beside the file (``<name>.views.sql``), so
    readers that find the same views leave the file alone.
    """
    recorded = path.with_name(path.name + ".views.sql")
    text = ";\n".join(statements) + ";\n"
    if path.exists() and recorded.exists() and recorded.read_text(encoding="utf-8") == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    con = connect(str(tmp))
    try:
        for statement in statements:
            con.execute(statement)
        con.execute("CHECKPOINT")
    finally:
        con.close()
    os.replace(tmp, path)
    Path(str(tmp) + ".wal").unlink(missing_ok=True)
    recorded_tmp = recorded.with_name(f".{recorded.name}.{os.getpid()}.tmp")
    recorded_tmp.write_text(text, encoding="utf-8")
    os.replace(recorded_tmp, recorded)
    return True


def table_has_files(lake: Lake, table: str) -> bool:
    """True when ``table`` holds at least one committed file."""
    if table == SERIES_TABLE:
        return bool(lake.flat_files(table))
    folder = lake.table_dir(table)
    if not folder.is_dir():
        return False
    with os.scandir(folder) as partitions:
        for partition in partitions:
            if not partition.is_dir():
                continue
            with os.scandir(partition.path) as entries:
                if any(e.name.endswith(".parquet") for e in entries):
                    return True
    return False


def view_statements(lake: Lake) -> list[str]:
    """CREATE VIEW statements for every lake table (empty typed views where no files exist yet)."""
    statements: list[str] = []
    for table in (*TABLES, SERIES_TABLE):
        if table_has_files(lake, table):
            if table == SERIES_TABLE:
                glob = str(lake.table_dir(table) / "*.parquet")
                body = (
                    "SELECT series_id, any_value(metric) AS metric, any_value(type) AS type, "
                    f"any_value(tags) AS tags, min(first_seen) AS first_seen FROM read_parquet({sql_string(glob)}) "
                    "GROUP BY series_id"
                )
            elif table == "samples":
                body = (
                    f"SELECT metric, series_id, ts, {VALUE_SQL} AS value, type, tags, date "
                    f"FROM read_parquet({sql_string(lake.glob(table))}, hive_partitioning = true)"
                )
            elif table in ROLLUP_TABLES:
                columns = ", ".join(f"{sql} AS {name}" for name, sql in ROLLUP_SQL.items())
                body = (
                    f"SELECT {columns}, date "
                    f"FROM read_parquet({sql_string(lake.glob(table))}, hive_partitioning = true)"
                )
            else:
                body = (
                    f"SELECT * FROM read_parquet({sql_string(lake.glob(table))}, "
                    "hive_partitioning = true, union_by_name = true)"
                )
        elif table in _EMPTY_SCHEMAS:
            columns = ", ".join(
                f"NULL::{c.split(' ', 1)[1]} AS {c.split(' ', 1)[0]}" for c in _EMPTY_SCHEMAS[table].split(", ")
            )
            body = f"SELECT {columns} WHERE false"
        else:
            continue
        statements.append(f"CREATE OR REPLACE VIEW {table} AS {body}")
    return statements
