"""Build Prometheus remote-write requests for tests: WriteRequest protobufs, snappy block compression, headers."""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence

import cramjam

from metrics.api import remote_pb2 as pb

HEADERS = {
    "Content-Type": "application/x-protobuf",
    "Content-Encoding": "snappy",
    "X-Prometheus-Remote-Write-Version": "0.1.0",
}
STALE_NAN = struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000002))[0]

Series = tuple[Mapping[str, str], Sequence[tuple[float, int]]]  # labels, [(value, timestamp ms)]


def write_request(
    series: Iterable[Series], metadata: Iterable[tuple[str, int]] = (), *, sort_labels: bool = True
) -> pb.WriteRequest:
    """A WriteRequest of ``series`` (labels sorted by name, as Prometheus sends them) and (family, type) metadata."""
    request = pb.WriteRequest()
    for labels, samples in series:
        timeseries = request.timeseries.add()
        items = sorted(labels.items()) if sort_labels else list(labels.items())
        for name, value in items:
            timeseries.labels.add(name=name, value=value)
        for value, stamp in samples:
            timeseries.samples.add(value=value, timestamp=stamp)
    for family, kind in metadata:
        request.metadata.add(metric_family_name=family, type=kind, help=f"{family} help")
    return request


def compress(message: pb.WriteRequest | bytes) -> bytes:
    """Snappy *block* compression of a message (what Prometheus sends)."""
    raw = message if isinstance(message, bytes) else message.SerializeToString()
    return bytes(cramjam.snappy.compress_raw(raw))


def body(series: Iterable[Series], metadata: Iterable[tuple[str, int]] = ()) -> bytes:
    """The compressed body of a request."""
    return compress(write_request(series, metadata))


def node_series(count: int, *, offset: int = 0, metrics: int = 50) -> list[dict[str, str]]:
    """Label sets shaped like node_exporter's: ``count`` distinct series."""
    modes = ("idle", "user", "system", "iowait")
    return [
        {
            "__name__": f"node_metric_{(i + offset) % metrics}_total",
            "cpu": str((i + offset) % 8),
            "instance": f"host-{(i + offset) // 400}:9100",
            "job": "node",
            "mode": modes[(i + offset) % 4],
            "series": str(i + offset),
        }
        for i in range(count)
    ]
