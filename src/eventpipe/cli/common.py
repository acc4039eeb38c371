"""What every command shares: the consoles, logging, the settings flags, the ledger, the
pipeline a command is about, timestamps."""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from cyclopts import Group, Parameter
from rich.console import Console

from eventpipe.exceptions import ConfigError, EventpipeError
from eventpipe.settings import Settings

if TYPE_CHECKING:
    from eventpipe.ledger import Ledger
    from eventpipe.pipeline import Pipeline

console = Console(soft_wrap=True)
err = Console(stderr=True)

SETTINGS = Group("Settings (a flag beats EVENTPIPE_<NAME>, which beats eventpipe.toml)", sort_key=1)

PIPELINE_BY_NAME = (
    "Only this pipeline: its name, as `eventpipe status` prints it, or its spec"
    " 'package.module:name' / 'path/file.py:name' (default: every pipeline in the ledger)."
)
"""Help of ``--pipeline`` for the commands that read the ledger."""

GRAPHED_PIPELINE = (
    f"{Settings.model_fields['pipeline'].description} Or its name, as `eventpipe status`"
    " prints it, when the configured pipeline (EVENTPIPE_PIPELINE, eventpipe.toml; default: the"
    " demo) has that name."
)
"""Help of ``--pipeline`` for the commands that draw a pipeline's graph."""


def settings_flags(*fields: str) -> Parameter:
    """The annotation of a command's ``settings`` parameter: a ``--flag`` for each of these
    :class:`Settings` fields, its help the field's description.

    cyclopts passes Settings only the flags given (and None when there are none), so
    ``EVENTPIPE_*`` and ``eventpipe.toml`` still fill in the rest. The parameter must be named
    ``settings``: the pattern that picks the fields is matched against it too.
    """
    unknown = set(fields) - Settings.model_fields.keys()
    if unknown:  # a misspelt field would silently lose its flag
        raise TypeError(f"Settings has no field {', '.join(sorted(unknown))}")
    names = "|".join(("settings", *fields))
    return Parameter(name="*", group=SETTINGS, parse=re.compile(rf"^({names})$"))


def settings_or_configured(flags: Settings | None) -> Settings:
    """The Settings cyclopts made from the flags given, or, with none, the configured ones."""
    return flags if flags is not None else Settings()


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s.%(msecs)03d %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("eventpipe").setLevel(logging.DEBUG if verbose else logging.INFO)


def open_ledger(settings: Settings) -> Ledger:
    """The ledger ``settings`` name (``--ledger``, else the data dir's file); an error (not a
    new, empty ledger) when the data dir has none."""
    # Imported here: `eventpipe --help` and the commands that never read the ledger skip it.
    from eventpipe.ledger import Ledger, ledger_exists, ledger_location

    if not ledger_exists(settings):
        raise EventpipeError(
            f"no ledger at {ledger_location(settings)}: nothing has run with --data"
            f" {settings.data} (give --ledger URL for a shared database)"
        )
    return Ledger.of(settings)


def is_spec(pipeline: str) -> bool:
    """Whether ``--pipeline`` is a spec (``module:attr``, ``file.py:attr``) rather than a name,
    which never has a ':'."""
    return ":" in pipeline


def unknown_pipeline(name: str, data: Path | str, known: list[str]) -> ConfigError:
    listed = ", ".join(known) if known else "none yet"
    return ConfigError(
        f"the ledger under {data} knows no pipeline {name!r} (it knows: {listed}); give its"
        " name as `eventpipe status` prints it, or its spec 'package.module:name' or"
        " 'path/file.py:name'"
    )


def ledger_pipelines(ledger: Ledger, data: Path | str, wanted: str | None) -> list[str]:
    """The names of the pipelines a ledger command is about: ``wanted`` (a name or a spec)
    when given, else every pipeline in the ledger."""
    known = ledger.pipelines()
    if wanted is None:
        return known
    if is_spec(wanted):
        # Imported here: loading a spec imports the user's module (and pandas with it).
        from eventpipe.pipeline import load_pipeline

        wanted = load_pipeline(wanted).name
    if wanted not in known:
        raise unknown_pipeline(wanted, data, known)
    return [wanted]


def pipeline_to_graph(wanted: str | None, settings: Settings) -> Pipeline:
    """The pipeline whose graph ``lineage`` and ``ui`` draw: ``--pipeline`` as a spec, or as a
    name the ledger knows (the ledger keeps no specs, so the configured pipeline must be the
    one of that name); without it, the configured pipeline."""
    # Imported here: loading a pipeline imports the user's module (and pandas with it).
    from eventpipe.ledger import Ledger, ledger_exists
    from eventpipe.pipeline import load_pipeline

    if wanted is None or is_spec(wanted):
        return load_pipeline(wanted or settings.pipeline)
    known: list[str] = []
    if ledger_exists(settings):
        ledger = Ledger.of(settings)
        try:
            known = ledger.pipelines()
        finally:
            ledger.close()
    if wanted not in known:
        raise unknown_pipeline(wanted, settings.data, known)
    configured = load_pipeline(settings.pipeline)
    if configured.name != wanted:
        raise ConfigError(
            f"the ledger knows pipeline {wanted!r} but not where it is defined, and the"
            f" configured pipeline {settings.pipeline!r} is {configured.name!r}: give"
            f" --pipeline as 'package.module:name' or 'path/file.py:name', or configure it"
            " (EVENTPIPE_PIPELINE, pipeline in eventpipe.toml)"
        )
    return configured


def when(ts: float | None) -> str:
    """A ledger timestamp as the tables show it (UTC, to the second)."""
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")
