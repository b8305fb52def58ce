"""Normalised key events and the one interface every key-event source implements.

A source (AWS CloudTrail in :mod:`tasks.collect.cloudtrail`, the HashiCorp
Vault / OpenBao audit device in :mod:`tasks.collect.vault`) turns the records
of its log files into :class:`KeyEvent` objects: who did what to which key,
when, and whether it was allowed. Everything downstream (the key metrics, the
inventory, the policy checks) reads only key events, never a source's own
shapes.

:meth:`KeyEventSource.read` reads what is new since a checkpoint: the files
under the configured paths, each from where the last run stopped. A file is
known by its device and inode plus a fingerprint of its first bytes, so a log
renamed by rotation (``audit.log`` → ``audit.log.1``) is read on from its
offset and a recycled inode is read afresh. Plain files are read up to their
last complete line, so a line being written is left for the next run;
compressed files (``.gz``) are complete documents and are read whole once. A
malformed file or record is reported as a :class:`LogProblem` (file, line,
reason) and skipped; the rest of the file is processed.
"""

from __future__ import annotations

import enum
import gzip
import hashlib
import os
import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import orjson

HEAD_BYTES = 1024  # bytes at the start fingerprinted to tell a file from another one on a recycled inode
TAIL_BYTES = 256  # bytes before the saved offset fingerprinted too: log files of one kind begin alike
BOM = b"\xef\xbb\xbf"
CHUNK_BYTES = 32 * 1024 * 1024  # at most this much of a plain file per read (bounded memory)


class EventKind(enum.StrEnum):
    """What an event did to or with a key."""

    CREATED = "created"
    ROTATED = "rotated"
    EXPIRED = "expired"  # imported key material expired (the key is unusable until re-imported)
    DISABLED = "disabled"
    ENABLED = "enabled"
    DELETION_SCHEDULED = "deletion_scheduled"
    DELETION_CANCELLED = "deletion_cancelled"
    DELETED = "deleted"
    MATERIAL_IMPORTED = "material_imported"
    MATERIAL_DELETED = "material_deleted"
    ROTATION_ENABLED = "rotation_enabled"
    ROTATION_DISABLED = "rotation_disabled"
    POLICY_CHANGED = "policy_changed"  # key policy, grants, key configuration that changes who may do what
    EXPORTED = "exported"  # key material left the key store (Vault export / backup)
    CONFIGURED = "configured"  # description, tags, aliases
    ENCRYPT = "encrypt"
    DECRYPT = "decrypt"
    SIGN = "sign"
    VERIFY = "verify"
    MAC = "mac"
    READ = "read"  # metadata reads: describe, public key, policy
    OTHER = "other"  # an event name this collector does not know: counted as an access, nothing more


# Kinds that use the key's material (a use of a disabled key is a policy violation).
USE_KINDS = frozenset({EventKind.ENCRYPT, EventKind.DECRYPT, EventKind.SIGN, EventKind.VERIFY, EventKind.MAC})
# Kinds that change whether, how or by whom a key can be used: each one is a security event.
SECURITY_KINDS = frozenset(
    {
        EventKind.DISABLED,
        EventKind.ENABLED,
        EventKind.DELETION_SCHEDULED,
        EventKind.DELETION_CANCELLED,
        EventKind.DELETED,
        EventKind.MATERIAL_IMPORTED,
        EventKind.MATERIAL_DELETED,
        EventKind.EXPIRED,
        EventKind.ROTATION_DISABLED,
        EventKind.POLICY_CHANGED,
        EventKind.EXPORTED,
    }
)


@dataclass(slots=True)
class KeyEvent:
    """One normalised key event.

    Args:
        event_id: the source's unique id of the call (CloudTrail ``eventID``, Vault ``request.id``);
            a second event from the same call (ReEncrypt's destination key) gets a suffix.
        time_us: when it happened, microseconds since the epoch (UTC).
        source: ``cloudtrail`` or ``vault``.
        action: the source's name of the call (``Encrypt``, ``transit/encrypt``).
        kind: what it did (:class:`EventKind`).
        key_ref: the key's unique reference (its ARN, or ``vault:<mount>/<name>``); None when no key is named.
        key_id: the short id shown in tags (the KMS key id, the Vault key name).
        region, account: AWS region and account of the key.
        mount: the Vault mount of the transit engine.
        principal: who called (an ARN, a Vault display name); PII, pseudonymised before it is stored.
        principal_type: ``AssumedRole``, ``IAMUser``, ``AWSService`` …, or Vault's token type.
        source_ip: the caller's address (PII).
        error: the error code or message when the call failed, else None.
        unauthorized: the call was refused for lack of permission.
        key_state_error: the call failed because the key is disabled, pending deletion or deleted.
        key_type, algorithm: what the event reveals of the key (``encryption`` / ``SYMMETRIC_DEFAULT``).
        algorithms_used: algorithms the call named (signing, encryption, MAC, hash), for the policy checks.
        deletion_at: when a scheduled deletion takes effect (microseconds), if the event says.
        key_state: the key's state the event reports (``pending_import`` for a key created without
            material), in the inventory's words; None when it reports none.
        continuation: the second key event of one call on the same key (a ReEncrypt within one key,
            Vault's rewrap): it counts as an operation, not as another access.
    """

    event_id: str
    time_us: int
    source: str
    action: str
    kind: EventKind
    key_ref: str | None = None
    key_id: str | None = None
    region: str | None = None
    account: str | None = None
    mount: str | None = None
    principal: str | None = None
    principal_type: str | None = None
    source_ip: str | None = None
    error: str | None = None
    unauthorized: bool = False
    key_state_error: bool = False
    key_type: str | None = None
    algorithm: str | None = None
    algorithms_used: tuple[str, ...] = ()
    deletion_at: int | None = None
    key_state: str | None = None
    continuation: bool = False

    @property
    def succeeded(self) -> bool:
        """The call did what it asked."""
        return self.error is None

    @property
    def is_security_event(self) -> bool:
        """A failure, or a change of whether, how or by whom the key can be used."""
        return self.error is not None or self.kind in SECURITY_KINDS


@dataclass(frozen=True)
class LogProblem:
    """A file or record that could not be read: where (file, line; 0 for the whole file) and why."""

    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}" if self.line else f"{self.path}: {self.reason}"


@dataclass
class FilePosition:
    """How far a file has been read, and how to recognise it next time.

    Args:
        identity: ``<device>:<inode>``.
        path: where it was last seen (it may have been renamed since).
        head: SHA-1 of its first ``head_length`` bytes.
        head_length: how many bytes ``head`` covers (a young file grows into a longer fingerprint).
        offset: bytes read (for a compressed file: its size once read whole).
        size, mtime_ns: the file's size and modification time when last read.
        lines: complete lines read (for the line numbers of problems).
        tail: SHA-1 of the ``TAIL_BYTES`` before ``offset``: a file whose bytes there differ is another file.
    """

    identity: str
    path: str
    head: str
    head_length: int
    offset: int = 0
    size: int = 0
    mtime_ns: int = 0
    lines: int = 0
    tail: str = ""


@dataclass
class FileRead:
    """What one read of one file gave: its events, problems, records seen and the position to save."""

    path: Path
    position: FilePosition
    events: list[KeyEvent] = field(default_factory=list)
    problems: list[LogProblem] = field(default_factory=list)
    records: int = 0  # records parsed, whatever they were (events of other services included)
    bytes_read: int = 0
    complete: bool = True  # False: more of this file remains for another read


def _head(handle: Any, length: int) -> str:
    handle.seek(0)
    return hashlib.sha1(handle.read(length), usedforsecurity=False).hexdigest()


def _tail(handle: Any, offset: int) -> str:
    """The fingerprint of the bytes just before ``offset``."""
    start = max(0, offset - TAIL_BYTES)
    handle.seek(start)
    return hashlib.sha1(handle.read(offset - start), usedforsecurity=False).hexdigest()


def file_identity(stat: os.stat_result) -> str:
    """``<device>:<inode>``: how a file is known across renames."""
    return f"{stat.st_dev}:{stat.st_ino}"


def is_compressed(path: Path) -> bool:
    """Whether ``path`` is gzip-compressed (by its name)."""
    return path.suffix == ".gz"


def parse_time(text: Any) -> int | None:
    """RFC 3339 text (``2021-04-12T21:14:43Z``, Vault's nanoseconds included) as UTC microseconds, or None."""
    if type(text) is not str or len(text) < 19:
        return None
    if len(text) == 20 and text[19] == "Z" and text[10] == "T" and text[13] == ":" and text[16] == ":":
        day = _day_us(text[:10])  # CloudTrail's form: whole seconds, UTC
        if day is not None and text[11:13].isdigit() and text[14:16].isdigit() and text[17:19].isdigit():
            return day + (int(text[11:13]) * 3600 + int(text[14:16]) * 60 + int(text[17:19])) * 1_000_000
    if text[-1] in "Zz":
        text = text[:-1] + "+00:00"
    dot = text.find(".", 19)
    if dot != -1:  # Python reads at most six fraction digits
        end = dot + 1
        while end < len(text) and text[end].isdigit():
            end += 1
        text = text[:dot] + text[dot : min(end, dot + 7)] + text[end:]
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


@lru_cache(maxsize=4096)
def _day_us(text: str) -> int | None:
    """``YYYY-MM-DD`` as microseconds since the epoch at its midnight (UTC), or None."""
    try:
        day = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        return None
    return int((day - _EPOCH).total_seconds()) * 1_000_000


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class KeyEventSource(ABC):
    """Reads key events from log files under some paths, each file from where the last read stopped.

    A source implements :meth:`events` (one record to key events) and
    :meth:`records` (a whole JSON document to its records); reading files,
    positions, partial lines, compression and problems are shared.

    Args:
        paths: files or folders; folders are searched recursively for :attr:`patterns`.
    """

    name: ClassVar[str]
    patterns: ClassVar[tuple[str, ...]]

    def __init__(self, paths: Iterable[Path | str]) -> None:
        self.paths = [Path(p) for p in paths]

    @abstractmethod
    def events(self, record: Any) -> list[KeyEvent]:
        """The key events of one record (none for records of other services); a bad record raises ValueError."""

    def records(self, document: Any) -> list[Any] | None:
        """The records of a whole JSON document, or None when the document is one record itself."""
        return None

    def files(self) -> list[Path]:
        """Every log file under the paths, oldest first (a missing path is an empty source)."""
        found: dict[Path, os.stat_result] = {}
        for root in self.paths:
            if root.is_file():
                found[root] = root.stat()
            elif root.is_dir():
                for pattern in self.patterns:
                    for path in root.rglob(pattern):
                        if path.is_file() and not path.name.startswith("."):
                            found[path] = path.stat()
        return sorted(found, key=lambda p: (found[p].st_mtime_ns, str(p)))

    def read(self, positions: Mapping[str, FilePosition]) -> Iterator[FileRead]:
        """Read what is new in every file since ``positions`` (by identity), file by file, chunk by chunk."""
        for path in self.files():
            yield from self.read_file(path, positions)

    def read_file(self, path: Path, positions: Mapping[str, FilePosition]) -> Iterator[FileRead]:
        """Read one file from its saved position; a large plain file comes in several chunks."""
        try:
            with open(path, "rb") as handle:
                stat = os.fstat(handle.fileno())
                identity = file_identity(stat)
                known = positions.get(identity)
                if known is not None and (
                    known.head_length > stat.st_size
                    or known.offset > stat.st_size
                    or _head(handle, known.head_length) != known.head
                    or _tail(handle, known.offset) != known.tail
                ):
                    known = None  # another file on a recycled inode, or this one truncated or rewritten
                head_length = min(stat.st_size, HEAD_BYTES)
                position = FilePosition(identity, str(path), _head(handle, head_length), head_length)
                if known is not None:
                    position.offset, position.size, position.mtime_ns = known.offset, known.size, known.mtime_ns
                    position.lines, position.tail = known.lines, known.tail
                if is_compressed(path):
                    if known is not None and known.size == stat.st_size and known.mtime_ns == stat.st_mtime_ns:
                        return  # read whole before, unchanged since
                    yield self._read_compressed(path, handle, position, stat)
                    return
                while position.offset < stat.st_size:
                    read = self._read_plain(path, handle, position, stat)
                    yield read
                    if read.complete:
                        return
        except OSError as exc:
            identity = f"missing:{path}"
            yield FileRead(
                path,
                FilePosition(identity, str(path), "", 0),
                problems=[LogProblem(str(path), 0, f"cannot read: {exc.strerror or exc}")],
            )

    def _read_compressed(self, path: Path, handle: Any, position: FilePosition, stat: os.stat_result) -> FileRead:
        handle.seek(0)
        read = FileRead(path, position)
        try:
            data = gzip.decompress(handle.read())
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
            reason = "truncated gzip file" if isinstance(exc, EOFError) else f"not a valid gzip file: {exc}"
            read.problems.append(LogProblem(str(path), 0, reason))
            return read  # its position is not advanced: a file still being written is read once complete
        read.bytes_read = len(data)
        if not self._parse_whole(data, read):
            return read
        position.offset, position.size, position.mtime_ns = stat.st_size, stat.st_size, stat.st_mtime_ns
        position.tail = _tail(handle, stat.st_size)
        return read

    def _read_plain(self, path: Path, handle: Any, position: FilePosition, stat: os.stat_result) -> FileRead:
        """The next chunk of a plain file: complete lines, or (at its start) a whole JSON document."""
        handle.seek(position.offset)
        data = handle.read(min(CHUNK_BYTES, stat.st_size - position.offset))
        read = FileRead(path, position)
        at_end = position.offset + len(data) >= stat.st_size
        end = data.rfind(b"\n") + 1  # up to the last complete line: a line being written waits
        if position.offset == 0 and _is_document(data, complete=at_end):
            handle.seek(0)
            whole = handle.read(stat.st_size)  # a document is read whole, however large
            if not self._parse_whole(whole, read):
                return read  # an unfinished JSON document: read again once it is complete
            end, at_end, data = len(whole), True, whole
        elif end == 0:
            if at_end:
                return read  # only an unfinished line so far
            read.problems.append(
                LogProblem(str(path), position.lines + 1, f"a line longer than {len(data)} bytes: skipped")
            )
            end = len(data)
        else:
            start = len(BOM) if position.offset == 0 and data.startswith(BOM) else 0
            self._parse_lines(data[start:end], read, first_line=position.lines + 1)
        read.bytes_read = end
        position.offset += end
        position.lines += data.count(b"\n", 0, end)
        position.size, position.mtime_ns = stat.st_size, stat.st_mtime_ns
        position.tail = _tail(handle, position.offset)
        read.complete = at_end
        return read

    def _parse_whole(self, data: bytes, read: FileRead) -> bool:
        """Parse a complete file's content: one JSON document, else JSON lines; False for an unfinished document."""
        data = data.removeprefix(BOM)
        if data.lstrip()[:1] == b"{":
            document = _json(data)
            if document is not _NOT_JSON:
                self._document(document, read, 1)
                return True
            lines = data.strip().split(b"\n")
            if not any(isinstance(_json(line), dict) for line in lines[1:] if line.strip()):
                # Nothing in it reads as JSON lines either: one document, broken or still being written.
                read.problems.append(LogProblem(str(read.path), 0, "not a complete JSON document"))
                return False
        self._parse_lines(data, read, first_line=1)
        return True

    def _parse_lines(self, data: bytes, read: FileRead, *, first_line: int) -> None:
        """Parse JSON lines into ``read``; each bad line is reported with its number."""
        for number, line in enumerate(data.split(b"\n"), start=first_line):
            if not line.strip():
                continue
            record = _json(line)
            if record is _NOT_JSON:
                read.problems.append(LogProblem(str(read.path), number, f"invalid JSON: {_json_error(line)}"))
                continue
            self._document(record, read, number)

    def _document(self, document: Any, read: FileRead, line: int) -> None:
        try:
            records = self.records(document)
        except ValueError as exc:
            read.problems.append(LogProblem(str(read.path), line, str(exc)))
            return
        for record in [document] if records is None else records:
            read.records += 1
            try:
                read.events.extend(self.events(record))
            except ValueError as exc:
                read.problems.append(LogProblem(str(read.path), line, str(exc)))


_NOT_JSON = object()


def _is_document(data: bytes, *, complete: bool) -> bool:
    """Whether the start of a plain file is one JSON document rather than JSON lines.

    It is when it opens with ``{`` and its first line is not a JSON value by itself (a document spread
    over lines, or one still being written), or when the whole file is one line with no newline yet.
    """
    data = data.removeprefix(BOM)
    if data.lstrip()[:1] != b"{":
        return False
    newline = data.find(b"\n")
    if newline == -1:
        return complete
    return _json(data[:newline]) is _NOT_JSON


def _json_error(line: bytes) -> str:
    try:
        orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        return str(exc)
    return "not JSON"


def _json(data: bytes) -> Any:
    """``data`` parsed, or :data:`_NOT_JSON`."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return _NOT_JSON


def field_text(record: Mapping[str, Any], *names: str) -> str | None:
    """The first of ``names`` in ``record`` that holds non-empty text."""
    for name in names:
        value = record.get(name)
        if isinstance(value, str) and value:
            return value
    return None


def require_mapping(value: Any, what: str) -> Mapping[str, Any]:
    """``value`` when it is a JSON object, else ValueError naming ``what``."""
    if not isinstance(value, Mapping):
        raise ValueError(f"{what}: expected an object, got {type(value).__name__}")
    return value
