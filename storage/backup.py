"""Backup and restore of a data directory: one ``.tar.gz`` with a SHA-256 manifest.

A backup holds the lake (every table, the series catalog, quarantine), the
write-ahead logs, ``state/`` and ``models/``, and the settings in force (no
secrets). It is consistent while ingestion goes on:

* it holds the lake's maintenance lock, so no compaction or retention removes
  a file while it is being read;
* it copies the write-ahead logs *before* the lake files. A batch flushed in
  between is then in the archive twice, as a WAL segment and as the Parquet file
  named after that segment; on restore the segment is replayed under the same
  name, which overwrites the file instead of duplicating it. Acknowledged rows
  still in a live writer's WAL are restored too (they are replayed on start).

``MANIFEST.json`` (last member) lists every file with its size and SHA-256.
Restore reads the whole archive and checks every checksum before it touches the
data directory, extracts into a temporary folder beside it, and only then moves
the files into place; a corrupt or truncated archive is refused with the reason
and the data directory is left as it was.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from metrics.errors import StorageError
from metrics.settings import Settings
from storage.lake import Lake, ensure_dir, fsync_dir

MANIFEST = "MANIFEST.json"
FORMAT_VERSION = 1
_PARTS = ("lake", "wal", "state", "models")  # folders of the data directory that are backed up
_SKIPPED_SUFFIXES = (".tmp", ".lock")
_SKIPPED_NAMES = {".lock", ".maintenance.lock"}
# Secrets are the settings hidden from repr (passwords, tokens, database URLs): never written to a manifest.
_SECRET_SETTINGS = {f.name for f in fields(Settings) if not f.repr}
_CHUNK = 1 << 20
# The lake's files are ZSTD-compressed already: deflating them again saves ~3 % at ~50 MB/s of CPU.
# Level 0 keeps the archive a standard .tar.gz while writing at disk speed.
_GZIP_LEVEL = 0


@dataclass
class BackupResult:
    """What a backup wrote."""

    path: Path
    files: int
    bytes_in: int
    bytes_out: int
    seconds: float
    sha256: str

    @property
    def megabytes_per_second(self) -> float:
        """Throughput over the data read."""
        return self.bytes_in / 1e6 / self.seconds if self.seconds > 0 else 0.0


@dataclass
class RestoreResult:
    """What a restore put back."""

    files: int
    bytes: int
    seconds: float
    created_at: str = ""
    replaced: list[str] = field(default_factory=list)

    @property
    def megabytes_per_second(self) -> float:
        """Throughput over the data restored."""
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0


def _files_to_back_up(data_dir: Path) -> Iterator[Path]:
    """Files of the data directory that belong in a backup, WAL folders first."""
    for part in ("wal", "lake", "state", "models"):
        root = data_dir / part
        if not root.is_dir():
            continue
        for folder, _, names in sorted(os.walk(root)):
            for name in sorted(names):
                if name in _SKIPPED_NAMES or name.endswith(_SKIPPED_SUFFIXES):
                    continue
                yield Path(folder) / name


class _HashingReader(io.RawIOBase):
    """A file object that hashes what is read through it."""

    def __init__(self, handle: IO[bytes]) -> None:
        self._handle = handle
        self.digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._handle.read(len(buffer))
        buffer[: len(data)] = data
        self.digest.update(data)
        return len(data)


def create_backup(settings: Settings, output: Path, *, progress: Callable[[int], None] | None = None) -> BackupResult:
    """Write a consistent backup of the data directory to ``output`` (a ``.tar.gz``)."""
    started = time.perf_counter()
    data_dir = settings.data_dir.resolve()
    output = output.resolve()
    inside = [part for part in _PARTS if output.is_relative_to(data_dir / part)]
    if inside:
        raise StorageError(f"backup: {output} is inside {data_dir / inside[0]}, which is backed up; write it elsewhere")
    ensure_dir(output.parent)
    lake = Lake(settings.lake_dir, compression=settings.compression, compression_level=settings.compression_level)
    entries: list[dict[str, Any]] = []
    tmp = output.with_name(f".{output.name}.{uuid.uuid4().hex[:8]}.tmp")
    bytes_in = 0
    try:
        with lake.maintenance(), tarfile.open(tmp, "w:gz", compresslevel=_GZIP_LEVEL) as archive:
            for path in list(_files_to_back_up(data_dir)):
                try:
                    handle = open(path, "rb")
                except FileNotFoundError:  # a WAL segment flushed and removed meanwhile
                    continue
                with handle:
                    size = os.fstat(handle.fileno()).st_size
                    name = path.relative_to(data_dir).as_posix()
                    info = tarfile.TarInfo(name)
                    info.size = size
                    info.mtime = int(os.fstat(handle.fileno()).st_mtime)
                    reader = _HashingReader(handle)
                    archive.addfile(info, io.BufferedReader(reader, _CHUNK))
                    entries.append({"path": name, "size": size, "sha256": reader.digest.hexdigest()})
                bytes_in += size
                if progress is not None:
                    progress(size)
            manifest = {
                "format": FORMAT_VERSION,
                "created_at": datetime.now(UTC).isoformat(),
                "settings": _public_settings(settings),
                "files": entries,
            }
            payload = json.dumps(manifest, indent=1).encode()
            info = tarfile.TarInfo(MANIFEST)
            info.size = len(payload)
            info.mtime = int(time.time())
            archive.addfile(info, io.BytesIO(payload))
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, output)
        fsync_dir(output.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StorageError(f"backup: cannot write {output}: {exc.strerror or exc}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return BackupResult(
        path=output,
        files=len(entries),
        bytes_in=bytes_in,
        bytes_out=output.stat().st_size,
        seconds=time.perf_counter() - started,
        sha256=_file_sha256(output),
    )


def _public_settings(settings: Settings) -> dict[str, Any]:
    values = {k: v for k, v in asdict(settings).items() if k not in _SECRET_SETTINGS}
    return {k: str(v) if isinstance(v, Path) else v for k, v in values.items()}


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_backup(archive_path: Path) -> dict[str, Any]:
    """Read the whole archive and check every file against the manifest; return the manifest."""
    if not archive_path.is_file():
        raise StorageError(f"restore: {archive_path}: no such file")
    found: dict[str, tuple[int, str]] = {}
    manifest: dict[str, Any] | None = None
    try:
        with gzip.open(archive_path, "rb") as compressed, tarfile.open(fileobj=compressed, mode="r|") as archive:
            for member in archive:
                if not member.isfile():
                    raise StorageError(f"restore: {archive_path}: unexpected entry {member.name!r} (not a file)")
                stream = archive.extractfile(member)
                assert stream is not None
                if member.name == MANIFEST:
                    manifest = json.loads(stream.read())
                    continue
                digest = hashlib.sha256()
                size = 0
                for block in iter(lambda s=stream: s.read(_CHUNK), b""):  # type: ignore[misc]
                    digest.update(block)
                    size += len(block)
                found[member.name] = (size, digest.hexdigest())
            while compressed.read(_CHUNK):  # to the end: gzip checks its CRC over every byte, padding included
                pass
    except (tarfile.TarError, EOFError, OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StorageError(f"restore: {archive_path} is corrupt or truncated ({exc})") from exc
    if manifest is None or not isinstance(manifest.get("files"), list):
        raise StorageError(f"restore: {archive_path} has no manifest (truncated, or not a metrics backup)")
    if manifest.get("format") != FORMAT_VERSION:
        raise StorageError(f"restore: {archive_path} has format {manifest.get('format')!r}; expected {FORMAT_VERSION}")
    listed = {entry["path"]: (entry["size"], entry["sha256"]) for entry in manifest["files"]}
    missing = sorted(set(listed) - set(found))
    extra = sorted(set(found) - set(listed))
    bad = sorted(name for name in set(listed) & set(found) if listed[name] != found[name])
    if missing or extra or bad:
        problems = [
            f"{label}: {', '.join(names[:3])}"
            for label, names in (("missing", missing), ("not in the manifest", extra), ("checksum mismatch", bad))
            if names
        ]
        raise StorageError(f"restore: {archive_path} failed verification ({'; '.join(problems)})")
    for name in listed:
        if name.startswith("/") or ".." in Path(name).parts or Path(name).parts[0] not in _PARTS:
            raise StorageError(f"restore: {archive_path} holds an unexpected path {name!r}")
    return manifest


def restore_backup(
    archive_path: Path, settings: Settings, *, force: bool = False, progress: Callable[[int], None] | None = None
) -> RestoreResult:
    """Verify ``archive_path`` completely, then restore it into the (empty, or ``force``d) data directory."""
    started = time.perf_counter()
    manifest = verify_backup(archive_path)
    data_dir = settings.data_dir.resolve()
    present = [part for part in _PARTS if (data_dir / part).exists() and any((data_dir / part).iterdir())]
    if present and not force:
        raise StorageError(
            f"restore: {data_dir} already holds data ({', '.join(present)}); restore into an empty data "
            "directory or pass --force to replace it"
        )
    ensure_dir(data_dir)
    staging = data_dir / f".restore-{uuid.uuid4().hex[:8]}"
    restored_bytes = 0
    try:
        with gzip.open(archive_path, "rb") as compressed, tarfile.open(fileobj=compressed, mode="r|") as archive:
            for member in archive:
                if member.name == MANIFEST:
                    continue
                archive.extract(member, staging, filter="data")
                restored_bytes += member.size
                if progress is not None:
                    progress(member.size)
        for folder, _, names in os.walk(staging):  # make the extracted files durable before they go live
            for name in names:
                with open(Path(folder) / name, "rb") as handle:
                    os.fsync(handle.fileno())
            fsync_dir(Path(folder))
        replaced = []
        for part in _PARTS:
            target = data_dir / part
            if target.exists():
                shutil.rmtree(target)
                replaced.append(part)
            if (staging / part).exists():
                os.replace(staging / part, target)
        fsync_dir(data_dir)
    except (OSError, tarfile.TarError) as exc:
        raise StorageError(f"restore: cannot restore into {data_dir}: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    (data_dir / "metrics.duckdb.views.sql").unlink(missing_ok=True)  # views are rewritten on first use
    return RestoreResult(
        files=len(manifest["files"]),
        bytes=restored_bytes,
        seconds=time.perf_counter() - started,
        created_at=str(manifest.get("created_at", "")),
        replaced=replaced,
    )


def prune_backups(folder: Path, keep: int, pattern: str = "*.tar.gz") -> list[Path]:
    """Delete all but the newest ``keep`` backups in ``folder``; return what was deleted."""
    if keep < 1:
        raise StorageError(f"backup: keep must be at least 1, got {keep}")
    backups = sorted(folder.glob(pattern), key=lambda p: p.stat().st_mtime, reverse=True)
    removed = backups[keep:]
    for path in removed:
        path.unlink()
    return removed
