"""`eventpipe up --runs worker` leaves the runs to Prefect workers: it registers nothing,
executes nothing, pauses nothing, and its janitor never fights a worker. No worker runs here,
so every run the watcher causes stays Scheduled where the test can see it."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.client.schemas.objects import FlowRun
from prefect.deployments.runner import EntrypointType  # type: ignore[attr-defined]
from prefect.states import Crashed, Running

from eventpipe.ledger import Ledger
from eventpipe.loop.local import LocalLoop
from eventpipe.orchestration.deploy import landed_trigger
from eventpipe.orchestration.server import EmbeddedServer
from eventpipe.run.flow import materialize_pipeline
from eventpipe.settings import Settings
from eventpipe.testing import drop_file, wait_for
from tests.pipelines import write_pipeline


def deploy_on_a_pool(name: str, data: Path) -> None:
    """What `prefect deploy` makes of prefect.yaml: the flow on a process work pool."""
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=f"pool-{name}", type="process"))
    deployment = materialize_pipeline.to_deployment(
        name=name,
        parameters={"pipeline": "pipeline.py:pipeline", "data": str(data)},
        triggers=[landed_trigger(name)],
        work_pool_name=f"pool-{name}",
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    deployment.apply()  # type: ignore[union-attr]


def runs_of(name: str) -> list[FlowRun]:
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(f"materialize/{name}")
        return client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
        )


def state_of(data: Path, name: str) -> str:
    ledger = Ledger(data / "ledger.sqlite")
    try:
        rows = ledger.files(name)
        return rows[0].state if rows else "not seen"
    finally:
        ledger.close()


def test_the_watcher_leaves_runs_to_workers_and_its_janitor_never_fights_them(
    prefect_server: EmbeddedServer, tmp_path: Path
) -> None:
    name = "w" + uuid.uuid4().hex[:10]
    write_pipeline("totals", tmp_path / "pipeline.py", name)
    inbox, data = tmp_path / "inbox", tmp_path / "data"
    settings = Settings(
        pipeline=str(tmp_path / "pipeline.py") + ":pipeline",
        inbox=inbox,
        data=data,
        home=tmp_path / "home",
        api_url=prefect_server.api_url,
        runs="worker",
        sweep_seconds=1,
    )
    loop = LocalLoop(settings).start()
    try:
        # No deployment yet: the file is recorded, its event sent, and it waits.
        assert loop.deployment_id is None
        drop_file(inbox, "a.csv", "amount\n5\n")
        wait_for(lambda: (data / "ledger.sqlite").exists() and state_of(data, name) == "sent")

        # `prefect deploy` happens: the watcher finds the deployment and asks for one run for
        # the waiting file; no worker takes it, and while it is scheduled no other is asked for.
        deploy_on_a_pool(name, data)
        wait_for(lambda: runs_of(name), 30, 0.2, what="a run for the waiting file")
        assert loop.deployment_id is not None
        assert loop.work_pool == f"pool-{name}"
        time.sleep(4 * settings.sweep_seconds)
        (run,) = runs_of(name)
        assert run.state is not None
        assert run.state.is_scheduled()
        assert state_of(data, name) == "sent"  # nothing executed here

        # A worker claims the file and runs: the janitor leaves both alone ...
        ledger = Ledger(data / "ledger.sqlite")
        (claimed,) = ledger.claim_pending(name, str(run.id))
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(run.id, Running(), force=True)
            time.sleep(4 * settings.sweep_seconds)
            assert state_of(data, name) == "processing"
            assert len(runs_of(name)) == 1

            # ... until the run is over without finishing the file: it goes back to pending
            # and, no run being on its way, a new run is asked for.
            client.set_flow_run_state(run.id, Crashed(message="worker killed"), force=True)
        wait_for(lambda: state_of(data, name) in ("landed", "sent"), 30, 0.2, what="reclaim")
        wait_for(lambda: len(runs_of(name)) == 2, 30, 0.2, what="a new run")
        ledger.close()
        assert claimed.attempts == 1
    finally:
        loop.stop()
    # The deployment is `prefect deploy`'s: stopping the watcher does not pause it.
    with get_client(sync_client=True) as client:
        assert not client.read_deployment_by_name(f"materialize/{name}").paused
