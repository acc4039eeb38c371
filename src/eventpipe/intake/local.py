"""The folder source: watchfiles on the inbox, plus the scans watchfiles can't replace.

watchfiles reports nothing for files present at start, can miss the first file after a
``mkdir -p`` and says nothing about the contents of a folder moved in; and no event says
"write finished". So the inbox is scanned on start, a folder is walked when it appears, the
whole inbox is rescanned periodically, and a file is taken only once its size and mtime hold
still for ``settle_seconds``. Temp names and dot-names are never taken, by the watcher or the
scans: both use one ``InboxFilter``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from watchfiles import Change, watch

from eventpipe.core.atomic import file_digest
from eventpipe.core.keys import file_uri
from eventpipe.core.models import Landed
from eventpipe.core.readers import SUFFIXES, suffix_of
from eventpipe.intake.filters import InboxFilter

log = logging.getLogger("eventpipe.sources.local")


@dataclass(frozen=True)
class Rejected:
    """A file the source refuses before it reaches the ledger."""

    path: Path
    relative: str
    reason: str


class FolderSource:
    """Watches ``inbox`` and calls ``on_landed`` once per complete new or changed file."""

    def __init__(
        self,
        inbox: Path,
        on_landed: Callable[[Landed], None],
        on_rejected: Callable[[Rejected], None] | None = None,
        *,
        on_deleted: Callable[[], None] | None = None,
        settle_seconds: float = 0.05,
        max_file_bytes: int = 1 << 30,
        rescan_seconds: float = 30.0,
    ) -> None:
        self.inbox = inbox.resolve()
        self.on_landed = on_landed
        self.on_rejected = on_rejected or (
            lambda r: log.warning("rejected %s: %s", r.relative, r.reason)
        )
        self.settle_seconds = settle_seconds
        self.max_file_bytes = max_file_bytes
        self.rescan_seconds = rescan_seconds
        self.on_deleted = on_deleted
        """Called after each scan and after files were deleted: the caller compares what it
        has recorded with what is still there."""
        self._seen: dict[Path, tuple[int, int]] = {}
        self._rejected: dict[Path, tuple[int, int]] = {}
        self.ready = threading.Event()
        self.filter = InboxFilter(self.inbox)
        """What is never taken; the watcher and every scan use this one filter."""

    def scan(self) -> None:
        """Take every complete file under the inbox not yet taken in its current form; then
        look for files that are gone (``on_deleted``)."""
        self.consider(self._walk(self.inbox))
        self._deleted()

    def _deleted(self) -> None:
        if self.on_deleted is None:
            return
        try:
            self.on_deleted()
        except Exception:  # the ledger is busy: the next scan looks again
            log.warning("could not look for deleted files", exc_info=True)

    def run(self, stop: threading.Event) -> None:
        """Watch until ``stop`` is set. Scans first, so files already there are not missed."""
        self.inbox.mkdir(parents=True, exist_ok=True)
        # watch() starts watching at its first iteration; whatever lands between the first
        # scan and then is caught by a second scan at the first yield (at most 1 s later). A
        # change is yielded 10-20 ms after its last event (step); at rest the watcher wakes
        # Python once a second (rust_timeout).
        watcher = watch(
            self.inbox,
            debounce=200,
            step=10,
            stop_event=stop,
            rust_timeout=1000,
            yield_on_timeout=True,
            recursive=True,
            watch_filter=self.filter,
            ignore_permission_denied=True,
        )
        self.scan()
        last_scan = time.monotonic()
        for changes in watcher:
            if stop.is_set():
                break
            if not self.ready.is_set() or (
                not changes and time.monotonic() - last_scan >= self.rescan_seconds
            ):
                self.scan()
                last_scan = time.monotonic()
                self.ready.set()
                continue
            if not changes:
                continue
            paths: list[Path] = []
            deleted = False
            for change, name in changes:
                path = Path(name)
                if change == Change.deleted:
                    self._seen.pop(path, None)
                    deleted = True
                    continue
                if path.is_dir() and not path.is_symlink():
                    paths.extend(self._walk(path))
                else:
                    paths.append(path)
            self.consider(paths)
            if deleted:
                self._deleted()

    def consider(self, paths: Iterable[Path]) -> None:
        pending = {p for p in paths if self._candidate(p)}
        while pending:
            stable, pending = self._settle(pending)
            for path in sorted(stable):
                self._take(path)

    def _walk(self, root: Path) -> list[Path]:
        out: list[Path] = []
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            dirnames[:] = [d for d in dirnames if self.filter.enters(Path(dirpath) / d)]
            out.extend(Path(dirpath) / f for f in filenames)
        return out

    def _candidate(self, path: Path) -> bool:
        if not self.filter.takes(path):
            return False
        key = _stat_key(path)  # follows symlinks, as _take does; a dangling one is skipped
        if key is None:
            return False
        return self._seen.get(path) != key and self._rejected.get(path) != key

    def _settle(self, paths: set[Path]) -> tuple[set[Path], set[Path]]:
        """Split ``paths`` into those whose size and mtime held still, and those still growing."""
        before = {p: _stat_key(p) for p in paths}
        if self.settle_seconds:
            time.sleep(self.settle_seconds)
        stable, moving = set[Path](), set[Path]()
        for path, key in before.items():
            now = _stat_key(path)
            if now is None:
                continue
            (stable if now == key else moving).add(path)
        return stable, moving

    def _take(self, path: Path) -> None:
        relative = path.relative_to(self.inbox).as_posix()
        key = _stat_key(path)
        if key is None:
            return
        reason = self._refusal(path)
        if reason is not None:
            self._rejected[path] = key
            self.on_rejected(Rejected(path=path, relative=relative, reason=reason))
            return
        try:
            fingerprint = file_digest(path)
        except OSError as exc:
            log.warning("cannot read %s: %s", relative, exc)
            return
        if _stat_key(path) != key:
            return  # still being written: the next event takes it
        self._seen[path] = key
        self.on_landed(
            Landed(
                uri=file_uri(path),
                relative=relative,
                size=key[0],
                fingerprint=fingerprint,
                source="local",
                local_path=str(path),
            )
        )

    def _refusal(self, path: Path) -> str | None:
        if path.is_symlink():
            target = path.resolve()
            if not target.is_relative_to(self.inbox):
                return "symlink points outside the inbox; copy the file in instead of linking it"
            if not target.is_file():
                return "symlink does not point to a file; drop the file itself"
        if suffix_of(path.name) is None:
            return f"unsupported file type; use one of {', '.join(SUFFIXES)}"
        size = path.stat().st_size
        if size > self.max_file_bytes:
            return (
                f"file is {size} bytes, over the limit of {self.max_file_bytes}; split it, or "
                "raise max_file_bytes (EVENTPIPE_MAX_FILE_BYTES)"
            )
        return None


def _stat_key(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return st.st_size, st.st_mtime_ns
