"""Where a pipeline's outputs live, on a local disk or in a bucket, and the one way each kind is
written (:class:`Storage` over a :class:`~eventpipe.core.fs.DataStore`).

Layout under the data dir, a local directory or ``s3://bucket/prefix`` (a documented contract;
users read these paths directly)::

    processed/<pipeline>/<step>/<partition>.parquet   current partition of a process step
    analytics/<pipeline>/<name>.parquet               current analytics asset
    versions/<pipeline>/<asset>/<version>.parquet     every version ever written (content-addressed)
    raw/<pipeline>/<sha256><suffix>                   immutable snapshot of each landed file
    quarantine/<pipeline>/<file>(.reason.json)        rejected files, moved out of the inbox
    fetched/<pipeline>/...                            what fetch sources landed
    .partials/<pipeline>/<step>/...                   partial results of map/combine steps and
                                                      the compacted inputs of plain analytics
    ledger.sqlite                                     files, outbox, asset catalog (local data only)

A *location* is what the ledger records for a stored object and what :class:`Storage`'s methods
take: the absolute path of a local data dir's file (as every release wrote it), or the object's
``s3://`` URI. Asset keys of outputs are made from locations, here only (:meth:`Storage.key`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from eventpipe.core.atomic import (
    atomic_copy,
    file_digest,
    inside,
    write_atomic,
    write_bytes_atomic,
)
from eventpipe.core.fs import DataStore, LocalStore, Stat, check_relative
from eventpipe.core.keys import asset_key

__all__ = [
    "Storage",
    "atomic_copy",
    "file_digest",
    "inside",
    "write_atomic",
    "write_bytes_atomic",
]


class Storage:
    """Locations and writes of one pipeline's outputs in ``store`` (a :class:`DataStore`, or a
    local directory)."""

    def __init__(self, store: DataStore | Path, pipeline: str) -> None:
        self.fs: DataStore = store if isinstance(store, DataStore) else DataStore.local(store)
        self.pipeline = pipeline
        self._local = self.fs.root if isinstance(self.fs, LocalStore) else None

    @property
    def local_root(self) -> Path | None:
        """The data dir, when it is a local directory; None for a bucket."""
        return self._local

    @property
    def data(self) -> Path:
        """The local data dir; a bucket has none (callers check :attr:`local_root` first)."""
        if self._local is None:
            raise RuntimeError(f"{self.where} is a bucket, not a local directory")
        return self._local

    @property
    def where(self) -> str:
        """The data dir for people: its path, or ``s3://bucket/prefix``."""
        return str(self._local) if self._local is not None else self.fs.uri("x")[: -len("x")]

    # -- locations ---------------------------------------------------------------------------

    def location(self, relative: str) -> str:
        """The location of ``relative`` (an absolute path locally, an ``s3://`` URI in a bucket)."""
        if self._local is not None:
            return str(self.fs.path(relative))  # type: ignore[attr-defined]
        return self.fs.uri(relative)

    def relative(self, location: str) -> str:
        """Invert :meth:`location`; :class:`ValueError` for a location outside the data dir."""
        if self._local is not None:
            path = Path(location)
            if not path.is_absolute() or not path.is_relative_to(self._local):
                raise ValueError(f"{location!r} is not under the data dir {self._local}")
            return check_relative(path.relative_to(self._local).as_posix())
        root = self.where
        if not location.startswith(root):
            raise ValueError(f"{location!r} is not under the data dir {root}")
        return check_relative(location[len(root) :])

    def uri(self, location: str) -> str:
        return "file://" + location if self._local is not None else location

    def key(self, location: str) -> str:
        """The asset key of the output at ``location``: its storage URI, escaped."""
        return asset_key(self.uri(location))

    def processed_path(self, step: str, partition: str) -> str:
        return self.location(f"processed/{self.pipeline}/{step}/{partition}.parquet")

    def processed_dir(self, step: str) -> str:
        """The folder of a process step's partitions (the step's asset as a whole)."""
        return self.processed_path(step, "_").rsplit("/", 1)[0]

    def analytics_path(self, name: str) -> str:
        return self.location(f"analytics/{self.pipeline}/{name}.parquet")

    def version_path(self, asset: str, version: str) -> str:
        return self.location(f"versions/{self.pipeline}/{asset}/{version}.parquet")

    def raw_snapshot_path(self, fingerprint: str, suffix: str) -> str:
        return self.location(f"raw/{self.pipeline}/{fingerprint}{suffix}")

    def partials_path(self, step: str, name: str) -> str:
        return self.location(f".partials/{self.pipeline}/{step}/{name}")

    def fetched_path(self, relative: str) -> str:
        """Where a fetch source lands ``relative`` (a path below ``fetched/<pipeline>/``)."""
        return self.location(f"fetched/{self.pipeline}/{relative}")

    # -- objects -----------------------------------------------------------------------------

    def stat(self, location: str) -> Stat | None:
        return self.fs.stat(self.relative(location))

    def stats_in(self, directory: str) -> dict[str, Stat] | None:
        """The regular files directly in the local ``directory`` (a location), by name, in one
        scan: what restoring current outputs compares with the ledger, without a ``stat`` per
        partition. None in a bucket, where each object's ``HEAD`` gives the modification time
        the ledger recorded (a listing's has another precision)."""
        if self._local is None:
            return None
        found: dict[str, Stat] = {}
        try:
            with os.scandir(self.fs.path(self.relative(directory))) as entries:  # type: ignore[attr-defined]
                for entry in entries:
                    if entry.is_file(follow_symlinks=False):
                        st = entry.stat(follow_symlinks=False)
                        found[entry.name] = Stat(st.st_size, st.st_mtime_ns)
        except (FileNotFoundError, NotADirectoryError):
            pass
        return found

    def exists(self, location: str) -> bool:
        return self.stat(location) is not None

    def read_bytes(self, location: str) -> bytes:
        return self.fs.read_bytes(self.relative(location))

    def read_frame(self, location: str, columns: list[str] | None = None) -> pd.DataFrame:
        if self._local is not None:  # pyarrow reads a local file without a copy in memory
            return pd.read_parquet(location, columns=columns)
        return self.fs.read_frame(self.relative(location), columns)

    def read_table(self, location: str, *, use_threads: bool = True) -> pa.Table:
        """The parquet at ``location`` as an Arrow table."""
        if self._local is not None:
            return pq.read_table(location, use_threads=use_threads)
        data = pa.BufferReader(self.read_bytes(location))
        return pq.read_table(data, use_threads=use_threads)

    def write_bytes(self, location: str, data: bytes) -> Stat:
        """Replace the object at ``location``: readers see the old one or the whole new one."""
        return self.fs.write_bytes(self.relative(location), data)

    def write_frame(self, location: str, frame: pd.DataFrame) -> Stat:
        return self.fs.write_frame(self.relative(location), frame)[0]

    def write_table(self, location: str, table: pa.Table) -> Stat:
        """Write an Arrow table as parquet at ``location`` (replaced whole, as ``write_bytes``)."""
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        return self.write_bytes(location, sink.getvalue().to_pybytes())

    def copy(self, source: str, target: str, *, durable: bool = True) -> Stat:
        return self.fs.copy(self.relative(source), self.relative(target), durable=durable)

    def delete(self, location: str) -> None:
        self.fs.delete(self.relative(location))

    def same_object(self, a: str, b: str) -> bool:
        """Whether the objects at ``a`` and ``b`` hold the same bytes (False if one is gone)."""
        sa, sb = self.stat(a), self.stat(b)
        if sa is None or sb is None or sa.size != sb.size:
            return False
        if sa.etag is not None and sb.etag is not None:
            return sa.etag == sb.etag  # a server-side copy keeps the ETag
        return file_digest(Path(a)) == file_digest(Path(b))

    def write_version(self, asset: str, frame: pd.DataFrame) -> tuple[str, str]:
        """Write ``frame`` into the version store; the version id is the digest of its bytes,
        so an existing version is the same content and is kept. Returns (version, location)."""
        data = frame.to_parquet(index=False)
        digest = hashlib.sha256(data).hexdigest()[:16]
        target = self.version_path(asset, digest)
        if not self.exists(target):
            self.write_bytes(target, data)
        return digest, target

    def snapshot_raw(self, source: Path | bytes, fingerprint: str, suffix: str) -> str:
        """Copy a landed file (a local file or its bytes) into the raw store once; later writes
        to the source can't change the copy. Returns the snapshot's location."""
        target = self.raw_snapshot_path(fingerprint, suffix)
        if not self.exists(target):
            if isinstance(source, Path):
                self.fs.upload(self.relative(target), source)
            else:
                self.write_bytes(target, source)
        return target

    def read_raw(self, location: str) -> Path | bytes:
        """A raw snapshot to parse: its local path, or its bytes from the bucket."""
        return Path(location) if self._local is not None else self.read_bytes(location)

    # -- quarantine --------------------------------------------------------------------------

    def quarantine(self, source: Path, relative: str, reason: str, sha256: str | None) -> str:
        """Move a rejected inbox file to ``quarantine/<pipeline>/<relative>``, with a
        ``.reason.json`` beside it. A symlink is only named in the note (``symlink_to``) and
        removed from the inbox, its target never read: nothing under the data dir points
        outside it. Returns the quarantined file's location (a link's: its note's)."""
        link = os.readlink(source) if source.is_symlink() else None
        if self._local is not None:
            target = inside(self._local / "quarantine" / self.pipeline, relative)
            note = target.with_name(target.name + ".reason.json")
            if target.exists() or target.is_symlink() or note.exists():
                target = target.with_name(f"{target.name}.{time.time_ns()}")
            target.parent.mkdir(parents=True, exist_ok=True)
            if link is not None:
                source.unlink()
                return self._write_reason(str(target), relative, reason, sha256, None, link=link)
            try:
                os.replace(source, target)
            except OSError:  # another file system
                shutil.copyfile(source, target)
                source.unlink()
            self._write_reason(str(target), relative, reason, sha256, None)
            return str(target)
        target_rel = f"quarantine/{self.pipeline}/{check_relative(relative)}"
        if self.fs.exists(target_rel):
            target_rel = f"{target_rel}.{time.time_ns()}"
        target_loc = self.location(target_rel)
        if link is None:
            self.fs.upload(target_rel, source)
        source.unlink()
        self._write_reason(target_loc, relative, reason, sha256, None, link=link)
        return target_loc

    def quarantine_note(self, relative: str, reason: str, sha256: str | None, uri: str) -> str:
        """Mark a rejected file that stays where it is (an object in a bucket): only its
        ``.reason.json`` goes to quarantine. Returns the note's location."""
        target = self.location(f"quarantine/{self.pipeline}/{check_relative(relative)}")
        return self._write_reason(target, relative, reason, sha256, uri)

    def _write_reason(
        self,
        target: str,
        relative: str,
        reason: str,
        sha256: str | None,
        uri: str | None,
        *,
        link: str | None = None,
    ) -> str:
        note: dict[str, str | None] = {
            "file": relative,
            "reason": reason,
            "sha256": sha256,
            "quarantined_at": datetime.now(UTC).isoformat(),
            "pipeline": self.pipeline,
        }
        if uri is not None:
            note["uri"] = uri
        if link is not None:
            note["symlink_to"] = link
        reason_file = target + ".reason.json"
        self.write_bytes(reason_file, (json.dumps(note, indent=2) + "\n").encode())
        return reason_file
