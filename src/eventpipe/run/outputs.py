"""Current outputs: pointed at a new version (atomically), restored when deleted or changed,
and rejected files moved to quarantine."""

from __future__ import annotations

import logging
import time

from eventpipe.core.atomic import file_digest
from eventpipe.core.fs import Stat, check_relative
from eventpipe.core.models import Output
from eventpipe.core.readers import suffix_of
from eventpipe.ledger import AssetRow, FileRow
from eventpipe.pipeline import Step
from eventpipe.run.context import RunContext
from eventpipe.run.tasks import inbox_file

log = logging.getLogger("eventpipe.run")


def publish(
    run: RunContext,
    step: Step,
    kind: str,
    partition: str,
    current: str,
    out: Output,
    input_fingerprint: str,
) -> None:
    """Point the current output at ``out``'s version (atomically: a rename locally, one
    server-side copy in a bucket) and record it."""
    publish_many(run, step, kind, [(partition, current, out, input_fingerprint)])


def publish_many(
    run: RunContext, step: Step, kind: str, items: list[tuple[str, str, Output, str]]
) -> None:
    """:func:`publish` for many partitions of ``step`` (``(partition, current, output,
    input fingerprint)`` each): each current output replaced, then one ledger transaction."""
    store = run.store
    rows: list[tuple[AssetRow, str, list[str]]] = []
    for partition, current, out, input_fingerprint in items:
        stat = store.stat(current) if store.same_object(current, out.path) else None
        if stat is None:
            # no fsync: a current output lost to a crash is put back from its version
            # (restore_outputs), which is durable before the ledger commit
            stat = store.copy(out.path, current, durable=False)
            if run.mirror is not None:
                log.info("published %s", run.mirror(current))
        row = AssetRow(
            pipeline=run.pipeline.name,
            name=step.name,
            partition=partition,
            kind=kind,
            key=out.key,
            version=out.version,
            path=current,
            rows=out.rows,
            size=stat.size,
            mtime_ns=stat.mtime_ns,
            code_version=step.code_version,
            input_fingerprint=input_fingerprint,
            updated_at=time.time(),
        )
        rows.append((row, out.path, list(out.sources)))
    run.ledger.publish_many(rows, run.run_id)


def restore_outputs(run: RunContext) -> list[AssetRow]:
    """Put back current outputs that were deleted or changed since they were published.

    Returns the rows whose version file is gone too (they must be recomputed).
    """
    lost: list[AssetRow] = []
    store = run.store
    scans: dict[str, dict[str, Stat] | None] = {}  # one directory scan, not a stat each
    for row in run.ledger.assets(run.pipeline.name):
        current = row.path
        folder, _, name = current.rpartition("/")
        if folder not in scans:
            scans[folder] = store.stats_in(folder)
        scan = scans[folder]
        stat = scan[name] if scan is not None and name in scan else store.stat(current)
        if stat is not None and (stat.size, stat.mtime_ns) == (row.size, row.mtime_ns):
            continue
        version_file = store.version_path(row.name, row.version)
        if not store.exists(version_file):
            lost.append(row)
            continue
        stat = store.copy(version_file, current, durable=False)
        if run.mirror is not None:
            run.mirror(current)
        run.ledger.touch_asset(
            AssetRow(**{**row.__dict__, "size": stat.size, "mtime_ns": stat.mtime_ns})
        )
        log.warning("restored %s (version %s): it was deleted or changed", current, row.version)
    return lost


def quarantine_snapshot(run: RunContext, row: FileRow, reason: str) -> str:
    """Copy a rejected file's raw snapshot into quarantine beside its reason (server-side in
    a bucket); only the reason when no snapshot was taken."""
    note = run.store.quarantine_note(row.relative, reason, row.sha256, row.uri)
    suffix = suffix_of(row.relative)
    snapshot = run.store.raw_snapshot_path(row.sha256, suffix) if suffix else None
    if snapshot is not None and run.store.exists(snapshot):
        kept = f"quarantine/{run.store.pipeline}/{check_relative(row.relative)}"
        run.store.copy(snapshot, run.store.location(kept))
    log.warning("quarantined %s: %s", row.relative, reason)
    return note


def quarantine_landed(run: RunContext, row: FileRow, reason: str) -> str | None:
    """Move a rejected file out of the inbox, unless a newer version has replaced it there.
    An object of a bucket source stays where it is: quarantine holds a note about it."""
    if row.source == "s3":
        note = run.store.quarantine_note(row.relative, reason, row.sha256, row.uri)
        log.warning("rejected %s: %s", row.uri, reason)
        return note
    source = inbox_file(row)
    if source is None or not (source.exists() or source.is_symlink()):
        if run.store.local_root is None:
            # With the data in a bucket the run may be on another host than the watcher's
            # inbox: quarantine gets the file's raw snapshot (as the watcher uploaded it).
            return quarantine_snapshot(run, row, reason)
        return None
    try:
        if source.is_symlink() or file_digest(source) != row.sha256:
            return None
    except FileNotFoundError:
        return None
    target = run.store.quarantine(source, row.relative, reason, row.sha256)
    log.warning("quarantined %s: %s", row.relative, reason)
    return target
