"""``eventpipe``: the command line. Flags override ``EVENTPIPE_*`` variables, which override
``eventpipe.toml``; the flags and their help are :class:`~eventpipe.settings.Settings`' fields.

One module per command group: ``loop`` (up, run), ``inspect`` (status, versions, explain,
retry, retract), ``lineage`` (lineage, ui), ``setup`` (setup-s3, automations apply),
``deploy`` (deploy); ``common`` holds what they share. This module assembles the app and
turns eventpipe's errors into one line.
"""

from __future__ import annotations

import sys

from cyclopts import App

from eventpipe.cli import deploy, inspect, lineage, loop, setup
from eventpipe.cli.common import console, err
from eventpipe.exceptions import EventpipeError

__all__ = ["app", "console", "main"]

app = App(name="eventpipe", help="Event-driven, asset-based data pipelines on Prefect.")
app.command(loop.up)
app.command(loop.run)
app.command(setup.automations_app)
app.command(setup.setup_s3, name="setup-s3")
app.command(deploy.deploy)
app.command(inspect.status)
app.command(inspect.versions)
app.command(inspect.retry)
app.command(inspect.retract)
app.command(inspect.explain)
app.command(lineage.lineage)
app.command(lineage.ui)


def main() -> None:
    # Progress lines come from the runner's thread; show them at once when piped to a log.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    try:
        app()
    except EventpipeError as exc:
        err.print(f"[red]error:[/] {exc}")
        sys.exit(2)
