"""Throwaway shared services on this machine, to try the production topology without a cloud:
a PostgreSQL for the ledger and an S3 + SQS endpoint (``moto_server``), both on 127.0.0.1.

    python -m eventpipe.testing.services --env-file services.env

starts both, writes the variables a watcher, ``eventpipe deploy`` and every worker need
(``EVENTPIPE_LEDGER``, ``AWS_ENDPOINT_URL`` and dummy AWS keys) to the env file, readable by
its owner only (the ledger URL holds a password, so it is never printed), and keeps them
running until Ctrl-C; then the database and the buckets are gone. Needs PostgreSQL's
``initdb``/``pg_ctl`` and the dev install (``moto[server]``).
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from pathlib import Path

from eventpipe.testing.postgres import postgres_server
from eventpipe.testing.s3 import moto_env, moto_s3


def env_lines(ledger: str, endpoint: str) -> list[str]:
    """The variables of the services, as ``NAME=value`` lines of an env file."""
    return [f"{k}={v}" for k, v in {"EVENTPIPE_LEDGER": ledger, **moto_env(endpoint)}.items()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m eventpipe.testing.services")
    parser.add_argument("--env-file", type=Path, default=Path("services.env"))
    args = parser.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    env_file: Path = args.env_file.resolve()
    with postgres_server() as url, moto_s3() as endpoint:
        ledger = url.replace("postgresql://", "postgresql+psycopg://", 1)
        descriptor = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as out:
            out.write("\n".join(env_lines(ledger, endpoint)) + "\n")
        print(f"PostgreSQL (the ledger) and S3 + SQS at {endpoint} are up.", flush=True)
        print(f"Their settings are in {env_file}: set -a; . {env_file}; set +a", flush=True)
        print("Ctrl-C stops both and deletes what they hold.", flush=True)
        stop.wait()
    env_file.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
