"""Tests of storage.lake: atomic commits, listing, journaled swaps and their crash recovery (real files, no mocks)."""

from __future__ import annotations

import json
import os
import time
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from metrics.errors import StorageError
from storage.lake import (
    TMP_SUFFIX,
    Lake,
    LakeFile,
    parse_partition,
    partition_name,
    write_parquet,
)

D1, D2, D3 = date(2024, 3, 1), date(2024, 3, 2), date(2024, 3, 3)


def table(*values: float) -> pa.Table:
    return pa.table({"metric": ["m"] * len(values), "value": list(values)})


def tmp_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.name.endswith(TMP_SUFFIX))


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    return Lake(tmp_path / "lake")


# -- committing files -----------------------------------------------------------------


def test_write_parquet_is_atomic_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "t" / "date=2024-03-01" / "a.parquet"
    size = write_parquet(table(1.0, 2.5), path)
    assert size == path.stat().st_size > 0
    assert pq.read_table(path).column("value").to_pylist() == [1.0, 2.5]
    assert tmp_files(tmp_path) == []


def test_write_parquet_overwrites_in_place(tmp_path: Path) -> None:
    path = tmp_path / "a.parquet"
    write_parquet(table(1.0), path)
    write_parquet(table(2.0, 3.0), path)
    assert pq.read_table(path).column("value").to_pylist() == [2.0, 3.0]
    assert tmp_files(tmp_path) == []


@pytest.mark.parametrize("compression", ["zstd", "snappy", "gzip", "lz4", "none"])
def test_write_parquet_every_compression(tmp_path: Path, compression: str) -> None:
    path = tmp_path / f"{compression}.parquet"
    write_parquet(table(1.0, -0.0, 1e300), path, compression=compression)
    assert pq.read_table(path).column("value").to_pylist() == [1.0, -0.0, 1e300]


def test_write_parquet_failure_raises_storage_error_and_cleans_up(tmp_path: Path) -> None:
    target = tmp_path / "taken.parquet"
    target.mkdir()  # the final rename cannot replace a folder
    with pytest.raises(StorageError, match=r"taken\.parquet"):
        write_parquet(table(1.0), target)
    assert tmp_files(tmp_path) == []


def test_temporary_garbage_is_never_listed(lake: Lake) -> None:
    committed = lake.write("samples", D1, table(1.0), "a.parquet")
    folder = lake.partition_dir("samples", D1)
    (folder / ("b.parquet" + TMP_SUFFIX)).write_bytes(b"half a parquet file")
    (folder / "notes.txt").write_text("not a table file")
    (folder / "sub.parquet").mkdir()  # a folder named like a file
    assert lake.files("samples") == [LakeFile("samples", D1, committed)]


def test_write_names_files_and_flat_tables(lake: Lake) -> None:
    named = lake.write("samples", D1, table(1.0), "x.parquet")
    assert named == lake.root / "samples" / "date=2024-03-01" / "x.parquet"
    generated = lake.write("samples", D1, table(2.0))
    assert generated.suffix == ".parquet"
    assert generated.parent == named.parent
    flat = lake.write("series", None, table(3.0), "s.parquet")
    assert flat == lake.root / "series" / "s.parquet"
    assert lake.flat_files("series") == [flat]
    assert lake.flat_files("missing") == []
    assert lake.glob("samples") == str(lake.root / "samples" / "*" / "*.parquet")


# -- listing ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "end", "days"),
    [
        (None, None, [D1, D2, D3]),
        (D2, None, [D2, D3]),
        (None, D2, [D1, D2]),
        (D2, D2, [D2]),
        (D1, D3, [D1, D2, D3]),
        (date(2024, 2, 1), date(2024, 2, 28), []),
        (D3, D1, []),
    ],
)
def test_files_filters_by_day_inclusive(lake: Lake, start: date | None, end: date | None, days: list[date]) -> None:
    for day in (D3, D1, D2):
        lake.write("samples", day, table(1.0), "b.parquet")
        lake.write("samples", day, table(2.0), "a.parquet")
    found = lake.files("samples", start, end)
    assert [f.day for f in found] == [d for d in days for _ in range(2)]
    assert [f.name for f in found] == ["a.parquet", "b.parquet"] * len(days)  # sorted by name within a day
    assert all(f.path.parent.name == partition_name(f.day) for f in found)


def test_partitions_ignore_folders_that_are_not_days(lake: Lake) -> None:
    lake.write("samples", D2, table(1.0), "a.parquet")
    lake.write("samples", D1, table(1.0), "a.parquet")
    for name in ("date=garbage", "other", "date=2024-13-01"):
        (lake.table_dir("samples") / name).mkdir()
    (lake.table_dir("samples") / "date=2024-03-09").write_text("a file, not a folder")
    assert lake.partitions("samples") == [D1, D2]
    assert lake.partitions("missing") == []
    assert lake.files("missing") == []


@pytest.mark.parametrize(
    ("name", "day"),
    [("date=2024-03-01", D1), ("date=2024-02-30", None), ("day=2024-03-01", None), ("date=", None)],
)
def test_parse_partition(name: str, day: date | None) -> None:
    assert parse_partition(name) == day
    if day is not None:
        assert partition_name(day) == name


def test_compacted_flag_follows_the_prefix(lake: Lake) -> None:
    lake.write("samples", D1, table(1.0), "c-gen.parquet")
    lake.write("samples", D1, table(1.0), "w-writer-000000000001.parquet")
    assert [(f.name, f.compacted) for f in lake.files("samples")] == [
        ("c-gen.parquet", True),
        ("w-writer-000000000001.parquet", False),
    ]


# -- swaps and their journal ----------------------------------------------------------


def test_replace_swaps_new_files_in_and_old_ones_out(lake: Lake) -> None:
    old = [lake.write("samples", D1, table(float(i)), f"w-{i}.parquet") for i in range(3)]
    new = lake.stage("samples", D1, table(0.0, 1.0, 2.0), "c-1.parquet")
    assert new.name == "c-1.parquet" + TMP_SUFFIX
    assert [f.name for f in lake.files("samples")] == ["w-0.parquet", "w-1.parquet", "w-2.parquet"]  # staged: unseen

    lake.replace([new], old)

    assert [f.name for f in lake.files("samples")] == ["c-1.parquet"]
    assert pq.read_table(lake.partition_dir("samples", D1) / "c-1.parquet").column("value").to_pylist() == [
        0.0,
        1.0,
        2.0,
    ]
    assert tmp_files(lake.root) == []
    assert not (lake.root / ".swap-journal.json").exists()
    assert lake.recover() is False


def test_replace_with_nothing_new_deletes(lake: Lake) -> None:
    old = lake.write("samples", D1, table(1.0), "a.parquet")
    lake.replace([], [old])
    assert lake.files("samples") == []


def stage_swap(lake: Lake) -> tuple[list[Path], list[Path], list[Path]]:
    """Old files of two tables, new files staged for them, and the final names of the new ones."""
    old = [
        lake.write("samples", D1, table(1.0), "w-a.parquet"),
        lake.write("samples", D1, table(2.0), "w-b.parquet"),
        lake.write("rollups_1m", D1, table(3.0), "c-old.parquet"),
    ]
    new = [
        lake.stage("samples", D1, table(1.0, 2.0), "c-new.parquet"),
        lake.stage("rollups_1m", D1, table(3.0), "c-new.parquet"),
    ]
    finals = [p.with_name(p.name.removesuffix(TMP_SUFFIX)) for p in new]
    return old, new, finals


def test_recover_rolls_an_interrupted_swap_forward(lake: Lake) -> None:
    old, new, finals = stage_swap(lake)
    lake._write_journal(new, old)  # the crash happened right after the journal was made durable

    again = Lake(lake.root)  # the next process
    assert again.recover() is True

    assert all(p.exists() for p in finals)
    assert not any(p.exists() for p in old)
    assert tmp_files(lake.root) == []
    assert not (lake.root / ".swap-journal.json").exists()
    assert [f.name for f in again.files("samples")] == ["c-new.parquet"]
    assert [f.name for f in again.files("rollups_1m")] == ["c-new.parquet"]
    assert again.recover() is False


def test_recover_finishes_a_swap_interrupted_between_renames(lake: Lake) -> None:
    old, new, finals = stage_swap(lake)
    lake._write_journal(new, old)
    os.replace(new[0], finals[0])  # the first rename happened, then the crash
    old[0].unlink()  # and even one delete

    assert lake.recover() is True

    assert all(p.exists() for p in finals)
    assert not any(p.exists() for p in old)
    assert tmp_files(lake.root) == []


@pytest.mark.parametrize("missing", [0, 1])
def test_recover_rolls_back_when_a_new_file_is_missing(lake: Lake, missing: int) -> None:
    old, new, finals = stage_swap(lake)
    lake._write_journal(new, old)
    new[missing].unlink()  # never made it to disk

    assert lake.recover() is True

    assert all(p.exists() for p in old)  # the old files are all kept
    assert not any(p.exists() for p in finals)
    assert tmp_files(lake.root) == []  # the surviving staged file is dropped
    assert not (lake.root / ".swap-journal.json").exists()
    assert sorted(f.name for f in lake.files("samples")) == ["w-a.parquet", "w-b.parquet"]
    assert [f.name for f in lake.files("rollups_1m")] == ["c-old.parquet"]


def test_journal_records_paths(lake: Lake) -> None:
    old, new, _ = stage_swap(lake)
    lake._write_journal(new, old)
    payload = json.loads((lake.root / ".swap-journal.json").read_text(encoding="utf-8"))
    assert payload == {"new": [str(p) for p in new], "old": [str(p) for p in old]}
    assert not (lake.root / (".swap-journal.json" + TMP_SUFFIX)).exists()


# -- leftovers ------------------------------------------------------------------------------


def test_clean_temporary_removes_old_leftovers_and_keeps_young_ones(lake: Lake) -> None:
    folder = lake.partition_dir("samples", D1)
    folder.mkdir(parents=True)
    young = folder / ("young.parquet" + TMP_SUFFIX)
    old = folder / ("old.parquet" + TMP_SUFFIX)
    flat_old = lake.root / "series" / ("s.parquet" + TMP_SUFFIX)
    flat_old.parent.mkdir()
    committed = lake.write("samples", D1, table(1.0), "kept.parquet")
    for path in (young, old, flat_old):
        path.write_bytes(b"partial")
    two_hours_ago = time.time() - 7200
    for path in (old, flat_old, committed):
        os.utime(path, (two_hours_ago, two_hours_ago))

    assert lake.clean_temporary(min_age_seconds=3600) == 2

    assert young.exists()
    assert not old.exists()
    assert not flat_old.exists()
    assert committed.exists()  # committed files are never touched, however old


def test_clean_temporary_finishes_a_swap_before_cleaning(lake: Lake) -> None:
    old, new, finals = stage_swap(lake)
    lake._write_journal(new, old)
    long_ago = time.time() - 7200
    for path in new:
        os.utime(path, (long_ago, long_ago))

    assert lake.clean_temporary(min_age_seconds=3600) == 0  # the staged files were renamed, not deleted

    assert all(p.exists() for p in finals)
    assert not any(p.exists() for p in old)


# -- dropping partitions --------------------------------------------------------------------


def test_drop_partition_deletes_a_day(lake: Lake) -> None:
    a = lake.write("samples", D1, table(1.0), "a.parquet")
    b = lake.write("samples", D1, table(2.0, 3.0), "b.parquet")
    lake.write("samples", D2, table(4.0), "a.parquet")
    size = a.stat().st_size + b.stat().st_size

    assert lake.drop_partition("samples", D1) == size

    assert lake.partitions("samples") == [D2]
    assert lake.drop_partition("samples", D1) == 0  # already gone
    assert lake.drop_partition("missing", D1) == 0


def test_drop_partition_archives_with_the_same_layout(lake: Lake, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    a = lake.write("samples", D1, table(1.0), "a.parquet")
    content = a.read_bytes()

    freed = lake.drop_partition("samples", D1, archive_to=archive)

    assert freed == len(content)
    assert lake.partitions("samples") == []
    moved = archive / "samples" / "date=2024-03-01" / "a.parquet"
    assert moved.read_bytes() == content
    assert Lake(archive).files("samples") == [LakeFile("samples", D1, moved)]


def test_drop_partition_archive_merges_into_an_existing_archived_day(lake: Lake, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    lake.write("samples", D1, table(1.0), "first.parquet")
    lake.drop_partition("samples", D1, archive_to=archive)
    lake.write("samples", D1, table(2.0), "second.parquet")  # the day got data again, then expired again

    lake.drop_partition("samples", D1, archive_to=archive)

    assert lake.partitions("samples") == []
    assert sorted(p.name for p in (archive / "samples" / "date=2024-03-01").iterdir()) == [
        "first.parquet",
        "second.parquet",
    ]


def test_quarantining_a_file_twice_is_harmless(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    path = lake.table_dir("series") / "bad.parquet"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"junk")
    first = lake.quarantine_file(path, "series", ValueError("unreadable"))
    second = lake.quarantine_file(path, "series", ValueError("unreadable"))  # a second reader, a moment later
    assert first == second
    assert first.is_file()
