"""What on-call sees, in a real browser: the Prefect UI's events feed and a run's artifacts, and
``eventpipe ui``'s lineage page.

Debian's chromium driven by Playwright (no ``playwright install``); every request to a host
other than 127.0.0.1 is aborted, so nothing here needs the internet. Screenshots go to each
test's ``tmp_path``.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest
from playwright.sync_api import expect

from eventpipe.core.names import pipeline_resource_id
from eventpipe.orchestration.server import EmbeddedServer
from tests.loop_harness import Harness, running_loop

pytestmark = [pytest.mark.slow, pytest.mark.browser]

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
GOOD = """
    day,amount
    2026-01-01,10
    2026-01-02,7
"""
UI_TIMEOUT = 30_000  # ms: the first page load compiles the UI's bundle
expect.set_options(timeout=UI_TIMEOUT)


@pytest.fixture
def chromium() -> Path:
    """Debian's chromium: skipped without it on a workstation, a failure in CI."""
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI must run the browser tests")
        pytest.skip(message)
    return CHROMIUM


@pytest.fixture
def loop(chromium: Path, prefect_server: EmbeddedServer, tmp_path: Path) -> Iterator[Harness]:
    root = tmp_path / "loop"
    root.mkdir()
    with running_loop(prefect_server, root) as harness:
        yield harness


@pytest.fixture
def page(chromium: Path, loop: Harness) -> Iterator[Any]:
    """A fresh browser page, started after the loop: Playwright's sync API runs an event loop
    in this thread, and Prefect's sync calls made while one runs would return coroutines."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(chromium), args=ARGS, headless=True
        )
        context = browser.new_context(timezone_id="UTC", viewport={"width": 1400, "height": 1000})
        context.route("**/*", _local_only)
        context.set_default_timeout(UI_TIMEOUT)
        try:
            yield context.new_page()
        finally:
            context.close()
            browser.close()


def _local_only(route: Any) -> None:
    if urlsplit(route.request.url).hostname == "127.0.0.1":
        route.continue_()
    else:
        route.abort()


def feed_url(ui: str, resource: str) -> str:
    """The v2 events feed for one resource (and what it relates to), over an explicit range
    that ends in the future: the default range leaves out the current minute."""
    now = datetime.now(UTC)
    search = {
        "resource": [resource],
        "rangeType": "range",
        "start": (now - timedelta(hours=1)).isoformat(timespec="milliseconds"),
        "end": (now + timedelta(hours=1)).isoformat(timespec="milliseconds"),
    }
    return f"{ui}/v2/events?" + urlencode({k: json.dumps(v) for k, v in search.items()})


def land_good_and_bad(loop: Harness) -> None:
    loop.drop("good.csv", GOOD)
    loop.drop("empty.csv", "")
    loop.wait_file_state("good.csv", "done")
    loop.wait_file_state("empty.csv", "rejected")


def test_events_feed_shows_a_files_story_and_the_rejection_reason(
    loop: Harness, page: Any, tmp_path: Path
) -> None:
    land_good_and_bad(loop)
    wanted = {"eventpipe.file.landed", "eventpipe.asset.updated", "eventpipe.file.rejected"}
    found = loop.wait_events(
        lambda events: wanted <= {e["event"] for e in events}, what="the story's events"
    )
    rejected = next(e for e in found if e["event"] == "eventpipe.file.rejected")
    reason = rejected["payload"]["reason"]

    page.goto(feed_url(loop.server.ui_url, pipeline_resource_id(loop.name)))
    for name in sorted(wanted):
        expect(page.get_by_text(name, exact=True).first).to_be_visible()
    page.screenshot(path=tmp_path / "events-feed.png", full_page=True)

    day = datetime.fromisoformat(rejected["occurred"]).astimezone(UTC).strftime("%Y-%m-%d")
    page.goto(f"{loop.server.ui_url}/v2/events/event/{day}/{rejected['id']}?tab=raw")
    expect(page.locator(".cm-content").first).to_contain_text(reason)
    page.screenshot(path=tmp_path / "rejected-event.png", full_page=True)


def test_run_artifacts_show_the_summary_and_an_asset_table(
    loop: Harness, page: Any, tmp_path: Path
) -> None:
    land_good_and_bad(loop)
    run_id = loop.file("good.csv").run_id  # type: ignore[union-attr]
    assert run_id

    run_tab = f"{loop.server.ui_url}/v2/runs/flow-run/{run_id}?tab=Artifacts"
    page.goto(run_tab)
    cards = page.get_by_role("link").filter(has_text=loop.name)
    summary = cards.filter(has_text=f"{loop.name}-run-summary")
    table = cards.filter(has_text=f"{loop.name}-revenue-by-day")
    expect(summary).to_be_visible()
    expect(table).to_be_visible()
    expect(cards.filter(has_text=f"{loop.name}-top-day")).to_be_visible()
    page.screenshot(path=tmp_path / "run-artifacts-tab.png", full_page=True)

    summary.click()
    shown = page.get_by_test_id("markdown-display").first
    expect(shown).to_be_visible()
    expect(shown).to_contain_text("good.csv")
    page.screenshot(path=tmp_path / "run-artifacts.png", full_page=True)

    page.goto(run_tab)
    table.click()
    rows = page.get_by_test_id("table-display").first
    expect(rows).to_be_visible()
    expect(rows.get_by_role("columnheader")).to_have_text(["day", "amount"])
    expect(rows.get_by_role("row")).to_have_count(3)
    expect(rows.get_by_role("cell").first).to_have_text("2026-01-01")  # as is, not escaped
    page.screenshot(path=tmp_path / "asset-table.png", full_page=True)


def test_lineage_page_draws_the_graph_and_marks_the_failing_step_and_stale_assets(
    loop: Harness, page: Any, tmp_path: Path
) -> None:
    from eventpipe.ops.webui import serve
    from eventpipe.pipeline import load_pipeline

    loop.drop("good.csv", GOOD)
    loop.wait_file_state("good.csv", "done")
    loop.flag.touch()  # the process step now raises: the next file fails
    loop.drop("later.csv", GOOD.replace("2026-01-02", "2026-01-03"))
    loop.wait_file_state("later.csv", "failed")

    server = serve(
        load_pipeline(f"{loop.pipeline_file}:pipeline"),
        loop.data,
        port=0,
        prefect_ui=loop.server.ui_url,
        stale_minutes=0,
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
        expect(page.locator("h1")).to_contain_text(loop.name)
        nodes = page.locator("#nodes tbody tr")
        for name in ("good.csv", "later.csv", "cleaned", "revenue_by_day", "top_day"):
            expect(nodes.filter(has_text=name).first).to_be_visible()
        expect(page.locator("#edges li")).to_contain_text(
            ["good.csv → cleaned", "later.csv → cleaned", "cleaned → revenue_by_day"],
        )
        # The step that raised is failing; what it feeds is behind (stale), not broken.
        expect(page.locator("#processed_cleaned td.health")).to_have_text("failing")
        stale = page.locator("#analytics_revenue_by_day td.health.stale")
        expect(stale).to_have_text("stale")
        expect(page.locator("#analytics_revenue_by_day td.why")).to_have_text(
            "input cleaned failing"
        )
        link = page.locator("#analytics_revenue_by_day a").get_attribute("href")
        assert link is not None
        assert link.startswith(f"{loop.server.ui_url}/events?resource=")
        # The graph, drawn by Graphviz: one box per asset, coloured by health.
        drawn = page.locator("#graph svg")
        expect(drawn).to_be_visible()
        for health, names in (("failing", ("later.csv", "cleaned")), ("stale", ("top_day",))):
            for name in names:
                expect(drawn.locator(f"g.node.{health}").filter(has_text=name)).to_have_count(1)
        expect(drawn.locator("g.node.stale a")).to_have_count(2)  # linked to their events
        page.screenshot(path=tmp_path / "lineage-page.png", full_page=True)

        served = json.loads(page.request.get(f"{page.url}lineage.json").text())
        nodes_by_name = {n["name"]: n for n in served["nodes"]}
        assert nodes_by_name["top_day"]["health"] == "stale"

        # The asset's link opens the Prefect UI's feed filtered to that asset's key.
        page.goto(link)
        key = nodes_by_name["revenue_by_day"]["key"]
        expect(page.get_by_text(key, exact=True).first).to_be_visible()
        expect(page.get_by_text("eventpipe.asset.updated", exact=True).first).to_be_visible()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
