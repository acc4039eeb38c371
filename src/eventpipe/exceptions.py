"""One exception tree for everything eventpipe raises on purpose."""

from __future__ import annotations


class EventpipeError(Exception):
    """Base class of every error eventpipe raises deliberately."""


class ConfigError(EventpipeError):
    """A setting, flag or file is missing or wrong; the message says which and how to fix it."""


class PipelineDefinitionError(EventpipeError):
    """A pipeline definition is invalid (unknown dependency, cycle, duplicate, bad signature)."""


class RejectedInput(EventpipeError):
    """An input file cannot be processed; it is quarantined with `reason`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SourceError(EventpipeError):
    """A source (folder, bucket, queue) cannot be read."""


class ServerError(EventpipeError):
    """The Prefect server could not be started or reached."""


class FetchError(SourceError):
    """A scheduled fetch could not get its data. ``retryable``: whether trying again may help
    (a 5xx or a timeout) or not (a 4xx, a malformed body)."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable
