"""Collect key events from audit logs: read what is new, count each event once, update inventory and policy.

One run of :func:`collect_key_events` for one source (``cloudtrail`` or
``vault``):

1. under the collectors' lock, deliver any outbox batch a killed run left
   (skipping samples the lake already holds);
2. read every file from its saved position (:class:`~tasks.collect.key_events.KeyEventSource`);
3. per chunk of events, in one SQLite transaction: claim the event ids (a
   duplicate — a re-delivered file, a re-read — is counted as such and
   skipped), apply the events to the inventory in time order, check the
   policies, turn events and violations into counter samples, save file
   positions and put the samples in the outbox;
4. write the samples to the lake (durable when acknowledged) and clear the outbox.

The last chunk also checks the whole estate (overdue rotations, forbidden
algorithms), writes the inventory gauges and forgets event ids collected
more than the retention period ago.
"""

from __future__ import annotations

import contextlib
import gc
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from metrics.errors import ConfigError
from metrics.model import canonical_tags, series_id
from metrics.pii import Pseudonymiser
from metrics.settings import Settings
from storage.anomalies import anomaly_frame, write_anomalies
from storage.store import MetricStore
from tasks.collect.cloudtrail import CloudTrailSource
from tasks.collect.key_events import USE_KINDS, FileRead, KeyEvent, KeyEventSource, LogProblem, file_identity
from tasks.collect.vault import VaultAuditSource
from tasks.keys import counters, inventory, policy
from tasks.keys.ledger import US_PER_DAY, KeyLedger, event_hash

SOURCES = ("cloudtrail", "vault")
CHUNK_EVENTS = 200_000  # events per transaction and lake write (bounds memory on a large backlog)
MAX_PROBLEMS = 100  # problems listed in a summary (all are counted)
NOVELTY_DETECTOR = "key_novelty"
NOVELTY_GRACE_DAYS = 7  # a key this young meets its callers for the first time: nothing is novel yet
DORMANT_DAYS = 60  # a use after this long without one is unusual
NOVELTY_SCORES = {"principal": 1.0, "region": 1.0, "source_ip": 0.8}  # addresses change more often


def key_source(settings: Settings, name: str, paths: Sequence[Path | str] | None = None) -> KeyEventSource:
    """The source ``name`` over ``paths`` (default: the configured paths of that source)."""
    if name == "cloudtrail":
        return CloudTrailSource(settings.cloudtrail_paths if paths is None else paths)
    if name == "vault":
        return VaultAuditSource(settings.vault_audit_paths if paths is None else paths, settings.vault_transit_mounts)
    raise ConfigError(f"unknown key-event source {name!r}; known: {', '.join(SOURCES)}")


def key_policy(settings: Settings) -> policy.KeyPolicy:
    """The key policies of ``settings`` (``key_policy`` in main.json, ``METRICS_KEY_*``)."""
    return policy.KeyPolicy(
        max_rotation_days=settings.key_max_rotation_days,
        forbidden_algorithms=settings.key_forbidden_algorithms,
        allowed_principals=settings.key_allowed_principals,
        forbid_disabled_use=settings.key_forbid_disabled_use,
    )


@dataclass
class KeyCollectionSummary:
    """What one collection run did."""

    source: str
    files: int = 0
    records: int = 0
    events: int = 0  # new events counted
    duplicates: int = 0  # events seen before (re-delivered or re-read), skipped
    problems: int = 0
    problem_list: list[str] = field(default_factory=list)
    keys_seen: int = 0  # keys named by this run's events
    keys_total: int = 0  # keys in the inventory
    new_access: int = 0  # principals, addresses and regions seen for the first time on a key
    violations: int = 0  # policy violations counted
    access_anomalies: int = 0  # new principals, addresses or regions of established keys; uses after dormancy
    samples: int = 0  # samples written to the lake
    rejected: int = 0  # samples the lake refused (reasons in rejection_list)
    rejection_list: list[str] = field(default_factory=list)
    recovered: int = 0  # samples of an interrupted run delivered now
    seconds: float = 0.0
    parse_seconds: float = 0.0

    @property
    def events_per_second(self) -> float:
        """New events per second of the whole run."""
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def add_problems(self, problems: Sequence[LogProblem]) -> None:
        """Count problems and keep the first :data:`MAX_PROBLEMS` as text."""
        self.problems += len(problems)
        room = MAX_PROBLEMS - len(self.problem_list)
        self.problem_list.extend(str(problem) for problem in problems[: max(room, 0)])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {**asdict(self), "events_per_second": round(self.events_per_second, 1)}


class _Run:
    """One collection run's shared context: settings, lake, ledger, policy, pseudonymiser and clock."""

    def __init__(
        self, settings: Settings, store: MetricStore, ledger: KeyLedger, summary: KeyCollectionSummary
    ) -> None:
        self.settings, self.store, self.ledger, self.summary = settings, store, ledger, summary
        self.policy = key_policy(settings)
        self.pii = Pseudonymiser.from_settings(settings)
        self.now_us = time.time_ns() // 1_000
        self.step_us = round(settings.security_interval * 1_000_000)
        self.oldest_us = self.now_us - settings.retention_days * US_PER_DAY
        self.newest_us = self.now_us + settings.max_future_seconds * 1_000_000
        self.keys_seen: set[str] = set()

    def pseudonym(self, tag: str, value: str) -> str:
        """What is stored for a tag's value: its pseudonym when the tag is PII."""
        return self.pii.tags({tag: value})[tag]

    def commit(self, source: str, reads: Sequence[FileRead], *, final: bool) -> None:
        """Count a chunk of reads exactly once and write its samples (see the module's steps 3 and 4)."""
        events: list[KeyEvent] = []
        for read in reads:
            self.summary.add_problems(read.problems)
            self.summary.records += read.records
            for event in read.events:
                if event.time_us > self.newest_us:
                    self.summary.add_problems(
                        [LogProblem(str(read.path), 0, f"event {event.event_id} is in the future: skipped")]
                    )
                else:
                    events.append(event)
        events.sort(key=lambda e: e.time_us)
        day = self.now_us // US_PER_DAY
        with self.ledger.transaction() as connection:
            fresh_flags = self.ledger.claim(connection, [event_hash(e.source, e.event_id) for e in events], day)
            fresh = [event for event, new in zip(events, fresh_flags, strict=True) if new]
            self.summary.duplicates += len(events) - len(fresh)
            self.summary.events += len(fresh)
            refs = {event.key_ref for event in fresh if event.key_ref is not None}
            self.keys_seen |= refs
            records = inventory.load(connection, None if final else refs)
            last_use = {ref: record.last_used_at for ref, record in records.items()}
            first_seen = {ref: record.first_seen for ref, record in records.items()}
            before = inventory.apply_events(records, fresh)
            # Events older than the retention period teach the inventory but count nowhere else: the lake
            # could not store their samples, and their ids are forgotten after a retention period.
            recent = [i for i, event in enumerate(fresh) if event.time_us >= self.oldest_us]
            counted_events = [fresh[i] for i in recent]
            counted_before = [before[i] for i in recent]
            found = [
                violation
                for event, state in zip(counted_events, counted_before, strict=True)
                for violation in policy.check_event(
                    self.policy, event, records.get(event.key_ref or ""), state, self.pseudonym
                )
            ]
            estate = [record for record in records.values() if record.source == source] if final else []
            found += policy.check_estate(self.policy, estate, self.now_us)
            counted = policy.record_violations(connection, found, checked_keys=[r.key_ref for r in estate])
            self.summary.violations += len(counted)
            frame = self._counter_samples(connection, counted_events, counted_before, records, counted, final=final)
            if final:
                frame = pl.concat([frame, counters.gauge_frame(estate, self.now_us)])
            new_access = inventory.record_access(connection, self._access_rows(fresh))
            self.summary.new_access += len(new_access)
            unusual = access_anomalies(
                records, first_seen, last_use, new_access, counted_events, self.oldest_us, self.now_us
            )
            self.summary.access_anomalies += unusual.height
            inventory.save(connection, [records[ref] for ref in refs])  # the estate check changes no record
            self.ledger.save_positions(connection, source, [read.position for read in reads if read.position.head])
            if final:
                self.ledger.prune_seen(connection, day - self.settings.retention_days)
                self.summary.keys_total = len(records)
            outbox = self.ledger.put_outbox(connection, frame, unusual) if frame.height or unusual.height else None
        if outbox is not None:
            self.deliver(outbox, frame, unusual)

    def _counter_samples(
        self,
        connection: Any,
        fresh: Sequence[KeyEvent],
        before: Sequence[str | None],
        records: dict[str, inventory.KeyRecord],
        counted: Sequence[policy.Violation],
        *,
        final: bool,
    ) -> pl.DataFrame:
        """Counter samples of new events and violations.

        A chunk before the last writes no sample for the current bucket (a later chunk may add to it);
        the last one writes it, and writes what earlier runs held back for a bucket that has now begun.
        """
        increments = counters.increments(
            fresh, before, records, counted, step_us=self.step_us, now_us=self.now_us, pseudonym=self.pseudonym
        )
        current = self.now_us - self.now_us % self.step_us
        publish_until = current if final else current - self.step_us
        if final:  # a series with no new event may still owe counts held for a bucket now begun
            for name in self.ledger.held(connection):
                increments.setdefault(counters.split_series_name(name), {})
        names = {key: counters.series_name(*key) for key in increments}
        states = self.ledger.counters(connection, names.values())
        rows: list[tuple[str, str, int, float]] = []
        saved: list[tuple[str, float, int | None, float, int | None]] = []
        for key, counts in increments.items():
            samples, state = counters.advance(
                counts,
                states.get(names[key]),
                step_us=self.step_us,
                publish_until_us=publish_until,
                oldest_us=self.oldest_us,
            )
            rows.extend((key[0], key[1], stamp, total) for stamp, total in samples)
            saved.append((names[key], *state))
        self.ledger.save_counters(connection, saved)
        return counters.counter_frame(rows)

    def _access_rows(self, fresh: Sequence[KeyEvent]) -> list[tuple[str, str, str, int, int, int]]:
        """(key, dimension, stored value, first, last, count) of who used which key from where."""
        columns: dict[str, list[Any]] = {"key_ref": [], "time_us": [], **{d: [] for d in inventory.ACCESS_DIMENSIONS}}
        for event in fresh:
            if event.key_ref is not None:
                columns["key_ref"].append(event.key_ref)
                columns["time_us"].append(event.time_us)
                for dimension in inventory.ACCESS_DIMENSIONS:
                    columns[dimension].append(getattr(event, dimension))
        frame = pl.DataFrame(
            columns,
            schema={"key_ref": pl.String, "time_us": pl.Int64, **dict.fromkeys(inventory.ACCESS_DIMENSIONS, pl.String)},
        )
        seen = (
            frame.unpivot(inventory.ACCESS_DIMENSIONS, index=["key_ref", "time_us"], variable_name="dimension")
            .drop_nulls("value")
            .group_by("key_ref", "dimension", "value")
            .agg(pl.col("time_us").min().alias("first"), pl.col("time_us").max().alias("last"), pl.len().alias("n"))
        )
        return [
            (ref, dimension, self.pseudonym(dimension, value), first, last, count)
            for ref, dimension, value, first, last, count in seen.iter_rows()
        ]

    def deliver(
        self, outbox: int, frame: pl.DataFrame, unusual: pl.DataFrame | None = None, *, skip_existing: bool = False
    ) -> None:
        """Write an outbox batch to the lake (optionally only what it lacks), then forget the batch.

        Key-access anomalies go to the ``anomalies`` table; written twice after a crash, readers keep one.
        """
        if unusual is not None and unusual.height:
            write_anomalies(self.store, unusual)
        if skip_existing:
            frame = self._missing(frame)
            self.summary.recovered += frame.height
        if frame.height:
            result = self.store.ingest_frame(frame)
            self.store.flush()
            self.summary.samples += result.stored
            self.summary.rejected += len(result.rejected)
            room = MAX_PROBLEMS - len(self.summary.rejection_list)
            self.summary.rejection_list += [
                f"{frame['metric'][r.index]}: {r.reason}" for r in result.rejected[: max(room, 0)]
            ]
        self.ledger.done(outbox)

    def _missing(self, frame: pl.DataFrame) -> pl.DataFrame:
        """The rows of ``frame`` whose (series, ts) the lake does not hold yet."""
        ids = [
            series_id(metric, self.pii.text(canonical_tags(json.loads(tags))))
            for metric, tags in zip(frame["metric"], frame["tags"], strict=True)
        ]
        frame = frame.with_columns(pl.Series("series_id", ids, dtype=pl.Int64))
        low, high = frame["ts"].min(), frame["ts"].max()
        existing = self.store.sql(
            "SELECT series_id, ts FROM samples WHERE ts >= ? AND ts <= ? AND series_id IN (SELECT unnest(?))",
            [low, high, sorted(set(ids))],
        )
        if existing.height == 0:
            return frame.drop("series_id")
        existing = existing.with_columns(pl.col("ts").dt.convert_time_zone("UTC"))
        return frame.join(existing, on=["series_id", "ts"], how="anti").drop("series_id")


def access_anomalies(
    records: dict[str, inventory.KeyRecord],
    first_seen: dict[str, int],
    last_use: dict[str, int | None],
    new_access: Sequence[tuple[str, str, str, int, int, int]],
    events: Sequence[KeyEvent],
    oldest_us: int,
    now_us: int,
) -> pl.DataFrame:
    """Key-access novelty as ``anomalies`` rows (detector ``key_novelty``).

    - a principal, region or source address never seen for a key that has been in use for at least
      :data:`NOVELTY_GRACE_DAYS` (a new key meets its callers for the first time);
    - a key used again after :data:`DORMANT_DAYS` or more without use.

    Args:
        records: the inventory after the chunk.
        first_seen, last_use: each key's first sighting and last use before the chunk.
        new_access: (key, dimension, stored value, first, last, count) never seen before.
        events: the chunk's counted events, in time order.
        oldest_us, now_us: the retention period's start, and now.
    """
    rows: list[tuple[Any, ...]] = []
    grace = NOVELTY_GRACE_DAYS * US_PER_DAY
    for ref, dimension, value, first, _last, _count in new_access:
        record = records.get(ref)
        known_since = first_seen.get(ref)
        if record is None or known_since is None or first - known_since < grace or first < oldest_us:
            continue
        tags = {**record.tags(), "novel": dimension, dimension: value}
        rows.append(_novelty_row(record, first, NOVELTY_SCORES[dimension], tags))
    dormant = DORMANT_DAYS * US_PER_DAY
    latest = dict(last_use)
    for event in events:
        if event.key_ref is None or not event.succeeded or event.kind not in USE_KINDS:
            continue
        previous = latest.get(event.key_ref)
        record = records.get(event.key_ref)
        if previous and record is not None and event.time_us - previous >= dormant:
            idle = (event.time_us - previous) // US_PER_DAY
            rows.append(_novelty_row(record, event.time_us, 1.0, {**record.tags(), "novel": f"use after {idle} days"}))
        latest[event.key_ref] = max(previous or 0, event.time_us)
    return anomaly_frame(rows, datetime.fromtimestamp(now_us / 1e6, UTC))


def _novelty_row(record: inventory.KeyRecord, time_us: int, score: float, tags: dict[str, str]) -> tuple[Any, ...]:
    key_tags = canonical_tags(record.tags())
    return (
        f"{counters.PREFIX}access_count",
        series_id(f"{counters.PREFIX}access_count", key_tags),
        time_us,
        canonical_tags(tags),
        1.0,
        score,
        True,
        NOVELTY_DETECTOR,
        "",
    )


def collect_key_events(
    settings: Settings,
    source: str | KeyEventSource,
    paths: Sequence[Path | str] | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> KeyCollectionSummary:
    """Read new events of one source, count each exactly once, and store the key metrics.

    Args:
        settings: the data directory, interval, retention, policies and the source's configured paths.
        source: ``cloudtrail``, ``vault`` or a source object.
        paths: files or folders to read instead of the configured ones.
        progress: called with (files done, files in all) after each file.
    """
    started = time.perf_counter()
    reader = key_source(settings, source, paths) if isinstance(source, str) else source
    collecting = gc.isenabled()
    gc.disable()  # millions of short-lived event objects and no cycles: the cyclic collector only costs time
    try:
        return _collect(settings, reader, progress, started)
    finally:
        if collecting:
            gc.enable()


def _collect(
    settings: Settings, reader: KeyEventSource, progress: Callable[[int, int], None] | None, started: float
) -> KeyCollectionSummary:
    summary = KeyCollectionSummary(source=reader.name)
    ledger = KeyLedger(settings.state_dir)
    with ledger.exclusive():
        store = MetricStore(settings).open(background_flush=False)
        try:
            run = _Run(settings, store, ledger, summary)
            for outbox, frame, unusual in ledger.pending():  # a run killed between commit and delivery
                run.deliver(outbox, frame, unusual, skip_existing=True)
            with ledger.transaction() as connection:
                positions = ledger.positions(connection, reader.name)
            files = reader.files()
            batch: list[FileRead] = []
            pending_events = 0
            identities: set[str] = set()
            parse_clock = time.perf_counter()
            for done, path in enumerate(files, start=1):
                with contextlib.suppress(OSError):  # gone since it was listed: read_file reports it
                    identities.add(file_identity(path.stat()))
                for read in reader.read_file(path, positions):
                    identities.add(read.position.identity)
                    batch.append(read)
                    pending_events += len(read.events)
                    if pending_events >= CHUNK_EVENTS:
                        summary.parse_seconds += time.perf_counter() - parse_clock
                        run.commit(reader.name, batch, final=False)
                        batch, pending_events, parse_clock = [], 0, time.perf_counter()
                if progress is not None:
                    progress(done, len(files))
            summary.parse_seconds += time.perf_counter() - parse_clock
            run.commit(reader.name, batch, final=True)
            with ledger.transaction() as connection:
                ledger.forget_files(connection, reader.name, reader.paths, identities)
            summary.files = len(identities)
            summary.keys_seen = len(run.keys_seen)
        finally:
            store.close()
    summary.seconds = time.perf_counter() - started
    return summary


@task(
    name="collect-key-events",
    retries=2,
    retry_delay_seconds=exponential_backoff(backoff_factor=5),
    cache_policy=NO_CACHE,
)
def collect_key_events_task(settings: Settings, source: str, paths: list[str] | None = None) -> KeyCollectionSummary:
    """Prefect task: one collection of ``source`` (a retry re-reads from the saved positions: nothing twice)."""
    return collect_key_events(settings, source, paths)
