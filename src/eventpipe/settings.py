"""Settings, in one place: command-line flag -> ``EVENTPIPE_*`` environment -> ``eventpipe.toml``
-> default."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from eventpipe.exceptions import ConfigError


def check_task_runner(value: str) -> str:
    """``value`` if it names a task runner eventpipe knows, else a :class:`ConfigError`."""
    if value in ("threads", "dask") or value.startswith(("tcp://", "tls://")):
        return value
    raise ConfigError(
        f"task runner {value!r}: use 'threads', 'dask' or the address of a running Dask"
        " scheduler (tcp://host:port)"
    )


CACHE_FOLDER = "cache"


def cache_dir(home: Path | None = None) -> Path:
    """The disposable local cache under ``home`` (else ``EVENTPIPE_HOME``, else ``.eventpipe``):
    staged downloads and the tasks' cache records when the data dir is a bucket. Nothing there
    is needed to be correct; deleting it costs only recomputation."""
    base = home if home is not None else Path(os.environ.get("EVENTPIPE_HOME", ".eventpipe"))
    return base.resolve() / CACHE_FOLDER


class Settings(BaseSettings):
    """Every knob of eventpipe. Relative paths are taken from the working directory."""

    model_config = SettingsConfigDict(
        env_prefix="EVENTPIPE_", toml_file="eventpipe.toml", extra="forbid"
    )

    pipeline: str = Field(
        default="eventpipe.demo:pipeline",
        description="The pipeline: 'package.module:name' or 'path/file.py:name'.",
    )
    inbox: Path = Field(default=Path("inbox"), description="Folder watched for new files.")
    data: str = Field(
        default="data",
        description="Where outputs, versions and raw snapshots live: a folder (the ledger too,"
        " by default) or s3://bucket/prefix (all of it in the bucket; the ledger must then be"
        " a database: --ledger or --ledger-block).",
    )
    # A database URL carries its password: SecretStr keeps it out of reprs, logs and dumps.
    ledger: SecretStr | None = Field(
        default=None,
        description="The ledger's database: a SQLAlchemy URL (postgresql+psycopg://user:pass@host"
        "/db, or sqlite:///path); unset, ledger.sqlite in the data dir.",
    )
    ledger_block: str | None = Field(
        default=None,
        description="Name of a Prefect Secret block holding the ledger URL: how runs on workers"
        " find the ledger when EVENTPIPE_LEDGER is not in their environment.",
    )
    pool: str | None = Field(
        default=None, description="The Prefect work pool whose workers execute the runs."
    )
    home: Path = Field(
        default=Path(".eventpipe"),
        description="Project-local state: the embedded server's PREFECT_HOME, logs.",
    )
    host: str = Field(default="127.0.0.1", description="Address the embedded server binds to.")
    port: int = Field(
        default=4200, description="Port of the embedded Prefect server (0 picks a free one)."
    )
    api_url: str | None = Field(
        default=None, description="Use this Prefect API instead of starting an embedded server."
    )
    settle_seconds: float = Field(
        default=0.02,
        ge=0,
        description="A file is taken once its size and mtime stay the same this long.",
    )
    max_file_bytes: int = Field(default=1 << 30, gt=0, description="Larger files are rejected.")
    rescan_seconds: float = Field(
        default=30.0,
        gt=0,
        description="How often the inbox is rescanned for files the watcher missed.",
    )
    on_delete: Literal["keep", "retract"] = Field(
        default="keep",
        description="What a file deleted from the inbox (or the bucket) means: 'keep' (the"
        " inbox is a queue: its outputs stay) or 'retract' (its partitions leave the outputs"
        " and the analytics are computed without them; dropping it again restores it).",
    )
    runs: Literal["here", "worker"] = Field(
        default="here",
        description="Who executes the deployment's runs: 'here' (this process, with the"
        " eventpipe worker embedded; it registers the deployment) or 'worker' (a Prefect"
        " worker; the deployment comes from `prefect deploy`, this process only watches,"
        " records and sends events).",
    )
    task_runner: str = Field(
        default="threads",
        description="Where the files' process steps run: 'threads' (in the run's"
        " process), 'dask' (a local Dask cluster, one worker process per core; needs the dask"
        " extra) or a Dask scheduler address (tcp://host:port).",
    )
    sweep_seconds: float = Field(
        default=30.0,
        gt=0,
        description="How often the runner looks for scheduled runs it was not told about.",
    )
    freshness_budget: float = Field(
        default=1.0,
        ge=0,
        description="Seconds a run's oldest file may wait before the run stops taking files"
        " that land while it works and publishes what it has (the newcomers go to the next"
        " run). Runs read it from EVENTPIPE_FRESHNESS_BUDGET.",
    )

    source: str | None = Field(
        default=None,
        description="Watch a bucket instead of the inbox: 's3://bucket/prefix'.",
    )
    queue: str | None = Field(
        default=None,
        description="SQS queue (URL or name) receiving the bucket's ObjectCreated (and"
        " ObjectRemoved) notifications.",
    )
    endpoint_url: str | None = Field(
        default=None, description="S3/SQS endpoint for S3-compatible stores (MinIO, moto, ...)."
    )
    region: str | None = Field(
        default=None, description="AWS region, when the AWS chain gives none."
    )
    aws_credentials_block: str | None = Field(
        default=None, description="Name of a prefect-aws AwsCredentials block to authenticate with."
    )
    s3_bucket_block: str | None = Field(
        default=None,
        description="Name of a prefect-aws S3Bucket block: its bucket, folder and credentials.",
    )
    queue_wait_seconds: int = Field(
        default=10, ge=1, le=20, description="Long-poll wait of each SQS receive."
    )

    # A webhook URL is its own credential: SecretStr keeps it out of reprs, logs and dumps.
    notify_webhook: SecretStr | None = Field(
        default=None,
        description="Page on-call here: failed runs, rejected files, stale assets (a Prefect"
        " webhook notification block is kept for it).",
    )
    notify_block: str | None = Field(
        default=None,
        description="Page through this saved Prefect notification block ('slug/name').",
    )
    stale_minutes: float = Field(
        default=60.0,
        gt=0,
        description="An analytics asset this much older than the files that landed is stale.",
    )
    outputs: str | None = Field(
        default=None,
        description="Also publish copies of the current processed and analytics outputs of a"
        " local data dir to s3://bucket/prefix.",
    )

    @field_validator("task_runner")
    @classmethod
    def _known_task_runner(cls, value: str) -> str:
        return check_task_runner(value)  # a ConfigError, not a ValidationError: said as is

    @field_validator("data", mode="before")
    @classmethod
    def _data_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, Path) else value

    @model_validator(mode="after")
    def _bucket_data_needs_a_database(self) -> Settings:
        if self.data_in_bucket:
            if not self.ledger and not self.ledger_block:
                raise ConfigError(
                    f"--data {self.data}: a bucket cannot hold the ledger (SQLite needs a local"
                    " disk); give the ledger's database too: --ledger"
                    " postgresql+psycopg://user@host/db (or EVENTPIPE_LEDGER), or --ledger-block"
                    " NAME for a Prefect Secret block holding that URL"
                )
            if self.outputs:
                raise ConfigError(
                    "outputs copies a local data dir's outputs to a bucket; with --data in a"
                    " bucket they are there already: drop outputs"
                )
        return self

    @property
    def data_in_bucket(self) -> bool:
        """Whether the data dir is ``s3://bucket/prefix`` (else a local folder)."""
        return self.data.startswith("s3://")

    @property
    def data_dir(self) -> Path:
        """The local data dir. A bucket has none: callers that need one check
        :attr:`data_in_bucket` first (a :class:`ConfigError` says so otherwise)."""
        if self.data_in_bucket:
            raise ConfigError(f"--data {self.data} is a bucket; this needs a local data dir")
        return Path(self.data)

    def publish_options(self) -> dict[str, str] | None:
        """Where and how a flow run publishes copies of outputs (names and URLs only)."""
        if not self.outputs:
            return None
        options = {
            "uri": self.outputs,
            "endpoint_url": self.endpoint_url,
            "region": self.region,
            "aws_credentials_block": self.aws_credentials_block,
        }
        return {k: v for k, v in options.items() if v}

    @property
    def watches_bucket(self) -> bool:
        return bool(self.source or self.s3_bucket_block)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))

    def resolved(self) -> Settings:
        """A copy with absolute paths, so child processes and deployments agree on them."""
        return self.model_copy(
            update={
                "inbox": self.inbox.resolve(),
                "data": self.data if self.data_in_bucket else str(self.data_dir.resolve()),
                "home": self.home.resolve(),
            }
        )
