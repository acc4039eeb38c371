"""Artifacts show file names and data in the Prefect UI; none of it may become markup.

Markdown is rendered with markdown-it (CommonMark + tables), the way a UI would, and the test
looks at the resulting HTML: only the expected tags, and the visible text equals the input.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pandas as pd
import pytest
from markdown_it import MarkdownIt

from eventpipe.run.artifacts import FileLine, RunReport, artifact_key, escape_markdown, table_rows

HOSTILE = [
    "[x](javascript:alert(1))",
    "![pixel](https://evil.example/track.png)",
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "| pipe | breaks | tables |",
    "# heading",
    "`code`",
    "```fenced```",
    "**bold** _em_ ~~strike~~",
    "> quote",
    "- list item",
    "1. ordered",
    "a\\b\\\\c",
    "https://auto.link.example/x",
    "<https://auto.link.example>",
    "&amp; &lt; &#35;",
    'it\'s "quoted".csv',
    "line one\nline two\r\n# not a heading",
    "café 日本 🎉",
]


class _Html(HTMLParser):
    """The tags and text of rendered markdown, and each table row as its cells' text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.text: list[str] = []
        self.rows: list[list[str]] = []
        self._in_cell = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self.rows[-1].append("")
            self._in_cell = True

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th"):
            self._in_cell = False

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._in_cell:
            self.rows[-1][-1] += data


def render(markdown: str) -> _Html:
    """Markdown as a UI renders it: CommonMark with tables, raw HTML allowed."""
    html = MarkdownIt("commonmark").enable("table").render(markdown)
    parsed = _Html()
    parsed.feed(html)
    parsed.close()
    return parsed


@pytest.mark.parametrize("text", HOSTILE)
def test_escaped_text_renders_as_exactly_that_text(text: str) -> None:
    shown = render(escape_markdown(text))

    assert shown.tags == ["p"]
    assert "".join(shown.text).strip() == " ".join(text.split())


@pytest.mark.parametrize("text", HOSTILE)
def test_escaped_text_stays_inside_its_table_cell(text: str) -> None:
    table = f"| file | detail |\n| --- | --- |\n| {escape_markdown(text)} | ok |\n"

    shown = render(table)

    assert shown.tags.count("td") == 2
    assert not {"a", "img", "script", "code", "h1", "strong", "em", "s"} & set(shown.tags)


@pytest.mark.parametrize(
    "text", ["see http://x now", "https://evil.example/a", "ftp://files.example/f", "[x](http://y)"]
)
def test_a_bare_url_cannot_become_a_link_in_the_prefect_ui(text: str) -> None:
    """The UI renders markdown with GFM, whose autolinks turn any "scheme://..." into a link."""
    escaped = escape_markdown(text)

    assert not re.search(r"\w://", escaped)
    assert "".join(render(escaped).text).strip() == text


def test_table_artifact_cells_hold_the_text_itself() -> None:
    """The UI shows table cells as text (tests/test_browser.py sees "2026-01-01" there), so a
    cell is the data's text, flattened to one line and cut when long, never markdown-escaped."""
    frame = pd.DataFrame({"day": [*HOSTILE, "x" * 500], "amount": [1.5] * (len(HOSTILE) + 1)})

    rows = table_rows(frame, head=len(HOSTILE) + 1)

    assert [row["amount"] for row in rows] == [1.5] * (len(HOSTILE) + 1)
    for row, text in zip(rows, HOSTILE, strict=False):
        assert row["day"] == " ".join(text.split())
    assert rows[-1]["day"] == "x" * 199 + "…"


def test_escape_markdown_accepts_any_object() -> None:
    assert escape_markdown(42) == "42"
    assert escape_markdown(None) == "None"
    assert escape_markdown("\n\t  ") == ""


@pytest.mark.parametrize(
    "parts",
    [
        ("eventpipe", "sales", "summary"),
        ("eventpipe", "Sales Q1/2024 — final!!", "orders.csv"),
        ("--lead", "trail--", "a__b"),
        ("café", "日本", "🎉", "x"),
        ("UPPER", "Mixed_Case", "snake_case"),
    ],
)
def test_artifact_key_only_uses_lowercase_letters_digits_and_dashes(parts: tuple[str, ...]) -> None:
    key = artifact_key(*parts)

    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", key), key


def test_artifact_key_is_readable() -> None:
    assert (
        artifact_key("eventpipe", "Sales", "orders 2024.csv") == "eventpipe-sales-orders-2024-csv"
    )


def test_run_report_markdown_escapes_file_names_and_details() -> None:
    evil = "[click](javascript:alert(1)) <script>x</script> | # h.csv"
    report = RunReport(
        pipeline="sales",
        files=[
            FileLine(evil, "rejected", detail="cannot parse: <b>bad</b> | [x](y)"),
            FileLine("orders.csv", "processed", rows_in=10, rows_out=9),
        ],
        stage_seconds={"process": 0.5, "analytics": 0.25},
        assets_updated=["revenue"],
        freshness_seconds=1.23456,
    )

    markdown = report.markdown()
    shown = render(markdown)

    assert evil not in markdown
    assert not {"a", "script", "b", "img"} & set(shown.tags)
    text = "".join(shown.text)
    assert evil in text
    assert "cannot parse: <b>bad</b> | [x](y)" in text
    # two tables: stages (2 rows x 2 cells) and files (2 rows x 5 cells), nothing spilled
    assert shown.tags.count("table") == 2
    assert shown.tags.count("td") == 2 * 2 + 2 * 5
    assert "1.235 s" in text


def test_run_report_payload_counts_outcomes() -> None:
    report = RunReport(
        pipeline="sales",
        files=[
            FileLine("a.csv", "processed", rows_in=3, rows_out=3),
            FileLine("b.csv", "processed", rows_in=2, rows_out=1),
            FileLine("c.csv", "rejected"),
            FileLine("d.csv", "skipped"),
        ],
    )
    report.add_time("process", 0.1)
    report.add_time("process", 0.2)

    payload = report.payload()

    assert payload["files"] == 4
    assert (payload["processed"], payload["rejected"], payload["skipped"]) == (2, 1, 1)
    assert (payload["rows_in"], payload["rows_out"]) == (5, 4)
    assert payload["stage_seconds"] == {"process": 0.3}
    assert payload["freshness_seconds"] is None
