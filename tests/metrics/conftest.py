"""The command line in-process: ``cli(*args)`` runs ``metrics --data-dir DATA ARGS...`` and returns what it printed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from metrics.cli import main


@dataclass
class Result:
    """Exit status, stdout and stderr of one command."""

    code: int
    out: str
    err: str

    @property
    def last_line(self) -> str:
        return self.out.strip().splitlines()[-1]

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.startswith("Error:")]


Cli = Callable[..., Result]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def cli(data_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Cli:
    """Run ``metrics --data-dir DATA ARGS...`` in-process from ``tmp_path``; returns status, stdout, stderr."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "400")  # rich tables and messages unwrapped where the width is not fixed

    def run(*args: str) -> Result:
        capsys.readouterr()
        code = main(["--data-dir", str(data_dir), *args])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run
