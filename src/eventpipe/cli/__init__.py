"""``eventpipe``: the command line. Flags override ``EVENTPIPE_*`` variables, which override
``eventpipe.toml``."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from cyclopts import App, Parameter
from rich.console import Console
from rich.table import Table

from eventpipe.exceptions import ConfigError, EventpipeError
from eventpipe.settings import Settings

app = App(name="eventpipe", help="Event-driven, asset-based data pipelines on Prefect.")
console = Console(soft_wrap=True)
err = Console(stderr=True)


def _settings(**flags: Any) -> Settings:
    return Settings(**{k: v for k, v in flags.items() if v is not None})


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s.%(msecs)03d %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("eventpipe").setLevel(logging.DEBUG if verbose else logging.INFO)


@app.command
def up(
    *,
    pipeline: str | None = None,
    inbox: Path | None = None,
    data: Path | None = None,
    port: int | None = None,
    api_url: str | None = None,
    host: str | None = None,
    samples: int = 0,
    source: str | None = None,
    queue: str | None = None,
    endpoint_url: str | None = None,
    region: str | None = None,
    aws_credentials_block: str | None = None,
    s3_bucket_block: str | None = None,
    notify_webhook: str | None = None,
    notify_block: str | None = None,
    stale_minutes: float | None = None,
    runs: Literal["here", "worker"] | None = None,
    task_runner: str | None = None,
    verbose: Annotated[bool, Parameter(negative=())] = False,
) -> None:
    """Start the loop: embedded Prefect server (unless --api-url), the pipeline's deployment and
    trigger, the runner and the inbox watcher. Ctrl-C stops it all. With --runs worker it only
    watches, records and sends events; Prefect workers run the deployment `prefect deploy` made.

    Parameters
    ----------
    pipeline
        'package.module:name' or 'path/file.py:name' (default: the demo pipeline).
    inbox
        Folder to watch.
    data
        Where outputs, versions and the ledger go.
    port
        Port of the embedded Prefect server (0: any free port).
    api_url
        Use this Prefect API (e.g. http://127.0.0.1:4200/api) instead of an embedded server.
    host
        Address the embedded server binds to (default 127.0.0.1).
    samples
        Drop this many generated demo files into the inbox once running (demo pipeline only).
    source
        Watch a bucket instead of the inbox: s3://bucket/prefix.
    queue
        SQS queue (URL or name) that receives the bucket's notifications (see setup-s3).
    endpoint_url
        S3/SQS endpoint of an S3-compatible store.
    region
        AWS region, when the AWS environment or profile gives none.
    aws_credentials_block
        Name of a prefect-aws AwsCredentials block to use.
    s3_bucket_block
        Name of a prefect-aws S3Bucket block: its bucket, folder and credentials.
    notify_webhook
        Page this URL (POST, JSON subject/body) on failed runs, rejected files, stale assets.
    notify_block
        Page through this saved Prefect notification block instead ('slug/name').
    stale_minutes
        An analytics asset this much older than the files that landed is stale (default 60).
    runs
        Who executes the runs: 'here' (default: this process, warm, within a second) or
        'worker' (Prefect workers of the deployment's work pool; needs --api-url and
        `prefect deploy`, see prefect.yaml).
    task_runner
        Where the files' process steps run: 'threads' (default), 'dask' (a local Dask
        cluster kept while up runs, one worker process per core: CPU-bound steps use every
        core; needs eventpipe[dask]) or a running Dask scheduler's tcp://host:port.
    verbose
        Log debug details.
    """
    _logging(verbose)
    settings = _settings(
        pipeline=pipeline,
        inbox=inbox,
        data=data,
        port=port,
        api_url=api_url,
        host=host,
        source=source,
        queue=queue,
        endpoint_url=endpoint_url,
        region=region,
        aws_credentials_block=aws_credentials_block,
        s3_bucket_block=s3_bucket_block,
        notify_webhook=notify_webhook,
        notify_block=notify_block,
        stale_minutes=stale_minutes,
        runs=runs,
        task_runner=task_runner,
    )
    from eventpipe.loop.local import LocalLoop

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    def on_run(name: str, state: Any) -> None:
        summary = state.result(raise_on_failure=False) if state.is_completed() else None
        if isinstance(summary, dict) and not summary["files"] and not summary["assets_updated"]:
            console.print(f"run {name}: nothing pending (an earlier run took the files)")
        elif isinstance(summary, dict):
            console.print(
                f"[green]run {name}[/]: {summary['processed']} processed, "
                f"{summary['skipped']} skipped, {summary['rejected']} rejected, "
                f"{summary['failed']} failed; analytics updated: "
                f"{', '.join(summary['assets_updated']) or 'none'}"
                + (
                    f"; {summary['freshness_seconds']:.2f} s after landing"
                    if summary.get("freshness_seconds") is not None
                    else ""
                )
            )
        else:
            console.print(f"[red]run {name}: {state.name}[/] {state.message or ''}")

    def on_fetch(name: str, state: Any) -> None:
        summary = state.result(raise_on_failure=False) if state.is_completed() else None
        if isinstance(summary, dict):
            rows = f", {summary['rows']} rows" if summary.get("rows") is not None else ""
            outcome = summary["outcome"]
            console.print(f"[green]fetch {summary['fetch']}[/] ({name}): {outcome}{rows}")
        else:
            console.print(f"[red]fetch run {name}: {state.name}[/] {state.message or ''}")

    loop = LocalLoop(settings, on_run=on_run, on_fetch=on_fetch)
    s = loop.settings
    console.print("starting eventpipe (the first start of a Prefect server takes ~30 s) …")
    try:
        loop.start()
    except EventpipeError:
        loop.stop()
        raise
    assert loop.pipeline is not None
    ui = loop.server.ui_url if loop.server else (s.api_url or "").removesuffix("/api")
    name = loop.pipeline.name
    watched = (
        f"bucket       {loop.source_description}  (upload .csv .csv.gz .json .jsonl .parquet)"
        if s.watches_bucket
        else f"inbox        {s.inbox}  (drop .csv .csv.gz .json .jsonl .parquet files)"
    )
    if loop.runs_here:
        runs_line = f"{ui}/deployments/deployment/{loop.deployment_id}"
    elif loop.deployment_id is None:
        runs_line = "none yet: `prefect deploy` the deployment (see prefect.yaml), start a worker"
    else:
        runs_line = (
            f"{ui}/deployments/deployment/{loop.deployment_id}  (executed by workers of work"
            f" pool {loop.work_pool}: prefect worker start --pool {loop.work_pool})"
        )
    console.print(
        f"\n[bold]eventpipe is up[/]\n"
        f"  Prefect UI   {ui}\n"
        f"  runs         {runs_line}\n"
        f"  events       {ui}/events\n"
        + (f"  tasks        {loop.task_runner_description}\n" if s.task_runner != "threads" else "")
        + f"  pipeline     {name} ({loop.spec}) -> deployment materialize/{name}\n"
        f"  {watched}\n"
        f"  analytics    {s.data / 'analytics' / name}/<asset>.parquet\n"
        f"  partitions   {s.data / 'processed' / name}/<step>/<file>.parquet\n"
        + "".join(
            f"  fetch        {f.name} {f.every} -> deployment fetch/{name}-{f.name}\n"
            for f in loop.pipeline.fetches.values()
        )
        + "Ctrl-C to stop.\n"
    )
    if samples:
        if loop.spec != "eventpipe.demo:pipeline":
            err.print("--samples generates demo orders files; skipped for this pipeline")
        else:
            from eventpipe.demo import write_sample

            start = len(list(s.inbox.glob("orders-*.csv")))
            for i in range(samples):
                path = write_sample(s.inbox, start + i)
                console.print(f"dropped sample {path.name}")
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


@app.command
def run(
    *,
    pipeline: str | None = None,
    inbox: Path | None = None,
    data: Path | None = None,
    api_url: str | None = None,
    port: int | None = None,
    task_runner: str | None = None,
) -> None:
    """Process every new or changed file in the inbox once, without watching, then exit.

    Parameters
    ----------
    task_runner
        'threads' (default), 'dask' (a Dask cluster for this run, a process per core) or a
        Dask scheduler's tcp://host:port.
    """
    _logging(False)
    settings = _settings(
        pipeline=pipeline,
        inbox=inbox,
        data=data,
        api_url=api_url,
        port=port,
        task_runner=task_runner,
    ).resolved()
    from eventpipe.orchestration.server import configure_api
    from eventpipe.pipeline import absolute_spec

    server = configure_api(settings)
    if server is not None:
        console.print("starting an embedded Prefect server …")
        server.start()
    try:
        from eventpipe.intake.record import scan_once
        from eventpipe.run.flow import materialize_pipeline

        found = scan_once(settings)
        console.print(f"{found} file(s) recorded")
        summary = materialize_pipeline(
            absolute_spec(settings.pipeline),
            str(settings.data),
            task_runner=settings.task_runner,
        )
        console.print_json(json.dumps(summary))
    finally:
        if server is not None:
            server.stop()


automations_app = App(name="automations", help="The automations that page on-call.")
app.command(automations_app)


@automations_app.command(name="apply")
def automations_apply(
    *,
    pipeline: str | None = None,
    api_url: str | None = None,
    notify_webhook: str | None = None,
    notify_block: str | None = None,
    stale_minutes: float | None = None,
    file: Path | None = None,
) -> None:
    """Create or update the pipeline's automations on a Prefect server (safe to run again):
    failed run, rejected file, no run after files landed, stale asset.

    Parameters
    ----------
    pipeline
        'package.module:name' or 'path/file.py:name'.
    api_url
        The Prefect API (default: PREFECT_API_URL).
    notify_webhook
        Page this URL (POST, JSON subject/body).
    notify_block
        Page through this saved Prefect notification block ('slug/name').
    stale_minutes
        An analytics asset this much older than the files that landed is stale.
    file
        Automation templates to apply (default: the packaged ones, as in
        deployments/automations.yaml).
    """
    _logging(False)
    settings = _settings(
        pipeline=pipeline,
        api_url=api_url,
        notify_webhook=notify_webhook,
        notify_block=notify_block,
        stale_minutes=stale_minutes,
    )
    if settings.api_url:
        import os

        os.environ["PREFECT_API_URL"] = settings.api_url
    from eventpipe.orchestration import automations
    from eventpipe.orchestration.deploy import deployment_id
    from eventpipe.pipeline import absolute_spec, load_pipeline

    pipe = load_pipeline(absolute_spec(settings.pipeline))
    block_id = automations.notification_block(settings.notify_block, settings.notify_webhook)
    if block_id is None:
        raise EventpipeError("say where to page: --notify-webhook URL or --notify-block slug/name")
    done = automations.apply(
        pipe.name, deployment_id(pipe.name), block_id, settings.stale_minutes, file
    )
    for name, what in done:
        console.print(f"{what:8} {name}")


@app.command(name="setup-s3")
def setup_s3(
    *,
    bucket: str,
    queue: str,
    prefix: str = "",
    endpoint_url: str | None = None,
    region: str | None = None,
    aws_credentials_block: str | None = None,
) -> None:
    """Wire a bucket to a queue in one step: create both if missing and send the bucket's
    ObjectCreated notifications (under --prefix) to the queue. Safe to run again.

    Parameters
    ----------
    bucket
        Bucket name (created if it does not exist).
    queue
        SQS queue name (created if it does not exist).
    prefix
        Only objects under this prefix are announced.
    endpoint_url
        S3/SQS endpoint of an S3-compatible store.
    region
        AWS region, when the AWS environment or profile gives none.
    aws_credentials_block
        Name of a prefect-aws AwsCredentials block to use.
    """
    _logging(False)
    from eventpipe.intake.s3 import aws_clients, setup_notifications

    settings = _settings(
        endpoint_url=endpoint_url, region=region, aws_credentials_block=aws_credentials_block
    )
    queue_url = setup_notifications(*aws_clients(settings), bucket, queue, prefix)
    location = f"s3://{bucket}/{prefix}"
    console.print(f"s3://{bucket} sends ObjectCreated under {location!r} to {queue_url}")
    flags = f" --endpoint-url {endpoint_url}" if endpoint_url else ""
    console.print(f"now run:  eventpipe up --source {location} --queue {queue}{flags}")


def _ledger(data: Path | None) -> Any:
    from eventpipe.ledger import Ledger, ledger_path

    settings = _settings(data=data).resolved()
    path = ledger_path(settings.data)
    if not path.exists():
        raise EventpipeError(f"no ledger at {path}: nothing has run with --data {settings.data}")
    return Ledger(path)


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


@app.command
def status(
    *, data: Path | None = None, as_json: Annotated[bool, Parameter(name="--json")] = False
) -> None:
    """Every asset (key, current version, last update, rows, partitions) and every file's state."""
    ledger = _ledger(data)
    report: dict[str, Any] = {}
    for pipeline in ledger.pipelines():
        assets: dict[str, dict[str, Any]] = {}
        for row in ledger.assets(pipeline):
            entry = assets.setdefault(
                row.name,
                {
                    "name": row.name,
                    "kind": row.kind,
                    "key": row.key if row.kind == "analytics" else None,
                    "version": row.version if row.kind == "analytics" else None,
                    "updated_at": row.updated_at,
                    "rows": 0,
                    "partitions": 0,
                },
            )
            entry["rows"] += row.rows
            entry["partitions"] += 1 if row.kind == "processed" else 0
            entry["updated_at"] = max(entry["updated_at"], row.updated_at)
        files = [
            {
                "file": f.relative,
                "uri": f.uri,
                "sha256": f.sha256,
                "state": f.state,
                "reason": f.reason,
                "updated_at": f.updated_at,
                "run_id": f.run_id,
            }
            for f in ledger.files(pipeline)
        ]
        report[pipeline] = {
            "assets": list(assets.values()),
            "files": files,
            "counts": ledger.counts(pipeline),
        }
    if as_json:
        print(json.dumps(report, indent=2))
        return
    for pipeline, body in report.items():
        table = Table(title=f"pipeline {pipeline}: assets")
        for col in ("asset", "kind", "version", "updated (UTC)", "rows", "partitions"):
            table.add_column(col)
        for a in body["assets"]:
            table.add_row(
                a["name"],
                a["kind"],
                a["version"] or "-",
                _when(a["updated_at"]),
                str(a["rows"]),
                str(a["partitions"]) if a["kind"] == "processed" else "-",
            )
        console.print(table)
        file_table = Table(title=f"pipeline {pipeline}: files")
        for col in ("file", "state", "updated (UTC)", "reason"):
            file_table.add_column(col)
        for f in body["files"][-50:]:
            file_table.add_row(f["file"], f["state"], _when(f["updated_at"]), f["reason"] or "")
        console.print(file_table)
        console.print(f"counts: {body['counts']}")


@app.command
def versions(
    asset: str,
    /,
    *,
    pipeline: str | None = None,
    data: Path | None = None,
    as_json: Annotated[bool, Parameter(name="--json")] = False,
) -> None:
    """List the versions of an asset: 'revenue_by_day', or 'step/partition' for one partition.

    Parameters
    ----------
    asset
        Analytics asset name, process step name, or 'step/partition'.
    """
    ledger = _ledger(data)
    pipelines = [pipeline] if pipeline else ledger.pipelines()
    name, _, partition = asset.partition("/")
    rows = [v for p in pipelines for v in ledger.versions(p, name, partition or None)]
    if not rows:
        raise EventpipeError(f"no versions of {asset!r}; `eventpipe status` lists the assets")
    if as_json:
        print(json.dumps([v.__dict__ for v in rows], indent=2))
        return
    table = Table(title=f"versions of {asset}")
    for col in ("version", "partition", "created (UTC)", "last current (UTC)", "rows", "sources"):
        table.add_column(col)
    for v in rows:
        sources = ", ".join(s.rsplit("/", 1)[-1] for s in v.sources[:5])
        table.add_row(
            v.version,
            v.partition or "-",
            _when(v.created_at),
            _when(v.current_at),
            str(v.rows),
            sources + (" …" if len(v.sources) > 5 else ""),
        )
    console.print(table)


@app.command
def retry(*, pipeline: str | None = None, data: Path | None = None) -> None:
    """Queue every failed file again; a running `eventpipe up` picks them up within a second."""
    from eventpipe.intake.record import requeue_failed

    ledger = _ledger(data)
    names = [pipeline] if pipeline else ledger.pipelines()
    count = sum(requeue_failed(ledger, name) for name in names)
    console.print(f"{count} file(s) queued again")


@app.command
def explain(file: str, /, *, data: Path | None = None) -> None:
    """Tell one file's story from the ledger: seen, sent, run, skipped / done / rejected and why."""
    ledger = _ledger(data)
    # Its path in the inbox, its URI, or its path on disk.
    on_disk = str(Path(file).resolve())
    rows = [r for r in ledger.files() if file in (r.relative, r.uri) or r.local_path == on_disk]
    if not rows:
        raise EventpipeError(f"the ledger has never seen {file!r}")
    for row in rows:
        console.print(
            f"[bold]{row.relative}[/] ({row.uri})  sha256 {row.sha256[:12]}…  {row.size} bytes"
        )
        console.print(
            f"  first seen {_when(row.seen_at)}; now [bold]{row.state}[/]"
            f" since {_when(row.updated_at)}"
            + (f" — {row.reason}" if row.reason else "")
            + (f"; run {row.run_id}" if row.run_id else "")
            + f"; attempts {row.attempts}"
        )
        for event in ledger.events_for(row.id):
            reason = event.get("payload", {}).get("reason")
            console.print(
                f"  {event['occurred'][:19]}  {event['event']}"
                + (f" — {reason}" if reason else "")
                + ("" if event.get("sent_at") else "  [yellow](not yet delivered)[/]")
            )


@app.command
def lineage(
    *,
    pipeline: str | None = None,
    data: Path | None = None,
    output_format: Annotated[
        Literal["text", "json", "mermaid", "dot"], Parameter(name="--format")
    ] = "text",
    stale_minutes: float = 60,
) -> None:
    """The pipeline's asset graph, raw -> processed -> analytics, each asset with its key,
    version, last update, rows and health: fresh, stale, failing or missing (never built).

    Parameters
    ----------
    pipeline
        'package.module:name' or 'path/file.py:name' (default: the demo pipeline).
    data
        Where outputs, versions and the ledger live.
    output_format
        text (a table), json, mermaid (a flowchart) or dot (Graphviz source).
    stale_minutes
        An asset older than this is stale when newer files are waiting for it.
    """
    from eventpipe.ops.formats import render, to_table
    from eventpipe.ops.lineage import read_graph
    from eventpipe.pipeline import load_pipeline

    if stale_minutes < 0:
        raise ConfigError(f"--stale-minutes must be 0 or more, not {stale_minutes:g}")
    settings = _settings(pipeline=pipeline, data=data).resolved()
    graph = read_graph(load_pipeline(settings.pipeline), settings.data, stale_minutes=stale_minutes)
    if output_format == "text":
        console.print(to_table(graph))
    else:
        print(render(graph, output_format), end="")


@app.command
def ui(
    *,
    pipeline: str | None = None,
    data: Path | None = None,
    port: int = 8787,
    host: str = "127.0.0.1",
    prefect_ui: str = "http://127.0.0.1:4200",
    stale_minutes: float = 60,
) -> None:
    """A read-only web page: the pipeline's lineage graph and freshness table, with links into
    the Prefect UI's events feed. GET /lineage.json gives `eventpipe lineage --format json`.

    Parameters
    ----------
    pipeline
        'package.module:name' or 'path/file.py:name' (default: the demo pipeline).
    data
        Where outputs, versions and the ledger live.
    port
        Port to listen on (0: any free port).
    host
        Address to bind (default 127.0.0.1: this machine only).
    prefect_ui
        Base URL of the Prefect UI the asset links point to.
    stale_minutes
        An asset older than this is stale when newer files are waiting for it.
    """
    from eventpipe.ops.webui import serve
    from eventpipe.pipeline import load_pipeline

    if stale_minutes < 0:
        raise ConfigError(f"--stale-minutes must be 0 or more, not {stale_minutes:g}")
    settings = _settings(pipeline=pipeline, data=data).resolved()
    server = serve(
        load_pipeline(settings.pipeline),
        settings.data,
        host=host,
        port=port,
        prefect_ui=prefect_ui,
        stale_minutes=stale_minutes,
    )
    address, bound = server.server_address[:2]
    console.print(f"eventpipe ui on http://{address!s}:{bound}  (Ctrl-C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def main() -> None:
    # Progress lines come from the runner's thread; show them at once when piped to a log.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    try:
        app()
    except EventpipeError as exc:
        err.print(f"[red]error:[/] {exc}")
        sys.exit(2)
