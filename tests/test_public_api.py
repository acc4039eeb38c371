"""The names users import from ``eventpipe`` are a promise: list them once, sorted, all working."""

from __future__ import annotations

import importlib.metadata
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
