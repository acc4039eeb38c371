"""The automations that page on-call, created per pipeline from a YAML template.

The template (``automations.yaml`` in the package; ``deployments/automations.yaml`` is the copy
to edit for a deployment) holds Prefect automations with ``{placeholders}``. Applying finds each
automation by name and updates it, so running it again changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
from importlib import resources
from pathlib import Path
from typing import Any
from uuid import UUID

import yaml
from prefect.automations import Automation
from prefect.blocks.core import Block
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.events.schemas.automations import AutomationCore
from prefect.settings import get_current_settings
from pydantic import SecretStr

from eventpipe.exceptions import ConfigError

log = logging.getLogger("eventpipe.automations")

WEBHOOK_BLOCK = "eventpipe-notify"


def template(path: Path | None = None) -> list[dict[str, Any]]:
    """The automation templates in ``path``, or the packaged ones."""
    text = (
        path.read_text(encoding="utf-8")
        if path is not None
        else resources.files("eventpipe.orchestration")
        .joinpath("automations.yaml")
        .read_text(encoding="utf-8")
    )
    loaded = yaml.safe_load(text)
    if not isinstance(loaded, list) or not all(isinstance(a, dict) for a in loaded):
        raise ConfigError(f"{path or 'automations.yaml'} must be a YAML list of automations")
    return loaded


def render(automations: list[dict[str, Any]], values: dict[str, Any]) -> list[dict[str, Any]]:
    """Fill the placeholders of every string (``{{`` stays a literal ``{`` for Jinja)."""

    def fill(node: Any, key: str = "") -> Any:
        if isinstance(node, dict):
            return {k: fill(v, k) for k, v in node.items()}
        if isinstance(node, list):
            return [fill(v) for v in node]
        if isinstance(node, str):
            text = node.format(**values)
            return int(text) if key == "within" else text
        return node

    return [fill(a) for a in automations]


def notification_block(
    notify_block: str | None, notify_webhook: SecretStr | str | None
) -> UUID | None:
    """The notification block automations send to: a saved block ('slug/name'), or a webhook
    block eventpipe keeps for ``notify_webhook``. None when neither is set."""
    # Unwrapped here, at the one place the URL is used, so callers pass Settings' secret as is.
    url = (
        notify_webhook.get_secret_value()
        if isinstance(notify_webhook, SecretStr)
        else notify_webhook
    )
    if not notify_block and not url:
        return None
    return asyncio.run(_notification_block(notify_block, url))


async def _notification_block(notify_block: str | None, notify_webhook: str | None) -> UUID:
    if notify_block:
        try:
            block = await Block.aload(notify_block)
        except ValueError as exc:
            raise ConfigError(
                f"no notification block {notify_block!r}: give it as 'block-type-slug/name' "
                f"(e.g. 'slack-webhook/on-call'): {exc}"
            ) from exc
        document_id: Any = getattr(block, "_block_document_id", None)
        return UUID(str(document_id))
    webhook = CustomWebhookNotificationBlock.model_validate(
        {
            "name": "eventpipe",
            "url": notify_webhook,
            "method": "POST",
            "json_data": {"subject": "{{subject}}", "body": "{{body}}"},
        }
    )
    return UUID(str(await webhook.asave(WEBHOOK_BLOCK, overwrite=True)))


def apply(
    pipeline: str,
    deployment_id: UUID,
    block_id: UUID | None,
    stale_minutes: float,
    path: Path | None = None,
    unresponsive_seconds: int | None = None,
) -> list[tuple[str, str]]:
    """Create or update the pipeline's automations; returns (name, "created"/"updated"/
    "unchanged"). Without a notification block (``block_id`` None) only those that page no
    one are applied: the one marking unresponsive runs Crashed.

    A run is unresponsive after ``unresponsive_seconds`` without a heartbeat: by default three
    of Prefect's heartbeat intervals (``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``, 180 s unless set;
    it must be the same where the runs execute). With heartbeats off, that automation is left
    out."""
    window = unresponsive_seconds or unresponsive_window()
    values = {
        "pipeline": pipeline,
        "deployment_id": deployment_id,
        "notify_block_id": block_id,
        "stale_minutes": f"{stale_minutes:g}",
        "stale_seconds": max(int(stale_minutes * 60), 10),  # Prefect's least proactive window
        "unresponsive_seconds": max(window or 0, 10),
    }
    specs = template(path)
    if window is None:
        specs = [a for a in specs if "{unresponsive_seconds}" not in yaml.safe_dump(a)]
    if block_id is None:
        specs = [a for a in specs if "{notify_block_id}" not in yaml.safe_dump(a)]
    return asyncio.run(_apply(render(specs, values)))


def unresponsive_window() -> int | None:
    """Three heartbeat intervals of this process's Prefect settings; None when heartbeats are
    off."""
    frequency = get_current_settings().flows.heartbeat_frequency
    return None if frequency is None else 3 * frequency


async def _apply(specs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    done: list[tuple[str, str]] = []
    for spec in specs:
        wanted = Automation.model_validate(spec)
        try:
            existing: Automation | None = await Automation.aread(name=wanted.name)
        except ValueError:
            existing = None
        if existing is None:
            await wanted.acreate()
            done.append((wanted.name, "created"))
        elif same_automation(existing, wanted):
            done.append((wanted.name, "unchanged"))
        else:
            wanted.id = existing.id
            await wanted.aupdate()
            done.append((wanted.name, "updated"))
    return done


def same_automation(existing: AutomationCore, wanted: AutomationCore) -> bool:
    """Whether applying ``wanted`` over ``existing`` would change nothing. Compared as Python
    values (``expect`` is a set, its JSON order varies); the server does not say which
    resource owns an automation, so that is left out."""
    ignored = {"id", "owner_resource"}
    return existing.model_dump(exclude=ignored) == wanted.model_dump(exclude=ignored)
