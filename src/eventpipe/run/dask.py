"""Partition parallelism on Dask, through prefect-dask's ``DaskTaskRunner``.

With ``--task-runner dask`` the code of a run's process steps (each file's step function, its
read of the raw snapshot and its write of the new version) runs in Dask worker processes, one
per core, so CPU-bound step code uses every core (the default threads share one interpreter).
The Prefect task runs stay in the flow's process, with their cache, retries, asset events and
logs: a worker gets one small message per partition and returns the version it wrote. This is
on purpose: a Prefect task run executed inside a Dask worker rebuilds Prefect's settings and
API client every time (about 0.25 s of CPU per task run, measured with py-spy on this 2-core
machine), which cost more than it saved for files of ordinary size.

``DaskTaskRunner`` (prefect-dask) makes the cluster or joins it, and gives the client.
``eventpipe up`` keeps one local cluster for all its runs, so workers start once and stay
warm; a deployment run by a Prefect worker with ``task_runner: dask`` makes a cluster for the
run (a few seconds), or joins one at ``tcp://host:port``.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from eventpipe.exceptions import ConfigError
from eventpipe.run.compute import warm_up
from eventpipe.settings import check_task_runner

log = logging.getLogger("eventpipe.cluster")

INSTALL_HINT = "the Dask task runner needs the dask extra: pip install 'eventpipe[dask]'"


def cluster_options(workers: int | None = None) -> dict[str, Any]:
    """``LocalCluster`` options: a process per core, everything bound to 127.0.0.1."""
    return {
        "n_workers": workers or os.cpu_count() or 1,
        "threads_per_worker": 1,
        "processes": True,
        "host": "127.0.0.1",
        "dashboard_address": "127.0.0.1:0",  # its status page: loopback, any free port
        "preload": [__name__],  # runs dask_setup in each worker process
    }


def _quiet() -> None:
    """Dask's own lifecycle lines (scheduler, nanny, worker start and close) only with
    ``--verbose``."""
    if not log.isEnabledFor(logging.DEBUG):
        logging.getLogger("distributed").setLevel(logging.WARNING)


def dask_setup(worker: Any) -> None:
    """In each worker process: leave Ctrl-C to the process that owns the cluster. A terminal's
    Ctrl-C reaches the whole process group; the owner then closes its workers in order."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextmanager
def task_runner_for(value: str) -> Iterator[Any]:
    """An entered ``DaskTaskRunner`` for ``value`` (``dask`` or a scheduler address)."""
    check_task_runner(value)
    try:
        from prefect_dask.task_runners import DaskTaskRunner
    except ImportError as exc:
        raise ConfigError(INSTALL_HINT) from exc
    _quiet()
    if value == "dask":
        runner = DaskTaskRunner(cluster_kwargs=cluster_options())
    else:
        runner = DaskTaskRunner(address=value)
    with runner:
        # Made here, once: the files' threads submit concurrently, and the runner makes its
        # client on first use.
        runner.client  # noqa: B018
        yield runner


class LocalDask:
    """A local Dask cluster for the runs of one ``eventpipe up``, its workers warmed up."""

    def __init__(self, spec: str, workers: int | None = None) -> None:
        self.spec = spec
        self.workers = workers
        self._cluster: Any = None

    def start(self) -> str:
        """Start the cluster; return its scheduler address (what the runs are given)."""
        try:
            from distributed import Client, LocalCluster
        except ImportError as exc:
            raise ConfigError(INSTALL_HINT) from exc
        _quiet()
        self._cluster = LocalCluster(**cluster_options(self.workers))  # type: ignore[no-untyped-call]
        with Client(self._cluster) as client:  # type: ignore[no-untyped-call]
            client.run(_warm_up, self.spec)
        address: str = self._cluster.scheduler_address
        log.info("Dask cluster %s: %d worker process(es)", address, len(self._cluster.workers))
        return address

    @property
    def description(self) -> str:
        """What the banner says: the cluster's address and its worker processes."""
        if self._cluster is None:
            return "dask (not started)"
        workers = len(self._cluster.workers)
        return f"dask cluster {self._cluster.scheduler_address}, {workers} worker process(es)"

    def close(self) -> None:
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None


def _warm_up(spec: str) -> None:
    warm_up(spec)
