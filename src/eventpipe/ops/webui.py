"""``eventpipe ui``: a read-only page with a pipeline's lineage and freshness, on the standard
library's HTTP server.

The graph is drawn by Graphviz (``dot -Tsvg``, Debian package ``graphviz``) on the server and
inlined as SVG, each asset a link to its events in the Prefect UI; without ``dot`` the page says
so and shows the mermaid source. Nothing is fetched from another host and the page has no
scripts. Every name comes from users or user code: it is HTML-escaped in the page and escaped
for dot (Graphviz escapes it again in the SVG).
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from datetime import UTC, datetime
from html import escape
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, urlsplit

from eventpipe.ops.formats import to_dot, to_json, to_mermaid
from eventpipe.ops.lineage import Graph, Node, age_text, read_graph
from eventpipe.pipeline import Pipeline

log = logging.getLogger("eventpipe.webui")

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
table { border-collapse: collapse; margin: 1rem 0; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.6rem; text-align: left; }
th { background: #f3f3f3; }
td.health { font-weight: 600; }
.fresh { background: #d4edda; color: #155724; }
.stale { background: #fff3cd; color: #856404; }
.failing { background: #f8d7da; color: #721c24; }
.missing { background: #e2e3e5; color: #383d41; }
pre.mermaid-source { background: #f7f7f7; padding: 1rem; overflow: auto; }
#graph svg { max-width: 100%; height: auto; }
.why { color: #666; }
"""


def events_link(prefect_ui: str, key: str) -> str:
    """The Prefect UI's events feed filtered to one resource."""
    return f"{prefect_ui.rstrip('/')}/events?resource={quote(key, safe='')}"


def draw(graph: Graph, prefect_ui: str) -> str | None:
    """``graph`` as inline SVG drawn by Graphviz's ``dot``, processed and analytics assets
    linking to their events; None when ``dot`` is not installed or fails."""
    dot = shutil.which("dot")
    if dot is None:
        return None
    links = {n.id: events_link(prefect_ui, n.key) for n in graph.nodes if _linked(n) and n.key}
    try:
        done = subprocess.run(
            [dot, "-Tsvg"],
            input=to_dot(graph, links),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("dot could not draw the lineage graph: %s", exc)
        return None
    if done.returncode != 0 or "<svg" not in done.stdout:
        log.warning("dot could not draw the lineage graph: %s", done.stderr.strip()[:500])
        return None
    svg = done.stdout[done.stdout.index("<svg") :]
    return re.sub(r"<!--.*?-->", "", svg, flags=re.DOTALL)  # comments repeat names, unescaped


def _linked(node: Node) -> bool:
    return node.kind in ("processed", "analytics") and bool(node.key)


def render_page(graph: Graph, prefect_ui: str, *, svg: str | None = None) -> str:
    """The whole HTML page for ``graph``; links to assets' events go to ``prefect_ui``.
    ``svg`` is the drawn graph (:func:`draw`); without it the page shows the mermaid source."""
    title = escape(f"eventpipe: {graph.pipeline}")
    rows = "\n".join(_row(node, graph.now, prefect_ui) for node in graph.nodes)
    names = {n.id: n.name for n in graph.nodes}
    edges = "\n".join(
        f'<li class="edge">{escape(names[a])} → {escape(names[b])}</li>' for a, b in graph.edges
    )
    generated = datetime.fromtimestamp(graph.now, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>{title}</h1>
<p>Generated {generated}. Stale: behind its inputs, or older than {graph.stale_minutes:g} min
while newer files wait. <a href="/lineage.json">lineage.json</a></p>
<h2>Assets</h2>
<table id="nodes">
<thead><tr><th>name</th><th>kind</th><th>version</th><th>last update</th><th>age</th>
<th>rows</th><th>health</th><th>why</th><th>events</th></tr></thead>
<tbody>
{rows}
</tbody>
</table>
<h2>Graph</h2>
{_graph_section(graph, svg)}
<h2>Edges</h2>
<ul id="edges">
{edges}
</ul>
</body>
</html>
"""


def _graph_section(graph: Graph, svg: str | None) -> str:
    source = f'<pre class="mermaid-source">{escape(to_mermaid(graph))}</pre>'
    if svg is None:
        return (
            '<p class="why">Graphviz is not installed here (<code>apt-get install graphviz</code>'
            " draws this graph); its mermaid source:</p>\n" + source
        )
    return (
        f'<div id="graph">{svg}</div>\n'
        f"<details><summary>mermaid source</summary>\n{source}\n</details>"
    )


def _row(node: Node, now: float, prefect_ui: str) -> str:
    updated = (
        datetime.fromtimestamp(node.updated_at, UTC).strftime("%Y-%m-%d %H:%M:%S")
        if node.updated_at is not None
        else "-"
    )
    age = age_text(now - node.updated_at) if node.updated_at is not None else "-"
    link = ""
    if _linked(node) and node.key:
        link = f'<a href="{escape(events_link(prefect_ui, node.key))}">events</a>'
    cells = [
        f'<td class="name">{escape(node.name)}</td>',
        f"<td>{escape(node.kind)}</td>",
        f"<td>{escape(node.version or '-')}</td>",
        f"<td>{updated}</td>",
        f"<td>{age}</td>",
        f"<td>{node.rows if node.rows is not None else '-'}</td>",
        f'<td class="health {node.health}">{node.health}</td>',
        f'<td class="why">{escape(node.verdict.why or "")}</td>',
        f"<td>{link}</td>",
    ]
    return f'<tr id="{node.id}" data-health="{node.health}">{"".join(cells)}</tr>'


def serve(
    pipeline: Pipeline,
    data: Path | str,
    *,
    host: str = "127.0.0.1",
    port: int = 8787,
    prefect_ui: str = "http://127.0.0.1:4200",
    stale_minutes: float = 60,
    ledger: str | None = None,
) -> ThreadingHTTPServer:
    """A bound server (not yet serving: call ``serve_forever``) that reads the ledger afresh on
    every request. ``port=0`` takes a free port (see ``server_address``)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            if path not in ("/", "/lineage.json"):
                self._send(404, "text/plain; charset=utf-8", "not found\n")
                return
            graph = read_graph(pipeline, data, stale_minutes=stale_minutes, ledger=ledger)
            if path == "/lineage.json":
                self._send(200, "application/json", to_json(graph))
            else:
                page = render_page(graph, prefect_ui, svg=draw(graph, prefect_ui))
                self._send(200, "text/html; charset=utf-8", page)

        def _send(self, status: int, content_type: str, body: str) -> None:
            payload = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: object) -> None:
            pass  # a page read is not worth a log line

    return ThreadingHTTPServer((host, port), Handler)
