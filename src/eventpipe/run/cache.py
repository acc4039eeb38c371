"""A Prefect cache policy keyed on content: the input's fingerprint plus the step's code version.

Prefect ships policies for inputs and task source, none for "the bytes of the landed file".
:class:`ContentFingerprint` reads the ``fingerprint`` of each input that has one (a landed
file's sha256, or the versions an analytics step reads) so the key costs no hashing of frames.
It composes with Prefect's own policies: ``ContentFingerprint(...) + TASK_SOURCE``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext
from prefect.utilities.hashing import hash_objects

from eventpipe.core.models import RawFile


@dataclass
class ContentFingerprint(CachePolicy):
    """Cache key = pipeline + step + step code version + the fingerprints of the inputs."""

    pipeline: str = ""
    step: str = ""
    code_version: str = ""

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        fingerprints = {
            name: value.fingerprint
            for name, value in sorted(inputs.items())
            if isinstance(getattr(value, "fingerprint", None), str)
        }
        if not fingerprints:
            return None
        return hash_objects(self.pipeline, self.step, self.code_version, fingerprints)

    def record_key(self, raw: RawFile) -> str:
        """The key of the result record a one-file step task over ``raw`` reads and writes
        (its parameter is named ``raw``): a batch shares the records of the one-file tasks."""
        key = self.compute_key(None, {"raw": raw}, {})  # type: ignore[arg-type]
        if key is None:  # hash_objects gives up only on values it cannot serialize
            raise TypeError(f"no cache key for the fingerprint of {raw.uri}")
        return key
