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
entries are evicted least recently used beyond ``max_bytes`` (their Arrow
buffers and key text; or :data:`MAX_ENTRIES` entries: empty parts are kept
too), and a part larger than that is read without being kept. A part that
joins the series catalog is also keyed by the catalog's version.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

Key = tuple[str, tuple[Any, ...], tuple[Any, ...]]
MAX_ENTRIES = 4096


@dataclass(frozen=True)
class CacheStats:
    """How a cache has done since it was made."""

    hits: int
    misses: int
    entries: int
    bytes: int


def entry_bytes(text: str, table: pa.Table) -> int:
    """What keeping ``table`` under the key ``text`` costs: its Arrow buffers and the key's text."""
    return int(table.nbytes) + len(text)


class RollupCache:
    """Query parts by (SQL, parameters, version), least recently used out beyond ``max_bytes``; thread-safe."""

    def __init__(self, max_bytes: int) -> None:
        """Keep at most ``max_bytes`` in all (``METRICS_QUERY_CACHE_MB``; 0 keeps nothing)."""
        if max_bytes < 0:
            raise ValueError(f"max_bytes: {max_bytes!r} must be >= 0")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Key, tuple[pa.Table, int]] = OrderedDict()
        self._bytes = 0
        self._hits = self._misses = 0
        self._lock = threading.Lock()

    def table(
        self,
        text: str,
        params: Sequence[Any],
        run: Callable[[str, list[Any]], pa.Table],
        version: tuple[Any, ...] = (),
    ) -> pa.Table:
        """The rows of ``text`` with ``params``: kept from an earlier call, or ``run`` now (and kept if they fit).

        Args:
            text: the part's SQL, file paths included.
            params: its parameters.
            run: reads the part.
            version: what else the rows depend on (the state of a table the SQL joins).
        """
        key: Key = (text, tuple(params), version)
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                self._hits += 1
                return found[0]
            self._misses += 1
        table = run(text, list(params))
        size = entry_bytes(text, table)
        if size <= self.max_bytes:
            with self._lock:
                if key not in self._entries:
                    self._entries[key] = (table, size)
                    self._bytes += size
                while self._bytes > self.max_bytes or len(self._entries) > MAX_ENTRIES:
                    _, (_, evicted) = self._entries.popitem(last=False)
                    self._bytes -= evicted
        return table

    def clear(self) -> None:
        """Forget every entry."""
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def stats(self) -> CacheStats:
        """Hits, misses, entries and bytes kept."""
        with self._lock:
            return CacheStats(self._hits, self._misses, len(self._entries), self._bytes)
