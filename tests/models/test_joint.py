"""The joint Isolation Forest: a broken relation between series stands out, the culprit is named, streaming holds."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from metrics.errors import ValidationError
from models.joint import NO_CULPRIT, JointForest

STEP_US = 300 * 1_000_000
DAY = 288
START_US = 1_700_000_000 * 1_000_000
BREAK = 10 * DAY  # the row where the relation breaks


def host(days: int = 12, seed: int = 5, broken: bool = False) -> pl.DataFrame:
    """CPU and requests following one daily load; optionally requests collapse while CPU stays busy."""
    rng = np.random.default_rng(seed)
    n = days * DAY
    load = 50 + 20 * np.sin(2 * np.pi * np.arange(n) / DAY) + rng.normal(0, 2, n)
    cpu = 0.8 * load + rng.normal(0, 1, n)
    requests = 10 * load + rng.normal(0, 10, n)
    if broken:
        requests[BREAK : BREAK + 24] *= 0.2
    return pl.DataFrame({"ts": START_US + np.arange(n) * STEP_US, "requests": requests, "cpu": cpu})


def test_a_broken_relation_is_found_early_and_blamed_on_the_series_that_broke() -> None:
    model = JointForest()
    judgement = model.judge(host(broken=True))
    first = int(np.flatnonzero(judgement.scores >= 0.7)[0])
    assert BREAK <= first < BREAK + 12  # within an hour
    assert model.columns_[int(judgement.culprits[first])] == "requests"


@pytest.mark.parametrize("seed", [3, 5, 7])
def test_a_clean_host_raises_no_alarm(seed: int) -> None:
    assert JointForest().score(host(seed=seed)).max() < 0.9


def test_nothing_is_judged_before_the_first_forest() -> None:
    judgement = JointForest(train_points=500).judge(host(days=3))
    assert (judgement.scores[:500] == 0).all()
    assert (judgement.culprits[:500] == NO_CULPRIT).all()
    assert (judgement.culprits[500:] >= 0).all()


def test_chunked_scoring_equals_one_call_and_the_future_changes_nothing() -> None:
    frame = host(broken=True)
    whole = JointForest(refit_seconds=2 * 86_400.0).score(frame)
    chunked = JointForest(refit_seconds=2 * 86_400.0)
    parts = [chunked.score(frame[a:b]) for a, b in ((0, 7), (7, 1100), (1100, 2500), (2500, frame.height))]
    np.testing.assert_allclose(np.concatenate(parts), whole)
    changed = frame.with_columns(
        pl.when(pl.int_range(pl.len()) >= 2000).then(0.0).otherwise(pl.col("cpu")).alias("cpu")
    )
    np.testing.assert_allclose(JointForest(refit_seconds=2 * 86_400.0).score(changed)[:2000], whole[:2000])


def test_an_incomplete_row_scores_zero_and_teaches_nothing() -> None:
    frame = host(days=5)
    holes = frame.with_columns(
        pl.when(pl.int_range(pl.len()) % 50 == 7).then(None).otherwise(pl.col("cpu")).alias("cpu")
    )
    scores = JointForest().score(holes)
    assert (scores[7::50] == 0).all()
    assert len(scores) == frame.height


def test_fit_learns_the_history_then_scores_what_follows() -> None:
    frame = host(broken=True)
    model = JointForest().fit(frame[:BREAK])
    later = model.calibrated(frame[BREAK:]).scores
    np.testing.assert_allclose(later, JointForest().calibrated(frame).scores[BREAK:])


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (pl.DataFrame({"cpu": [1.0]}), "ts: missing column"),
        (pl.DataFrame({"ts": [1]}), "columns: give at least one"),
        (pl.DataFrame({"ts": [1], "cpu": ["high"]}), "cpu: column has type String"),
        (pl.DataFrame({"ts": [1.5], "cpu": [1.0]}), "ts: column has type Float64"),
        (pl.DataFrame({"ts": [None, 2], "cpu": [1.0, 2.0]}, schema={"ts": pl.Int64, "cpu": pl.Float64}), "ts: row 0"),
    ],
)
def test_bad_frames_are_refused_naming_the_column(frame: pl.DataFrame, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        JointForest().score(frame)


def test_a_model_refuses_other_columns_than_it_learned() -> None:
    model = JointForest().fit(host(days=1))
    with pytest.raises(ValidationError, match=r"knows \['cpu', 'requests'\]"):
        model.score(host(days=1).rename({"requests": "memory"}))


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"train_points": 5}, "train_points"),
        ({"trees": 0}, "trees"),
        ({"refit_seconds": 0}, "refit_seconds"),
        ({"hold_seconds": -1}, "hold_seconds"),
    ],
)
def test_bad_parameters_are_refused(params: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        JointForest(**params)  # type: ignore[arg-type]
