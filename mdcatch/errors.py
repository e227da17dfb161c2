"""The one exception family of :mod:`mdcatch`, and the bad-input error it shares.

:class:`InputFieldError` is the one definition of "this input field holds a value
that no retry can fix" (file, field, value, reason).  :class:`MetadataError`
(acquisition metadata) and :class:`pipelines.StageInputError` (a stage's input
file or parameter) are its subclasses, so the scheduler quarantines both by
catching the base.  It lives here because :mod:`mdcatch` imports nothing of ours
and :mod:`pipelines` already reads mdcatch's plain input records.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["InputFieldError", "MetadataError"]


class InputFieldError(ValueError):
    """An input whose field holds a value that cannot be used (no retry can help).

    Every instance names the file, the field and the offending value, so the message
    alone tells an operator what to fix; the fields survive pickling (the error
    crosses process boundaries from the workers to the scheduler).
    """

    def __init__(
        self,
        path: str | Path,
        field: str,
        value: object,
        reason: str,
    ) -> None:
        self.path = Path(path)
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"{self.path}: field {field!r} has value {value!r}: {reason}")

    def __reduce__(self) -> tuple[type[InputFieldError], tuple[object, ...]]:
        # Keep the structured fields when the error crosses a process boundary.
        return (type(self), (self.path, self.field, self.value, self.reason))


class MetadataError(InputFieldError):
    """Acquisition metadata that cannot be trusted::

    MetadataError: FoilHole_1_Data_2_3_20200320_090200.xml: field 'pixelSize'
    has value '0': pixel size must be positive
    """
