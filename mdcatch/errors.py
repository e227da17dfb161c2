"""The one exception family of :mod:`mdcatch`."""

from __future__ import annotations

from pathlib import Path


class MetadataError(ValueError):
    """Acquisition metadata that cannot be trusted.

    Every instance names the file, the field and the offending value, so the message
    alone tells an operator what to fix::

        MetadataError: FoilHole_1_Data_2_3_20200320_090200.xml: field 'pixelSize'
        has value '0': pixel size must be positive
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

    def __reduce__(self) -> tuple[type[MetadataError], tuple[object, ...]]:
        # Keep the structured fields when the error crosses a process boundary.
        return (type(self), (self.path, self.field, self.value, self.reason))
