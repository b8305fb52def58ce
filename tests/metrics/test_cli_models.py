"""``metrics detect`` and ``metrics eval nab`` on small files written here (and on the NAB subset when present)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from metrics.detect_files import SCORE_COLUMN, evaluate_nab, read_series_csv, score_path
from metrics.errors import ValidationError
from tests.metrics.conftest import Cli

NAB_DEV = Path(__file__).resolve().parents[3] / "shared" / "data" / "nab-dev"
START = datetime(2024, 3, 1)


def write_series(path: Path, *, rows: int = 1500, spike_at: int | None = None, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    values = 10 + rng.normal(0, 1, rows)
    if spike_at is not None:
        values[spike_at : spike_at + 5] += 30
    lines = ["timestamp,value"]
    lines += [
        f"{(START + timedelta(minutes=5 * i)).strftime('%Y-%m-%d %H:%M:%S')},{v:.4f}" for i, v in enumerate(values)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_detect_keeps_the_rows_and_their_text(cli: Cli, tmp_path: Path) -> None:
    source = write_series(tmp_path / "in.csv", spike_at=1200)
    result = cli("detect", "--input", str(source), "--output", str(tmp_path / "out.csv"), "--detector", "zscore")
    assert result.code == 0, result.err
    assert result.last_line == str(tmp_path / "out.csv")
    scored = pl.read_csv(tmp_path / "out.csv", infer_schema=False)
    original = pl.read_csv(source, infer_schema=False)
    assert scored.columns == ["timestamp", "value", SCORE_COLUMN]
    assert scored.select("timestamp", "value").equals(original)  # same rows, same order, same text
    scores = scored[SCORE_COLUMN].cast(pl.Float64).to_numpy()
    assert scores[1200:1210].max() > scores[400:1200].max()


def test_detect_a_folder_in_parallel_into_the_same_layout(tmp_path: Path) -> None:
    write_series(tmp_path / "in" / "a" / "one.csv", rows=800)
    write_series(tmp_path / "in" / "b" / "two.csv", rows=900, seed=1)
    seen: list[tuple[int, int]] = []
    done = score_path(tmp_path / "in", tmp_path / "out", "zscore", workers=2, progress=lambda n, t: seen.append((n, t)))
    assert sorted(Path(d.output).relative_to(tmp_path / "out").as_posix() for d in done) == ["a/one.csv", "b/two.csv"]
    assert seen[-1] == (2, 2)
    assert pl.read_csv(tmp_path / "out" / "b" / "two.csv").height == 900


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("time,value\n2024-01-01,1\n", "missing column 'timestamp'"),
        ("timestamp,value\nyesterday,1\n", "row 1: timestamp 'yesterday' is not a date and time"),
        ("timestamp,value\n2024-01-01 00:00:00,abc\n", "row 1: value 'abc' is not a number"),
    ],
)
def test_bad_files_are_refused_with_the_row(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(ValidationError, match=message):
        read_series_csv(path)


def test_detect_errors_are_one_line(cli: Cli, tmp_path: Path) -> None:
    source = write_series(tmp_path / "in.csv", rows=50)
    bad = cli("detect", "--input", str(source), "--output", str(tmp_path / "o.csv"), "--detector", "magic")
    assert bad.code == 1
    assert bad.error_lines[0].startswith("Error: --detector: 'magic' is not one of")
    empty = tmp_path / "empty"
    empty.mkdir()
    none = cli("detect", "--input", str(empty), "--output", str(tmp_path / "o"))
    assert none.error_lines == [f"Error: --input: no .csv files below {empty}"]


def small_corpus(folder: Path) -> Path:
    windows = {}
    for i, spike in enumerate((1100, 1300)):
        name = f"set/file{i}.csv"
        write_series(folder / name, spike_at=spike, seed=i)
        start = START + timedelta(minutes=5 * (spike - 20))
        end = START + timedelta(minutes=5 * (spike + 40))
        windows[name] = [[start.strftime("%Y-%m-%d %H:%M:%S.000000"), end.strftime("%Y-%m-%d %H:%M:%S.000000")]]
    path = folder / "windows.json"
    path.write_text(json.dumps(windows))
    return path


def test_eval_nab_scores_a_corpus(cli: Cli, tmp_path: Path) -> None:
    windows = small_corpus(tmp_path)
    result = cli("eval", "nab", "--data", str(tmp_path), "--windows", str(windows), "--detector", "zscore", "--json")
    assert result.code == 0, result.err
    figures = json.loads(result.last_line)
    assert figures["detector"] == "zscore"
    assert (figures["files"], figures["rows"]) == (2, 3000)
    assert figures["standard"] > 25  # better than never firing (0): the spikes are found in their windows
    table = cli(
        "eval", "nab", "--data", str(tmp_path), "--windows", str(windows), "--detector", "all", "--workers", "1"
    )
    assert "ensemble" in table.out
    assert len(json.loads(table.last_line)) == 6  # every detector, the usage profile included


def test_eval_nab_refuses_a_missing_file(tmp_path: Path) -> None:
    (tmp_path / "windows.json").write_text(json.dumps({"gone.csv": []}))
    with pytest.raises(ValidationError, match=r"gone\.csv does not exist"):
        evaluate_nab(tmp_path, tmp_path / "windows.json", "zscore")


@pytest.mark.slow
@pytest.mark.skipif(not NAB_DEV.is_dir(), reason="../shared/data/nab-dev is not on this machine")
def test_the_nab_development_subset() -> None:
    report = evaluate_nab(NAB_DEV / "data", NAB_DEV / "windows.json")
    figures = report.to_dict()
    print(figures)
    assert report.files == 14
    assert figures["standard"] > 50  # measured 63.6; the README has the figures per detector
