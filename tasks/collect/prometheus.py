"""Prometheus scrape collector: read targets' text exposition over HTTP and store the samples.

A target is a URL (``http://host:port/metrics``), optionally with a job name
(``job=http://…``, the form ``METRICS_SCRAPE_TARGETS`` takes), extra target
labels and a bearer token. Each scrape sends ``Accept: text/plain;version=0.0.4``
and parses the answer with ``prometheus_client``'s parser (OpenMetrics when the
target answers in it).

Mapping to samples, as Prometheus stores them:

- metric = the sample's name (``http_requests_total``, ``x_bucket`` with its
  ``le`` tag, ``x_count``, ``x_sum``, a summary's quantiles with ``quantile``);
- type: counter → counter, gauge → gauge, every sample of a histogram →
  histogram, of a summary → summary (so a quantile without observations may
  be NaN), untyped → gauge;
- tags = the sample's labels (empty values dropped: in Prometheus an empty
  label is no label) plus the target labels ``job`` and ``instance``
  (``host:port``) and the target's extra labels. On a conflict
  ``honor_labels=True`` keeps the scraped value and ``False`` keeps the target's
  and renames the scraped label to ``exported_<name>``;
- ts = the sample's own timestamp when it has one, else the scrape's start.

Per target the scrape also records ``up`` (1/0), ``scrape_duration_seconds`` and
``scrape_samples_scraped`` with the target labels. A target that fails
(unreachable, HTTP error, timeout, oversized or unparseable body) gives ``up``
0 and an error in the summary, and none of its samples: it never raises, so
the other targets are stored as usual.
"""

from __future__ import annotations

import bisect
import json
import re
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple
from urllib.parse import urlsplit, urlunsplit

import httpx
import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from metrics.errors import ConfigError, ScrapeError
from metrics.model import TAG_KEY_RE, MetricType
from metrics.settings import Settings, split_scrape_target
from storage.store import MetricStore

DEFAULT_JOB = "scrape"
ACCEPT = "text/plain;version=0.0.4,*/*;q=0.1"
USER_AGENT = "metrics-system-scraper/1"
MAX_BODY_BYTES = 64 * 1024 * 1024  # a target answering more than this is down (Prometheus' body_size_limit)
MAX_PARALLEL = 16  # targets scraped at once
_META_ROWS = 3  # up, scrape_duration_seconds, scrape_samples_scraped
_TYPES = {
    "counter": MetricType.COUNTER,
    "gauge": MetricType.GAUGE,
    "histogram": MetricType.HISTOGRAM,
    "gaugehistogram": MetricType.HISTOGRAM,
    "summary": MetricType.SUMMARY,
}  # untyped / unknown, info and stateset are gauges
# Counters declared without the ``_total`` suffix: the parser appends it, Prometheus keeps the name as exposed.
_BARE_COUNTER_RE = re.compile(r"^[ \t]*#[ \t]+TYPE[ \t]+(\S+)[ \t]+counter[ \t]*$", re.MULTILINE)


@dataclass(frozen=True)
class ScrapeTarget:
    """One endpoint to scrape.

    Args:
        url: ``http(s)://host:port/path`` of the text exposition (user and password in the URL are sent as basic auth).
        job: the ``job`` label of every sample and of ``up``.
        honor_labels: on a conflict between a scraped label and a target label, keep the scraped one
            (otherwise the scraped one becomes ``exported_<name>``).
        labels: extra target labels added to every sample (they may also replace ``job`` or ``instance``).
        bearer_token: sent as ``Authorization: Bearer …``; never shown in ``repr`` or summaries.
    """

    url: str
    job: str = DEFAULT_JOB
    honor_labels: bool = False
    labels: Mapping[str, str] = field(default_factory=dict)
    bearer_token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        job, _ = split_scrape_target(self.url)  # raises ConfigError naming a URL that is not http(s)://host…
        if job is not None:
            raise ConfigError(f"scrape target {self.url!r}: give the job as job=, not inside the URL")
        for key, value in self.labels.items():
            if not TAG_KEY_RE.fullmatch(key) or not isinstance(value, str):
                raise ConfigError(f"scrape target {self.display_url}: label {key}={value!r} is not a valid label")

    @classmethod
    def parse(cls, text: str, *, honor_labels: bool = False, bearer_token: str | None = None) -> ScrapeTarget:
        """A target from ``job=url`` or ``url`` (job ``scrape``), as ``METRICS_SCRAPE_TARGETS`` lists them."""
        job, url = split_scrape_target(text)
        return cls(url=url, job=job or DEFAULT_JOB, honor_labels=honor_labels, bearer_token=bearer_token)

    @property
    def instance(self) -> str:
        """``host:port`` of the URL (the scheme's default port when none is given), as Prometheus' ``instance``."""
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    @property
    def display_url(self) -> str:
        """The URL without a user or password, for summaries and logs."""
        parts = urlsplit(self.url)
        netloc = parts.netloc.rpartition("@")[2]
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))

    def target_labels(self) -> dict[str, str]:
        """``job``, ``instance`` and the extra labels: what every sample of this target is tagged with."""
        return {"job": self.job, "instance": self.instance, **self.labels}


def resolve_targets(settings: Settings, targets: Sequence[ScrapeTarget | str] | None = None) -> list[ScrapeTarget]:
    """Targets from ``job=url`` strings (default ``settings.scrape_targets``) with the settings' honor_labels and token.

    Args:
        settings: where ``scrape_targets``, ``scrape_honor_labels`` and ``scrape_bearer_token`` come from.
        targets: strings to parse, or targets kept as they are; None: the configured targets.
    """
    honor, token = settings.scrape_honor_labels, settings.scrape_bearer_token
    return [
        item if isinstance(item, ScrapeTarget) else ScrapeTarget.parse(item, honor_labels=honor, bearer_token=token)
        for item in (settings.scrape_targets if targets is None else targets)
    ]


class ScrapedSample(NamedTuple):
    """One parsed sample: name, our type, its labels, its own timestamp (µs since the epoch) if any, value."""

    name: str
    type: MetricType
    labels: dict[str, str]
    timestamp_us: int | None
    value: float


def _micros(timestamp: Any) -> int | None:
    """A parser timestamp (seconds as a number, or OpenMetrics' ``Timestamp``) in whole microseconds."""
    if timestamp is None:
        return None
    if hasattr(timestamp, "nsec"):
        return int(timestamp.sec) * 1_000_000 + int(timestamp.nsec) // 1_000
    return round(float(timestamp) * 1_000_000)


def parse_exposition(text: str, *, openmetrics: bool = False) -> list[ScrapedSample]:
    """Every sample of an exposition (text format 0.0.4, or OpenMetrics); a malformed one raises :class:`ScrapeError`.

    Args:
        text: the body a target answered.
        openmetrics: parse as OpenMetrics (``application/openmetrics-text``) instead of the text format.
    """
    bare_counters = set() if openmetrics else set(_BARE_COUNTER_RE.findall(text))
    samples: list[ScrapedSample] = []
    try:
        for family in (parse_openmetrics if openmetrics else parse_text)(text):
            kind = _TYPES.get(family.type, MetricType.GAUGE)
            bare = family.type == "counter" and family.name in bare_counters
            for sample in family.samples:
                name = sample.name[: -len("_total")] if bare and sample.name.endswith("_total") else sample.name
                sample_kind = MetricType.GAUGE if name.endswith("_created") and kind != MetricType.GAUGE else kind
                samples.append(
                    ScrapedSample(
                        name, sample_kind, dict(sample.labels), _micros(sample.timestamp), float(sample.value)
                    )
                )
    except (ValueError, KeyError, IndexError) as exc:
        raise ScrapeError(f"not the Prometheus exposition format: {exc}".rstrip(": ")) from None
    return samples


def merge_labels(scraped: Mapping[str, str], target: Mapping[str, str], honor_labels: bool) -> dict[str, str]:
    """A sample's tags: its labels (empty ones dropped) and the target labels, conflicts resolved like Prometheus.

    Args:
        scraped: the labels the target exposed on the sample.
        target: the target labels (``job``, ``instance``, extra labels).
        honor_labels: keep the scraped value on a conflict; otherwise the target's wins and the scraped
            label is renamed ``exported_<name>`` (``exported_exported_<name>`` if that is taken too).
    """
    tags = {key: value for key, value in scraped.items() if value != ""}
    for key, value in target.items():
        if key in tags:
            if honor_labels:
                continue
            renamed = f"exported_{key}"
            while renamed in tags:
                renamed = f"exported_{renamed}"
            tags[renamed] = tags[key]
        tags[key] = value
    return tags


@dataclass
class TargetResult:
    """What scraping one target gave: ``samples`` parsed, ``stored`` and ``rejected`` of them, time, error."""

    url: str
    job: str
    instance: str
    up: bool
    samples: int = 0
    stored: int = 0
    rejected: int = 0
    duration_seconds: float = 0.0
    error: str | None = None
    rejection: str | None = None  # the first reason a sample was not stored

    def row(self) -> dict[str, Any]:
        """One row of the flow's artifact table."""
        return {
            "url": self.url,
            "job": self.job,
            "up": int(self.up),
            "samples": self.samples,
            "stored": self.stored,
            "rejected": self.rejected,
            "duration_s": round(self.duration_seconds, 4),
            "error": self.error or self.rejection or "",
        }


@dataclass
class ScrapeSummary:
    """One scrape of every target: per-target results, rows written (``up`` and friends included), store time."""

    targets: list[TargetResult] = field(default_factory=list)
    stored: int = 0
    rejected: int = 0
    scrape_seconds: float = 0.0
    store_seconds: float = 0.0

    @property
    def up(self) -> int:
        """Targets that answered with a valid exposition."""
        return sum(result.up for result in self.targets)

    @property
    def samples_per_second(self) -> float:
        """Rows written per second of storing."""
        return self.stored / self.store_seconds if self.store_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {**asdict(self), "up": self.up, "samples_per_second": round(self.samples_per_second, 1)}


def fetch(client: httpx.Client, target: ScrapeTarget, timeout: float) -> tuple[str, bool]:
    """The body of one scrape and whether it is OpenMetrics; every failure is a :class:`ScrapeError`.

    Args:
        client: the HTTP client (shared by the threads of one scrape).
        target: what to scrape.
        timeout: the whole request, body included, must finish within this many seconds.
    """
    headers = {"Accept": ACCEPT, "User-Agent": USER_AGENT, "X-Prometheus-Scrape-Timeout-Seconds": f"{timeout:g}"}
    if target.bearer_token:
        headers["Authorization"] = f"Bearer {target.bearer_token}"
    deadline = time.monotonic() + timeout
    try:
        with client.stream("GET", target.url, headers=headers, timeout=timeout) as response:
            if response.status_code != 200:
                raise ScrapeError(f"HTTP {response.status_code} {response.reason_phrase}".strip())
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_BODY_BYTES:
                    raise ScrapeError(f"body larger than {MAX_BODY_BYTES} bytes")
                if time.monotonic() > deadline:
                    raise ScrapeError(f"timed out after {timeout:g} s")
            content_type = response.headers.get("content-type", "")
    except httpx.TimeoutException:
        raise ScrapeError(f"timed out after {timeout:g} s") from None
    except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError) as exc:
        raise ScrapeError(f"{type(exc).__name__}: {exc}") from None
    except UnicodeError as exc:  # a host name IDNA cannot encode
        raise ScrapeError(f"invalid host name: {exc}") from None
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ScrapeError(f"body is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    return text, content_type.startswith("application/openmetrics-text")


@dataclass
class _Scrape:
    """One target's scrape before storing: its result and its rows (samples, then up and friends)."""

    result: TargetResult
    rows: list[tuple[str, str, str, int, float]]


def scrape_target(client: httpx.Client, target: ScrapeTarget, timeout: float) -> _Scrape:
    """Scrape one target into rows; a failure gives ``up`` 0 and the error, never an exception."""
    started_us = time.time_ns() // 1_000
    clock = time.perf_counter()
    result = TargetResult(url=target.display_url, job=target.job, instance=target.instance, up=False)
    samples: list[ScrapedSample] = []
    try:
        text, openmetrics = fetch(client, target, timeout)
        samples = parse_exposition(text, openmetrics=openmetrics)
        result.up = True
    except ScrapeError as exc:
        result.error = str(exc)
    result.duration_seconds = time.perf_counter() - clock
    result.samples = len(samples)
    labels = target.target_labels()
    rows: list[tuple[str, str, str, int, float]] = []
    seen: set[tuple[str, str, int]] = set()
    for sample in samples:
        tags = json.dumps(merge_labels(sample.labels, labels, target.honor_labels), sort_keys=True)
        stamp = started_us if sample.timestamp_us is None else sample.timestamp_us
        key = (sample.name, tags, stamp)
        if key in seen:  # the same series twice in one exposition: Prometheus keeps the first
            result.rejected += 1
            result.rejection = result.rejection or f"duplicate sample of {sample.name} {tags}"
            continue
        seen.add(key)
        rows.append((sample.name, sample.type.value, tags, stamp, sample.value))
    meta = json.dumps(dict(sorted(labels.items())))
    rows.append(("up", "gauge", meta, started_us, 1.0 if result.up else 0.0))
    rows.append(("scrape_duration_seconds", "gauge", meta, started_us, result.duration_seconds))
    rows.append(("scrape_samples_scraped", "gauge", meta, started_us, float(len(samples))))
    return _Scrape(result, rows)


def _frame(scrapes: Sequence[_Scrape]) -> pl.DataFrame:
    """All targets' rows as one sample frame (the bulk ingest path), in target order."""
    rows = [row for scrape in scrapes for row in scrape.rows]
    metric, kind, tags, stamps, values = (list(column) for column in zip(*rows, strict=True))
    return pl.DataFrame(
        {
            "metric": pl.Series(metric, dtype=pl.String),
            "ts": pl.Series(stamps, dtype=pl.Int64).cast(pl.Datetime("us", "UTC")),
            "value": pl.Series(values, dtype=pl.Float64),
            "type": pl.Series(kind, dtype=pl.String),
            "tags": pl.Series(tags, dtype=pl.String),
        }
    )


def scrape(targets: Sequence[ScrapeTarget], timeout: float) -> list[_Scrape]:
    """Scrape ``targets`` at once (at most :data:`MAX_PARALLEL` in flight), in their order."""
    if not targets:
        return []
    with (
        httpx.Client(follow_redirects=True, trust_env=False) as client,
        ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(targets)), thread_name_prefix="scrape") as pool,
    ):
        return list(pool.map(lambda target: scrape_target(client, target, timeout), targets))


def store_scrapes(settings: Settings, scrapes: Sequence[_Scrape], summary: ScrapeSummary) -> None:
    """Store every target's rows in one batch; count each target's stored and rejected samples in ``summary``."""
    frame = _frame(scrapes)
    store = MetricStore(settings).open(background_flush=False)
    try:
        result = store.ingest_frame(frame)
    finally:
        store.close()
    summary.stored, summary.rejected, summary.store_seconds = result.stored, len(result.rejected), result.seconds
    starts = []
    offset = 0
    for item in scrapes:
        starts.append(offset)
        offset += len(item.rows)
    for rejection in result.rejected:
        owner = bisect.bisect_right(starts, rejection.index) - 1
        target = scrapes[owner].result
        target.rejection = target.rejection or f"{frame['metric'][rejection.index]}: {rejection.reason}"
        if rejection.index - starts[owner] < len(scrapes[owner].rows) - _META_ROWS:  # a sample, not `up` & co.
            target.rejected += 1
    for item in scrapes:
        item.result.stored = item.result.samples - item.result.rejected


@task(
    name="scrape-targets",
    retries=1,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    cache_policy=NO_CACHE,
)
def scrape_targets(settings: Settings, targets: Sequence[ScrapeTarget | str] | None = None) -> ScrapeSummary:
    """Scrape every target once; store its samples and ``up``, ``scrape_duration_seconds``, ``scrape_samples_scraped``.

    A target that fails is data (``up`` 0 and its error in the summary), not an
    exception, so Prefect never retries a scrape for it; the one retry covers
    storing (the retry scrapes afresh: its samples carry the new scrape time).

    Args:
        settings: the lake to store into; ``scrape_timeout`` (capped at ``scrape_interval``) bounds each target.
        targets: targets or ``job=url`` strings (default: ``settings.scrape_targets``).
    """
    chosen = resolve_targets(settings, targets)
    summary = ScrapeSummary()
    if not chosen:
        return summary
    clock = time.perf_counter()
    scrapes = scrape(chosen, timeout=min(settings.scrape_timeout, settings.scrape_interval))
    summary.scrape_seconds = time.perf_counter() - clock
    summary.targets = [item.result for item in scrapes]
    store_scrapes(settings, scrapes, summary)
    return summary
