"""The compacted copy a plain analytics step reads: the same frame as reading every version
file, and, once the copy exists, only the partitions that changed are read."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from eventpipe.core.storage import Storage
from eventpipe.run import compact
from eventpipe.run.compute import read_versions
from tests.test_fs import _bucket_store

Wanted = tuple[tuple[str, str], ...]


def _partition(i: int, generation: int = 0) -> pd.DataFrame:
    rows = 1 + i % 3
    return pd.DataFrame(
        {
            "day": [f"2026-01-{1 + i % 28:02d}"] * rows,
            "amount": [float(i * 10 + generation + r) for r in range(rows)],
        }
    )


def _land(store: Storage, parts: dict[str, pd.DataFrame]) -> Wanted:
    return tuple(sorted((p, store.write_version("cleaned", f)[0]) for p, f in parts.items()))


def _direct(store: Storage, wanted: Wanted) -> pd.DataFrame:
    return read_versions(store, [store.version_path("cleaned", v) for _, v in wanted])


def _copy_files(store: Storage) -> list[Path]:
    return sorted((store.data / ".partials").rglob("compact-*.parquet"))


@pytest.fixture
def store(tmp_path: Path) -> Storage:
    return Storage(tmp_path, "sales")


def test_the_copy_gives_the_frame_every_version_file_gives(store: Storage) -> None:
    parts = {f"p{i:03d}": _partition(i) for i in range(40)}
    wanted = _land(store, parts)
    first = compact.read_partitions(store, "revenue", "cleaned", wanted)
    pd.testing.assert_frame_equal(first, _direct(store, wanted))
    assert len(_copy_files(store)) == 1  # the base
    again = compact.read_partitions(store, "revenue", "cleaned", wanted)
    pd.testing.assert_frame_equal(again, first)


def test_once_the_copy_exists_only_changed_partitions_are_read(store: Storage) -> None:
    parts = {f"p{i:03d}": _partition(i) for i in range(40)}
    wanted = _land(store, parts)
    compact.read_partitions(store, "revenue", "cleaned", wanted)
    pd.testing.assert_frame_equal(
        _direct(store, wanted), pd.concat(parts.values(), ignore_index=True)
    )
    for _, version in wanted:  # the copy holds them: their version files are not read again
        Path(store.version_path("cleaned", version)).unlink()
    parts["p007"] = _partition(7, generation=1)  # one partition replaced
    parts["p100"] = _partition(100)  # one new
    del parts["p020"]  # one retracted
    changed = _land(store, {k: parts[k] for k in ("p007", "p100")})
    versions = dict(wanted) | dict(changed)
    now = tuple(sorted((p, versions[p]) for p in parts))
    frame = compact.read_partitions(store, "revenue", "cleaned", now)
    expected = pd.concat([parts[p] for p, _ in now], ignore_index=True)
    pd.testing.assert_frame_equal(frame, expected)
    assert len(_copy_files(store)) == 2  # the base and a delta of the two changed partitions


def test_a_growing_delta_is_folded_into_a_new_base(store: Storage) -> None:
    parts = {f"p{i:03d}": _partition(i) for i in range(40)}
    compact.read_partitions(store, "revenue", "cleaned", _land(store, parts))
    for generation in range(1, 8):  # a few partitions change each run
        for i in range(generation * 3, generation * 3 + 3):
            parts[f"p{i:03d}"] = _partition(i, generation)
        wanted = _land(store, parts)
        frame = compact.read_partitions(store, "revenue", "cleaned", wanted)
        pd.testing.assert_frame_equal(frame, _direct(store, wanted))
        assert 1 <= len(_copy_files(store)) <= 2  # never more than a base and a delta


def test_a_lost_or_broken_copy_is_rebuilt_from_the_version_files(store: Storage) -> None:
    wanted = _land(store, {f"p{i:03d}": _partition(i) for i in range(40)})
    compact.read_partitions(store, "revenue", "cleaned", wanted)
    (base,) = _copy_files(store)
    base.write_bytes(b"not parquet")
    frame = compact.read_partitions(store, "revenue", "cleaned", wanted)
    pd.testing.assert_frame_equal(frame, _direct(store, wanted))
    (manifest,) = (store.data / ".partials").rglob("compact-*.json")
    manifest.write_text("{")
    frame = compact.read_partitions(store, "revenue", "cleaned", wanted)
    pd.testing.assert_frame_equal(frame, _direct(store, wanted))


def test_a_few_partitions_are_read_directly(store: Storage) -> None:
    wanted = _land(store, {f"p{i:03d}": _partition(i) for i in range(compact.DIRECT)})
    frame = compact.read_partitions(store, "revenue", "cleaned", wanted)
    pd.testing.assert_frame_equal(frame, _direct(store, wanted))
    assert _copy_files(store) == []


def test_the_copy_lives_in_a_bucket_as_well(moto_endpoint: str) -> None:
    store = Storage(_bucket_store(moto_endpoint), "sales")
    parts = {f"p{i:03d}": _partition(i) for i in range(40)}
    wanted = _land(store, parts)
    pd.testing.assert_frame_equal(
        compact.read_partitions(store, "revenue", "cleaned", wanted), _direct(store, wanted)
    )
    parts["p003"] = _partition(3, generation=1)
    wanted = _land(store, parts)
    pd.testing.assert_frame_equal(
        compact.read_partitions(store, "revenue", "cleaned", wanted), _direct(store, wanted)
    )
    copies = [k for k in store.fs.list(".partials") if k.endswith(".parquet")]
    assert len(copies) == 2, copies
