"""M4 evaluation: the wide format, sMAPE and MASE by hand, Naive2, and a backtest (on the real file when present)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from metrics.errors import ValidationError
from models.forecast.m4 import WideSeries, backtest, mase, naive2_forecast, read_wide, smape, write_wide

M4 = Path(__file__).resolve().parents[3] / "shared" / "data" / "m4" / "Hourly-train.csv"


@pytest.mark.parametrize(
    ("actual", "forecast", "expected"),
    [
        ([100.0, 100.0], [110.0, 90.0], 200 * (10 / 210 + 10 / 190) / 2),
        ([0.0, 5.0], [0.0, 5.0], 0.0),  # both zero: counts as 0
        ([1.0], [-1.0], 200.0),
    ],
)
def test_smape_by_hand(actual: list[float], forecast: list[float], expected: float) -> None:
    assert smape(np.array(actual), np.array(forecast)) == pytest.approx(expected)


def test_mase_by_hand() -> None:
    history = np.array([1.0, 2.0, 4.0, 7.0])  # lag-2 differences: 3 and 5, mean 4
    assert mase(history, np.array([10.0, 10.0]), np.array([8.0, 12.0]), 2) == pytest.approx(0.5)


def test_naive2_reseasonalises_the_adjusted_last_value() -> None:
    t = np.arange(20 * 24)
    values = 100 * (1 + 0.3 * np.sin(2 * np.pi * t / 24))
    forecast = naive2_forecast(values, 48, 24)
    np.testing.assert_allclose(
        forecast, 100 * (1 + 0.3 * np.sin(2 * np.pi * np.arange(len(t), len(t) + 48) / 24)), rtol=0.02
    )
    flat = np.random.default_rng(1).normal(50, 1, 200)
    assert (naive2_forecast(flat, 5, 24) == flat[-1]).all()  # no seasonality found: plain naive


def test_wide_files_round_trip_and_bad_ones_are_refused(tmp_path: Path) -> None:
    source = tmp_path / "wide.csv"
    source.write_text('"V1","V2","V3","V4"\n"H1","1","2","3"\n"H2","4.5","",""\n')
    series = read_wide(source)
    assert [(s.series_id, s.values.tolist()) for s in series] == [("H1", [1, 2, 3]), ("H2", [4.5])]
    write_wide(tmp_path / "out.csv", ["H1", "H2"], [np.array([1.0, 2.0]), np.array([3.0, 4.0])])
    assert (tmp_path / "out.csv").read_text().splitlines() == ["id,F1,F2", "H1,1.0,2.0", "H2,3.0,4.0"]
    source.write_text("V1,V2\nH1,abc\n")
    with pytest.raises(ValidationError, match=r"line 2: 'abc' is not a number"):
        read_wide(source)
    source.write_text("V1,V2\nH1,\n")
    with pytest.raises(ValidationError, match="has no values"):
        read_wide(source)


def test_a_backtest_beats_naive2_on_trending_seasonal_series_and_refuses_short_ones() -> None:
    # Naive2 cannot follow a trend or a wandering level; on a stationary season it is about as good as it gets.
    generator = np.random.default_rng(3)
    t = np.arange(30 * 24)
    series = [
        WideSeries(
            f"S{i}", 200 + 0.2 * t + 50 * np.sin(2 * np.pi * t / 24 + i) + np.cumsum(generator.normal(0, 1, len(t)))
        )
        for i in range(4)
    ]
    figures = backtest(series, 48, workers=1)
    assert figures["series"] == 4
    assert figures["owa"] < 0.8
    assert 0 <= figures["coverage_80"] <= figures["coverage_95"] <= 1
    with pytest.raises(ValidationError, match="S0"):
        backtest([WideSeries("S0", np.arange(40.0))], 48)


@pytest.mark.slow
@pytest.mark.skipif(not M4.exists(), reason="../shared/data/m4 is not next to this clone")
def test_a_sample_of_m4_hourly_backtests_well_below_naive2() -> None:
    figures = backtest(read_wide(M4)[::40], 48, workers=1)  # 11 series across the file
    assert figures["owa"] < 0.8  # the whole file: 0.52
