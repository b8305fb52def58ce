"""The query engine's cache of rollup partials: a long range's closed past is read from Parquet once.

A 30-day chart reads a month of hourly rollups, one file per day, and the
per-file cost of Parquet dominates it (30 small files take 3–4× one file's
time). Those rows never change: a rollup file is written once under its
compacted generation's name, and a re-compaction writes a new name. So the
rollup part of an aggregation, keyed by its exact SQL (file paths included)
and parameters, can be kept as an Arrow table and scanned from memory by the
next request for the same panel: what Prometheus' and Thanos' query
frontends do with results over closed time. The raw tail after the last full
hour is always read fresh. An entry ages out when the range moves on (the
start moves with the step, the tail every hour) or the files change;
entries are evicted least recently used beyond ``max_rows`` rows (or
:data:`MAX_ENTRIES` entries: empty parts are kept too), and a part larger
than that is read without being kept.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

Key = tuple[str, tuple[Any, ...]]
MAX_ENTRIES = 4096


@dataclass(frozen=True)
class CacheStats:
    """How a cache has done since it was made."""

    hits: int
    misses: int
    entries: int
    rows: int


class RollupCache:
    """Rollup partials by (SQL, parameters), least recently used out beyond ``max_rows`` rows; thread-safe."""

    def __init__(self, max_rows: int) -> None:
        """Keep at most ``max_rows`` rows in all (``METRICS_QUERY_CACHE_ROWS``; 0 keeps nothing)."""
        if max_rows < 0:
            raise ValueError(f"max_rows: {max_rows!r} must be >= 0")
        self.max_rows = max_rows
        self._entries: OrderedDict[Key, pa.Table] = OrderedDict()
        self._rows = 0
        self._hits = self._misses = 0
        self._lock = threading.Lock()

    def table(self, text: str, params: Sequence[Any], run: Callable[[str, list[Any]], pa.Table]) -> pa.Table:
        """The rows of ``text`` with ``params``: kept from an earlier call, or ``run`` now (and kept if they fit)."""
        key: Key = (text, tuple(params))
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                self._hits += 1
                return found
            self._misses += 1
        table = run(text, list(params))
        if self.max_rows and table.num_rows <= self.max_rows:
            with self._lock:
                if key not in self._entries:
                    self._entries[key] = table
                    self._rows += table.num_rows
                while self._rows > self.max_rows or len(self._entries) > MAX_ENTRIES:
                    _, evicted = self._entries.popitem(last=False)
                    self._rows -= evicted.num_rows
        return table

    def clear(self) -> None:
        """Forget every entry."""
        with self._lock:
            self._entries.clear()
            self._rows = 0

    def stats(self) -> CacheStats:
        """Hits, misses, entries and rows kept."""
        with self._lock:
            return CacheStats(self._hits, self._misses, len(self._entries), self._rows)
