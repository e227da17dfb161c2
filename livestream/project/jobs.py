"""The RELION job folders of a live project: one source for their names and numbers.

RELION numbers jobs in the order a pipeline creates them; the service creates the
same jobs for every session, so their folders are fixed::

    Import/job001  MotionCorr/job002  CtfFind/job003  Select/job004
    AutoPick/job005  Extract/job006  Class2D/job007

Stage parameters (``job = ...``), the job index files and the online classifier
take their defaults from here; a site may still configure other folders.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "AUTO_PICK",
    "CLASS2D",
    "CTF_FIND",
    "EXTRACT",
    "IMPORT",
    "JOBS",
    "MOTION_CORR",
    "SELECT",
    "RelionJob",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class RelionJob:
    """A RELION job: its type folder (``MotionCorr``) and number (2)."""

    job_type: str
    number: int

    @property
    def folder(self) -> str:
        """``<JobType>/job<NNN>``, relative to the project folder."""
        return f"{self.job_type}/job{self.number:03d}"


IMPORT = RelionJob(job_type="Import", number=1)
MOTION_CORR = RelionJob(job_type="MotionCorr", number=2)
CTF_FIND = RelionJob(job_type="CtfFind", number=3)
SELECT = RelionJob(job_type="Select", number=4)
AUTO_PICK = RelionJob(job_type="AutoPick", number=5)
EXTRACT = RelionJob(job_type="Extract", number=6)
CLASS2D = RelionJob(job_type="Class2D", number=7)

JOBS = (IMPORT, MOTION_CORR, CTF_FIND, SELECT, AUTO_PICK, EXTRACT, CLASS2D)
