"""eventpipe: drop a file, get fresh analytics. Event-driven, asset-based pipelines on Prefect."""

from eventpipe.exceptions import (
    ConfigError,
    EventpipeError,
    FetchError,
    PipelineDefinitionError,
    RejectedInput,
    ServerError,
    SourceError,
)
from eventpipe.pipeline import Pipeline, Schema, load_pipeline
from eventpipe.settings import Settings

__version__ = "0.1.0"

__all__ = [
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
