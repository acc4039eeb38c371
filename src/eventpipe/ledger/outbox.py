"""The ledger's outbox: events waiting to be sent, and the fetches' helper state."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import text

from eventpipe.ledger.db import Database


class Outbox(Database):
    """Events waiting for the server's acknowledgement; fetch helper state."""

    # -- fetch state ---------------------------------------------------------------------------

    def fetch_state(self, pipeline: str, fetch: str) -> dict[str, Any]:
        """What a scheduled fetch kept from its last success (ETags, cursors), by helper key."""
        with self._read() as db:
            found = db.execute(
                text('SELECT state FROM fetch_state WHERE pipeline=:pipeline AND "fetch"=:fetch'),
                {"pipeline": pipeline, "fetch": fetch},
            ).scalar()
        return dict(json.loads(found)) if found else {}

    def save_fetch_state(self, pipeline: str, fetch: str, state: dict[str, Any]) -> None:
        with self._tx() as db:
            db.execute(
                text(
                    # "fetch" is a reserved word in PostgreSQL.
                    'INSERT INTO fetch_state (pipeline, "fetch", state, updated_at)'
                    " VALUES (:pipeline, :fetch, :state, :now)"
                    ' ON CONFLICT (pipeline, "fetch") DO UPDATE SET state=excluded.state,'
                    " updated_at=excluded.updated_at"
                ),
                {
                    "pipeline": pipeline,
                    "fetch": fetch,
                    "state": json.dumps(state, sort_keys=True),
                    "now": time.time(),
                },
            )

    # -- outbox --------------------------------------------------------------------------------

    def queue_event(
        self, event_id: str, body: Mapping[str, Any], file_id: int | None = None
    ) -> None:
        with self._tx() as db:
            self._queue(db, event_id, body, file_id)

    def queue_events(self, events: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        """Queue many events in one transaction."""
        if not events:
            return
        with self._tx() as db:
            for event_id, body in events:
                self._queue(db, event_id, body, None)

    def unsent(self, limit: int = 200) -> list[tuple[str, dict[str, Any], int | None]]:
        with self._read() as db:
            rows = db.execute(
                text(
                    "SELECT id, body, file_id FROM outbox WHERE sent_at IS NULL"
                    " ORDER BY created_at LIMIT :limit"
                ),
                {"limit": limit},
            ).all()
        return [(r[0], json.loads(r[1]), r[2]) for r in rows]

    def mark_sent(self, event_ids: list[str]) -> None:
        """Called only after the server acknowledged ``event_ids``; landed files become ``sent``.

        Several processes may send the same event (the server keeps one per id); each event
        is marked sent once, by whichever acknowledgement comes first."""
        if not event_ids:
            return
        now = time.time()
        with self._tx() as db:
            for event_id in event_ids:
                row = db.execute(
                    text(
                        "UPDATE outbox SET sent_at=:now, attempts=attempts+1"
                        " WHERE id=:id AND sent_at IS NULL RETURNING file_id, event"
                    ),
                    {"now": now, "id": event_id},
                ).first()
                if row is not None and row[0] is not None and row[1] == "eventpipe.file.landed":
                    db.execute(
                        text(
                            "UPDATE files SET state='sent', updated_at=:now"
                            " WHERE id=:id AND state='landed'"
                        ),
                        {"now": now, "id": row[0]},
                    )

    def mark_attempt(self, event_ids: list[str]) -> None:
        if not event_ids:
            return
        with self._tx() as db:
            db.execute(
                text("UPDATE outbox SET attempts=attempts+1 WHERE id=:id"),
                [{"id": i} for i in event_ids],
            )

    def events_for(self, file_id: int) -> list[dict[str, Any]]:
        with self._read() as db:
            rows = db.execute(
                text("SELECT body, sent_at FROM outbox WHERE file_id=:file_id ORDER BY created_at"),
                {"file_id": file_id},
            ).all()
        return [{**json.loads(r[0]), "sent_at": r[1]} for r in rows]

    def outbox_entries(self, file_id: int) -> list[dict[str, Any]]:
        """The outbox's bookkeeping of ``file_id``'s events: id, event, created_at, sent_at and
        attempts (how many sends were tried or acknowledged), oldest first."""
        with self._read() as db:
            rows = db.execute(
                text(
                    "SELECT id, event, created_at, sent_at, attempts FROM outbox"
                    " WHERE file_id=:file_id ORDER BY created_at"
                ),
                {"file_id": file_id},
            ).mappings()
            return [dict(r) for r in rows]

    def events_named(self, name: str, since: float | None = None) -> list[dict[str, Any]]:
        """The bodies of the outbox's events called ``name`` (sent or not), oldest first;
        with ``since``, only those queued from then on."""
        with self._read() as db:
            rows = db.execute(
                text(
                    "SELECT body FROM outbox WHERE event=:name AND created_at>=:since"
                    " ORDER BY created_at"
                ),
                {"name": name, "since": since if since is not None else 0.0},
            ).all()
        return [json.loads(r[0]) for r in rows]
