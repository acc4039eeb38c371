"""Edited code changes code versions: when a file of the pipeline's code changes (its own
file, or a module of the user's whose functions, classes or constants a step uses), a run is
started so that what depends on the edited code is recomputed, without waiting for a file."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from eventpipe.codeversion import code_stamp

log = logging.getLogger("eventpipe")


class CodeWatcher:
    """Polls the modification times of ``files()`` once a second; calls ``on_change`` when
    one of them changes (a file that only joins the list, as the code comes to use another
    module, is watched from then on)."""

    def __init__(
        self,
        files: Callable[[], Sequence[str]],
        *,
        on_change: Callable[[], None],
        stop: threading.Event,
    ) -> None:
        self.files = files
        self.on_change = on_change
        self._stop = stop

    def start(self) -> CodeWatcher:
        threading.Thread(target=self._run, name="eventpipe-code", daemon=True).start()
        return self

    def _run(self) -> None:
        last = dict(code_stamp(self._listed()))
        while not self._stop.wait(1.0):
            now = dict(code_stamp(self._listed()))
            edited = sorted(f for f, mtime in now.items() if f in last and last[f] != mtime)
            last = now
            if not edited:
                continue
            log.info(
                "pipeline code changed (%s); recomputing what depends on it", ", ".join(edited)
            )
            try:
                self.on_change()
            except Exception as exc:
                log.warning("could not start a run: %s", exc)

    def _listed(self) -> Sequence[str]:
        try:
            return self.files()
        except Exception as exc:  # the pipeline is being edited: the last list stays
            log.debug("pipeline files not listed: %s", exc)
            return ()
