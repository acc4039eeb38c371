"""Event delivery from inside a flow run, and an :class:`EventSender` for this process's
Prefect settings (the one place the outbox learns Prefect's API URL and credentials)."""

from __future__ import annotations

import logging

from prefect.settings import get_current_settings

from eventpipe.events.outbox import EventSender, flush_outbox
from eventpipe.ledger import Ledger

log = logging.getLogger("eventpipe.events")


def prefect_sender() -> EventSender:
    """A sender to the API this process's Prefect settings point at, with their credentials."""
    api = get_current_settings().api
    if not api.url:
        raise RuntimeError("PREFECT_API_URL is not set; start a server or pass --api-url")
    secret_auth = api.auth_string.get_secret_value() if api.auth_string else None
    key = api.key.get_secret_value() if api.key else None
    return EventSender(api.url, auth_string=secret_auth, api_key=key)


def deliver_now(ledger: Ledger) -> None:
    """Send what a run queued now, at its end; whatever fails stays in the outbox for the
    pump."""
    try:
        sender = prefect_sender()
        try:
            flush_outbox(ledger, sender)
        finally:
            sender.close()
    except Exception:
        log.warning("could not deliver events now; they stay in the outbox", exc_info=True)
