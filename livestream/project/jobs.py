"""The RELION job folders of a live project: one source for their names and numbers.

RELION numbers jobs in the order a pipeline creates them; the service creates the
same jobs for every session, so their folders are fixed::

    Import/job001  MotionCorr/job002  CtfFind/job003  Select/job004
    AutoPick/job005  Extract/job006  Class2D/job007  InitialModel/job008
    Refine3D/job009  External/job010 (Rebalance Orientations)  Class3D/job011

Stage parameters (``job = ...``), the job index files and the online classifier
take their defaults from here; a site may still configure other folders.

Each job also carries what RELION's ``default_pipeline.star`` says about it
(:mod:`livestream.project.pipeline`): its process type label (RELION 5 and the
CCP-EM pipeliner use the same vocabulary, e.g. ``relion.motioncorr.own``) and its
output nodes, each a file name in the job folder with its node type label
(``MicrographGroupMetadata.star.relion.motioncorr``).  Our curation is a
``relion.select.onvalue`` job (RELION's own job that keeps micrographs by a value
of their CTF fit); our picker writes ``relion.autopick.log`` (blob) or
``relion.autopick.ref2d`` (templates).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "AUTO_PICK",
    "CLASS2D",
    "CLASS3D",
    "CTF_FIND",
    "EXTRACT",
    "IMPORT",
    "INITIAL_MODEL",
    "JOBS",
    "MOTION_CORR",
    "REBALANCE",
    "REFINE3D",
    "SELECT",
    "RelionJob",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class RelionJob:
    """A RELION job: its type folder (``MotionCorr``) and number (2)."""

    job_type: str
    number: int
    process_type: str = ""  # RELION's process type label
    # (file name in the job folder, node type label); Class2D's are per iteration
    outputs: tuple[tuple[str, str], ...] = ()

    @property
    def folder(self) -> str:
        """``<JobType>/job<NNN>``, relative to the project folder."""
        return f"{self.job_type}/job{self.number:03d}"


IMPORT = RelionJob(
    job_type="Import",
    number=1,
    process_type="relion.import.movies",
    outputs=(("movies.star", "MicrographMovieGroupMetadata.star.relion"),),
)
MOTION_CORR = RelionJob(
    job_type="MotionCorr",
    number=2,
    process_type="relion.motioncorr.own",
    outputs=(
        (
            "corrected_micrographs.star",
            "MicrographGroupMetadata.star.relion.motioncorr",
        ),
    ),
)
CTF_FIND = RelionJob(
    job_type="CtfFind",
    number=3,
    process_type="relion.ctffind.ctffind4",
    outputs=(("micrographs_ctf.star", "MicrographGroupMetadata.star.relion.ctf"),),
)
SELECT = RelionJob(
    job_type="Select",
    number=4,
    process_type="relion.select.onvalue",
    outputs=(("micrographs.star", "MicrographGroupMetadata.star.relion"),),
)
AUTO_PICK = RelionJob(
    job_type="AutoPick",
    number=5,
    process_type="relion.autopick.log",
    outputs=(("autopick.star", "MicrographCoordsGroup.star.relion.autopick"),),
)
EXTRACT = RelionJob(
    job_type="Extract",
    number=6,
    process_type="relion.extract",
    outputs=(("particles.star", "ParticleGroupMetadata.star.relion"),),
)
CLASS2D = RelionJob(job_type="Class2D", number=7, process_type="relion.class2d.vdam")
# the online 3D initial model (livestream.class3d); its data STAR is per iteration
INITIAL_MODEL = RelionJob(
    job_type="InitialModel",
    number=8,
    process_type="relion.initialmodel",
    outputs=(("initial_model.mrc", "DensityMap.mrc.relion.initialmodel"),),
)

# the gold-standard refinement of the live 3D map (livestream.class3d.refinement),
# on demand and at drain; RELION's Refine3D output nodes (the pipeliner's labels)
REFINE3D = RelionJob(
    job_type="Refine3D",
    number=9,
    process_type="relion.refine3d",
    outputs=(
        ("run_data.star", "ParticleGroupMetadata.star.relion.refine3d"),
        ("run_model.star", "DensityMapMetadata.star.relion.refine3d.model"),
        ("run_half1_class001_unfil.mrc", "DensityMap.mrc.relion.refine3d.halfmap"),
        ("run_half2_class001_unfil.mrc", "DensityMap.mrc.relion.refine3d.halfmap"),
        ("run_class001.mrc", "DensityMap.mrc.relion.refine3d"),
    ),
)
# Rebalance Orientations of the refined set (RELION has no such job: an External
# job, RELION's type for programs it does not ship)
REBALANCE = RelionJob(
    job_type="External",
    number=10,
    process_type="relion.external",
    outputs=(
        ("rebalanced.star", "ParticleGroupMetadata.star.livestream.rebalance"),
        ("excluded.star", "ParticleGroupMetadata.star.livestream.rebalance.excluded"),
    ),
)

# the live 3D classification against the initial model's K maps
# (livestream.class3d.classification); its outputs are per iteration
CLASS3D = RelionJob(job_type="Class3D", number=11, process_type="relion.class3d")

JOBS = (
    IMPORT,
    MOTION_CORR,
    CTF_FIND,
    SELECT,
    AUTO_PICK,
    EXTRACT,
    CLASS2D,
    INITIAL_MODEL,
    REFINE3D,
    REBALANCE,
    CLASS3D,
)
