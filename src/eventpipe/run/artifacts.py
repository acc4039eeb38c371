"""Markdown and table artifacts. Every text that came from a data file or a file name is
escaped before it goes into markdown."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

# ":" too: the Prefect UI renders markdown with GFM, which turns a bare "scheme://" into a link.
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|>~:])")


def escape_markdown(text: object) -> str:
    """Make ``text`` render literally in markdown (no links, images, HTML or table breaks)."""
    flat = " ".join(str(text).split())
    return _MD_SPECIAL.sub(r"\\\1", html.escape(flat, quote=False))


def artifact_key(*parts: str) -> str:
    """An artifact key from parts: lowercase letters, digits and dashes only."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9]+", "-", "-".join(parts).lower())).strip("-")


@dataclass
class FileLine:
    name: str
    outcome: str
    rows_in: int = 0
    rows_out: int = 0
    detail: str = ""


@dataclass
class RunReport:
    """What one flow run did, for the summary artifact and the completed event."""

    pipeline: str
    files: list[FileLine] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    assets_updated: list[str] = field(default_factory=list)
    assets_skipped: list[str] = field(default_factory=list)
    assets_failed: dict[str, str] = field(default_factory=dict)
    """Analytics steps that raised in this run, with the reason."""
    files_retracted: list[str] = field(default_factory=list)
    """Files whose partitions this run removed (deleted from the source, or retracted)."""
    freshness_seconds: float | None = None

    def count(self, outcome: str) -> int:
        return sum(1 for f in self.files if f.outcome == outcome)

    def add_time(self, stage: str, seconds: float) -> None:
        self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + seconds

    def payload(self) -> dict[str, Any]:
        return {
            "files": len(self.files),
            "processed": self.count("processed"),
            "skipped": self.count("skipped"),
            "rejected": self.count("rejected"),
            "failed": self.count("failed"),
            "rows_in": sum(f.rows_in for f in self.files),
            "rows_out": sum(f.rows_out for f in self.files),
            "assets_updated": self.assets_updated,
            "assets_skipped": self.assets_skipped,
            "assets_failed": sorted(self.assets_failed),
            "retracted": len(self.files_retracted),
            "stage_seconds": {k: round(v, 4) for k, v in self.stage_seconds.items()},
            "freshness_seconds": (
                None if self.freshness_seconds is None else round(self.freshness_seconds, 3)
            ),
        }

    def markdown(self) -> str:
        p = self.payload()
        lines = [
            f"# eventpipe run: {escape_markdown(self.pipeline)}",
            "",
            f"**Files:** {p['files']} (processed {p['processed']}, skipped {p['skipped']}, "
            f"rejected {p['rejected']}, failed {p['failed']})  ",
            f"**Rows:** {p['rows_in']} in, {p['rows_out']} out  ",
            "**Freshness:** "
            + ("n/a" if p["freshness_seconds"] is None else f"{p['freshness_seconds']:.3f} s")
            + " from the oldest file landing to analytics updated",
            "",
            "| stage | seconds |",
            "| --- | ---: |",
            *(f"| {escape_markdown(k)} | {v:.3f} |" for k, v in p["stage_seconds"].items()),
            "",
            f"**Assets updated:** {len(self.assets_updated)}; "
            f"**skipped (unchanged inputs):** {len(self.assets_skipped)}",
        ]
        if self.files_retracted:
            names = ", ".join(escape_markdown(n) for n in self.files_retracted[:20])
            more = len(self.files_retracted) - 20
            lines += ["", f"**Retracted:** {names}" + (f" and {more} more" if more > 0 else "")]
        if self.assets_failed:
            lines += ["", "**Analytics failed** (each keeps its last good version):", ""]
            lines += [
                f"- {escape_markdown(name)}: {escape_markdown(reason)}"
                for name, reason in sorted(self.assets_failed.items())
            ]
        if self.files:
            lines += [
                "",
                "| file | outcome | rows in | rows out | detail |",
                "| --- | --- | ---: | ---: | --- |",
            ]
            lines += [
                f"| {escape_markdown(f.name)} | {f.outcome} | {f.rows_in} | {f.rows_out} "
                f"| {escape_markdown(f.detail)} |"
                for f in self.files[:200]
            ]
            if len(self.files) > 200:
                lines.append(f"| … {len(self.files) - 200} more | | | | |")
        return "\n".join(lines) + "\n"


def table_rows(frame: pd.DataFrame, head: int = 20) -> list[dict[str, Any]]:
    """The first rows of ``frame`` as plain, JSON-safe values for a table artifact. The
    Prefect UI shows a table artifact's cells as text (not markdown, not HTML: a markdown
    escape would show as a backslash), so text goes in as it is, whitespace flattened and
    cut at :data:`CELL_CHARS`."""
    sample = frame.head(head)
    return [
        {str(col): _plain(val) for col, val in row.items()}
        for row in sample.to_dict(orient="records")
    ]


CELL_CHARS = 200


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return None if isinstance(value, float) and value != value else value
    text = " ".join(str(value).split())
    return text if len(text) <= CELL_CHARS else text[: CELL_CHARS - 1] + "…"
