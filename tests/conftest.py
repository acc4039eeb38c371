"""One real Prefect server for the whole test session (temp PREFECT_HOME, 127.0.0.1, free port).

Prefect reads its settings from the environment once, at import, so the environment is set
in ``pytest_configure``, before any test module imports Prefect.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from eventpipe.orchestration.server import EmbeddedServer

_SERVER = pytest.StashKey[EmbeddedServer]()
_ROOT = pytest.StashKey[Path]()


def pytest_configure(config: pytest.Config) -> None:
    from eventpipe.testing import configure_prefect_env

    root = Path(tempfile.mkdtemp(prefix="eventpipe-tests-"))
    config.stash[_ROOT] = root
    config.stash[_SERVER] = configure_prefect_env(root)


def pytest_unconfigure(config: pytest.Config) -> None:
    server = config.stash.get(_SERVER, None)
    if server is not None:
        server.stop()
    root = config.stash.get(_ROOT, None)
    if root is not None:
        shutil.rmtree(root, ignore_errors=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Slow suites last: a burst's thousands of events should not slow the stories' reads."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is not None)


@pytest.fixture(scope="session")
def prefect_server(pytestconfig: pytest.Config) -> EmbeddedServer:
    """The session's Prefect server, started on first use; stopped in pytest_unconfigure."""
    server = pytestconfig.stash[_SERVER]
    server.start(timeout=180)
    return server


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """One real PostgreSQL (the machine's initdb/pg_ctl, 127.0.0.1, a free port) for the whole
    session; take a database of your own on it with ``eventpipe.testing.fresh_database``."""
    from eventpipe.testing import postgres_server

    with postgres_server() as url:
        yield url


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A ``moto_server`` (S3 + SQS over HTTP on 127.0.0.1) for the whole session."""
    from eventpipe.testing import moto_s3

    with moto_s3(tmp_path_factory.mktemp("moto") / "moto.log") as endpoint:
        yield endpoint
