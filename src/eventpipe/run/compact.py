"""What a plain analytics step reads of a process step: every current partition, from a
compacted copy instead of one version file per partition.

The copy, kept per analytics step and input under ``.partials/``, is two parquet files with
the rows of many partition versions and two more columns naming each row's partition and
version: a *base* and a *delta* of what changed since the base. A run keeps the rows of the
(partition, version) pairs it wants, reads only the partitions the copy lacks (new, changed
or restored ones), adds them to the delta, and folds the delta into a new base once it holds
a quarter of the rows. A retracted or replaced partition's rows are simply not wanted.

Versions are immutable, so rows keyed by (partition, version) never go stale: the copy is a
cache, and one that is missing or unreadable is rebuilt from the version files. The frame
given to the step is the one reading every version file would give: the same rows, in
partition order (each partition's rows in their own order), the same columns.
"""

from __future__ import annotations

import json
import logging
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from eventpipe.core.storage import Storage

log = logging.getLogger("eventpipe.run")

PARTITION = "__eventpipe_partition__"
VERSION = "__eventpipe_partition_version__"
DIRECT = 16
"""Up to this many partitions, the version files are read as they are: no copy is kept."""
DELTA_SHARE = 0.25
"""The share of the base's rows past which the delta is folded into a new base."""
_SEP = "\x00"


@dataclass
class _Copy:
    """The compacted copy's two files (names under its directory)."""

    base: str | None = None
    delta: str | None = None


def read_partitions(
    store: Storage, reader: str, source: str, wanted: tuple[tuple[str, str], ...]
) -> pd.DataFrame:
    """The ``wanted`` (partition, version) pairs of process step ``source`` concatenated in
    partition order, as analytics step ``reader`` sees them."""
    if len(wanted) <= DIRECT:
        return _frame(_read_versions(store, source, list(wanted), tag=False))
    manifest = store.partials_path(reader, f"compact-{source}.json")
    held = _load(store, manifest)
    keys = pa.array([f"{p}{_SEP}{v}" for p, v in wanted], pa.string())
    have: set[str] = set()
    dead = 0
    kept: dict[str, pa.Table | None] = {}
    for role in ("base", "delta"):
        table = _read_copy(store, reader, getattr(held, role))
        if table is None:
            kept[role] = None
            continue
        rows = table.filter(pc.is_in(_keys(table), value_set=keys))
        kept[role] = rows
        dead += len(table) - len(rows)
        have.update(pc.unique(_keys(rows)).to_pylist())
    missing = [(p, v) for p, v in wanted if f"{p}{_SEP}{v}" not in have]
    fresh = _read_versions(store, source, missing, tag=True)
    base, delta = kept["base"], _concat([kept["delta"], fresh])
    whole = _concat([base, delta])
    if whole is None:
        return pd.DataFrame()
    whole = whole.take(pc.sort_indices(whole, sort_keys=[(PARTITION, "ascending")]))  # stable
    if (
        base is None
        or dead > DELTA_SHARE * len(whole)
        or len(delta or ()) > DELTA_SHARE * len(base)
    ):
        _update(store, reader, source, manifest, held, base=whole)  # fold: one new base
    elif fresh is not None or (held.delta is not None and kept["delta"] is None):
        _update(store, reader, source, manifest, held, delta=delta)
    return _frame(whole.drop_columns([PARTITION, VERSION]))


def _keys(table: pa.Table) -> pa.ChunkedArray:
    return pc.binary_join_element_wise(table[PARTITION], table[VERSION], _SEP)


def _read_versions(
    store: Storage, source: str, pairs: list[tuple[str, str]], *, tag: bool
) -> pa.Table | None:
    """The version files of ``pairs``, concatenated in order; with ``tag``, each row names its
    partition and version. Read by a few threads: parquet decoding releases the GIL."""
    if not pairs:
        return None

    def one(pair: tuple[str, str]) -> pa.Table:
        table = store.read_table(store.version_path(source, pair[1]), use_threads=False)
        if not tag:
            return table
        n = len(table)
        return table.append_column(PARTITION, pa.array([pair[0]] * n, pa.string())).append_column(
            VERSION, pa.array([pair[1]] * n, pa.string())
        )

    if len(pairs) == 1:
        return one(pairs[0])
    with ThreadPoolExecutor(max_workers=min(8, len(pairs))) as pool:
        return _concat(list(pool.map(one, pairs)))


def _concat(tables: list[pa.Table | None]) -> pa.Table | None:
    tables = [t for t in tables if t is not None]
    if not tables:
        return None
    if len(tables) == 1:
        return tables[0]
    return pa.concat_tables(tables, promote_options="permissive")


def _frame(table: pa.Table | None) -> pd.DataFrame:
    if table is None:
        return pd.DataFrame()
    frame: pd.DataFrame = table.to_pandas()
    return frame


def _load(store: Storage, manifest: str) -> _Copy:
    try:
        if not store.exists(manifest):
            return _Copy()
        body = json.loads(store.read_bytes(manifest))
        return _Copy(base=body.get("base"), delta=body.get("delta"))
    except Exception:  # a cache: rebuilt from the version files
        log.warning("compacted copy %s unreadable; rebuilding it", manifest)
        return _Copy()


def _read_copy(store: Storage, reader: str, name: str | None) -> pa.Table | None:
    if name is None:
        return None
    try:
        return store.read_table(store.partials_path(reader, name))
    except Exception:  # its partitions are read from their version files again
        log.warning("compacted copy %s unreadable; reading its partitions again", name)
        return None


def _update(
    store: Storage,
    reader: str,
    source: str,
    manifest: str,
    held: _Copy,
    *,
    base: pa.Table | None = None,
    delta: pa.Table | None = None,
) -> None:
    """Write a new ``base`` (which replaces base and delta) or a new ``delta`` (beside the
    base ``held``), point the manifest at them, then drop the files only ``held`` named. A
    failure costs the next run some reads, nothing else."""
    try:
        new = _Copy(base=held.base)
        if base is not None:
            new.base = _write(store, reader, source, base)
        elif delta is not None:
            new.delta = _write(store, reader, source, delta)
        store.write_bytes(manifest, json.dumps({"base": new.base, "delta": new.delta}).encode())
        for name in {held.base, held.delta} - {new.base, new.delta}:
            if name is not None:
                store.delete(store.partials_path(reader, name))
    except Exception:
        log.warning("compacted copy %s not updated", manifest, exc_info=True)


def _write(store: Storage, reader: str, source: str, table: pa.Table) -> str:
    name = f"compact-{source}-{uuid.uuid4().hex[:12]}.parquet"
    store.write_table(store.partials_path(reader, name), table)
    return name
