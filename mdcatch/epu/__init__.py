"""Thermo Fisher EPU: the per-exposure XML, ``EpuSession.dm``, fractionation files, and writers (for the simulator and tests)."""

from mdcatch.epu.exposure import read_epu_exposure
from mdcatch.epu.session import (
    read_epu_session_file,
    scan_epu_session,
)
from mdcatch.epu.writer import (
    epu_exposure_relpath,
    write_epu_exposure_xml,
    write_epu_session_file,
)

__all__ = [
    "epu_exposure_relpath",
    "read_epu_exposure",
    "read_epu_session_file",
    "scan_epu_session",
    "write_epu_exposure_xml",
    "write_epu_session_file",
]
