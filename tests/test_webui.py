"""``eventpipe ui``'s page: names from files and user code are shown as text, never as markup."""

from __future__ import annotations

import os
import shutil
from html.parser import HTMLParser

import pytest

from eventpipe.ops.lineage import Graph, Node, Verdict
from eventpipe.ops.webui import draw, render_page

HOSTILE = '<script>alert("x")</script> & <img src=x onerror=alert(1)>.csv'


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: set[str] = set()
        self.text = ""
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.links += [v for k, v in attrs if k == "href" and v]

    def handle_data(self, data: str) -> None:
        self.text += data


def graph() -> Graph:
    raw = Node(
        "raw_1", "raw", HOSTILE, None, "abc", 100.0, None, Verdict("failing", HOSTILE), state="x"
    )
    asset = Node(
        "analytics_a", "analytics", "a<b>", "file:///d/a.parquet", "v1", 90.0, 3, Verdict("stale")
    )
    return Graph("p", (raw, asset), (("raw_1", "analytics_a"),), now=160.0, stale_minutes=0)


def test_hostile_names_render_as_text_with_a_class_per_health() -> None:
    page = render_page(graph(), "http://127.0.0.1:4200/")
    parsed = _Tags()
    parsed.feed(page)
    assert not parsed.tags & {"script", "img"}
    assert HOSTILE in parsed.text
    assert f"{HOSTILE} → a<b>" in parsed.text
    assert 'class="health failing"' in page
    assert 'class="health stale"' in page
    assert parsed.links == [
        "/lineage.json",
        "http://127.0.0.1:4200/events?resource=file%3A%2F%2F%2Fd%2Fa.parquet",
    ]


@pytest.mark.skipif(
    shutil.which("dot") is None and not os.environ.get("CI"),
    reason="Graphviz is not installed (CI installs it and runs this)",
)
def test_the_graph_is_drawn_as_svg_with_names_as_text_and_assets_linked() -> None:
    hostile = Graph("<!-- --> <script>", graph().nodes, graph().edges, 160.0, 0)

    svg = draw(hostile, "http://127.0.0.1:4200")
    assert svg is not None
    page = render_page(hostile, "http://127.0.0.1:4200", svg=svg)
    parsed = _Tags()
    parsed.feed(page)

    assert "svg" in parsed.tags
    assert not parsed.tags & {"script", "img"}
    assert "<!--" not in svg
    assert HOSTILE in parsed.text
    assert 'class="node failing"' in svg
    assert 'class="node stale"' in svg
    assert 'xlink:href="http://127.0.0.1:4200/events?resource=file%3A%2F%2F%2Fd%2Fa.parquet"' in svg


def test_without_graphviz_the_page_says_so_and_shows_the_mermaid_source() -> None:
    page = render_page(graph(), "http://127.0.0.1:4200")

    assert "apt-get install graphviz" in page
    assert '<pre class="mermaid-source">flowchart LR' in page
