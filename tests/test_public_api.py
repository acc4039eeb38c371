"""The names users import from ``eventpipe`` are a promise: list them once, sorted, all working."""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import types

import pytest

import eventpipe

EXPECTED = [
    "ConfigError",
    "EventpipeError",
    "FetchError",
    "Pipeline",
    "PipelineDefinitionError",
    "RejectedInput",
    "Schema",
    "ServerError",
    "Settings",
    "SourceError",
    "__version__",
    "load_pipeline",
]


def test_all_is_the_expected_sorted_list() -> None:
    assert eventpipe.__all__ == EXPECTED
    assert sorted(eventpipe.__all__) == eventpipe.__all__


def test_every_public_name_of_the_package_is_in_all() -> None:
    public = {
        name
        for name, value in vars(eventpipe).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }

    assert public | {"__version__"} == set(eventpipe.__all__)


@pytest.mark.parametrize("name", EXPECTED)
def test_every_exported_name_is_importable(name: str) -> None:
    namespace: dict[str, object] = {}
    exec(f"from eventpipe import {name}", namespace)

    assert namespace[name] is getattr(eventpipe, name)


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from eventpipe import *", namespace)

    assert set(namespace) - {"__builtins__"} == set(EXPECTED)


@pytest.mark.parametrize(
    "name",
    ["ConfigError", "PipelineDefinitionError", "RejectedInput", "ServerError", "SourceError"],
)
def test_every_error_is_an_eventpipe_error(name: str) -> None:
    assert issubclass(getattr(eventpipe, name), eventpipe.EventpipeError)


def test_version_matches_the_installed_distribution() -> None:
    assert eventpipe.__version__ == importlib.metadata.version("eventpipe")


TESTING = [
    "Background",
    "CutProxy",
    "DataBucket",
    "FakeEndpoint",
    "Reply",
    "SeenRequest",
    "client_env",
    "configure_prefect_env",
    "cut_proxy",
    "drop_file",
    "eventpipe_up",
    "fake_endpoint",
    "fresh_database",
    "host_env",
    "land_file",
    "moto_env",
    "moto_s3",
    "postgres_server",
    "prefect_server",
    "read_events",
    "upload",
    "wait_for",
]


def test_the_testing_package_exports_its_documented_helpers() -> None:
    import eventpipe.testing as testing

    assert testing.__all__ == TESTING
    public = {
        name
        for name, value in vars(testing).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public == set(TESTING)
    for name in TESTING:
        assert name in (testing.__doc__ or ""), f"{name} is not described in the docstring"


def test_importing_the_testing_helpers_leaves_prefect_unimported() -> None:
    """``configure_prefect_env`` must run before Prefect is imported: the helpers must not
    import it themselves."""
    import subprocess
    import sys

    probe = "import sys, eventpipe.testing; print('prefect' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_the_package_ships_its_type_information() -> None:
    """``py.typed`` lets users' type checkers read the ``@pipeline.process`` overloads."""
    package_dir = importlib.resources.files("eventpipe")
    assert package_dir.joinpath("py.typed").is_file()
