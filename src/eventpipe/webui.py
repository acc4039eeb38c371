"""``eventpipe ui``: a read-only page with a pipeline's lineage and freshness, on the standard
library's HTTP server.

No layout library is in the lock, so the graph is shown as its mermaid source, a table of nodes
and a list of edges; nothing is fetched from another host (the page has no scripts). Every name
comes from users or user code and is HTML-escaped.
"""

from __future__ import annotations

from datetime import UTC, datetime
from html import escape
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, urlsplit

from eventpipe.lineage import Graph, Node, age_text, read_graph
from eventpipe.lineage_formats import to_json, to_mermaid
from eventpipe.pipeline import Pipeline

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
.why { color: #666; }
"""


def events_link(prefect_ui: str, key: str) -> str:
    """The Prefect UI's events feed filtered to one resource."""
    return f"{prefect_ui.rstrip('/')}/events?resource={quote(key, safe='')}"


def render_page(graph: Graph, prefect_ui: str) -> str:
    """The whole HTML page for ``graph``; links to assets' events go to ``prefect_ui``."""
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
<h2>Edges</h2>
<ul id="edges">
{edges}
</ul>
<h2>Graph (mermaid)</h2>
<pre class="mermaid-source">{escape(to_mermaid(graph))}</pre>
</body>
</html>
"""


def _row(node: Node, now: float, prefect_ui: str) -> str:
    updated = (
        datetime.fromtimestamp(node.updated_at, UTC).strftime("%Y-%m-%d %H:%M:%S")
        if node.updated_at is not None
        else "-"
    )
    age = age_text(now - node.updated_at) if node.updated_at is not None else "-"
    link = ""
    if node.kind in ("processed", "analytics") and node.key:
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
    data: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8787,
    prefect_ui: str = "http://127.0.0.1:4200",
    stale_minutes: float = 60,
) -> ThreadingHTTPServer:
    """A bound server (not yet serving: call ``serve_forever``) that reads the ledger afresh on
    every request. ``port=0`` takes a free port (see ``server_address``)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            if path not in ("/", "/lineage.json"):
                self._send(404, "text/plain; charset=utf-8", "not found\n")
                return
            graph = read_graph(pipeline, data, stale_minutes=stale_minutes)
            if path == "/lineage.json":
                self._send(200, "application/json", to_json(graph))
            else:
                self._send(200, "text/html; charset=utf-8", render_page(graph, prefect_ui))

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
