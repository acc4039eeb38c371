"""``prefect server start``, with one patch for SQLite: a trigger's run is created under
``BEGIN IMMEDIATE``.

    python -m eventpipe.orchestration.prefect_server start --host 127.0.0.1 --port 4200

runs Prefect's own CLI (``prefect server start ...``, arguments unchanged) in this process
after :func:`patch_create_flow_run_from_deployment`. :class:`~eventpipe.orchestration.server.
EmbeddedServer` starts the embedded server this way.

Why: ``POST /deployments/{id}/create_flow_run`` (what a deployment trigger's "run-deployment"
action calls) opens ``db.session_context(begin_transaction=True)``, which on SQLite is
``BEGIN DEFERRED``. The transaction reads (the deployment, variables) and then writes the run.
If another connection wrote in between, typically the event persister flushing its batch,
SQLite cannot upgrade the read to a write and fails at once with ``database is locked`` (the
busy timeout does not apply to a read upgraded to a write). The API answers 503, and the
in-server client of the triggers service retries after its fixed back-off of 2 s
(``2 ** 1``, no setting shortens it): the event's run appears 2-3 s late. Measured with
``bench/trigger_floor.py`` (its ``embedded`` and ``unpatched`` variants, interleaved) and
``tests/test_server_settings.py`` (a write lock held for 0.5 s: 201 after ~0.6 s patched,
503 at once unpatched).

With ``with_for_update=True`` Prefect's SQLite configuration issues ``BEGIN IMMEDIATE``: the
write lock is taken up front, so the transaction waits for the persister (milliseconds, under
the busy timeout) instead of failing. On PostgreSQL ``with_for_update`` does nothing here.

The patch is the smallest that does this: the route's endpoint is wrapped so that the
``db`` it is given opens its transactions with ``with_for_update=True``; nothing else of the
endpoint or the server changes. It is applied only if the installed Prefect still has the
shape it was written for (the route, its ``db`` parameter, a ``begin_transaction=True``
session without ``with_for_update``); otherwise the server runs unpatched, with a warning.

It becomes unnecessary when Prefect opens that transaction with
``db.session_context(begin_transaction=True, with_for_update=True)`` (as it already does for
``mark_deployments_ready``, PrefectHQ/prefect#22967) — then :func:`shape_mismatch` reports it and
the server runs Prefect's code as is.
"""

from __future__ import annotations

import functools
import inspect
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("eventpipe.prefect_server")

ROUTE_PATH = "/deployments/{id:uuid}/create_flow_run"
DEFERRED_TRANSACTION = "db.session_context(begin_transaction=True)"


class _ImmediateTransactions:
    """A Prefect database interface whose transactions take SQLite's write lock up front."""

    def __init__(self, db: Any) -> None:
        self._db = db

    def session_context(
        self, begin_transaction: bool = False, with_for_update: bool = False
    ) -> Any:
        return self._db.session_context(
            begin_transaction=begin_transaction,
            with_for_update=with_for_update or begin_transaction,
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


def shape_mismatch(endpoint: Any) -> str | None:
    """Why ``endpoint`` is not the function the patch was written for, or None if it is."""
    if not inspect.iscoroutinefunction(endpoint):
        return "it is not a coroutine function"
    if "db" not in inspect.signature(endpoint).parameters:
        return "it has no `db` parameter"
    try:
        source = inspect.getsource(endpoint)
    except (OSError, TypeError) as exc:
        return f"its source cannot be read ({exc})"
    if source.count("session_context(") != 1 or DEFERRED_TRANSACTION not in source:
        return f"it no longer opens exactly one `{DEFERRED_TRANSACTION}`"
    return None


def unpatchable(routes: list[Any], function: Any) -> str | None:
    """Why the patch does not apply to these ``routes`` (POST :data:`ROUTE_PATH`) and the
    module's ``create_flow_run_from_deployment``, or None if it does."""
    if len(routes) != 1:
        return f"{len(routes)} routes match POST {ROUTE_PATH}"
    if function is None or getattr(routes[0], "endpoint", None) is not function:
        return "the route's endpoint is not `create_flow_run_from_deployment`"
    return shape_mismatch(function)


def patch_create_flow_run_from_deployment() -> bool:
    """Make the route's transaction ``BEGIN IMMEDIATE`` on SQLite (see the module); True if
    patched. Call it before the server's app is created (``create_app``)."""
    from prefect.server.api import deployments

    routes = [
        route
        for route in deployments.router.routes
        if getattr(route, "path", None) == ROUTE_PATH and "POST" in getattr(route, "methods", ())
    ]
    why = unpatchable(routes, getattr(deployments, "create_flow_run_from_deployment", None))
    if why is not None:
        log.warning(
            "not patching Prefect's create_flow_run_from_deployment (%s): a trigger's run may "
            "be created 2-3 s late when SQLite is busy",
            why,
        )
        return False
    original: Callable[..., Awaitable[Any]] = routes[0].endpoint  # type: ignore[attr-defined]

    @functools.wraps(original)
    async def create_flow_run_from_deployment(*args: Any, **kwargs: Any) -> Any:
        kwargs["db"] = _ImmediateTransactions(kwargs["db"])
        return await original(*args, **kwargs)

    # FastAPI builds the app's route from this endpoint when create_app includes the router;
    # functools.wraps keeps the signature it injects the dependencies from.
    routes[0].endpoint = create_flow_run_from_deployment  # type: ignore[attr-defined]
    return True


def main(argv: list[str] | None = None) -> None:
    """``prefect server <argv>`` in this process, patched."""
    if not log.handlers:  # this logger only: Prefect configures its own (and the root) logging
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        log.addHandler(handler)
        log.propagate = False
    patch_create_flow_run_from_deployment()
    from prefect.cli import app

    sys.argv = ["prefect", "server", *(sys.argv[1:] if argv is None else argv)]
    app()


if __name__ == "__main__":
    main()
