"""The one exception family of :mod:`pipelines`.

The live scheduler decides what to do with a failure by its class:
:class:`StageInputError` means the input itself is bad (quarantine at once, retrying
cannot help); any other exception is treated as possibly transient and retried with
backoff up to the configured number of attempts.
"""

from __future__ import annotations

from pathlib import Path


class PipelineError(Exception):
    """Base class of every error a pipelines stage raises on purpose."""


class StageInputError(PipelineError, ValueError):
    """An input file or parameter that no retry can fix.

    Names the file, the field and the value, like :class:`mdcatch.MetadataError`.
    """

    def __init__(
        self, path: str | Path, field: str, value: object, reason: str
    ) -> None:
        self.path = Path(path)
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"{self.path}: field {field!r} has value {value!r}: {reason}")

    def __reduce__(self) -> tuple[type[StageInputError], tuple[object, ...]]:
        return (type(self), (self.path, self.field, self.value, self.reason))
