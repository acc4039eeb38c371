"""On-call gets paged: eventpipe's automations send to a webhook (a real HTTP receiver here)
when a file is rejected, a run fails, an analytics asset goes stale, or files land and no
run comes."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from eventpipe.events.build import build_event, related_pipeline
from eventpipe.events.outbox import EventSender
from eventpipe.orchestration import automations
from eventpipe.orchestration.server import EmbeddedServer
from eventpipe.testing import wait_for
from tests.loop_harness import Harness, running_loop

ROOT = Path(__file__).resolve().parent.parent


class Pager:
    """An HTTP endpoint that keeps every JSON body POSTed to it."""

    def __init__(self) -> None:
        self.pages: list[dict[str, Any]] = []
        pages = self.pages

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                pages.append(json.loads(body or b"{}"))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/page"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, words: str, timeout: float = 90) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            return next((p for p in self.pages if words in p.get("subject", "")), None)

        return wait_for(found, timeout, interval=0.5, what=f"a page about {words!r}")


@pytest.fixture
def pager() -> Iterator[Pager]:
    pager = Pager()
    yield pager
    pager.server.shutdown()
    pager.server.server_close()


@pytest.fixture
def loop(prefect_server: EmbeddedServer, tmp_path: Path, pager: Pager) -> Iterator[Harness]:
    with running_loop(
        prefect_server, tmp_path, notify_webhook=pager.url, stale_minutes=0.2, sweep_seconds=2
    ) as harness:
        yield harness


def test_the_shipped_template_is_the_one_in_deployments() -> None:
    packaged = (ROOT / "src" / "eventpipe" / "orchestration" / "automations.yaml").read_text()
    assert (ROOT / "deployments" / "automations.yaml").read_text() == packaged
    rendered = automations.render(
        automations.template(),
        {
            "pipeline": "sales",
            "deployment_id": "d",
            "notify_block_id": "b",
            "stale_minutes": "5",
            "stale_seconds": 300,
            "unresponsive_seconds": 540,
        },
    )
    assert [a["name"] for a in rendered] == [
        "eventpipe/sales: run failed",
        "eventpipe/sales: file rejected",
        "eventpipe/sales: no run after files landed",
        "eventpipe/sales: asset stale",
        "eventpipe/sales: run unresponsive",
    ]
    assert rendered[2]["trigger"]["within"] == 300
    assert "{{ event.payload.reason }}" in rendered[1]["actions"][0]["body"]


def test_rejected_files_failed_runs_and_stale_assets_page_on_call(
    loop: Harness, pager: Pager
) -> None:
    loop.drop("good.csv", "day,amount\n2026-01-01,10\n")
    loop.wait_file_state("good.csv", "done")

    loop.drop("empty.csv", "")
    page = pager.wait("rejected empty.csv")
    assert "empty" in page["body"]
    assert "/events?resource=eventpipe.file." in page["body"]  # a link into the feed

    loop.flag.touch()  # the step's upstream service goes down
    loop.drop("later.csv", "day,amount\n2026-01-02,5\n")
    loop.wait_file_state("later.csv", "failed")
    page = pager.wait("Failed")
    assert "ended Failed" in page["body"]
    assert f"EventpipeError: pipeline '{loop.name}': 1 file(s) failed" in page["body"]
    assert "/runs/flow-run/" in page["body"]

    page = pager.wait("is stale")  # revenue_by_day lacks later.csv, failed long enough ago
    assert "is missing" in page["body"]
    stale = loop.wait_events(lambda evs: len(evs) >= 1, "eventpipe.asset.stale")
    assert stale[0]["payload"]["files_behind"] >= 1

    # Applying again finds the same five automations and changes none of them.
    again = loop.loop.apply_automations()
    assert [what for _, what in again] == ["unchanged"] * 5


def test_a_failing_analytics_step_pages_on_call(
    prefect_server: EmbeddedServer, tmp_path: Path, pager: Pager
) -> None:
    from tests.test_semantics import TWO_STEPS

    with running_loop(prefect_server, tmp_path, module=TWO_STEPS, notify_webhook=pager.url) as loop:
        loop.flag.touch()  # the analytics step `checked` raises
        loop.drop("day1.csv", "day,amount\n2026-01-01,10\n")
        loop.wait_file_state("day1.csv", "done")
        page = pager.wait("Failed")
        assert "ended Failed" in page["body"]
        assert "analytics checked failed and keep their last good version" in page["body"]


def test_files_landing_with_no_run_coming_page_on_call(
    loop: Harness, pager: Pager, prefect_server: EmbeddedServer
) -> None:
    loop.loop.stop()  # eventpipe is gone; the server-side automation still watches
    sender = EventSender(prefect_server.api_url)
    _, body = build_event(
        "eventpipe.file.landed",
        {
            "prefect.resource.id": f"eventpipe.file.{loop.name}.x",
            "prefect.resource.name": "orphan.csv",
            "eventpipe.pipeline": loop.name,
        },
        related=[related_pipeline(loop.name)],
    )
    assert sender.send([body])
    sender.close()
    page = pager.wait("no run for", timeout=120)
    assert "eventpipe up" in page["body"]


def test_a_run_whose_heartbeats_stop_is_marked_crashed_and_pages(
    loop: Harness, pager: Pager, prefect_server: EmbeddedServer
) -> None:
    """The process running a run dies (here: a Running run whose heartbeats simply stop):
    the server marks it Crashed, and that pages like any crashed run."""
    from prefect.client.orchestration import get_client
    from prefect.states import Running

    loop.loop.stop()  # nothing here executes the run below
    deployment_id = loop.loop.deployment_id
    assert deployment_id is not None
    block_id = automations.notification_block(None, pager.url)
    assert block_id is not None
    done = automations.apply(loop.name, deployment_id, block_id, 5, unresponsive_seconds=10)
    assert (f"eventpipe/{loop.name}: run unresponsive", "updated") in done

    with get_client(sync_client=True) as client:
        run = client.create_flow_run_from_deployment(deployment_id)
        client.set_flow_run_state(run.id, Running(), force=True)
    sender = EventSender(prefect_server.api_url)
    _, body = build_event(
        "prefect.flow-run.heartbeat",
        {"prefect.resource.id": f"prefect.flow-run.{run.id}", "prefect.resource.name": "x"},
        related=[
            {
                "prefect.resource.id": f"prefect.deployment.{deployment_id}",
                "prefect.resource.role": "deployment",
            }
        ],
    )
    assert sender.send([body])
    sender.close()

    def crashed() -> str | None:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(run.id).state
        return state.message if state is not None and state.name == "Crashed" else None

    message = wait_for(crashed, 120, interval=1, what="the silent run marked Crashed")
    assert "No heartbeat for 10 s" in message
    page = pager.wait(f"{run.name} Crashed")
    assert "No heartbeat" in page["body"]
