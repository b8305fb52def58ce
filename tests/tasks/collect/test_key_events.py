"""Reading log files from where the last read stopped: partial lines, rotation, truncation, recycled inodes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tasks.collect.key_events import EventKind, FilePosition, KeyEvent, KeyEventSource, parse_time


class Lines(KeyEventSource):
    """A test source: each JSON object ``{"id": …}`` is one event."""

    name = "lines"
    patterns = ("*.log", "*.log.*", "*.json")

    def events(self, record: Any) -> list[KeyEvent]:
        if not isinstance(record, dict) or "id" not in record:
            raise ValueError("id: missing")
        return [KeyEvent(str(record["id"]), 0, self.name, "test", EventKind.OTHER)]


def line(number: int) -> str:
    return json.dumps({"id": number}) + "\n"


class Tail:
    """Reads a source run after run, keeping positions as the collector does."""

    def __init__(self, *paths: Path) -> None:
        self.source = Lines(paths)
        self.positions: dict[str, FilePosition] = {}

    def run(self) -> tuple[list[str], list[str]]:
        ids: list[str] = []
        problems: list[str] = []
        for read in self.source.read(self.positions):
            ids += [event.event_id for event in read.events]
            problems += [str(problem) for problem in read.problems]
            if read.position.head:
                self.positions[read.position.identity] = read.position
        return ids, problems


def test_appended_lines_are_read_once_and_a_partial_line_waits(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_text(line(1) + line(2))
    tail = Tail(log)
    assert tail.run() == (["1", "2"], [])
    assert tail.run() == ([], [])
    with log.open("a") as handle:
        handle.write(line(3) + '{"id": 4')  # the writer is in the middle of line 4
    assert tail.run() == (["3"], [])
    with log.open("a") as handle:
        handle.write("}\n")
    assert tail.run() == (["4"], [])


def test_a_rotated_log_is_read_on_and_the_new_one_from_the_start(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_text(line(1))
    tail = Tail(tmp_path)
    assert tail.run() == (["1"], [])
    with log.open("a") as handle:
        handle.write(line(2))
    log.rename(tmp_path / "audit.log.1")  # logrotate: the same inode under a new name
    log.write_text(line(3))
    ids, _ = tail.run()
    assert sorted(ids) == ["2", "3"]


def test_a_truncated_file_is_read_again_from_the_start(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_text(line(1) + line(2) + line(3))
    tail = Tail(log)
    tail.run()
    log.write_text(line(4))  # copytruncate: same inode, shorter
    assert tail.run() == (["4"], [])


def test_a_recycled_inode_is_a_new_file(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_text(line(1) + line(2))
    tail = Tail(log)
    tail.run()
    identity = next(iter(tail.positions))
    with log.open("r+") as handle:  # same inode and size, other content
        handle.write(line(7) + line(8))
    assert next(iter(tail.positions)) == identity
    assert tail.run() == (["7", "8"], [])


def test_a_young_file_grows_into_a_longer_fingerprint(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_text(line(1))  # shorter than the 64 fingerprinted bytes
    tail = Tail(log)
    tail.run()
    with log.open("a") as handle:
        handle.write("".join(line(n) for n in range(2, 12)))
    ids, _ = tail.run()
    assert ids == [str(n) for n in range(2, 12)]  # read on, not again from the start


def test_problems_name_the_file_and_line_across_runs(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_text(line(1) + line(2))
    tail = Tail(log)
    tail.run()
    with log.open("a") as handle:
        handle.write(line(3) + "garbage\n" + json.dumps({"no": "id"}) + "\n")
    ids, problems = tail.run()
    assert ids == ["3"]
    assert problems[0].startswith(f"{log}:4: invalid JSON")
    assert problems[1] == f"{log}:5: id: missing"


def test_an_unfinished_json_document_is_read_once_complete(tmp_path: Path) -> None:
    document = json.dumps({"id": 5}, indent=2)
    path = tmp_path / "doc.json"
    path.write_text(document[:-3])  # a pretty-printed document still being written
    tail = Tail(path)
    ids, problems = tail.run()
    assert ids == []
    assert problems
    assert "not a complete JSON document" in problems[0]
    path.write_text(document + "\n")
    assert tail.run() == (["5"], [])


def test_a_document_without_a_final_newline(tmp_path: Path) -> None:
    path = tmp_path / "doc.json"
    path.write_text(json.dumps({"id": 9}))
    assert Tail(path).run() == (["9"], [])


def test_missing_paths_are_an_empty_source_and_hidden_files_are_skipped(tmp_path: Path) -> None:
    (tmp_path / ".partial.log").write_text(line(1))
    assert Tail(tmp_path / "nowhere", tmp_path).run() == ([], [])


def test_a_file_gone_between_listing_and_reading_is_reported(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_text(line(1))
    source = Lines([tmp_path])
    (listed,) = source.files()
    log.unlink()  # rotated away and compressed by logrotate in between
    (read,) = source.read_file(listed, {})
    assert read.events == []
    assert [str(problem) for problem in read.problems] == [f"{log}: cannot read: No such file or directory"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2021-04-12T21:14:43Z", 1618262083_000000),
        ("2024-03-14T09:12:03.481920117Z", 1710407523_481920),
        ("2024-03-14T09:12:03.5+01:00", 1710403923_500000),
        ("2024-03-14T09:12:03", 1710407523_000000),
        ("2021-13-12T21:14:43Z", None),
        ("late", None),
        (None, None),
    ],
)
def test_parse_time(text: Any, expected: int | None) -> None:
    assert parse_time(text) == expected


def test_a_file_rewritten_in_place_with_the_same_start_and_size_is_a_new_file(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    prefix = "".join(line(n) for n in range(200))  # log files of one kind begin alike: well past the head
    log.write_text(prefix + line(900))
    tail = Tail(log)
    assert tail.run()[0][-1] == "900"
    with log.open("r+") as handle:  # the same inode and size; only the end differs
        handle.write(prefix + line(901))
    ids, _ = tail.run()
    assert ids[-1] == "901"
    assert len(ids) == 201


def test_a_jsonl_file_with_a_broken_first_line_is_read_past_it(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    path.write_text('{"id": 1, broken\n' + line(2) + line(3))
    ids, problems = Tail(path).run()
    assert ids == ["2", "3"]
    assert problems[0].startswith(f"{path}:1: invalid JSON")


def test_a_byte_order_mark_is_not_a_problem(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    path.write_bytes(b"\xef\xbb\xbf" + (line(1) + line(2)).encode())
    assert Tail(path).run() == (["1", "2"], [])
    doc = tmp_path / "doc.json"
    doc.write_bytes(b"\xef\xbb\xbf" + json.dumps({"id": 3}, indent=1).encode())
    assert Tail(doc).run() == (["3"], [])


def test_a_document_larger_than_a_chunk_is_read_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tasks.collect.key_events as key_events

    class Records(Lines):
        def records(self, document: Any) -> list[Any] | None:
            return document.get("Records") if isinstance(document, dict) else None

    monkeypatch.setattr(key_events, "CHUNK_BYTES", 256)
    path = tmp_path / "big.json"
    path.write_text(json.dumps({"Records": [{"id": n} for n in range(100)]}, indent=2))
    reads = list(Records([path]).read({}))
    assert [e.event_id for read in reads for e in read.events] == [str(n) for n in range(100)]
    assert reads[-1].position.offset == path.stat().st_size
