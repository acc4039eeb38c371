"""Bad input gets a clear reason, an event and a place in quarantine; the rest keeps flowing.

Each test drops a kind of bad input next to a good file into a running loop and reads what a
user would: the ledger's reason, the ``.reason.json`` in quarantine, the events and the
analytics.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from eventpipe.core.keys import partition_name
from eventpipe.orchestration.server import EmbeddedServer
from eventpipe.testing import drop_file, wait_for
from tests.loop_harness import Harness, running_loop
from tests.test_artifacts import render

GOOD = "day,amount\n2026-01-01,10\n"
STRICT_SCHEMA = 'Schema({"day": None, "amount": "float64"}, allow_extra=False)'


@pytest.fixture
def loop(prefect_server: EmbeddedServer, tmp_path: Path) -> Iterator[Harness]:
    with running_loop(prefect_server, tmp_path) as harness:
        yield harness


def quarantined(h: Harness, relative: str) -> tuple[Path, dict[str, str]]:
    target = h.data / "quarantine" / h.name / relative
    reason = json.loads(target.with_name(target.name + ".reason.json").read_text())
    return target, reason


def assert_quarantined(h: Harness, relative: str, *words: str) -> str:
    """``relative`` ends rejected with a reason holding ``words``, moved (not copied) to
    quarantine with that reason beside it; returns the reason."""
    row = h.wait_file_state(relative, "rejected")
    reason = row.reason or ""
    for word in words:
        assert word in reason, (relative, reason)
    assert_readable(reason)
    target, note = quarantined(h, relative)
    if "symlink_to" in note:  # a link is recorded by its note alone
        assert not os.path.lexists(target), target
    else:
        assert not target.is_symlink(), target
        assert target.is_file(), target
    assert note["reason"] == reason
    source = h.inbox / relative
    assert not os.path.lexists(source), relative
    return reason


def assert_readable(reason: str) -> None:
    """A reason is one sentence a person can act on: what is wrong; what to do."""
    assert len(reason.splitlines()) == 1, reason
    assert len(reason) < 400, reason
    assert not re.search(r"Traceback|\b[A-Z]\w*(Error|Exception)\b", reason), reason
    assert "; " in reason, f"no advice in {reason!r}"


def assert_rejected_events(h: Harness, relatives: list[str]) -> list[dict[str, Any]]:
    """One ``eventpipe.file.rejected`` event per file, carrying the ledger's reason."""
    events = h.wait_events(
        lambda evs: set(relatives) <= {e["resource"]["prefect.resource.name"] for e in evs},
        "eventpipe.file.rejected",
        what=f"rejected events for {relatives}",
    )
    for event in events:
        name = event["resource"]["prefect.resource.name"]
        row = h.file(name)
        assert row is not None
        assert event["payload"]["reason"] == row.reason
        target, note = quarantined(h, name)
        if "symlink_to" in note:  # a link is recorded by its note alone: that is where it is
            target = target.with_name(target.name + ".reason.json")
        assert event["payload"]["quarantined_to"] == str(target)
    return events


# -- content that cannot be read --------------------------------------------------------------


def test_unreadable_files_are_quarantined_with_reasons_and_good_ones_flow(loop: Harness) -> None:
    bad: dict[str, tuple[str | bytes, list[str]]] = {
        "empty.csv": ("", ["file is empty"]),
        "garbage.csv": (b"\x00\x01\x02\xff\xfe binary", ["binary data (NUL bytes)"]),
        "noise.csv": (bytes(range(128, 256)) * 4, ["not valid UTF-8 at byte 0"]),
        "too many fields.csv": (
            "day,amount\n2026-01-01,10\n2026-01-02,5,7\n",
            ["cannot parse as .csv", "Expected 2 fields in line 3, saw 3"],
        ),
        "first row too long.csv": (
            "day,amount\n2026-01-01,10,7\n",
            ["first row has more fields than the header"],
        ),
        "open quote.csv": (
            'day,amount\n2026-01-01,10\n"2026-01-02,5\n',
            ["cannot parse as .csv", "EOF inside string"],
        ),
        "broken.json": ('{"day": "2026-01-01", "amount": ', ["cannot parse as .json"]),
        "broken.jsonl": (
            '{"day": "2026-01-01", "amount": 1}\n{"day": \n',
            ["cannot parse as .jsonl: line 2"],
        ),
        "lists.jsonl": (
            '{"day": "2026-01-01", "amount": 1}\n["2026-01-02", 2]\n',
            ["JSONL line 2 is not an object"],
        ),
        "latin1.csv": (
            b"day,amount,note\n2026-01-01,10,caf\xe9\n",
            ["not valid UTF-8 at byte 33 (line 2", "save the file as UTF-8"],
        ),
    }
    for name, (content, _) in bad.items():
        drop_file(loop.inbox, name, content)
    loop.drop("good.csv", GOOD)

    loop.wait_file_state("good.csv", "done")
    for name, (_, words) in bad.items():
        assert_quarantined(loop, name, *words)
    assert loop.analytics("revenue_by_day")["amount"].tolist() == [10.0]
    assert_rejected_events(loop, list(bad))


# -- refused before reading -------------------------------------------------------------------


def test_links_out_of_the_inbox_unknown_types_and_oversized_files_are_refused_unread(
    prefect_server: EmbeddedServer, tmp_path: Path
) -> None:
    outside = tmp_path / "secret.csv"
    outside.write_text("day,amount\n2026-01-01,999\n")
    big = "day,amount\n" + "2026-01-02,1\n" * 100
    with running_loop(prefect_server, tmp_path, max_file_bytes=len(big) - 1) as loop:
        os.symlink(outside, loop.inbox / "link.csv")
        drop_file(loop.inbox, "notes.txt", "not data")
        drop_file(loop.inbox, "big.csv", big)
        loop.drop("good.csv", GOOD)

        loop.wait_file_state("good.csv", "done")
        assert_quarantined(loop, "link.csv", "symlink points outside the inbox")
        assert_quarantined(loop, "notes.txt", "unsupported file type; use one of")
        assert_quarantined(
            loop,
            "big.csv",
            f"file is {len(big)} bytes, over the limit of {len(big) - 1}",
            "max_file_bytes",
        )
        assert outside.read_text().endswith("999\n")  # the link's target was never touched
        _, note = quarantined(loop, "link.csv")
        assert note["symlink_to"] == str(outside)
        # Nothing under the data dir points outside it: every path is a file or a directory.
        for path in loop.data.rglob("*"):
            assert not path.is_symlink(), path
            assert path.is_file() or path.is_dir(), path
        assert loop.analytics("revenue_by_day")["amount"].tolist() == [10.0]
        assert_rejected_events(loop, ["link.csv", "notes.txt", "big.csv"])


# -- the step's schema ------------------------------------------------------------------------


def test_files_not_matching_what_the_step_expects_are_rejected_by_the_step(
    prefect_server: EmbeddedServer, tmp_path: Path
) -> None:
    with running_loop(prefect_server, tmp_path, expects=STRICT_SCHEMA) as loop:
        loop.drop("no amount.csv", "day,total\n2026-01-01,10\n")
        loop.drop("extra column.csv", "day,amount,note\n2026-01-01,10,hi\n")
        loop.drop("words.csv", "day,amount\n2026-01-01,ten\n")
        loop.drop("good.csv", GOOD)

        loop.wait_file_state("good.csv", "done")
        assert_quarantined(
            loop, "no amount.csv", "step 'cleaned': missing columns ['amount']", "['day', 'total']"
        )
        assert_quarantined(
            loop,
            "extra column.csv",
            "step 'cleaned': unexpected columns ['note']",
            "it takes only ['day', 'amount']",
        )
        assert_quarantined(
            loop, "words.csv", "column 'amount' is not float64", "'ten'", "fix its values"
        )
        assert loop.analytics("revenue_by_day")["amount"].tolist() == [10.0]
        events = assert_rejected_events(loop, ["no amount.csv", "extra column.csv", "words.csv"])
    # Rejected inside a run: the event points at that flow run.
    for event in events:
        kinds = {r["prefect.resource.role"] for r in event["related"]}
        assert {"pipeline", "flow-run"} <= kinds, event["related"]


# -- files still being written ----------------------------------------------------------------


def test_a_slowly_written_file_is_taken_once_complete_and_a_truncated_gzip_is_rejected(
    prefect_server: EmbeddedServer, tmp_path: Path
) -> None:
    rows = "".join(f"2026-01-{day:02d},{day}\n" for day in range(1, 29))
    content = ("day,amount\n" + rows).encode()
    chunks = [content[i : i + 37] for i in range(0, len(content), 37)]  # cut mid-line
    csv_gz = gzip.compress(content)

    with running_loop(prefect_server, tmp_path, settle_seconds=1.0) as loop:

        def write_slowly() -> None:
            # No temp name: chunks 0.1 s apart, well inside settle_seconds.
            with (loop.inbox / "slow.csv").open("wb") as out:
                for chunk in chunks:
                    out.write(chunk)
                    out.flush()
                    time.sleep(0.1)

        writer = threading.Thread(target=write_slowly)
        writer.start()
        drop_file(loop.inbox, "half.csv.gz", csv_gz[: len(csv_gz) // 2])
        writer.join()
        assert len(chunks) > 10

        loop.wait_file_state("slow.csv", "done")
        loop.wait_idle()
        slow_rows = [r for r in loop.ledger.files(loop.name) if r.relative == "slow.csv"]
        assert [(r.size, r.sha256) for r in slow_rows] == [
            (len(content), hashlib.sha256(content).hexdigest())
        ]  # taken once, whole
        assert loop.analytics("revenue_by_day")["amount"].sum() == sum(range(1, 29))
        assert_quarantined(loop, "half.csv.gz", "the file is truncated", "drop the complete file")
        assert_rejected_events(loop, ["half.csv.gz"])


# -- names ------------------------------------------------------------------------------------


def test_unicode_and_spaces_in_names_are_processed_like_any_other(loop: Harness) -> None:
    files = {
        "ventes d'été №1.csv": "day,amount\n2026-02-01,1\n",
        "über data (copy).csv": "day,amount\n2026-02-02,2\n",
        "données 2026/mars #3 [final].csv": "day,amount\n2026-02-03,3\n",
    }
    for name, content in files.items():
        loop.drop(name, content)

    for name in files:
        loop.wait_file_state(name, "done")
        assert loop.partition_path(partition_name(name)).exists(), name
    loop.wait_idle()
    revenue = loop.analytics("revenue_by_day")
    assert dict(zip(revenue["day"], revenue["amount"], strict=True)) == {
        "2026-02-01": 1.0,
        "2026-02-02": 2.0,
        "2026-02-03": 3.0,
    }
    assert not (loop.data / "quarantine").exists()


# -- the same bytes twice ---------------------------------------------------------------------


def test_the_same_bytes_under_another_name_are_skipped_as_a_duplicate_not_rejected(
    loop: Harness,
) -> None:
    loop.drop("orders.csv", GOOD)
    loop.wait_file_state("orders.csv", "done")

    loop.drop("orders (1).csv", GOOD)

    row = loop.wait_file_state("orders (1).csv", "skipped")
    assert row.reason is not None
    assert row.reason.startswith("duplicate of ")
    assert row.reason.endswith("/orders.csv")  # names its twin
    loop.wait_idle()
    assert (loop.inbox / "orders (1).csv").exists()  # not moved to quarantine
    assert not (loop.data / "quarantine").exists()
    assert loop.analytics("revenue_by_day")["amount"].tolist() == [10.0]  # not counted twice


# -- temp files -------------------------------------------------------------------------------


def test_temp_files_are_never_taken_until_renamed(
    prefect_server: EmbeddedServer, tmp_path: Path
) -> None:
    temp_names = [".x.csv", "a.csv.tmp", "a.csv.part", "a.csv.crdownload", ".staging/b.csv"]
    with running_loop(prefect_server, tmp_path, rescan_seconds=0.5) as loop:
        for name in temp_names:
            target = loop.inbox / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(GOOD)
        loop.drop("good.csv", "day,amount\n2026-01-02,5\n")
        loop.wait_file_state("good.csv", "done")
        time.sleep(1.5)  # a few rescans of the whole inbox
        assert {r.relative for r in loop.ledger.files(loop.name)} == {"good.csv"}
        assert all((loop.inbox / name).exists() for name in temp_names)

        # The download finishes: renamed to its real name, it is taken.
        (loop.inbox / "a.csv.part").rename(loop.inbox / "a.csv")
        loop.wait_file_state("a.csv", "done")
        assert {r.relative for r in loop.ledger.files(loop.name)} == {"good.csv", "a.csv"}


# -- markdown artifacts -----------------------------------------------------------------------

HOSTILE_CELLS = ["<script>alert(1)</script>", "| pipe |", "[link](http://x)", "**bold**"]
SUMMARY_TAGS = {"h1", "p", "strong", "br", "table", "thead", "tbody", "tr", "th", "td"}


def artifacts(h: Harness) -> list[dict[str, Any]]:
    body = {"artifacts": {"key": {"like_": h.name}}, "limit": 200}
    with httpx.Client(timeout=30) as client:
        found: list[dict[str, Any]] = (
            client.post(f"{h.server.api_url}/artifacts/filter", json=body).raise_for_status().json()
        )
    return found


def test_text_from_data_files_is_escaped_in_the_runs_artifacts(
    prefect_server: EmbeddedServer, tmp_path: Path
) -> None:
    with running_loop(prefect_server, tmp_path, expects=STRICT_SCHEMA) as loop:
        # Hostile cells in a good file (they reach the analytics), and each one as an amount
        # (it reaches the run summary in the rejection's reason).
        days = "".join(f'"{cell}",{i}\n' for i, cell in enumerate(HOSTILE_CELLS, 1))
        loop.drop("hostile days.csv", "day,amount\n" + days)
        for i, cell in enumerate(HOSTILE_CELLS):
            loop.drop(f"cell {i}.csv", f'day,amount\n2026-01-01,"{cell}"\n')
        loop.drop("<b>**name**</b> [x](y) | z |.csv", GOOD)
        names = ["hostile days.csv", "<b>**name**</b> [x](y) | z |.csv"]
        for name in names:
            loop.wait_file_state(name, "done")
        for i in range(len(HOSTILE_CELLS)):
            loop.wait_file_state(f"cell {i}.csv", "rejected")
        loop.wait_idle()

        def summaries_cover_every_file() -> list[dict[str, Any]] | None:
            found = [a for a in artifacts(loop) if a["type"] == "markdown"]
            shown = {row[0] for a in found for row in render(a["data"]).rows if row}
            expected = {*names, *(f"cell {i}.csv" for i in range(len(HOSTILE_CELLS)))}
            return found if expected <= shown else None

        summaries = wait_for(summaries_cover_every_file, 30, 0.5, "run summaries of every file")

    file_rows: list[list[str]] = []
    for artifact in summaries:
        markdown = artifact["data"]
        assert "<script>" not in markdown
        assert "<b>" not in markdown
        assert not re.search(r"\w://", markdown)  # the UI's GFM would make a bare URL a link
        page = render(markdown)
        assert set(page.tags) <= SUMMARY_TAGS, page.tags
        header = ["file", "outcome", "rows in", "rows out", "detail"]
        if header in page.rows:
            start = page.rows.index(header)
            file_rows += page.rows[start + 1 :]
    assert all(len(row) == 5 for row in file_rows), file_rows  # no cell broke out of the table
    shown = {row[0]: row for row in file_rows}
    assert shown["<b>**name**</b> [x](y) | z |.csv"][1] == "processed"
    for i, cell in enumerate(HOSTILE_CELLS):
        outcome, detail = shown[f"cell {i}.csv"][1], shown[f"cell {i}.csv"][4]
        assert outcome == "rejected"
        assert f"could not convert string to float: '{cell}'" in detail  # shown literally

    # The UI shows a table artifact's cells as text (tests/test_browser.py): the analytics'
    # days are stored as the text they are, not markdown-escaped.
    tables = [a for a in artifacts(loop) if a["key"] == f"{loop.name}-revenue-by-day"]
    days = {row["day"] for a in tables for row in json.loads(a["data"])}
    assert {" ".join(cell.split()) for cell in HOSTILE_CELLS} <= days
