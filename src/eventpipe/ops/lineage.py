"""Lineage and freshness of a pipeline's assets, from its definition and the ledger alone.

The graph: raw files (one node per landed file, or a single ``raw files`` node when there are
none or more than :data:`MAX_RAW_NODES`) → each process step (one node for all of its
partitions) → the analytics assets that name it → the analytics assets that name those. Nodes
come from the pipeline definition, so an asset that has never been built is in the graph too.

Health of a process or analytics node, by the first rule that holds:

``failing``
    A process step raised on a file that feeds it: the file's current row (the newest row of
    its uri) is ``failed``; or an analytics step raised the last time it was computed (the
    ledger's ``asset_failures``: its last good version stays current). Fixing the step and
    retrying is on-call's job.
``missing``
    It has never been built: the ledger has no current version of it.
``stale``
    It is behind its inputs: an input asset is failing, stale or missing, or was updated after
    it; or its last update is older than ``stale_minutes`` and a file is pending (``landed``,
    ``sent`` or ``processing``) whose ledger row changed (it landed, was sent or was claimed)
    after that update.
``fresh``
    None of the above.

A raw file node is ``failing`` when that file is failing: ``failed``, or ``rejected`` by the
last run or at landing since that run (the last run is the run of the most recently updated
file row that names a run; "since" is that row's update time). An older rejection no longer
counts: the file sits in quarantine and later files went through. A rejected file marks only
its own node: nothing downstream is wrong, the file never got in. The ``raw files`` node is
``failing`` when any file is, ``missing`` when no file has landed, else ``fresh``.

A process step's last update is the newest of its partitions', its rows their sum and its
version the first 16 hex digits of a sha256 over its partitions' (name, version) pairs.
An analytics asset's last update is when a run last confirmed it current (a run that finds its
inputs unchanged publishes the same version again).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from eventpipe.core.keys import asset_key, file_uri
from eventpipe.ledger import AssetFailure, AssetRow, FileRow, Ledger, ledger_path
from eventpipe.pipeline import Pipeline

Health = Literal["fresh", "stale", "failing", "missing"]
NodeKind = Literal["raw", "processed", "analytics"]
HEALTHS: tuple[Health, ...] = ("fresh", "stale", "failing", "missing")
MAX_RAW_NODES = 20
PENDING = ("landed", "sent", "processing")
RAW_FILES_ID = "raw_files"


@dataclass(frozen=True)
class Verdict:
    """A node's health and, unless it is fresh, why."""

    health: Health
    why: str | None = None


@dataclass(frozen=True)
class Upstream:
    """What a node's health depends on about one of its input assets."""

    name: str
    updated_at: float | None
    health: Health


@dataclass(frozen=True)
class Node:
    """One asset of the graph. ``id`` is made of ``[a-z0-9_]`` only: safe in mermaid and dot."""

    id: str
    kind: NodeKind
    name: str
    key: str | None
    version: str | None
    updated_at: float | None
    rows: int | None
    verdict: Verdict
    partitions: int | None = None
    """Process steps: how many partitions are current."""
    files: int | None = None
    """The collapsed ``raw files`` node: how many files it stands for."""
    state: str | None = None
    """A raw file: its ledger state."""

    @property
    def health(self) -> Health:
        return self.verdict.health


@dataclass(frozen=True)
class Graph:
    pipeline: str
    nodes: tuple[Node, ...]
    edges: tuple[tuple[str, str], ...]
    now: float
    stale_minutes: float


# -- health rules (plain rows in, verdicts out) ------------------------------------------------


def last_run(files: Sequence[FileRow]) -> tuple[str | None, float]:
    """(run id, time) of the most recently updated file row that names a run; (None, -inf)
    before any run."""
    ran = [f for f in files if f.run_id]
    if not ran:
        return None, -math.inf
    latest = max(ran, key=lambda f: f.updated_at)
    return latest.run_id, latest.updated_at


def failing_files(files: Sequence[FileRow]) -> list[FileRow]:
    """The files (current rows) that make what they feed failing: ``failed`` ones, and
    ``rejected`` ones rejected by the last run or at landing since it."""
    run_id, run_at = last_run(files)
    return [
        f
        for f in files
        if f.state == "failed"
        or (f.state == "rejected" and (f.run_id == run_id if f.run_id else f.updated_at > run_at))
    ]


def pending_after(files: Sequence[FileRow], since: float) -> list[FileRow]:
    """Pending files whose row changed (landed, was sent or was claimed) after ``since``."""
    return [f for f in files if f.state in PENDING and f.updated_at > since]


def judge(
    updated_at: float | None,
    *,
    now: float,
    stale_minutes: float,
    failing: Sequence[str] = (),
    inputs: Sequence[Upstream] = (),
    files: Sequence[FileRow] = (),
    error: str | None = None,
) -> Verdict:
    """The health of an asset last updated at ``updated_at`` (None: never built), given the
    names of the failing files that feed it directly, its input assets, the pipeline's
    current files and what its own step raised (``error``). The rules are in the module's
    docstring."""
    if failing:
        return Verdict("failing", f"{counted(len(failing), 'file')} failing: {listed(failing)}")
    if error is not None:
        return Verdict("failing", f"the step raised: {error}")
    if updated_at is None:
        return Verdict("missing", "never built")
    broken = [u.name for u in inputs if u.health == "failing"]
    if broken:
        return Verdict("stale", f"input {listed(broken)} failing")
    lagging = [u.name for u in inputs if u.health in ("stale", "missing")]
    if lagging:
        return Verdict("stale", f"input {listed(lagging)} not current")
    newer = [u.name for u in inputs if u.updated_at is not None and u.updated_at > updated_at]
    if newer:
        return Verdict("stale", f"input {listed(newer)} updated after it")
    waiting = pending_after(files, updated_at)
    if waiting and now - updated_at > stale_minutes * 60:
        return Verdict(
            "stale",
            f"{counted(len(waiting), 'newer file')} not in it yet and last updated"
            f" {age_text(now - updated_at)} ago",
        )
    return Verdict("fresh")


def raw_verdict(files: Sequence[FileRow], failing: Sequence[FileRow]) -> Verdict:
    """Health of the ``raw files`` node standing for ``files``, ``failing`` being the failing
    ones."""
    if failing:
        names = listed([f.relative for f in failing])
        return Verdict("failing", f"{counted(len(failing), 'file')} failing: {names}")
    if not files:
        return Verdict("missing", "no file has landed")
    return Verdict("fresh")


def file_verdict(row: FileRow, failing: bool) -> Verdict:
    """Health of one raw file's node: ``failing`` when the file is one of the failing files."""
    return Verdict("failing", row.reason or row.state) if failing else Verdict("fresh")


# -- the graph -----------------------------------------------------------------------------


def build_graph(
    pipeline: Pipeline,
    files: Sequence[FileRow],
    assets: Sequence[AssetRow],
    *,
    data: Path | str,
    now: float,
    stale_minutes: float = 60,
    max_raw_nodes: int = MAX_RAW_NODES,
    failures: Mapping[str, AssetFailure] | None = None,
) -> Graph:
    """The asset graph of ``pipeline``: ``files`` are the current rows of its files
    (``Ledger.latest_files``), ``assets`` its current asset rows (``Ledger.assets``), ``data``
    the data directory (for the keys of assets not built yet), ``failures`` its failing
    analytics (``Ledger.failures``)."""
    failures = failures or {}
    failing = failing_files(files)
    nodes = _raw_nodes(files, failing, max_raw_nodes)
    raw_ids = [n.id for n in nodes]
    edges: list[tuple[str, str]] = []
    upstream: dict[str, Upstream] = {}

    def add(node: Node, inputs: list[str]) -> None:
        nodes.append(node)
        edges.extend((i, node.id) for i in inputs)
        upstream[node.name] = Upstream(node.name, node.updated_at, node.health)

    for step in pipeline.process_steps:
        parts = [a for a in assets if a.name == step.name and a.kind == "processed"]
        updated = max((a.updated_at for a in parts), default=None)
        verdict = judge(
            updated,
            now=now,
            stale_minutes=stale_minutes,
            failing=[f.relative for f in failing if f.state == "failed"],
            files=files,
        )
        node = Node(
            id=f"processed_{step.name}",
            kind="processed",
            name=step.name,
            key=output_key(data, f"processed/{pipeline.name}/{step.name}"),
            version=_partitions_version(parts) if parts else None,
            updated_at=updated,
            rows=sum(a.rows for a in parts) if parts else None,
            verdict=verdict,
            partitions=len(parts),
        )
        add(node, raw_ids)
    for step in pipeline.analytics_order():
        row = next(
            (a for a in assets if a.name == step.name and a.kind == "analytics"),
            None,
        )
        verdict = judge(
            row.updated_at if row else None,
            now=now,
            stale_minutes=stale_minutes,
            inputs=[upstream[i] for i in step.inputs],
            files=files,
            error=failures[step.name].reason if step.name in failures else None,
        )
        node = Node(
            id=f"analytics_{step.name}",
            kind="analytics",
            name=step.name,
            key=row.key
            if row
            else output_key(data, f"analytics/{pipeline.name}/{step.name}.parquet"),
            version=row.version if row else None,
            updated_at=row.updated_at if row else None,
            rows=row.rows if row else None,
            verdict=verdict,
        )
        add(node, [_step_id(pipeline, i) for i in step.inputs])
    return Graph(pipeline.name, tuple(nodes), tuple(edges), now, stale_minutes)


def read_graph(
    pipeline: Pipeline, data: Path | str, *, stale_minutes: float = 60, ledger: str | None = None
) -> Graph:
    """The graph of ``pipeline`` now, from the ledger at database URL ``ledger`` or else the
    one under ``data`` (every asset is missing before anything has run)."""
    files: list[FileRow] = []
    assets: list[AssetRow] = []
    failures: dict[str, AssetFailure] = {}
    in_bucket = str(data).startswith("s3://")
    if ledger is not None or (not in_bucket and ledger_path(Path(data)).exists()):
        book = Ledger.open(data, ledger)
        try:
            files, assets = book.latest_files(pipeline.name), book.assets(pipeline.name)
            failures = book.failures(pipeline.name)
        finally:
            book.close()
    return build_graph(
        pipeline,
        files,
        assets,
        data=data,
        now=time.time(),
        stale_minutes=stale_minutes,
        failures=failures,
    )


def output_key(data: Path | str, relative: str) -> str:
    """The asset key of ``relative`` in the data dir ``data`` (a path or ``s3://...``), as a
    run names it (:meth:`eventpipe.core.storage.Storage.key`) without opening the store."""
    text = str(data)
    if text.startswith("s3://"):
        return asset_key(f"{text.rstrip('/')}/{relative}")
    return asset_key(file_uri(Path(text) / relative))


def _step_id(pipeline: Pipeline, name: str) -> str:
    return f"{'processed' if pipeline.steps[name].kind == 'process' else 'analytics'}_{name}"


def _raw_nodes(files: Sequence[FileRow], failing: Sequence[FileRow], most: int) -> list[Node]:
    failing_uris = {f.uri for f in failing}
    if not files or len(files) > most:
        return [
            Node(
                id=RAW_FILES_ID,
                kind="raw",
                name="raw files",
                key=_common_key([f.uri for f in files]),
                version=None,
                updated_at=max((f.updated_at for f in files), default=None),
                rows=None,
                verdict=raw_verdict(files, failing),
                files=len(files),
            )
        ]
    return [
        Node(
            id="raw_" + hashlib.sha256(f.uri.encode()).hexdigest()[:12],
            kind="raw",
            name=f.relative,
            key=asset_key(f.uri),
            version=f.sha256[:16],
            updated_at=f.updated_at,
            rows=None,
            verdict=file_verdict(f, f.uri in failing_uris),
            state=f.state,
        )
        for f in sorted(files, key=lambda f: (f.relative, f.uri))
    ]


def _partitions_version(parts: Sequence[AssetRow]) -> str:
    pairs = sorted(f"{a.partition}\t{a.version}" for a in parts)
    return hashlib.sha256("\n".join(pairs).encode()).hexdigest()[:16]


def _common_key(uris: Sequence[str]) -> str | None:
    """The key of the folder (or bucket prefix) every file came from, if they share one."""
    if not uris:
        return None
    folders = [u.split("/")[:-1] for u in uris]
    common: list[str] = []
    for segments in zip(*folders, strict=False):
        if len(set(segments)) > 1:
            break
        common.append(segments[0])
    prefix = "/".join(common)
    if "://" not in prefix:
        return None
    try:
        return asset_key(prefix + "/")
    except ValueError:
        return None


# -- small words ---------------------------------------------------------------------------


def age_text(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def counted(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def listed(names: Sequence[str], most: int = 3) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")
