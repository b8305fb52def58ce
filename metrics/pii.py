"""PII protection: the values of sensitive tags are replaced by keyed hashes before anything is stored.

Tags named in ``METRICS_PII_TAGS`` (default ``user, principal, source_ip,
caller``) get ``hmac-sha256:<16 hex digits>`` instead of their value, keyed
with ``METRICS_PII_SECRET`` or, when that is unset, a random secret generated
once in ``data/state/pii.key`` (mode 0600). The same value always gives the
same pseudonym (series stay series, group-by still works), the raw value
never reaches the write-ahead log or the lake, and a value already carrying
the prefix is left alone (pseudonymising twice changes nothing).

:class:`storage.store.MetricStore` applies :class:`Pseudonymiser` to every
validated batch before it is written (HTTP JSON, remote write, CLI ingest,
the Python API and the collectors all go through it), recomputing the
``series_id`` of rewritten series, and to the tag filters of queries (so
``--tag user=alice`` still finds alice's series).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, overload

import numpy as np
import polars as pl

from metrics.errors import ConfigError
from metrics.model import SampleBatch, canonical_tags, series_id
from metrics.settings import Settings

PREFIX = "hmac-sha256:"
PII_KEY_FILE = "pii.key"
HEX_DIGITS = 16
MAX_REMEMBERED = 100_000  # canonical tag texts remembered with their pseudonymised form

T = TypeVar("T")


def load_secret(settings: Settings) -> bytes:
    """The HMAC key: ``METRICS_PII_SECRET``, else ``state/pii.key`` (created once, 0600, 32 random bytes)."""
    if settings.pii_secret:
        return settings.pii_secret.encode()
    path = settings.state_dir / PII_KEY_FILE
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{PII_KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(secrets.token_hex(32) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):  # another process made it first: use theirs
            os.link(temporary, path)  # atomic, and never replaces an existing key
    except OSError as exc:
        raise ConfigError(f"{path}: cannot create the PII key: {exc.strerror or exc}") from None
    finally:
        temporary.unlink(missing_ok=True)
    return _read_key(path)


def _read_key(path: Path) -> bytes:
    text = path.read_text(encoding="ascii").strip()
    if len(text) < 32:
        raise ConfigError(f"{path}: the PII key is too short; delete it only if no data was stored with it")
    return text.encode()


def pseudonym(value: str, secret: bytes) -> str:
    """``hmac-sha256:<16 hex>`` of ``value`` (values already in that form are returned unchanged)."""
    if value.startswith(PREFIX):
        return value
    digest = hmac.new(secret, value.encode(), hashlib.sha256).hexdigest()
    return PREFIX + digest[:HEX_DIGITS]


class Pseudonymiser:
    """Replaces the values of PII tags in tag sets, tag texts, filters and sample batches."""

    def __init__(self, keys: Iterable[str], secret: bytes | None = None, *, settings: Settings | None = None) -> None:
        """A pseudonymiser of the tags named ``keys``.

        Args:
            keys: the tag names whose values are personal data.
            secret: the HMAC key; when None it is loaded from ``settings`` on first need
                (so stores that never see a PII tag never create ``pii.key``).
            settings: where to find the secret when ``secret`` is None.
        """
        self.keys = frozenset(keys)
        if secret is None and settings is None and self.keys:
            raise ConfigError("pseudonymiser: give a secret or settings to load it from")
        self._secret = secret
        self._settings = settings
        # Substrings of a canonical tag text that may carry a PII tag: a cheap pre-check before parsing.
        self._needles = tuple(json.dumps(key) + ":" for key in sorted(self.keys))
        self._texts: dict[str, str] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> Pseudonymiser:
        """The pseudonymiser of ``settings.pii_tags`` (the secret loads lazily)."""
        return cls(settings.pii_tags, settings=settings)

    @property
    def secret(self) -> bytes:
        """The HMAC key (loaded or created on first use)."""
        if self._secret is None:
            assert self._settings is not None
            self._secret = load_secret(self._settings)
        return self._secret

    def tags(self, tags: Mapping[str, str]) -> dict[str, str]:
        """A copy of ``tags`` with every PII value replaced."""
        return {k: pseudonym(v, self.secret) if k in self.keys and isinstance(v, str) else v for k, v in tags.items()}

    def filters(self, tags: Mapping[str, str | Sequence[str]] | None) -> Mapping[str, str | Sequence[str]] | None:
        """A query's tag filter with PII values replaced, so filtering by the raw value finds the series."""
        if not tags or not self.keys.intersection(tags):
            return tags
        out: dict[str, str | Sequence[str]] = {}
        for key, value in tags.items():
            if key not in self.keys:
                out[key] = value
            elif isinstance(value, str):
                out[key] = pseudonym(value, self.secret)
            else:
                out[key] = [pseudonym(v, self.secret) for v in value]
        return out

    def text(self, canonical: str) -> str:
        """A canonical tag text (compact JSON, sorted keys) with PII values replaced; unchanged when it has none."""
        if not any(needle in canonical for needle in self._needles):
            return canonical
        known = self._texts.get(canonical)
        if known is None:
            known = canonical_tags(self.tags(json.loads(canonical)))
            if len(self._texts) >= MAX_REMEMBERED:
                self._texts.clear()
            self._texts[canonical] = known
        return known

    def frame(self, frame: pl.DataFrame) -> pl.DataFrame:
        """A lake-shaped sample frame (``metric``, ``series_id``, ``tags`` …) with PII replaced and ids recomputed.

        Rewritten rows are re-sorted into lake order (metric, series_id, ts); column types are kept.
        A frame without PII tags is returned as it is (one scan of its distinct tag texts). The work
        per series runs once per distinct ``series_id`` (which stands for one metric and tag set);
        rows are only joined and sorted on integers.
        """
        if not self.keys or frame.height == 0:
            return frame
        texts = frame.get_column("tags").unique().cast(pl.String)
        # One vectorised scan for the PII keys; only texts holding one are parsed and rewritten.
        candidates = texts.filter(texts.str.contains_any(list(self._needles))).to_list()
        changed = {text: new for text in candidates if (new := self.text(text)) != text}
        if not changed:
            return frame
        ids = frame.get_column("series_id").to_numpy()
        starts = np.flatnonzero(np.concatenate(([True], ids[1:] != ids[:-1])))
        run_ids = ids[starts]
        if len(np.unique(run_ids)) != len(run_ids):  # not grouped by series (never from validate_frame)
            return self._rewrite_by_sorting(frame, changed)
        lengths = np.diff(np.append(starts, len(ids)))
        metrics = frame.get_column("metric").gather(starts).cast(pl.String).to_list()
        old_texts = frame.get_column("tags").gather(starts).cast(pl.String).to_list()
        new_texts = [changed.get(text, text) for text in old_texts]
        new_ids = [
            series_id(metric, new) if new != old else int(sid)
            for sid, metric, old, new in zip(run_ids, metrics, old_texts, new_texts, strict=True)
        ]
        order = np.array(sorted(range(len(new_ids)), key=lambda i: (metrics[i], new_ids[i])), dtype=np.int64)
        # Rows of each run keep their (ts) order; runs move as wholes into the new series order.
        ordered_lengths = lengths[order]
        offsets = np.cumsum(ordered_lengths) - ordered_lengths
        rows = np.arange(len(ids), dtype=np.int64) + np.repeat(starts[order] - offsets, ordered_lengths)
        run_of_row = pl.Series(np.repeat(np.arange(len(order)), ordered_lengths))
        new_tags = pl.Series("tags", [new_texts[i] for i in order], dtype=pl.String).cast(frame.schema["tags"])
        rewritten = frame[pl.Series(rows)].with_columns(
            pl.Series("series_id", np.asarray(new_ids, dtype=np.int64)[order]).gather(run_of_row),
            new_tags.gather(run_of_row),
        )
        return rewritten.select(frame.columns).cast(frame.schema)

    def _rewrite_by_sorting(self, frame: pl.DataFrame, changed: Mapping[str, str]) -> pl.DataFrame:
        """The general (slower) rewrite, for frames whose series are not contiguous runs."""
        per_series = frame.group_by("series_id").agg(pl.col("metric").first(), pl.col("tags").first())
        old_ids = per_series.get_column("series_id").to_list()
        metrics = per_series.get_column("metric").cast(pl.String).to_list()
        old_texts = per_series.get_column("tags").cast(pl.String).to_list()
        new_texts = [changed.get(text, text) for text in old_texts]
        new_ids = [
            series_id(metric, new) if new != old else sid
            for sid, metric, old, new in zip(old_ids, metrics, old_texts, new_texts, strict=True)
        ]
        order = sorted(range(len(new_ids)), key=lambda i: (metrics[i], new_ids[i]))
        rank = np.empty(len(order), dtype=np.uint32)
        rank[order] = np.arange(len(order), dtype=np.uint32)
        lookup = pl.DataFrame(
            {
                "series_id": pl.Series(old_ids, dtype=pl.Int64),
                "_id": pl.Series(new_ids, dtype=pl.Int64),
                "_tags": pl.Series(new_texts, dtype=pl.String).cast(frame.schema["tags"]),
                "_rank": pl.Series(rank),
            }
        )
        rewritten = (
            frame.join(lookup, on="series_id", how="left")
            .sort("_rank", "ts")
            .with_columns(pl.col("_id").alias("series_id"), pl.col("_tags").alias("tags"))
        )
        return rewritten.select(frame.columns).cast(frame.schema)

    def batch(self, batch: SampleBatch) -> SampleBatch:
        """A validated batch with its frame pseudonymised (rejections unchanged: they never carry tag values)."""
        frame = self.frame(batch.frame)
        return batch if frame is batch.frame else SampleBatch(frame=frame, rejected=batch.rejected)


@overload
def pseudonymise(frame_or_tags: pl.DataFrame, keys: Iterable[str], secret: bytes) -> pl.DataFrame: ...
@overload
def pseudonymise(frame_or_tags: SampleBatch, keys: Iterable[str], secret: bytes) -> SampleBatch: ...
@overload
def pseudonymise(frame_or_tags: Mapping[str, str], keys: Iterable[str], secret: bytes) -> dict[str, str]: ...
def pseudonymise(frame_or_tags: Any, keys: Iterable[str], secret: bytes) -> Any:
    """Replace the values of the tags named ``keys`` by ``hmac-sha256:<hex16>`` pseudonyms keyed with ``secret``.

    Args:
        frame_or_tags: a tag mapping, a lake-shaped sample frame (``series_id`` is recomputed
            for rewritten series), or a :class:`~metrics.model.SampleBatch`.
        keys: the PII tag names (``settings.pii_tags``).
        secret: the HMAC key (:func:`load_secret`).
    """
    worker = Pseudonymiser(keys, secret)
    if isinstance(frame_or_tags, SampleBatch):
        return worker.batch(frame_or_tags)
    if isinstance(frame_or_tags, pl.DataFrame):
        return worker.frame(frame_or_tags)
    if isinstance(frame_or_tags, Mapping):
        return worker.tags(frame_or_tags)
    raise TypeError(f"pseudonymise: expected tags, a sample frame or a batch, got {type(frame_or_tags).__name__}")
