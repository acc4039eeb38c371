"""The ledger's outbox: events waiting to be sent, and the fetches' helper state."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from eventpipe.ledger.db import Database


class Outbox(Database):
    """Events waiting for the server's acknowledgement; fetch helper state."""

    # -- fetch state ---------------------------------------------------------------------------

    def fetch_state(self, pipeline: str, fetch: str) -> dict[str, Any]:
        """What a scheduled fetch kept from its last success (ETags, cursors), by helper key."""
        found = (
            self._conn()
            .execute(
                "SELECT state FROM fetch_state WHERE pipeline=? AND fetch=?", (pipeline, fetch)
            )
            .fetchone()
        )
        return dict(json.loads(found[0])) if found else {}

    def save_fetch_state(self, pipeline: str, fetch: str, state: dict[str, Any]) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO fetch_state (pipeline, fetch, state, updated_at) VALUES (?,?,?,?)"
                " ON CONFLICT (pipeline, fetch) DO UPDATE SET state=excluded.state,"
                " updated_at=excluded.updated_at",
                (pipeline, fetch, json.dumps(state, sort_keys=True), time.time()),
            )

    # -- outbox --------------------------------------------------------------------------------

    def queue_event(
        self, event_id: str, body: Mapping[str, Any], file_id: int | None = None
    ) -> None:
        with self._tx() as db:
            self._queue(db, event_id, body, file_id)

    def queue_events(self, events: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        """Queue many events in one transaction."""
        with self._tx() as db:
            for event_id, body in events:
                self._queue(db, event_id, body, None)

    def unsent(self, limit: int = 200) -> list[tuple[str, dict[str, Any], int | None]]:
        rows = (
            self._conn()
            .execute(
                "SELECT id, body, file_id FROM outbox WHERE sent_at IS NULL"
                " ORDER BY created_at LIMIT ?",
                (limit,),
            )
            .fetchall()
        )
        return [(r["id"], json.loads(r["body"]), r["file_id"]) for r in rows]

    def mark_sent(self, event_ids: list[str]) -> None:
        """Called only after the server acknowledged ``event_ids``; landed files become ``sent``."""
        now = time.time()
        with self._tx() as db:
            for event_id in event_ids:
                row = db.execute(
                    "UPDATE outbox SET sent_at=?, attempts=attempts+1 WHERE id=? RETURNING file_id,"
                    " json_extract(body, '$.event')",
                    (now, event_id),
                ).fetchone()
                if row is not None and row[0] is not None and row[1] == "eventpipe.file.landed":
                    db.execute(
                        "UPDATE files SET state='sent', updated_at=? WHERE id=? AND state='landed'",
                        (now, row[0]),
                    )

    def mark_attempt(self, event_ids: list[str]) -> None:
        with self._tx() as db:
            db.executemany(
                "UPDATE outbox SET attempts=attempts+1 WHERE id=?", [(i,) for i in event_ids]
            )

    def events_for(self, file_id: int) -> list[dict[str, Any]]:
        rows = self._conn().execute(
            "SELECT body, sent_at FROM outbox WHERE file_id=? ORDER BY created_at", (file_id,)
        )
        return [{**json.loads(r["body"]), "sent_at": r["sent_at"]} for r in rows]
