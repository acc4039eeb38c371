"""`eventpipe deploy` registers a pipeline for Prefect workers on the session's real server:
the deployment on the work pool with its landed-file trigger, the automation that marks dead
runs Crashed, the paging automations when there is someone to page. Running it again changes
nothing, and no credential ever lands in the deployment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast
from uuid import UUID

import pytest
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.responses import DeploymentResponse
from prefect.events.schemas.automations import Automation
from prefect.exceptions import ObjectNotFound

from eventpipe.cli import app
from eventpipe.orchestration.deploy import set_paused
from eventpipe.orchestration.server import EmbeddedServer
from eventpipe.orchestration.worker_deployment import deployment_problems
from eventpipe.testing import client_env
from tests.pipelines import write_pipeline

PAGING = ["run failed", "file rejected", "no run after files landed", "asset stale"]


@dataclass(frozen=True)
class Project:
    """A pipeline of its own (unique name), its data dir and a work pool of its own."""

    name: str
    spec: str
    data: Path
    pool: str
    api_url: str

    def deploy(self, capsys: pytest.CaptureFixture[str], *flags: str) -> tuple[str, str]:
        """``eventpipe deploy`` in this process; its (stdout, stderr)."""
        capsys.readouterr()
        where = ["--pool", self.pool, "--data", str(self.data), "--api-url", self.api_url]
        app(
            ["deploy", "--pipeline", self.spec, *where, *flags],
            result_action="return_value",
            exit_on_error=False,
        )
        out = capsys.readouterr()
        return out.out, out.err

    def deployment(self) -> DeploymentResponse:
        with get_client(sync_client=True) as client:
            return client.read_deployment_by_name(f"materialize/{self.name}")

    def triggers(self) -> list[Automation]:
        """The automations that run the deployment: its trigger(s)."""
        with get_client(sync_client=True) as client:
            deployment_id = self.deployment().id
            related = client.read_resource_related_automations(
                f"prefect.deployment.{deployment_id}"
            )
        return [a for a in related if a.actions and a.actions[0].type == "run-deployment"]

    def automations(self, what: str) -> list[Automation]:
        with get_client(sync_client=True) as client:
            return client.read_automations_by_name(f"eventpipe/{self.name}: {what}")


@pytest.fixture
def project(
    prefect_server: EmbeddedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Project]:
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("EVENTPIPE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PREFECT_API_URL", prefect_server.api_url)  # --api-url sets it again
    name = "deploy" + uuid.uuid4().hex[:10]
    write_pipeline("totals", tmp_path / "pipeline.py", name)
    project = Project(
        name=name,
        spec="pipeline.py:pipeline",
        data=tmp_path / "data",
        pool=f"pool-{name}",
        api_url=prefect_server.api_url,
    )
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=project.pool, type="process"))
    yield project
    with get_client(sync_client=True) as client:
        for what in [*PAGING, "run unresponsive"]:
            for automation in project.automations(what):
                client.delete_automation(automation.id)
        try:
            deployment_id = project.deployment().id
        except ObjectNotFound:
            pass
        else:
            client.delete_resource_owned_automations(f"prefect.deployment.{deployment_id}")
            client.delete_deployment(deployment_id)
        client.delete_work_pool(project.pool)


def test_deploy_registers_the_deployment_its_trigger_and_the_crash_automation_once(
    project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    out, _ = project.deploy(capsys)
    assert f"created   deployment materialize/{project.name} on work pool {project.pool}" in out
    assert f"created   automation eventpipe/{project.name}: run unresponsive" in out

    deployment = project.deployment()
    assert deployment.work_pool_name == project.pool
    assert deployment.entrypoint == "eventpipe.flows.materialize_pipeline"  # a module path
    assert not deployment.pull_steps  # nothing pulled: the pipeline is importable on workers
    assert not deployment.paused
    assert deployment.parameters == {
        "pipeline": f"{project.data.parent.resolve() / 'pipeline.py'}:pipeline",
        "data": str(project.data.resolve()),
        "task_runner": "threads",
    }
    # What the watcher (`eventpipe up --runs worker`) checks finds nothing to complain about.
    assert deployment_problems(deployment, project.name, str(project.data.resolve())) == []

    (trigger,) = project.triggers()
    assert trigger.name == f"{project.name}: file landed"
    assert trigger.enabled
    assert trigger.trigger.model_dump()["expect"] == {
        "eventpipe.file.landed",
        "eventpipe.file.retracting",
    }
    (crash,) = project.automations("run unresponsive")
    assert crash.actions[0].model_dump()["state"] == "CRASHED"
    watched = json.dumps(crash.trigger.model_dump(mode="json"))
    assert f"prefect.deployment.{deployment.id}" in watched
    for what in PAGING:  # nobody to page: no paging automations
        assert project.automations(what) == []

    # Again: everything is found as wanted and left alone, nothing is re-created.
    out, _ = project.deploy(capsys)
    assert f"unchanged deployment materialize/{project.name}" in out
    assert f"unchanged automation eventpipe/{project.name}: run unresponsive" in out
    again = project.deployment()
    assert again.id == deployment.id
    assert again.updated == deployment.updated
    assert [a.id for a in project.triggers()] == [trigger.id]
    assert [a.id for a in project.automations("run unresponsive")] == [crash.id]


def test_deploy_resumes_a_deployment_and_trigger_that_up_paused(
    project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    project.deploy(capsys)
    set_paused(project.deployment().id, paused=True)  # what `eventpipe up` does on stop

    out, _ = project.deploy(capsys)
    assert f"updated   deployment materialize/{project.name}" in out
    assert not project.deployment().paused
    (trigger,) = project.triggers()
    assert trigger.enabled


def test_no_credential_goes_into_the_deployment(
    project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    ledger = "postgresql+psycopg://u:secret@h/db"
    block = f"ledger-{project.name}"
    out, err = project.deploy(capsys, "--ledger", ledger, "--ledger-block", block)

    deployment = project.deployment()
    assert deployment.parameters["ledger_block"] == block  # a name: workers read the URL there
    assert "ledger" not in deployment.parameters
    assert "secret" not in json.dumps(deployment.model_dump(mode="json"))
    for automation in [*project.triggers(), *project.automations("run unresponsive")]:
        assert "secret" not in json.dumps(automation.model_dump(mode="json"))
    assert "secret" not in out + err
    assert f"no Secret block {block!r}" in err  # said, since every run would fail on it

    # Without a block, the URL is still not stored, and the workers' environment is named.
    _, err = project.deploy(capsys, "--ledger", ledger)
    deployment = project.deployment()
    assert "ledger_block" not in deployment.parameters
    assert "secret" not in json.dumps(deployment.model_dump(mode="json"))
    assert "EVENTPIPE_LEDGER" in err


def test_a_missing_work_pool_is_a_clear_error(project: Project, tmp_path: Path) -> None:
    pool = f"nowhere-{project.name}"
    where = ["--pool", pool, "--data", str(project.data), "--api-url", project.api_url]
    result = subprocess.run(
        [sys.executable, "-m", "eventpipe.cli", "deploy", "--pipeline", project.spec, *where],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=client_env(project.api_url, tmp_path / "client-home", COLUMNS="1000"),
        check=False,
    )
    assert result.returncode != 0
    assert f"no work pool {pool!r}" in result.stderr
    assert f"prefect work-pool create {pool} --type eventpipe" in result.stderr
    with pytest.raises(ObjectNotFound):
        project.deployment()


def test_a_notification_target_adds_the_paging_automations(
    project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    pager = CustomWebhookNotificationBlock.model_validate(
        {"name": "on-call", "url": "http://127.0.0.1:9/page", "json_data": {"body": "{{body}}"}}
    )
    block_id = cast(UUID, pager.save(f"page-{project.name}"))  # sync here: not a coroutine
    notify = ["--notify-block", f"custom-webhook/page-{project.name}"]
    try:
        out, _ = project.deploy(capsys, *notify)
        for what in [*PAGING, "run unresponsive"]:
            assert f"created   automation eventpipe/{project.name}: {what}" in out
            assert len(project.automations(what)) == 1
        (failed,) = project.automations("run failed")
        assert failed.actions[0].model_dump()["block_document_id"] == block_id

        out, _ = project.deploy(capsys, *notify)
        assert out.count("unchanged automation") == 5
        for what in [*PAGING, "run unresponsive"]:
            assert len(project.automations(what)) == 1
    finally:
        with get_client(sync_client=True) as client:
            client.delete_block_document(block_id)
