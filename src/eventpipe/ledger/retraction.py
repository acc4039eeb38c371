"""Retraction: a file's data taken out of the outputs (it was deleted from the source, or
``eventpipe retract`` named it). Its ledger row goes ``retracting`` and a run removes its
partitions (the versions stay in the version store), recomputes the analytics without them and
closes the row ``retracted``. A duplicate (``skipped``) has no partition: it is ``retracted``
at once, and its twin is left alone. When the retracted file's bytes are still in the source
under another name (its duplicates), those files come back as files of their own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import text

from eventpipe.ledger.db import Database
from eventpipe.ledger.files import _file_row
from eventpipe.ledger.rows import FileRow

_NEWEST = (
    "SELECT * FROM files WHERE pipeline=:pipeline AND uri=:uri ORDER BY landed_seq DESC LIMIT 1"
)


class Retraction(Database):
    """Rows on their way out of the outputs."""

    def retract(
        self,
        pipeline: str,
        uri: str,
        reason: str,
        event_for: Callable[[str, FileRow], tuple[str, Mapping[str, Any]] | None],
        *,
        busy: bool = False,
        twin_present: Callable[[FileRow], bool] = lambda row: True,
    ) -> FileRow | None:
        """Retract the newest version of ``uri``: its row, or None when there is nothing to
        retract (unknown, rejected, already retracted, or being processed and not ``busy``:
        the caller looks again later).

        ``event_for(kind, row)`` builds the events queued with it: ``retracting`` (a run is
        asked to remove its partitions), ``retracted`` (a duplicate, done at once) and
        ``landed`` (a duplicate of it, still present by ``twin_present``, taken as a file of its
        own)."""
        now = time.time()
        with self._tx(lock=pipeline) as db:
            found = db.execute(text(_NEWEST), {"pipeline": pipeline, "uri": uri}).mappings()
            latest = found.first()
            if latest is None or latest["state"] in ("rejected", "retracting", "retracted"):
                return None
            if latest["state"] == "processing" and not busy:
                return None
            duplicate = latest["state"] == "skipped"
            state = "retracted" if duplicate else "retracting"
            row = _file_row(
                db.execute(
                    text(
                        "UPDATE files SET state=:state, reason=:reason, generation=generation+1,"
                        " updated_at=:now WHERE id=:id RETURNING *"
                    ),
                    {"state": state, "reason": reason, "now": now, "id": latest["id"]},
                )
                .mappings()
                .one()
            )
            event = event_for(state, row)
            if event is not None:
                self._queue(db, event[0], event[1], row.id)
            if duplicate:
                return row
            twins = db.execute(
                text(
                    "SELECT * FROM files f WHERE pipeline=:pipeline AND state='skipped'"
                    " AND reason=:reason AND landed_seq = (SELECT MAX(landed_seq) FROM files g"
                    " WHERE g.pipeline=f.pipeline AND g.uri=f.uri)"
                ),
                {"pipeline": pipeline, "reason": f"duplicate of {uri}"},
            ).mappings()
            for twin in [_file_row(t) for t in twins]:
                if not twin_present(twin):
                    continue
                back = _file_row(
                    db.execute(
                        text(
                            "UPDATE files SET state='landed', reason=NULL,"
                            " generation=generation+1, updated_at=:now WHERE id=:id RETURNING *"
                        ),
                        {"now": now, "id": twin.id},
                    )
                    .mappings()
                    .one()
                )
                landed = event_for("landed", back)
                if landed is not None:
                    self._queue(db, landed[0], landed[1], back.id)
        return row

    def retracting(self, pipeline: str) -> list[FileRow]:
        """The rows whose partitions a run is to remove."""
        with self._read() as db:
            rows = db.execute(
                text(
                    "SELECT * FROM files WHERE pipeline=:pipeline AND state='retracting'"
                    " ORDER BY landed_seq"
                ),
                {"pipeline": pipeline},
            ).mappings()
            return [_file_row(r) for r in rows]

    def close_retraction(
        self, row: FileRow, event: tuple[str, Mapping[str, Any]] | None = None
    ) -> bool:
        """``retracting`` → ``retracted`` once its partitions are gone (and queue ``event``);
        False when the row changed meanwhile (dropped again)."""
        with self._tx() as db:
            done = db.execute(
                text(
                    "UPDATE files SET state='retracted', updated_at=:now"
                    " WHERE id=:id AND state='retracting' AND generation=:generation"
                ),
                {"now": time.time(), "id": row.id, "generation": row.generation},
            )
            if done.rowcount and event is not None:
                self._queue(db, event[0], event[1], row.id)
        return bool(done.rowcount)

    def drop_partition(self, pipeline: str, name: str, partition: str) -> None:
        """Forget a retracted partition's current version (its versions stay)."""
        with self._tx() as db:
            db.execute(
                text(
                    "DELETE FROM assets WHERE pipeline=:pipeline AND name=:name"
                    " AND partition=:partition"
                ),
                {"pipeline": pipeline, "name": name, "partition": partition},
            )
