"""SerialEM: ``.mdoc`` autodoc files into records, frame paths resolved inside the allowed folders, and a writer (for the simulator and tests)."""

from mdcatch.serialem.mdoc import (
    read_mdoc,
    scan_serialem_session,
)
from mdcatch.serialem.writer import write_mdoc

__all__ = [
    "read_mdoc",
    "scan_serialem_session",
    "write_mdoc",
]
