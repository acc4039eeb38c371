"""The retraction stage of a materialize run: the partitions of files being retracted leave
the outputs before anything else is computed, so the analytics of this run do without them."""

from __future__ import annotations

import logging

from eventpipe.core.keys import partition_name
from eventpipe.events.build import retracted_event
from eventpipe.run.context import RunContext

log = logging.getLogger("eventpipe.run")


def retract_partitions(run: RunContext) -> None:
    """Remove the current partitions of every ``retracting`` file (the current output file and
    its asset row; its versions stay in the version store), close each file ``retracted`` with
    an ``eventpipe.file.retracted`` event listing what left. The analytics then see other
    partitions than their current versions were made of, and are computed again."""
    pipe, ledger, store = run.pipeline, run.ledger, run.store
    rows = ledger.retracting(pipe.name)
    for row in rows:
        partition = partition_name(row.relative)
        removed: list[dict[str, str]] = []
        for step in pipe.process_steps:
            asset = ledger.asset(pipe.name, step.name, partition)
            if asset is None:
                continue
            store.delete(asset.path)
            ledger.drop_partition(pipe.name, step.name, partition)
            removed.append({"step": step.name, "partition": partition, "version": asset.version})
        if ledger.close_retraction(row, retracted_event(row, removed, run.run_id)):
            log.info(
                "retracted %s (%s): %d partition(s) removed",
                row.relative,
                row.reason,
                len(removed),
            )
            run.report.files_retracted.append(row.relative)
