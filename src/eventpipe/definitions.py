"""The parts a pipeline is made of: the ``Schema`` a process step expects, each decorated
``Step`` with its code version, and each scheduled ``Fetch``. Plain values; the ``Pipeline``
that collects and checks them is in ``eventpipe.pipeline``."""

from __future__ import annotations

import hashlib
import inspect
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

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

    def __post_init__(self) -> None:
        digest = _source_digest(self.fn)
        if self.combine is not None:
            digest = hashlib.sha256(f"{digest}+{_source_digest(self.combine)}".encode()).hexdigest()
            digest = digest[:16]
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


def _source_digest(fn: Callable[..., Any]) -> str:
    try:
        source = textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError):
        source = fn.__qualname__ + repr(getattr(fn, "__code__", None) and fn.__code__.co_code)
    return hashlib.sha256(source.encode()).hexdigest()[:16]
