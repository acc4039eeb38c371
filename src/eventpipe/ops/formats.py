"""The formats of ``eventpipe lineage``: a rich table, JSON, a mermaid flowchart, dot source.

Names come from users (file names) and user code (asset names): every format escapes them, and
node ids are made of ``[a-z0-9_]`` only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from rich.table import Table
from rich.text import Text

from eventpipe.ops.lineage import HEALTHS, Graph, Health, Node, age_text, counted, listed

Format = Literal["text", "json", "mermaid", "dot"]

# fill, border, text
_COLORS: dict[Health, tuple[str, str, str]] = {
    "fresh": ("#d4edda", "#28a745", "#155724"),
    "stale": ("#fff3cd", "#d39e00", "#856404"),
    "failing": ("#f8d7da", "#c82333", "#721c24"),
    "missing": ("#e2e3e5", "#6c757d", "#383d41"),
}
_RICH_STYLE: dict[Health, str] = {
    "fresh": "green",
    "stale": "yellow",
    "failing": "bold red",
    "missing": "magenta",
}


def to_dict(graph: Graph) -> dict[str, Any]:
    """The ``--format json`` document (a stable schema; see the README)."""
    return {
        "pipeline": graph.pipeline,
        "generated_at": _iso(graph.now),
        "stale_minutes": graph.stale_minutes,
        "nodes": [_node_dict(n, graph.now) for n in graph.nodes],
        "edges": [[a, b] for a, b in graph.edges],
    }


def _node_dict(node: Node, now: float) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": node.id,
        "kind": node.kind,
        "name": node.name,
        "key": node.key,
        "version": node.version,
        "updated_at": _iso(node.updated_at) if node.updated_at is not None else None,
        "age_seconds": (
            round(max(0.0, now - node.updated_at), 3) if node.updated_at is not None else None
        ),
        "rows": node.rows,
        "health": node.health,
        "why": node.verdict.why,
    }
    extra = {"partitions": node.partitions, "files": node.files, "state": node.state}
    entry.update({k: v for k, v in extra.items() if v is not None})
    return entry


def to_json(graph: Graph) -> str:
    return json.dumps(to_dict(graph), indent=2)


def _summary(node: Node) -> str:
    """The second line of a node's label: what it holds."""
    if node.kind == "raw":
        return node.state or counted(node.files or 0, "file")
    if node.kind == "processed":
        return f"{counted(node.partitions or 0, 'partition')}, {counted(node.rows or 0, 'row')}"
    if node.version is None:
        return "not built"
    return f"{node.version[:8]}, {counted(node.rows or 0, 'row')}"


def _status(node: Node, now: float) -> str:
    """The third line of a node's label: its health and age."""
    if node.updated_at is None:
        return node.health
    return f"{node.health}, {age_text(now - node.updated_at)} ago"


_MERMAID_SAFE = frozenset(" ._-/:,+=@()")


def mermaid_text(text: str) -> str:
    """``text`` inside a quoted mermaid label: letters, digits and a few harmless marks stay;
    everything else (quotes, ``#``, ``<``, ``&``, backticks, control characters ...) is
    written as an entity code ``#<decimal>;``."""
    return "".join(c if c.isalnum() or c in _MERMAID_SAFE else f"#{ord(c)};" for c in text)


def to_mermaid(graph: Graph) -> str:
    """A ``flowchart LR`` with one class per health."""
    lines = ["flowchart LR"]
    for node in graph.nodes:
        label = "<br/>".join(
            mermaid_text(part) for part in (node.name, _summary(node), _status(node, graph.now))
        )
        lines.append(f'    {node.id}["{label}"]:::{node.health}')
    lines.extend(f"    {a} --> {b}" for a, b in graph.edges)
    for health in HEALTHS:
        fill, border, color = _COLORS[health]
        dash = ",stroke-dasharray:4 4" if health == "missing" else ""
        lines.append(f"    classDef {health} fill:{fill},stroke:{border},color:{color}{dash}")
    return "\n".join(lines) + "\n"


def dot_text(text: str) -> str:
    """``text`` inside a double-quoted dot string: backslashes doubled (so ``\\N``, ``\\n``
    and friends in a name are not escapes), quotes escaped, control characters shown as
    ``\\xNN``."""
    out: list[str] = []
    for c in text:
        if c in '\\"':
            out.append("\\" + c)
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\\\x{ord(c):02x}")
        else:
            out.append(c)
    return "".join(out)


def to_dot(graph: Graph, links: Mapping[str, str] | None = None) -> str:
    """Graphviz source (``dot -Tsvg``), nodes filled by health. ``links`` maps node ids to
    URLs: those nodes become links in an SVG rendering. Each node's SVG group gets the id
    ``node_<id>`` and the classes ``node <health>``."""
    links = links or {}
    lines = [
        f'digraph "{dot_text("eventpipe " + graph.pipeline)}" {{',
        "  rankdir=LR;",
        '  node [shape=box, style="rounded,filled", fontname="Helvetica"];',
    ]
    for node in graph.nodes:
        fill, border, color = _COLORS[node.health]
        label = "\\n".join(
            dot_text(part) for part in (node.name, _summary(node), _status(node, graph.now))
        )
        style = ', style="rounded,filled,dashed"' if node.health == "missing" else ""
        link = (node.id in links and f', URL="{dot_text(links[node.id])}", target="_top"') or ""
        lines.append(
            f'  "{node.id}" [label="{label}", fillcolor="{fill}", color="{border}",'
            f' fontcolor="{color}", id="node_{node.id}", class="{node.health}"{style}{link}];'
        )
    lines.extend(f'  "{a}" -> "{b}";' for a, b in graph.edges)
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_table(graph: Graph) -> Table:
    """The ``--format text`` view: one row per node, upstream first, with where it comes from."""
    names = {n.id: n.name for n in graph.nodes}
    sources: dict[str, list[str]] = {}
    for a, b in graph.edges:
        sources.setdefault(b, []).append(names[a])
    table = Table(
        title=f"pipeline {graph.pipeline}: lineage",
        caption=f"stale: behind its inputs, or older than {graph.stale_minutes:g} min"
        " while newer files wait",
    )
    for col in ("asset", "kind", "health", "version", "updated (UTC)", "age", "rows", "from"):
        table.add_column(col)
    table.add_column("why", style="dim")
    for node in graph.nodes:
        table.add_row(
            Text(node.name),
            _kind(node),
            Text(node.health, style=_RICH_STYLE[node.health]),
            node.version or "-",
            _when(node.updated_at),
            age_text(graph.now - node.updated_at) if node.updated_at is not None else "-",
            str(node.rows) if node.rows is not None else "-",
            Text(listed(sources.get(node.id, []), most=3) or "-"),
            Text(node.verdict.why or ""),
        )
    return table


def _kind(node: Node) -> str:
    if node.state is not None:
        return f"raw ({node.state})"
    if node.files is not None:
        return f"raw ({counted(node.files, 'file')})"
    if node.partitions is not None:
        return f"processed ({counted(node.partitions, 'partition')})"
    return node.kind


def render(graph: Graph, fmt: Format) -> str:
    """Text for the machine formats (``text`` is a rich table: :func:`to_table`)."""
    if fmt == "json":
        return to_json(graph)
    if fmt == "mermaid":
        return to_mermaid(graph)
    if fmt == "dot":
        return to_dot(graph)
    raise ValueError(f"not a text format: {fmt!r}")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


def _when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")
