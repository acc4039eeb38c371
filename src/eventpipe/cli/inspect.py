"""The commands that answer from the ledger: ``status``, ``versions``, ``explain``, and
``retry``, which queues failed files again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from cyclopts import Parameter
from rich.table import Table

from eventpipe.cli.common import (
    PIPELINE_BY_NAME,
    console,
    ledger_pipelines,
    open_ledger,
    settings_flags,
    settings_or_configured,
    when,
)
from eventpipe.exceptions import EventpipeError
from eventpipe.settings import Settings

if TYPE_CHECKING:
    from eventpipe.ledger import Ledger

DATA_SETTINGS = settings_flags("data", "ledger")

PipelineFilter = Annotated[str | None, Parameter(help=PIPELINE_BY_NAME)]
AsJson = Annotated[bool, Parameter(name="--json", help="Print JSON instead of tables.")]


def status(
    *,
    pipeline: PipelineFilter = None,
    settings: Annotated[Settings | None, DATA_SETTINGS] = None,
    as_json: AsJson = False,
) -> None:
    """Every asset (key, current version, last update, rows, partitions) and every file's state."""
    resolved = settings_or_configured(settings).resolved()
    data = resolved.data
    ledger = open_ledger(resolved)
    report = {
        name: pipeline_report(ledger, name) for name in ledger_pipelines(ledger, data, pipeline)
    }
    if as_json:
        print(json.dumps(report, indent=2))
        return
    for name, body in report.items():
        table = Table(title=f"pipeline {name}: assets")
        cols = ("asset", "kind", "version", "updated (UTC)", "rows", "partitions", "failing")
        for col in cols:
            table.add_column(col)
        for a in body["assets"]:
            table.add_row(
                a["name"],
                a["kind"],
                a["version"] or "-",
                when(a["updated_at"]) if a["updated_at"] is not None else "-",
                str(a["rows"]),
                str(a["partitions"]) if a["kind"] == "processed" else "-",
                a["failing"] or "",
            )
        console.print(table)
        file_table = Table(title=f"pipeline {name}: files")
        for col in ("file", "state", "updated (UTC)", "reason"):
            file_table.add_column(col)
        for f in body["files"][-50:]:
            file_table.add_row(f["file"], f["state"], when(f["updated_at"]), f["reason"] or "")
        console.print(file_table)
        console.print(f"counts: {body['counts']}")


def pipeline_report(ledger: Ledger, pipeline: str) -> dict[str, Any]:
    """One pipeline's part of `status --json`: its assets, its files, the files per state."""
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
                "failing": None,
            },
        )
        entry["rows"] += row.rows
        entry["partitions"] += 1 if row.kind == "processed" else 0
        entry["updated_at"] = max(entry["updated_at"], row.updated_at)
    for failure in ledger.failures(pipeline).values():
        entry = assets.setdefault(
            failure.name,
            {
                "name": failure.name,
                "kind": "analytics",
                "key": None,
                "version": None,
                "updated_at": None,
                "rows": 0,
                "partitions": 0,
            },
        )
        entry["failing"] = failure.reason  # its version (if any) is the last good one
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
    return {"assets": list(assets.values()), "files": files, "counts": ledger.counts(pipeline)}


def versions(
    asset: str,
    /,
    *,
    pipeline: PipelineFilter = None,
    settings: Annotated[Settings | None, DATA_SETTINGS] = None,
    as_json: AsJson = False,
) -> None:
    """List the versions of an asset: 'revenue_by_day', or 'step/partition' for one partition.

    Parameters
    ----------
    asset
        Analytics asset name, process step name, or 'step/partition'.
    """
    resolved = settings_or_configured(settings).resolved()
    data = resolved.data
    ledger = open_ledger(resolved)
    name, _, partition = asset.partition("/")
    pipelines = ledger_pipelines(ledger, data, pipeline)
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
            when(v.created_at),
            when(v.current_at),
            str(v.rows),
            sources + (" …" if len(v.sources) > 5 else ""),
        )
    console.print(table)


def retry(
    *,
    pipeline: Annotated[str | None, Parameter(help="Only this pipeline (its name).")] = None,
    settings: Annotated[Settings | None, DATA_SETTINGS] = None,
) -> None:
    """Queue every failed file again (a running `eventpipe up` picks them up within a
    second), and let the next run compute failing analytics again even if their inputs and
    code have not changed."""
    # Imported here: `eventpipe --help` need not load the intake.
    from eventpipe.intake.record import requeue_failed

    ledger = open_ledger(settings_or_configured(settings).resolved())
    names = [pipeline] if pipeline else ledger.pipelines()
    count = sum(requeue_failed(ledger, name) for name in names)
    console.print(f"{count} file(s) queued again")
    assets = sum(ledger.clear_failures(name) for name in names)
    if assets:
        console.print(f"{assets} failing analytics asset(s) will be computed again by the next run")


def retract(
    *files: str,
    pipeline: PipelineFilter = None,
    settings: Annotated[Settings | None, DATA_SETTINGS] = None,
) -> None:
    """Take files' data out of the outputs: their partitions are removed (their versions stay)
    and the analytics computed without them, by the next run (a running `eventpipe up` starts
    it within a second). What a deletion does with on_delete = retract, in either mode.

    Parameters
    ----------
    files
        Each file's path in the inbox, its URI, or its path on disk.
    """
    from eventpipe.intake.record import retract as retract_file  # loads the intake
    from eventpipe.ledger import BY_COMMAND

    if not files:
        raise EventpipeError("name the files to retract (their paths in the inbox or URIs)")
    resolved = settings_or_configured(settings).resolved()
    ledger = open_ledger(resolved)
    names = ledger_pipelines(ledger, resolved.data, pipeline) if pipeline else None
    missing = []
    for file in files:
        on_disk = str(Path(file).resolve())
        rows = [
            r
            for name in (names or ledger.pipelines())
            for r in ledger.latest_files(name)
            if file in (r.relative, r.uri) or r.local_path == on_disk
        ]
        if not rows:
            missing.append(file)
            continue
        for row in rows:
            if retract_file(ledger, row.pipeline, row.uri, BY_COMMAND, busy=True):
                console.print(f"{row.relative} ({row.pipeline}): retracting")
            else:
                console.print(f"{row.relative} ({row.pipeline}): nothing to retract ({row.state})")
    if missing:
        raise EventpipeError(f"the ledger has never seen {', '.join(map(repr, missing))}")


def explain(
    file: str,
    /,
    *,
    pipeline: PipelineFilter = None,
    settings: Annotated[Settings | None, DATA_SETTINGS] = None,
) -> None:
    """Tell one file's story from the ledger: seen, sent, run, skipped / done / rejected and why.

    Parameters
    ----------
    file
        Its path in the inbox, its URI, or its path on disk.
    """
    resolved = settings_or_configured(settings).resolved()
    data = resolved.data
    ledger = open_ledger(resolved)
    names = ledger_pipelines(ledger, data, pipeline) if pipeline else None
    on_disk = str(Path(file).resolve())
    rows = [
        r
        for r in ledger.files()
        if (file in (r.relative, r.uri) or r.local_path == on_disk)
        and (names is None or r.pipeline in names)
    ]
    if not rows:
        raise EventpipeError(f"the ledger has never seen {file!r}")
    for row in rows:
        console.print(
            f"[bold]{row.relative}[/] ({row.uri})  sha256 {row.sha256[:12]}…  {row.size} bytes"
        )
        console.print(
            f"  first seen {when(row.seen_at)}; now [bold]{row.state}[/]"
            f" since {when(row.updated_at)}"
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
