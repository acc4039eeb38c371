"""``eventpipe up`` (the loop, until Ctrl-C) and ``eventpipe run`` (the inbox, once)."""

from __future__ import annotations

import json
import signal
import threading
from typing import TYPE_CHECKING, Annotated, Any

from cyclopts import Parameter

from eventpipe.cli.common import (
    console,
    err,
    settings_flags,
    settings_or_configured,
    setup_logging,
)
from eventpipe.exceptions import EventpipeError
from eventpipe.settings import Settings

if TYPE_CHECKING:
    from eventpipe.loop.local import LocalLoop

UP_SETTINGS = settings_flags(
    "pipeline",
    "inbox",
    "data",
    "ledger",
    "ledger_block",
    "port",
    "api_url",
    "host",
    "source",
    "queue",
    "endpoint_url",
    "region",
    "aws_credentials_block",
    "s3_bucket_block",
    "notify_webhook",
    "notify_block",
    "stale_minutes",
    "runs",
    "task_runner",
    "on_delete",
)
RUN_SETTINGS = settings_flags(
    "pipeline", "inbox", "data", "ledger", "api_url", "port", "task_runner"
)


def up(
    *,
    settings: Annotated[Settings | None, UP_SETTINGS] = None,
    samples: int = 0,
    verbose: Annotated[bool, Parameter(negative=())] = False,
) -> None:
    """Start the loop: embedded Prefect server (unless --api-url), the pipeline's deployment and
    trigger, the runner and the inbox watcher. Ctrl-C stops it all. With --runs worker it only
    watches, records and sends events; Prefect workers run the deployment `prefect deploy` made.

    Parameters
    ----------
    samples
        Drop this many generated demo files into the inbox once running (demo pipeline only).
    verbose
        Log debug details.
    """
    setup_logging(verbose)
    # Imported here: the loop brings Prefect, which `eventpipe --help` must not load.
    from eventpipe.loop.local import LocalLoop

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    configured = settings_or_configured(settings)
    loop = LocalLoop(configured, on_run=print_run, on_fetch=print_fetch)
    if configured.api_url:
        console.print(f"starting eventpipe on the Prefect server at {configured.api_url} …")
    else:
        console.print("starting eventpipe (the first start of a Prefect server takes ~30 s) …")
    try:
        loop.start()
    except EventpipeError:
        loop.stop()
        raise
    console.print(banner(loop))
    if samples:
        drop_samples(loop, samples)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        console.print(
            "stopping: pausing the deployment, finishing the current run …"
            if loop.runs_here
            else "stopping: delivering queued events (the deployment and its workers stay) …"
        )
        loop.stop()
        console.print("stopped.")


def print_run(name: str, state: Any) -> None:
    """One line per materialize run that finished, as `up` shows it."""
    summary = state.result(raise_on_failure=False) if state.is_completed() else None
    if (
        isinstance(summary, dict)
        and not summary["files"]
        and not summary["assets_updated"]
        and not summary.get("retracted")
    ):
        console.print(f"run {name}: nothing pending (an earlier run took the files)")
    elif isinstance(summary, dict):
        console.print(
            f"[green]run {name}[/]: {summary['processed']} processed, "
            f"{summary['skipped']} skipped, {summary['rejected']} rejected, "
            f"{summary['failed']} failed"
            + (f", {summary['retracted']} retracted" if summary.get("retracted") else "")
            + "; analytics updated: "
            f"{', '.join(summary['assets_updated']) or 'none'}"
            + (
                f"; {summary['freshness_seconds']:.2f} s after landing"
                if summary.get("freshness_seconds") is not None
                else ""
            )
        )
    else:
        console.print(f"[red]run {name}: {state.name}[/] {state.message or ''}")


def print_fetch(name: str, state: Any) -> None:
    """One line per fetch run that finished, as `up` shows it."""
    summary = state.result(raise_on_failure=False) if state.is_completed() else None
    if isinstance(summary, dict):
        rows = f", {summary['rows']} rows" if summary.get("rows") is not None else ""
        outcome = summary["outcome"]
        console.print(f"[green]fetch {summary['fetch']}[/] ({name}): {outcome}{rows}")
    else:
        console.print(f"[red]fetch run {name}: {state.name}[/] {state.message or ''}")


def banner(loop: LocalLoop) -> str:
    """What `up` prints once the loop runs: where to look and what it watches."""
    from eventpipe.ledger import ledger_location

    s = loop.settings
    assert loop.pipeline is not None
    ui = loop.server.ui_url if loop.server else (s.api_url or "").removesuffix("/api")
    name = loop.pipeline.name
    data = s.data.rstrip("/")
    watched = (
        f"bucket       {loop.source_description}  (upload .csv .csv.gz .json .jsonl .parquet)"
        if s.watches_bucket
        else f"inbox        {s.inbox}  (drop .csv .csv.gz .json .jsonl .parquet files)"
    )
    if loop.runs_here:
        runs_line = f"{ui}/deployments/deployment/{loop.deployment_id}"
    elif loop.deployment_id is None:
        runs_line = (
            "none yet: `eventpipe deploy --pool POOL` (or `prefect deploy`, see prefect.yaml),"
            " start a worker"
        )
    else:
        runs_line = (
            f"{ui}/deployments/deployment/{loop.deployment_id}  (executed by workers of work"
            f" pool {loop.work_pool}: prefect worker start --pool {loop.work_pool})"
        )
    return (
        f"\n[bold]eventpipe is up[/]\n"
        f"  Prefect UI   {ui}\n"
        f"  runs         {runs_line}\n"
        f"  events       {ui}/events\n"
        + (f"  tasks        {loop.task_runner_description}\n" if s.task_runner != "threads" else "")
        + f"  pipeline     {name} ({loop.spec}) -> deployment materialize/{name}\n"
        f"  {watched}\n"
        f"  analytics    {data}/analytics/{name}/<asset>.parquet\n"
        f"  partitions   {data}/processed/{name}/<step>/<file>.parquet\n"
        + (f"  ledger       {ledger_location(s)}\n" if s.ledger else "")
        + "".join(
            f"  fetch        {f.name} {f.every} -> deployment fetch/{name}-{f.name}\n"
            for f in loop.pipeline.fetches.values()
        )
        + "Ctrl-C to stop.\n"
    )


def drop_samples(loop: LocalLoop, samples: int) -> None:
    """`up --samples N`: N generated demo orders files into the inbox."""
    if loop.spec != "eventpipe.demo:pipeline":
        err.print("--samples generates demo orders files; skipped for this pipeline")
        return
    # Imported here: the demo pipeline's module imports pandas.
    from eventpipe.demo import write_sample

    inbox = loop.settings.inbox
    start = len(list(inbox.glob("orders-*.csv")))
    for i in range(samples):
        path = write_sample(inbox, start + i)
        console.print(f"dropped sample {path.name}")


def run(*, settings: Annotated[Settings | None, RUN_SETTINGS] = None) -> None:
    """Process every new or changed file in the inbox once, without watching, then exit."""
    setup_logging(False)
    resolved = settings_or_configured(settings).resolved()
    from eventpipe.ledger import share_ledger

    share_ledger(resolved)
    # Imported here: running brings Prefect, which `eventpipe --help` must not load.
    from eventpipe.orchestration.server import configure_api
    from eventpipe.pipeline import absolute_spec

    server = configure_api(resolved)
    if server is not None:
        console.print("starting an embedded Prefect server …")
        server.start()
    try:
        # Imported once the API is configured: Prefect reads its settings at import.
        from eventpipe.intake.aws import store_options
        from eventpipe.intake.record import scan_once
        from eventpipe.run.flow import materialize_pipeline

        found = scan_once(resolved)
        console.print(f"{found} file(s) recorded")
        summary = materialize_pipeline(
            absolute_spec(resolved.pipeline),
            resolved.data,
            task_runner=resolved.task_runner,
            storage=store_options(resolved),
        )
        console.print_json(json.dumps(summary))
    finally:
        if server is not None:
            server.stop()
