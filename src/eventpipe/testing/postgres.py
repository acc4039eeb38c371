"""A real PostgreSQL (the machine's ``initdb``/``pg_ctl``) on 127.0.0.1 and a free port."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from eventpipe.orchestration.server import free_port


def _postgres_binary(name: str) -> str | None:
    """``name`` on PATH, else from Debian's ``postgresql`` package (newest major version)."""

    found = shutil.which(name)
    if found:
        return found
    packaged = sorted(
        Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3])
    )
    return str(packaged[-1]) if packaged else None


@contextmanager
def postgres_server() -> Iterator[str]:
    """A real PostgreSQL (the machine's ``initdb``/``pg_ctl``) on 127.0.0.1 and a free port,
    for the duration of the block; yields a SQLAlchemy URL without a driver
    (``postgresql://eventpipe:…@127.0.0.1:PORT/eventpipe``): add ``+asyncpg`` or ``+psycopg``.

    PostgreSQL refuses to run as root; as root the cluster is created in a directory owned by
    the ``postgres`` user and every command runs through ``runuser -u postgres --``.
    """

    initdb, pg_ctl, createdb = (_postgres_binary(n) for n in ("initdb", "pg_ctl", "createdb"))
    if initdb is None or pg_ctl is None or createdb is None:
        raise RuntimeError("PostgreSQL's initdb/pg_ctl are not on PATH; install PostgreSQL")
    base = Path(tempfile.mkdtemp(prefix="eventpipe-pg-"))  # the postgres user must reach it
    as_root = os.geteuid() == 0
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
    if as_root:
        shutil.chown(base, "postgres", "postgres")
    cluster, password_file = base / "cluster", base / "password"
    password = secrets.token_hex(12)
    password_file.write_text(password + "\n")
    if as_root:
        shutil.chown(password_file, "postgres", "postgres")
    port = free_port()

    def run(*command: str) -> None:
        done = subprocess.run(
            [*prefix, *command], capture_output=True, text=True, check=False, timeout=120
        )
        if done.returncode != 0:
            raise RuntimeError(f"{command[0]} failed: {done.stderr.strip() or done.stdout.strip()}")

    run(
        initdb,
        "--pgdata",
        str(cluster),
        "--username",
        "eventpipe",
        "--pwfile",
        str(password_file),
        "--auth",
        "scram-sha-256",
        "--encoding",
        "UTF8",
        "--no-sync",
    )
    options = f"-h 127.0.0.1 -p {port} -k {base} -c fsync=off -c max_connections=200"
    run(
        pg_ctl,
        "--pgdata",
        str(cluster),
        "--log",
        str(base / "postgres.log"),
        "-o",
        options,
        "--wait",
        "start",
    )
    try:
        env = {**os.environ, "PGPASSWORD": password}
        created = subprocess.run(
            [
                *prefix,
                createdb,
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-U",
                "eventpipe",
                "eventpipe",
            ],
            capture_output=True,
            text=True,
            check=False,
            env=env,
            timeout=60,
        )
        if created.returncode != 0:
            raise RuntimeError(f"createdb failed: {created.stderr.strip()}")
        yield f"postgresql://eventpipe:{password}@127.0.0.1:{port}/eventpipe"
    finally:
        run(pg_ctl, "--pgdata", str(cluster), "--mode", "fast", "--wait", "stop")
        shutil.rmtree(base, ignore_errors=True)


def fresh_database(url: str, prefix: str = "t") -> str:
    """A new, empty database on the server of ``url`` (as :func:`postgres_server` yields it);
    its URL, with the psycopg driver. Tests sharing one server each take one."""
    from uuid import uuid4

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    base = make_url(url).set(drivername="postgresql+psycopg")
    name = f"{prefix}_{uuid4().hex[:12]}"
    engine = create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as db:
            db.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()
    return base.set(database=name).render_as_string(hide_password=False)
