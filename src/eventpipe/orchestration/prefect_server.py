"""``prefect server start``, with one patch for SQLite: every transaction the server opens
begins ``IMMEDIATE``.

    python -m eventpipe.orchestration.prefect_server start --host 127.0.0.1 --port 4200

runs Prefect's own CLI (``prefect server start ...``, arguments unchanged) in this process
after :func:`patch_sqlite_transactions`. :class:`~eventpipe.orchestration.server.
EmbeddedServer` starts the embedded server this way.

Why: on SQLite, Prefect opens a write transaction (``db.session_context(begin_transaction=
True)``) as ``BEGIN DEFERRED`` unless the caller asks for ``with_for_update``. Such a
transaction reads, then writes; if another connection wrote in between (the event persister
flushing its batch, a service marking runs late), SQLite cannot upgrade the read to a write
and fails at once with ``database is locked`` — the busy timeout does not apply to that
upgrade. The API answers 503 and Prefect's client retries after its fixed back-off of 2 s
(``2 ** 1``; no setting shortens it). Measured here: a trigger's run created 2-3 s late
(``bench/trigger_floor.py``, the ``unpatched`` variant), and under a steady stream of files a
worker's claim (propose Pending, set labels, propose Submitting) taking 2-4 s instead of
milliseconds. ``tests/test_server_settings.py`` holds the write lock for 0.5 s: patched, the
request waits and succeeds; unpatched, it gets a 503 at once.

With ``BEGIN IMMEDIATE`` the write lock is taken up front, so a transaction waits for the
other writer (milliseconds, under the 60 s busy timeout) instead of failing. SQLite allows one
writer at a time either way, so nothing that succeeded before is serialized further; reads
outside a transaction are unchanged. On PostgreSQL the configuration patched is not used.

The patch is applied only if Prefect's SQLite configuration still has the shape it was written
for (``begin_transaction(self, session, with_for_update=False)`` choosing ``IMMEDIATE`` only
for ``with_for_update``); otherwise the server runs unpatched, with a warning. It becomes
unnecessary when Prefect begins its SQLite write transactions ``IMMEDIATE`` itself.
"""

from __future__ import annotations

import inspect
import logging
import sys
from typing import Any

log = logging.getLogger("eventpipe.prefect_server")

DEFERRED_UNLESS_FOR_UPDATE = '"IMMEDIATE" if with_for_update else "DEFERRED"'


def shape_mismatch(begin_transaction: Any) -> str | None:
    """Why ``begin_transaction`` is not the method the patch was written for, or None."""
    if not callable(begin_transaction):
        return "it is not a function"
    parameters = list(inspect.signature(begin_transaction).parameters)
    if parameters != ["self", "session", "with_for_update"]:
        return f"its parameters are {parameters}"
    try:
        source = inspect.getsource(begin_transaction)
    except (OSError, TypeError) as exc:
        return f"its source cannot be read ({exc})"
    if DEFERRED_UNLESS_FOR_UPDATE not in source:
        return "it no longer begins DEFERRED unless asked for IMMEDIATE"
    return None


def patch_sqlite_transactions() -> bool:
    """Make every SQLite transaction of this process's Prefect server ``BEGIN IMMEDIATE`` (see
    the module); True if patched. Call it before the server starts."""
    from prefect.server.database.configurations import AioSqliteConfiguration

    original = AioSqliteConfiguration.begin_transaction
    why = shape_mismatch(original)
    if why is not None:
        log.warning(
            "not patching Prefect's SQLite transactions (%s): a request may fail with 503 and"
            " be retried 2 s later when SQLite is busy",
            why,
        )
        return False

    def begin_transaction(self: Any, session: Any, with_for_update: bool = False) -> Any:
        return original(self, session, with_for_update=True)

    begin_transaction.__doc__ = original.__doc__
    AioSqliteConfiguration.begin_transaction = begin_transaction  # type: ignore[method-assign]
    return True


def main(argv: list[str] | None = None) -> None:
    """``prefect server <argv>`` in this process, patched."""
    if not log.handlers:  # this logger only: Prefect configures its own (and the root) logging
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        log.addHandler(handler)
        log.propagate = False
    patch_sqlite_transactions()
    from prefect.cli import app

    sys.argv = ["prefect", "server", *(sys.argv[1:] if argv is None else argv)]
    app()


if __name__ == "__main__":
    main()
