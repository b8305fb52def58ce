"""``metrics forecast`` (one timestamp,value series, or many in M4's wide format) and ``metrics eval m4``."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tests.metrics.conftest import Cli

START = datetime(2026, 10, 1)
PNG = b"\x89PNG\r\n\x1a\n"


def write_long(path: Path, rows: int = 24 * 20) -> Path:
    t = np.arange(rows)
    values = 50 + 10 * np.sin(2 * np.pi * t / 24) + np.random.default_rng(0).normal(0, 1, rows)
    lines = ["timestamp,value"] + [f"{(START + timedelta(hours=i)).isoformat()},{v:.3f}" for i, v in enumerate(values)]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_wide(path: Path, series: int = 3, rows: int = 24 * 15) -> Path:
    t = np.arange(rows)
    lines = ",".join(f'"V{i}"' for i in range(1, rows + 2))
    body = [
        ",".join([f'"H{s}"', *(f"{100 + 20 * np.sin(2 * np.pi * i / 24 + s):.2f}" for i in t)]) for s in range(series)
    ]
    body.append(",".join(['"H9"', "5", "6", "7"] + [""] * (rows - 3)))  # a short one, empty cells after
    path.write_text("\n".join([lines, *body]) + "\n")
    return path


def test_forecast_of_one_series_continues_its_timestamps_with_intervals(cli: Cli, tmp_path: Path) -> None:
    source = write_long(tmp_path / "series.csv")
    result = cli("forecast", "--input", str(source), "--horizon", "24", "--output", str(tmp_path / "out.csv"))
    assert result.code == 0, result.err
    assert result.last_line == str(tmp_path / "out.csv")
    frame = pl.read_csv(tmp_path / "out.csv", try_parse_dates=True)
    assert frame.columns == ["timestamp", "yhat", "lower_80", "upper_80", "lower_95", "upper_95", "method"]
    assert frame.height == 24
    assert frame["timestamp"][0].replace(tzinfo=None) == START + timedelta(hours=24 * 20)
    assert (frame["lower_95"] <= frame["yhat"]).all()
    assert (frame["yhat"] <= frame["upper_95"]).all()
    assert "forecast 1 series" in result.out


@pytest.mark.parametrize("layout", ["long", "wide"])
def test_forecast_plot_writes_a_png(cli: Cli, tmp_path: Path, layout: str) -> None:
    source = write_long(tmp_path / "s.csv") if layout == "long" else write_wide(tmp_path / "w.csv", series=1)
    plot = tmp_path / "charts" / "f.png"
    args = ("--input", str(source), "--horizon", "12", "--output", str(tmp_path / "o.csv"), "--plot", str(plot))
    result = cli("forecast", *args, "--workers", "1")
    assert result.code == 0, result.err
    assert plot.read_bytes().startswith(PNG)
    assert plot.stat().st_size > 10_000  # a drawn chart, not an empty canvas


def test_forecast_plot_to_an_unwritable_path_is_an_error(cli: Cli, tmp_path: Path) -> None:
    source = write_long(tmp_path / "s.csv")
    (tmp_path / "file").write_text("")
    bad = tmp_path / "file" / "f.png"  # its folder is a file
    result = cli("forecast", "--input", str(source), "--output", str(tmp_path / "o.csv"), "--plot", str(bad))
    assert result.code == 1
    assert "Error: --plot" in result.err


def test_forecast_of_a_wide_file_writes_one_row_per_series(cli: Cli, tmp_path: Path) -> None:
    source = write_wide(tmp_path / "wide.csv")
    output = tmp_path / "f.csv"
    result = cli("forecast", "--input", str(source), "--horizon", "48", "--season", "24", "--output", str(output))
    assert result.code == 0, result.err
    frame = pl.read_csv(output)
    assert frame.columns == ["id", *[f"F{i}" for i in range(1, 49)]]
    assert frame["id"].to_list() == ["H0", "H1", "H2", "H9"]
    expected = 100 + 20 * np.sin(2 * np.pi * np.arange(24 * 15, 24 * 15 + 48) / 24)
    np.testing.assert_allclose(frame.row(0)[1:], expected, atol=1.0)
    assert frame.row(3)[1:] == tuple([7.0] * 48)  # too short to backtest: its last value


def test_bad_input_is_an_error_not_a_traceback(cli: Cli, tmp_path: Path) -> None:
    missing = cli("forecast", "--input", str(tmp_path / "nope.csv"), "--output", str(tmp_path / "o.csv"))
    assert missing.code == 1
    assert "Error: --input" in missing.err
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp,value\n2026-01-01T00:00:00,abc\n")
    result = cli("forecast", "--input", str(bad), "--output", str(tmp_path / "o.csv"))
    assert result.code == 1
    assert "is not a number" in result.err
    zero = cli("forecast", "--input", str(bad), "--output", str(tmp_path / "o.csv"), "--horizon", "0")
    assert "--horizon" in zero.err


def test_eval_m4_prints_owa_against_naive2(cli: Cli, tmp_path: Path) -> None:
    source = write_wide(tmp_path / "wide.csv", series=2)
    lines = source.read_text().splitlines()
    source.write_text("\n".join(lines[:3]) + "\n")  # drop the short series: nothing to backtest on
    result = cli("eval", "m4", "--data", str(source), "--horizon", "24", "--workers", "1")
    assert result.code == 0, result.err
    figures = json.loads(result.last_line)
    assert figures["series"] == 2
    assert {"smape", "mase", "owa", "naive2_smape", "coverage_95", "seconds"} <= set(figures)
    assert "Naive2" in result.out


def test_capacity_lists_the_risks_without_writing(cli: Cli, tmp_path: Path) -> None:
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    rows = 7 * 24
    values = 60 + 2 * np.arange(rows) / 24 + np.random.default_rng(0).normal(0, 0.2, rows)  # 2 % a day
    stamps = [(now - timedelta(hours=rows - i)).isoformat() for i in range(rows)]
    source = tmp_path / "disk.csv"
    frame = pl.DataFrame({"ts": stamps, "metric": "system.disk.usage_percent", "value": values, "host": "h1"})
    frame.with_columns(pl.lit("gauge").alias("type")).write_csv(source)
    loaded = cli("ingest", str(source))
    assert loaded.code == 0, loaded.err
    result = cli("capacity", "--format", "json", "--plot", str(tmp_path / "c.png"))
    assert result.code == 0, result.err
    assert (tmp_path / "c.png").read_bytes().startswith(PNG)
    (risk,) = json.loads(result.last_line)
    assert risk["metric"] == "system.disk.usage_percent"
    assert risk["days"] == pytest.approx((100 - values[-1]) / 2, abs=1.0)
    written = cli("sql", "SELECT count(*) AS n FROM samples WHERE metric LIKE 'forecast.%'", "--format", "json")
    assert json.loads(written.last_line)[0]["n"] == 0


def test_capacity_advises_on_scaling_from_the_cpu_forecast(cli: Cli, tmp_path: Path) -> None:
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    rows = 3 * 24
    stamps = [(now - timedelta(hours=rows - i)).isoformat() for i in range(rows)]
    frames = [
        pl.DataFrame({"ts": stamps, "metric": "system.cpu.usage_total", "value": level, "host": host})
        for host, level in (("a", 20.0), ("b", 24.0), ("c", 22.0))
    ]
    source = tmp_path / "cpu.csv"
    pl.concat(frames).with_columns(pl.lit("gauge").alias("type")).write_csv(source)
    assert cli("ingest", str(source)).code == 0
    result = cli("capacity", "--pattern", "system.cpu.*")
    assert result.code == 0, result.err
    assert "Scaling: CPU across the fleet is forecast to peak at 22% (80 % bound 22%) on 3 replica(s)" in result.out
    assert "scale down to 1." in result.out  # 3 hosts at 22 % fit on one at a 70 % target
