"""mdcatch: read what EPU and SerialEM write into typed, immutable records.

No asyncio, no network, no global state.  The public entry points are re-exported
here; everything else is an implementation detail of its module.
"""

from mdcatch.errors import MetadataError
from mdcatch.records import (
    CameraMode,
    Exposure,
    ImageKind,
    MovieFormat,
    MovieHeader,
    Optics,
    Session,
    Software,
)

__all__ = [
    "CameraMode",
    "Exposure",
    "ImageKind",
    "MetadataError",
    "MovieFormat",
    "MovieHeader",
    "Optics",
    "Session",
    "Software",
]
