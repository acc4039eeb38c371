"""What a failed Prefect state means: the exception it holds, the reason said to people, and
whether retrying can help. Used by the materialize run, its tasks and the fetch flow."""

from __future__ import annotations

from typing import Any

from prefect.client.schemas.objects import State, TaskRun

from eventpipe.exceptions import ConfigError, FetchError, RejectedInput


def failure_of(state: State[Any]) -> BaseException | None:
    """The exception a failed ``state`` holds (None if it raises nothing)."""
    try:
        state.result(raise_on_failure=True)
    except BaseException as exc:  # whatever the step or fetch raised, said as it is
        return exc
    return None


def failure_reason(state: State[Any], exc: BaseException | None = None) -> str:
    """The reason said to people: the exception's message, or its type, or the state name."""
    exc = exc if exc is not None else failure_of(state)
    if exc is None:
        return f"state {state.name}"
    return str(exc) or type(exc).__name__


def not_rejected(task: Any, task_run: TaskRun, state: State[Any]) -> bool:
    """Retry a failed step unless the input itself is bad: bad bytes won't get better."""
    return not isinstance(failure_of(state), RejectedInput)


def fetch_retryable(task: Any, task_run: TaskRun, state: State[Any]) -> bool:
    """Retry a failed fetch unless trying again cannot help (a 4xx, a malformed body)."""
    exc = failure_of(state)
    if isinstance(exc, FetchError):
        return exc.retryable
    return not isinstance(exc, ConfigError)
