"""Which ``eventpipe up`` runs each pipeline of a ledger: one at a time.

Two ``up`` processes on one ledger and pipeline would each watch the source and keep the
pipeline's deployment and trigger in their own way (pausing it when one of them stops, say).
So ``up`` holds the pipeline for as long as it runs: a row naming its host and pid, beaten
every few seconds. A second ``up`` is refused, with the first one named. A holder that stops
beating (killed, its host gone) is taken over once ``stale_after`` seconds have passed since
its last beat; on the same host at once, when its pid no longer exists.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from sqlalchemy import text

from eventpipe.ledger.db import Database


@dataclass(frozen=True)
class Holder:
    """The ``up`` process holding a pipeline."""

    pipeline: str
    host: str
    pid: int
    started_at: float
    beat_at: float

    def __str__(self) -> str:
        return f"host {self.host}, pid {self.pid}"


_HOLDER = text(
    "SELECT pipeline, host, pid, started_at, beat_at FROM holders WHERE pipeline=:pipeline"
)


class Holders(Database):
    """``up``'s hold on a pipeline."""

    def holder(self, pipeline: str) -> Holder | None:
        with self._read() as db:
            row = db.execute(_HOLDER, {"pipeline": pipeline}).first()
        return Holder(*row) if row is not None else None

    def hold(self, pipeline: str, host: str, pid: int, *, stale_after: float) -> Holder | None:
        """Make (``host``, ``pid``) the holder of ``pipeline``, unless another live holder has
        it: then that holder, and nothing changes."""
        now = time.time()
        with self._tx(lock=pipeline) as db:
            row = db.execute(_HOLDER, {"pipeline": pipeline}).first()
            if row is not None:
                other = Holder(*row)
                if (other.host, other.pid) != (host, pid) and _alive(other, host, now, stale_after):
                    return other
                db.execute(
                    text("DELETE FROM holders WHERE pipeline=:pipeline"), {"pipeline": pipeline}
                )
            db.execute(
                text(
                    "INSERT INTO holders (pipeline, host, pid, started_at, beat_at)"
                    " VALUES (:pipeline, :host, :pid, :now, :now)"
                ),
                {"pipeline": pipeline, "host": host, "pid": pid, "now": now},
            )
        return None

    def beat(self, pipeline: str, host: str, pid: int) -> bool:
        """Renew the hold; False when (``host``, ``pid``) no longer holds ``pipeline``."""
        with self._tx() as db:
            done = db.execute(
                text(
                    "UPDATE holders SET beat_at=:now"
                    " WHERE pipeline=:pipeline AND host=:host AND pid=:pid"
                ),
                {"pipeline": pipeline, "host": host, "pid": pid, "now": time.time()},
            )
        return bool(done.rowcount)

    def let_go(self, pipeline: str, host: str, pid: int) -> None:
        with self._tx() as db:
            db.execute(
                text("DELETE FROM holders WHERE pipeline=:pipeline AND host=:host AND pid=:pid"),
                {"pipeline": pipeline, "host": host, "pid": pid},
            )


def _alive(holder: Holder, host: str, now: float, stale_after: float) -> bool:
    if now - holder.beat_at > stale_after:
        return False
    if holder.host != host:
        return True  # another host's process: only its beats tell
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, another user's
    return True
