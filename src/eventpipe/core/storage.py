"""Where outputs live, and the one way they are written: temp name, fsync, rename
(:func:`write_atomic`).

Layout under the data dir (a documented contract; users read these paths directly)::

    processed/<pipeline>/<step>/<partition>.parquet   current partition of a process step
    analytics/<pipeline>/<name>.parquet               current analytics asset
    versions/<pipeline>/<asset>/<version>.parquet     every version ever written (content-addressed)
    raw/<pipeline>/<sha256><suffix>                   immutable snapshot of each landed file
    quarantine/<pipeline>/<file>(.reason.json)        rejected files, moved out of the inbox
    ledger.sqlite                                     files, outbox, asset catalog
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import pandas as pd


class Storage:
    """Paths and atomic writes for one pipeline's outputs under ``data``."""

    def __init__(self, data: Path, pipeline: str) -> None:
        self.data = data.resolve()
        self.pipeline = pipeline

    def processed_path(self, step: str, partition: str) -> Path:
        return self.data / "processed" / self.pipeline / step / f"{partition}.parquet"

    def analytics_path(self, name: str) -> Path:
        return self.data / "analytics" / self.pipeline / f"{name}.parquet"

    def version_path(self, asset: str, version: str) -> Path:
        return self.data / "versions" / self.pipeline / asset / f"{version}.parquet"

    def raw_snapshot_path(self, fingerprint: str, suffix: str) -> Path:
        return self.data / "raw" / self.pipeline / f"{fingerprint}{suffix}"

    def write_version(self, asset: str, frame: pd.DataFrame) -> tuple[str, Path]:
        """Write ``frame`` into the version store; the version id is the digest of its bytes."""

        def write(tmp: Path) -> str:
            frame.to_parquet(tmp, index=False)
            return file_digest(tmp)[:16]

        final, version = write_atomic(
            self.version_path(asset, "x").parent,
            write,
            lambda version: f"{version}.parquet",
            suffix=".parquet",
        )
        return version, final

    def snapshot_raw(self, source: Path, fingerprint: str, suffix: str) -> Path:
        """Copy a landed file into the raw store once; later writes to it can't change the copy."""
        target = self.raw_snapshot_path(fingerprint, suffix)
        if not target.exists():
            atomic_copy(source, target)
        return target


def inside(root: Path, relative: str) -> Path:
    """``root / relative``, refusing any ``relative`` that would leave ``root``."""
    base = root.resolve()
    target = (base / relative).resolve()
    if target == base or not target.is_relative_to(base):
        raise ValueError(f"{relative!r} escapes {base}")
    return target


def quarantine(
    data: Path, pipeline: str, source: Path, relative: str, reason: str, sha256: str | None
) -> Path:
    """Move a rejected file out of the inbox to ``quarantine/<pipeline>/<relative>``, with a
    ``.reason.json`` beside it; a symlink is moved as a link, its target never read."""
    target = inside(data / "quarantine" / pipeline, relative)
    if target.exists() or target.is_symlink():
        target = target.with_name(f"{target.name}.{time.time_ns()}")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(source, target)
    except OSError:  # another file system
        if source.is_symlink():
            os.symlink(os.readlink(source), target)
        else:
            shutil.copyfile(source, target)
        source.unlink()
    _write_reason(target, relative, reason, sha256, pipeline, None)
    return target


def quarantine_note(
    data: Path, pipeline: str, relative: str, reason: str, sha256: str | None, uri: str
) -> Path:
    """Mark a rejected file that stays where it is (an object in a bucket): only its
    ``.reason.json`` goes to quarantine. Returns the note's path."""
    target = inside(data / "quarantine" / pipeline, relative)
    target.parent.mkdir(parents=True, exist_ok=True)
    return _write_reason(target, relative, reason, sha256, pipeline, uri)


def _write_reason(
    target: Path, relative: str, reason: str, sha256: str | None, pipeline: str, uri: str | None
) -> Path:
    note = {
        "file": relative,
        "reason": reason,
        "sha256": sha256,
        "quarantined_at": datetime.now(UTC).isoformat(),
        "pipeline": pipeline,
    }
    if uri is not None:
        note["uri"] = uri
    reason_file = target.with_name(target.name + ".reason.json")
    write_bytes_atomic(reason_file, (json.dumps(note, indent=2) + "\n").encode())
    return reason_file


T = TypeVar("T")


def write_atomic(
    directory: Path,
    write: Callable[[Path], T],
    name: str | Callable[[T], str],
    *,
    suffix: str = "",
    keep_existing: bool = False,
) -> tuple[Path, T]:
    """The one way eventpipe writes a file that readers may see.

    ``write(tmp)`` fills a temp file in ``directory``; it is fsynced, then renamed to ``name``
    (or to ``name(result)``, for a file named after its content), so readers see the old file
    or the whole new one, never a part. With ``keep_existing`` an existing target (the same
    content under a content-derived name) is kept and the temp file dropped. On any failure
    the temp file is removed. Returns the final path and what ``write`` returned."""
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=suffix)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        result = write(tmp)
        target = directory / (name if isinstance(name, str) else name(result))
        if keep_existing and target.exists():
            tmp.unlink()
            return target, result
        _fsync_file(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target, result


def write_bytes_atomic(target: Path, content: bytes) -> Path:
    """Write ``content`` to ``target`` atomically (see :func:`write_atomic`)."""
    path, _ = write_atomic(target.parent, lambda tmp: tmp.write_bytes(content), target.name)
    return path


def atomic_copy(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` so that readers see either the old or the whole new file."""
    write_atomic(target.parent, lambda tmp: shutil.copyfile(source, tmp), target.name)


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes."""
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
