"""Running one function over many jobs in spawned worker processes, in order, with progress.

Processes are spawned, not forked: a fork of a process whose polars thread
pool has run can deadlock. One job (or one worker) runs in this process,
which saves a process start-up (about a second: numpy, pandas, scikit-learn).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


def workers_for(count: int, workers: int | None = None) -> int:
    """Processes to use for ``count`` jobs: one per core by default (``workers`` None or 0), never more than jobs."""
    return max(1, min(count, workers or os.cpu_count() or 1))


def parallel_map(
    function: Callable[[Any], T],
    jobs: Sequence[Any],
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    cost: Callable[[Any], float] | None = None,
) -> list[T]:
    """``function`` over ``jobs`` in processes, results in the jobs' order, reporting (done, all) after each.

    With ``cost`` (an estimate per job), the costliest jobs start first, so no worker is left with
    a long one at the end while the others idle.
    """
    order = sorted(range(len(jobs)), key=lambda i: -cost(jobs[i])) if cost else list(range(len(jobs)))
    results: dict[int, T] = {}
    count = workers_for(len(jobs), workers)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=count, mp_context=context) if count > 1 else _InProcess() as pool:
        for index, result in zip(order, pool.map(function, [jobs[i] for i in order]), strict=True):
            results[index] = result
            if progress is not None:
                progress(len(results), len(jobs))
    return [results[i] for i in range(len(jobs))]


class _InProcess:
    """One worker: run here (no process start-up for a single file)."""

    def __enter__(self) -> _InProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def map(self, function: Callable[[Any], T], jobs: Sequence[Any]) -> Iterator[T]:
        return map(function, jobs)
