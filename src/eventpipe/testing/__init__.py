"""Fixtures and helpers for testing eventpipe pipelines against real components; eventpipe's
own tests use them too.

- ``prefect``: :func:`configure_prefect_env` (call it before anything imports Prefect:
  Prefect reads its settings from the environment once, at import; a pytest
  ``pytest_configure`` hook is the place), :func:`prefect_server`, :func:`client_env`,
  :func:`host_env` (a child process as another host),
  :func:`read_events`.
- ``files``: :func:`drop_file` (temp name, then rename), :func:`land_file` (recorded as the
  watcher would, without one), :func:`wait_for` (a condition, never a fixed sleep).
- ``s3``: :func:`moto_s3` (S3 + SQS over HTTP on 127.0.0.1), :func:`upload`,
  :class:`DataBucket` (a bucket for ``--data s3://``, read as any S3 client would),
  :func:`moto_env` (the AWS variables that point a subprocess at it).
- ``postgres``: :func:`postgres_server` (the machine's PostgreSQL, as root too) and
  :func:`fresh_database` (a new database on it, one per test).
- ``processes``: :class:`Background`, :func:`eventpipe_up` (subprocesses stopped with all
  they started).
- ``proxy``: :class:`CutProxy` / :func:`cut_proxy` (a proxy in front of a Prefect server that
  cuts its event websockets on demand, plain HTTP still passing).
- ``http``: :class:`FakeEndpoint` / :func:`fake_endpoint`, :class:`Reply`, :class:`SeenRequest`
  (a scripted HTTP source for fetches).

Importing this package imports no Prefect.
"""

from eventpipe.testing.files import drop_file, land_file, wait_for
from eventpipe.testing.http import FakeEndpoint, Reply, SeenRequest, fake_endpoint
from eventpipe.testing.postgres import fresh_database, postgres_server
from eventpipe.testing.prefect import (
    client_env,
    configure_prefect_env,
    host_env,
    prefect_server,
    read_events,
)
from eventpipe.testing.processes import Background, eventpipe_up
from eventpipe.testing.proxy import CutProxy, cut_proxy
from eventpipe.testing.s3 import DataBucket, moto_env, moto_s3, upload

__all__ = [
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
