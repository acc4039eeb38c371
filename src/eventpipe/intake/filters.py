"""The inbox filter: which paths under the inbox are never taken. One rule, used by the
watcher (as watchfiles' ``watch_filter``) and by every scan, so a file the scans would take is
never held back until the next rescan, nor the other way round.

Never taken: anything under a dot-name (``.x.csv``, ``.hidden/a.csv``, editors' and sync
tools' state) and files whose name ends like a write in progress (``.tmp``, ``.part``, …).
Nothing else: watchfiles' defaults would also drop ``node_modules/`` or ``flycheck_*`` names,
which are ordinary data file names here.
"""

from __future__ import annotations

import re
from pathlib import Path

from watchfiles import Change, DefaultFilter

IGNORED_SUFFIXES = (".tmp", ".part", ".crdownload", ".partial", ".swp", "~")
"""Names a producer writes before renaming to the final name."""

_DOT_NAME = r"^\."
_IN_PROGRESS = "(?i)(" + "|".join(re.escape(s) for s in IGNORED_SUFFIXES) + ")$"


class InboxFilter(DefaultFilter):
    """Takes a path under ``inbox`` unless eventpipe's rule ignores it (see the module)."""

    ignore_dirs = ()
    ignore_entity_patterns = (_DOT_NAME, _IN_PROGRESS)

    def __init__(self, inbox: Path) -> None:
        super().__init__()
        self.inbox = inbox.resolve()
        self._dot, self._in_progress = self._ignore_entity_regexes

    def __call__(self, change: Change, path: str) -> bool:
        target = Path(path)
        if change != Change.deleted and target.is_dir() and not target.is_symlink():
            return self.enters(target)  # a folder moved in: walked, whatever its suffix
        return self.takes(target)

    def takes(self, path: Path) -> bool:
        """Whether the file at ``path`` (under the inbox) may be taken."""
        try:
            relative = path.relative_to(self.inbox)
        except ValueError:
            return False
        return not ignored(relative, self._dot, self._in_progress)

    def enters(self, directory: Path) -> bool:
        """Whether a scan walks into ``directory`` (the inbox itself, or under it)."""
        try:
            relative = directory.relative_to(self.inbox)
        except ValueError:
            return False
        return not any(self._dot.search(part) for part in relative.parts)


def ignored(relative: Path, dot: re.Pattern[str], in_progress: re.Pattern[str]) -> bool:
    if any(dot.search(part) for part in relative.parts):
        return True
    return bool(in_progress.search(relative.name))


def is_ignored(relative: Path) -> bool:
    """Whether a path relative to the inbox is never taken (the rule of :class:`InboxFilter`)."""
    return ignored(relative, re.compile(_DOT_NAME), re.compile(_IN_PROGRESS))
