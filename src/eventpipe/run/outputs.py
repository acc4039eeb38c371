"""Current outputs: pointed at a new version (atomically), restored when deleted or changed,
and rejected files moved to quarantine."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from eventpipe.core.models import Output
from eventpipe.core.storage import atomic_copy, file_digest, quarantine
from eventpipe.ledger import AssetRow, FileRow
from eventpipe.pipeline import Step
from eventpipe.run.context import RunContext

log = logging.getLogger("eventpipe.run")


def publish(
    run: RunContext,
    step: Step,
    kind: str,
    partition: str,
    current: Path,
    out: Output,
    input_fingerprint: str,
) -> None:
    """Point the current output at ``out``'s version (atomically) and record it."""
    version_file = Path(out.path)
    if not same_file(current, version_file):
        atomic_copy(version_file, current)
        if run.mirror is not None:
            log.info("published %s", run.mirror(current))
    stat = current.stat()
    run.ledger.publish(
        AssetRow(
            pipeline=run.pipeline.name,
            name=step.name,
            partition=partition,
            kind=kind,
            key=out.key,
            version=out.version,
            path=str(current),
            rows=out.rows,
            size=stat.st_size,
            mtime_ns=stat.st_mtime_ns,
            code_version=step.code_version,
            input_fingerprint=input_fingerprint,
            updated_at=time.time(),
        ),
        str(version_file),
        list(out.sources),
        run.run_id,
    )


def same_file(current: Path, version_file: Path) -> bool:
    try:
        a, b = current.stat(), version_file.stat()
    except FileNotFoundError:
        return False
    return a.st_size == b.st_size and file_digest(current) == file_digest(version_file)


def restore_outputs(run: RunContext) -> list[AssetRow]:
    """Put back current outputs that were deleted or changed since they were published.

    Returns the rows whose version file is gone too (they must be recomputed).
    """
    lost: list[AssetRow] = []
    for row in run.ledger.assets(run.pipeline.name):
        current = Path(row.path)
        try:
            stat = current.stat()
            if (stat.st_size, stat.st_mtime_ns) == (row.size, row.mtime_ns):
                continue
        except FileNotFoundError:
            pass
        version_file = run.store.version_path(row.name, row.version)
        if not version_file.exists():
            lost.append(row)
            continue
        atomic_copy(version_file, current)
        if run.mirror is not None:
            run.mirror(current)
        stat = current.stat()
        run.ledger.touch_asset(
            AssetRow(**{**row.__dict__, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns})
        )
        log.warning("restored %s (version %s): it was deleted or changed", current, row.version)
    return lost


def quarantine_landed(run: RunContext, row: FileRow, reason: str) -> str | None:
    """Move a rejected file out of the inbox, unless a newer version has replaced it there."""
    if not row.local_path:
        return None
    source = Path(row.local_path)
    try:
        if source.is_symlink() or file_digest(source) != row.sha256:
            return None
    except FileNotFoundError:
        return None
    target = quarantine(run.store.data, run.pipeline.name, source, row.relative, reason, row.sha256)
    log.warning("quarantined %s: %s", row.relative, reason)
    return str(target)
