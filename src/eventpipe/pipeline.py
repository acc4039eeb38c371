"""The user-facing plugin API: ``Pipeline``, ``@pipeline.process``, ``@pipeline.analytics``.

Dependencies are inferred from parameter names and checked when the pipeline is loaded.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import re
import sys
from collections.abc import Callable
from datetime import timedelta
from graphlib import CycleError, TopologicalSorter
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, overload

from eventpipe.codeversion import PIPELINE_MODULE_PREFIX
from eventpipe.definitions import FETCH_FORMATS, Fetch, Schema, Step, StepKind
from eventpipe.exceptions import PipelineDefinitionError

if TYPE_CHECKING:  # pandas costs ~0.5 s to import: `eventpipe --help` does not need it
    import pandas as pd

__all__ = [
    "FETCH_FORMATS",
    "Fetch",
    "Pipeline",
    "Schema",
    "Step",
    "StepKind",
    "absolute_spec",
    "is_path_spec",
    "load_pipeline",
    "pipeline_source",
]

Fn = TypeVar("Fn", bound=Callable[..., Any])

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class Pipeline:
    """A named set of steps: files land, ``process`` steps turn each into a partition,
    ``analytics`` steps combine partitions and each other.

    The name becomes the deployment name, the prefix of asset paths and the resource of
    the pipeline's events.
    """

    def __init__(self, name: str) -> None:
        if not _NAME.match(name):
            raise PipelineDefinitionError(
                f"pipeline name {name!r} must start with a lowercase letter and use only "
                "a-z, 0-9 and '_'"
            )
        self.name = name
        self.steps: dict[str, Step] = {}
        self.fetches: dict[str, Fetch] = {}
        self.source: str | None = None
        """Where the pipeline was loaded from (``module:attr`` or ``file.py:attr``)."""

    def __repr__(self) -> str:
        return f"Pipeline({self.name!r}, steps={list(self.steps)})"

    @overload
    def process(self, fn: Fn, /) -> Fn: ...
    @overload
    def process(
        self,
        *,
        retries: int = 0,
        retry_delay_seconds: float = 0,
        version: str | None = None,
        expects: dict[str, str | None] | Schema | None = None,
    ) -> Callable[[Fn], Fn]: ...
    def process(  # type: ignore[misc]  # mypy can't match a TypeVar bound only by the return
        self,
        fn: Fn | None = None,
        /,
        *,
        retries: int = 0,
        retry_delay_seconds: float = 0,
        version: str | None = None,
        expects: dict[str, str | None] | Schema | None = None,
    ) -> Fn | Callable[[Fn], Fn]:
        """Register a step that runs once per landed file: ``raw`` frame -> processed partition.

        The function takes exactly one parameter, named ``raw``. ``expects`` declares the
        columns (``{"column": "int64" or None}``) the raw file must have; a file without them
        is rejected with a reason instead of failing the step.
        """
        schema = Schema(dict(expects)) if isinstance(expects, dict) else expects

        def register(f: Fn) -> Fn:
            self._add(f, "process", retries, retry_delay_seconds, version, schema)
            return f

        return register(fn) if fn is not None else register

    @overload
    def analytics(self, fn: Fn, /) -> Fn: ...
    @overload
    def analytics(
        self,
        *,
        retries: int = 0,
        retry_delay_seconds: float = 0,
        version: str | None = None,
        combine: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
    ) -> Callable[[Fn], Fn]: ...
    def analytics(  # type: ignore[misc]  # as for process()
        self,
        fn: Fn | None = None,
        /,
        *,
        retries: int = 0,
        retry_delay_seconds: float = 0,
        version: str | None = None,
        combine: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
    ) -> Fn | Callable[[Fn], Fn]:
        """Register an asset computed from other steps, named by its parameters.

        A parameter named after a process step receives all of that step's partitions
        concatenated; one named after another analytics step receives that asset.

        With ``combine``, the step is computed map/combine: the function takes one
        parameter, a process step, and runs on each partition alone (its result is kept per
        partition version, so a new file costs one partition's work); ``combine`` receives
        those partial results concatenated and returns the asset. The result must not
        depend on how the rows were split into partitions (sums, counts summed, min, max).
        """

        def register(f: Fn) -> Fn:
            self._add(f, "analytics", retries, retry_delay_seconds, version, None, combine)
            return f

        return register(fn) if fn is not None else register

    def fetch(
        self,
        *,
        schedule: str | None = None,
        interval: timedelta | float | None = None,
        timezone: str = "UTC",
        retries: int = 2,
        retry_delay_seconds: float = 5.0,
        append: bool = False,
    ) -> Callable[[Fn], Fn]:
        """Register a function that pulls data on a schedule (``schedule``, a cron expression,
        or ``interval``, a ``timedelta`` or seconds) into the raw stage.

        The function takes no parameters and returns a DataFrame, ``Fetched(content, format)``
        (bytes in one of the readable formats) or None (nothing new). Its result lands as a
        file of the pipeline and goes through the same ``process`` and ``analytics`` steps as
        a dropped file; the same bytes again are skipped. With ``append=True`` each fetch adds
        a partition (for incremental sources); by default each replaces the fetch's partition.
        A failed fetch is retried ``retries`` times with exponential backoff starting at
        ``retry_delay_seconds``.
        """

        def register(f: Fn) -> Fn:
            name = getattr(f, "__name__", "")
            where = f"fetch {name!r} of pipeline {self.name!r}"
            if not callable(f) or not _NAME.match(name):
                raise PipelineDefinitionError(
                    f"{where}: the function name must be lowercase snake_case (it names the "
                    "fetched file and the deployment)"
                )
            if name in self.fetches or name in self.steps or name == "raw":
                raise PipelineDefinitionError(f"{where}: the name is already used")
            if inspect.iscoroutinefunction(f):
                raise PipelineDefinitionError(f"{where}: must be a plain function, not async")
            required = [
                p
                for p in inspect.signature(f).parameters.values()
                if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
            ]
            if required:
                raise PipelineDefinitionError(
                    f"{where}: takes no parameters (got {[p.name for p in required]}); "
                    "read settings from the environment or a Prefect Secret block"
                )
            if (schedule is None) == (interval is None):
                raise PipelineDefinitionError(
                    f"{where}: give exactly one of schedule='<cron>' or interval=timedelta(...)"
                )
            every = timedelta(seconds=interval) if isinstance(interval, int | float) else interval
            if every is not None and every.total_seconds() <= 0:
                raise PipelineDefinitionError(f"{where}: interval must be positive")
            if schedule is not None:
                _check_cron(where, schedule)
            if retries < 0 or retry_delay_seconds < 0:
                raise PipelineDefinitionError(
                    f"{where}: retries and retry_delay_seconds must be >= 0"
                )
            self.fetches[name] = Fetch(
                name=name,
                fn=f,
                schedule=schedule,
                interval=every,
                timezone=timezone,
                retries=retries,
                retry_delay_seconds=retry_delay_seconds,
                append=append,
            )
            return f

        return register

    def _add(
        self,
        fn: Callable[..., Any],
        kind: StepKind,
        retries: int,
        retry_delay_seconds: float,
        version: str | None,
        expects: Schema | None,
        combine: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
    ) -> None:
        name = getattr(fn, "__name__", "")
        where = f"{kind} step {name!r} of pipeline {self.name!r}"
        if not callable(fn) or not _NAME.match(name):
            raise PipelineDefinitionError(
                f"{where}: the function name must be lowercase snake_case (it names the asset)"
            )
        if name in self.steps or name in self.fetches or name == "raw":
            raise PipelineDefinitionError(
                f"{where}: the name is already used"
                + (" ('raw' is reserved for the landed file)" if name == "raw" else "")
            )
        if inspect.iscoroutinefunction(fn):
            raise PipelineDefinitionError(f"{where}: must be a plain function, not async")
        params = list(inspect.signature(fn).parameters.values())
        for p in params:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                raise PipelineDefinitionError(
                    f"{where}: *args/**kwargs are not allowed; name each input as a parameter"
                )
        inputs = tuple(p.name for p in params)
        if kind == "process" and inputs != ("raw",):
            raise PipelineDefinitionError(
                f"{where}: a process step takes exactly one parameter named 'raw' "
                f"(got {list(inputs)})"
            )
        if kind == "analytics" and not inputs:
            raise PipelineDefinitionError(
                f"{where}: takes no parameters; name a process or analytics step as a parameter"
            )
        if combine is not None and (not callable(combine) or len(inputs) != 1):
            raise PipelineDefinitionError(
                f"{where}: with combine=, the function takes exactly one parameter, a process "
                f"step (got {list(inputs)}), and combine must be a function of one DataFrame"
            )
        if retries < 0 or retry_delay_seconds < 0:
            raise PipelineDefinitionError(f"{where}: retries and retry_delay_seconds must be >= 0")
        self.steps[name] = Step(
            name=name,
            kind=kind,
            fn=fn,
            inputs=inputs,
            retries=retries,
            retry_delay_seconds=retry_delay_seconds,
            version=version,
            expects=expects,
            combine=combine,
        )

    @property
    def process_steps(self) -> list[Step]:
        return [s for s in self.steps.values() if s.kind == "process"]

    def analytics_order(self) -> list[Step]:
        """Analytics steps, upstream first."""
        self.validate()
        graph = {
            s.name: {i for i in s.inputs if self.steps[i].kind == "analytics"}
            for s in self.steps.values()
            if s.kind == "analytics"
        }
        return [self.steps[n] for n in TopologicalSorter(graph).static_order()]

    def analytics_levels(self) -> list[list[Step]]:
        """Analytics steps grouped so that each group depends only on earlier groups."""
        depth: dict[str, int] = {}
        for step in self.analytics_order():
            ups = [depth[i] for i in step.inputs if self.steps[i].kind == "analytics"]
            depth[step.name] = 1 + max(ups, default=-1)
        levels: list[list[Step]] = [[] for _ in range(1 + max(depth.values(), default=-1))]
        for name, level in depth.items():
            levels[level].append(self.steps[name])
        return levels

    def downstream(self, name: str) -> set[str]:
        """Every analytics step that depends on ``name``, directly or not."""
        found: set[str] = set()
        frontier = {name}
        while frontier:
            nxt = {
                s.name
                for s in self.steps.values()
                if s.kind == "analytics" and frontier & set(s.inputs)
            } - found
            found |= nxt
            frontier = nxt
        return found

    @property
    def code_files(self) -> tuple[str, ...]:
        """The files of the user's modules its steps' code is in (real paths)."""
        return tuple(sorted({f for step in self.steps.values() for f in step.code_files}))

    def validate(self) -> None:
        """Check the graph: every parameter names a step, no cycles, at least one process
        step; compute the steps' code versions now that their module is fully executed."""
        for step in self.steps.values():
            step.refresh_code_version()
        if not self.process_steps:
            raise PipelineDefinitionError(
                f"pipeline {self.name!r} has no @pipeline.process step; "
                "add one that takes 'raw' and returns a DataFrame"
            )
        for step in self.steps.values():
            if step.kind != "analytics":
                continue
            for dep in step.inputs:
                if dep not in self.steps:
                    known = ", ".join(sorted(self.steps)) or "none"
                    raise PipelineDefinitionError(
                        f"analytics step {step.name!r} of pipeline {self.name!r}: parameter "
                        f"{dep!r} names no step (known steps: {known})"
                    )
            if step.combine is not None and self.steps[step.inputs[0]].kind != "process":
                raise PipelineDefinitionError(
                    f"analytics step {step.name!r} of pipeline {self.name!r}: combine= needs "
                    f"its parameter to name a process step; {step.inputs[0]!r} is analytics"
                )
        graph = {s.name: set(s.inputs) for s in self.steps.values() if s.kind == "analytics"}
        try:
            tuple(TopologicalSorter(graph).static_order())
        except CycleError as exc:
            cycle = " -> ".join(exc.args[1])
            raise PipelineDefinitionError(
                f"pipeline {self.name!r} has a dependency cycle: {cycle}"
            ) from None


def _check_cron(where: str, expression: str) -> None:
    # Lazy: a pipeline module is imported before `eventpipe up` configures Prefect; Prefect's
    # own parser then reads the schedule exactly as the deployment will.
    from prefect.schedules import Cron

    try:
        Cron(expression)
    except ValueError as exc:
        raise PipelineDefinitionError(
            f"{where}: schedule {expression!r} is not a valid cron expression ({exc})"
        ) from None


def is_path_spec(spec: str) -> bool:
    """Whether ``spec`` names a file (``path/file.py:attr``) rather than a module."""
    target = spec.rpartition(":")[0]
    return target.endswith(".py") or "/" in target or "\\" in target


def pipeline_source(spec: str) -> Path | None:
    """The file that defines the pipeline of ``spec``, if there is one."""
    target = spec.rpartition(":")[0]
    if is_path_spec(spec):
        return Path(target)
    try:
        found = importlib.util.find_spec(target)
    except (ImportError, ValueError):
        return None
    return Path(found.origin) if found and found.origin else None


def load_pipeline(spec: str) -> Pipeline:
    """Load a pipeline from ``package.module:attr`` or ``path/to/file.py:attr``; validate it."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise PipelineDefinitionError(
            f"pipeline spec {spec!r} must look like 'package.module:name' or 'path/file.py:name'"
        )
    if is_path_spec(spec):
        path = Path(target).resolve()
        if not path.is_file():
            raise PipelineDefinitionError(f"pipeline file {path} does not exist")
        module_name = PIPELINE_MODULE_PREFIX + hashlib.sha256(str(path).encode()).hexdigest()[:12]
        file_spec = importlib.util.spec_from_file_location(module_name, path)
        if file_spec is None or file_spec.loader is None:
            raise PipelineDefinitionError(f"cannot import {path}")
        module = importlib.util.module_from_spec(file_spec)
        sys.modules[module_name] = module
        try:
            file_spec.loader.exec_module(module)
        except PipelineDefinitionError:
            sys.modules.pop(module_name, None)
            raise
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as exc:
            raise PipelineDefinitionError(f"cannot import module {target!r}: {exc}") from exc
    pipeline = getattr(module, attr, None)
    if not isinstance(pipeline, Pipeline):
        raise PipelineDefinitionError(
            f"{spec!r}: {attr!r} is {type(pipeline).__name__}, not an eventpipe.Pipeline"
        )
    pipeline.validate()
    pipeline.source = spec
    return pipeline


def absolute_spec(spec: str) -> str:
    """Make a ``file.py:attr`` spec absolute so every process resolves it the same way."""
    target, _, attr = spec.rpartition(":")
    return f"{Path(target).resolve()}:{attr}" if is_path_spec(spec) else spec
