"""The Prefect internals eventpipe relies on (``eventpipe.compat``) still have the shape it
uses. Run on every Prefect upgrade: a failure names the function of ``compat`` to adapt."""

from __future__ import annotations

import contextvars
import inspect

import prefect.context
import prefect.flow_engine
import prefect.utilities.engine
from prefect.assets import materialize
from prefect.client.schemas.objects import FlowRun
from prefect.settings import (
    PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
    get_current_settings,
    temporary_settings,
)

from eventpipe import compat
from eventpipe.orchestration.server import EmbeddedServer


def test_the_deployment_context_is_two_context_variables() -> None:
    """``run_deployment_flow_run`` sets what ``prefect.runtime.deployment`` reads."""
    for name in ("_deployment_id", "_deployment_parameters"):
        assert isinstance(getattr(prefect.context, name), contextvars.ContextVar)
    import prefect.runtime.deployment as runtime

    source = inspect.getsource(runtime)
    assert "_deployment_id" in source
    assert "_deployment_parameters" in source


def test_run_flow_takes_a_flow_run_and_returns_its_state() -> None:
    params = inspect.signature(prefect.flow_engine.run_flow).parameters
    assert {"flow", "flow_run", "return_type"} <= set(params)
    assert "deployment_id" in FlowRun.model_fields


def test_a_state_is_proposed_with_the_client_first() -> None:
    params = list(inspect.signature(prefect.utilities.engine.propose_state_sync).parameters)
    assert params[:2] == ["client", "state"]
    assert "flow_run_id" in params
    assert compat.propose_state_sync is prefect.utilities.engine.propose_state_sync


def test_the_heartbeat_is_switched_off_while_the_engine_is_warm(
    prefect_server: EmbeddedServer,
) -> None:
    before = get_current_settings().flows.heartbeat_frequency
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 30}):
        with compat.warm_engine():
            assert PREFECT_FLOWS_HEARTBEAT_FREQUENCY.value() is None
            assert prefect.context.SyncClientContext.get() is not None
        assert PREFECT_FLOWS_HEARTBEAT_FREQUENCY.value() == 30
    assert get_current_settings().flows.heartbeat_frequency == before


def test_a_retargeted_task_materializes_its_own_asset() -> None:
    def body() -> int:
        return 1

    template = materialize("file:///a")(body)
    task = compat.retarget_task(template, "file:///b", "b", ["file:///up"])
    assert [a.key for a in task.assets] == ["file:///b"]
    assert task.assets[0].properties.name == "b"
    assert [a.key for a in task.asset_deps] == ["file:///up"]
    assert [a.key for a in template.assets] == ["file:///a"]  # the template is untouched
    assert task.fn is template.fn


def test_runner_deployments_are_built_from_a_module_path() -> None:
    assert compat.EntrypointType.MODULE_PATH.value == "module_path"
    assert "entrypoint_type" in inspect.signature(compat.RunnerDeployment.from_flow).parameters


def test_a_batch_task_materializes_every_asset_of_its_batch() -> None:
    def body() -> int:
        return 1

    template = materialize("file:///a", asset_deps=["file:///up"])(body)
    task = compat.retarget_batch_task(template, [("file:///b", "b"), ("file:///c", "c")])
    assert [(a.key, a.properties.name) for a in task.assets] == [
        ("file:///b", "b"),
        ("file:///c", "c"),
    ]
    assert task.asset_deps == []  # each asset's upstream is given when it is emitted
    assert [a.key for a in template.assets] == ["file:///a"]


def test_the_asset_context_emits_nothing_once_its_downstream_assets_are_emptied() -> None:
    """``emit_materializations`` empties ``downstream_assets`` so that Prefect's own emission
    at the end of the task, which would relate every asset to every upstream, says nothing."""
    from prefect.assets import Asset
    from prefect.context import AssetContext

    fields = AssetContext.model_fields
    assert {"downstream_assets", "upstream_assets", "materialized_by"} <= set(fields)
    assert "if not self.downstream_assets:" in inspect.getsource(AssetContext.emit_events)
    asset = Asset(key="file:///b")
    assert AssetContext.asset_as_resource(asset)["prefect.resource.id"] == "file:///b"
    related = AssetContext.asset_as_related(asset)
    assert related["prefect.resource.id"] == "file:///b"
    assert related["prefect.resource.role"] == "asset"
    by = AssetContext.related_materialized_by("eventpipe")
    assert by["prefect.resource.id"] == "eventpipe"
