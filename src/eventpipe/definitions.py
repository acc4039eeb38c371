"""The parts a pipeline is made of: the ``Schema`` a process step expects, each decorated
``Step`` with its code version, and each scheduled ``Fetch``. Plain values; the ``Pipeline``
that collects and checks them is in ``eventpipe.pipeline``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

from eventpipe.codeversion import code_digest

if TYPE_CHECKING:  # only annotations here: importing pandas costs ~0.5 s
    import pandas as pd

StepKind = Literal["process", "analytics"]


@dataclass(frozen=True)
class Schema:
    """Columns (and optionally dtypes, as pandas dtype names) a process step expects."""

    columns: dict[str, str | None]
    allow_extra: bool = True


@dataclass
class Step:
    """One decorated function of a pipeline."""

    name: str
    kind: StepKind
    fn: Callable[..., pd.DataFrame]
    inputs: tuple[str, ...]
    retries: int = 0
    retry_delay_seconds: float = 0
    version: str | None = None
    expects: Schema | None = None
    combine: Callable[[pd.DataFrame], pd.DataFrame] | None = None
    """Map/combine analytics: ``fn`` runs once per partition (cached), ``combine`` merges
    the partial results."""
    code_version: str = field(init=False, default="")
    """``version`` if given, else a digest of the step's code and of the user's functions,
    classes and constants it uses (``eventpipe.codeversion``)."""
    code_files: tuple[str, ...] = field(init=False, default=())
    """The files of the user's modules that code is in (what ``up`` watches for edits)."""

    def __post_init__(self) -> None:
        self.refresh_code_version()

    def refresh_code_version(self) -> None:
        """Compute the code version again: once the whole module is executed, helpers defined
        below the step are found too (``Pipeline.validate`` calls this)."""
        fns = (self.fn,) if self.combine is None else (self.fn, self.combine)
        digest, self.code_files = code_digest(*fns)
        self.code_version = self.version or digest


FETCH_FORMATS = ("parquet", "csv", "csv.gz", "json", "jsonl")


@dataclass
class Fetch:
    """One ``@pipeline.fetch`` function: pulls data on a schedule into the raw stage."""

    name: str
    fn: Callable[[], Any]
    schedule: str | None = None
    """A cron expression (``*/15 * * * *``), or None when ``interval`` is set."""
    interval: timedelta | None = None
    timezone: str = "UTC"
    retries: int = 2
    retry_delay_seconds: float = 5.0
    """The first retry's delay; each further retry waits twice as long as the previous."""
    append: bool = False
    """Each fetch adds a partition (incremental sources) instead of replacing the fetch's one."""

    @property
    def every(self) -> str:
        """The schedule, for people."""
        if self.schedule is not None:
            return f"cron {self.schedule!r} ({self.timezone})"
        assert self.interval is not None
        return f"every {self.interval.total_seconds():g} s"
