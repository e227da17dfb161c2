"""The extraction stage on files: one micrograph in, one float16 stack and its
particle STAR rows out, laid out as a RELION ``Extract/jobNNN/`` folder.

The stack goes to ``<project>/<job>/<sub>/<stem>.mrcs`` (``<sub>`` mirrors the
micrograph's folder below its own job folder, e.g. ``Movies``), written atomically
as MRC mode 12; the rows name it relative to the project folder, as RELION does.
With ``append_to`` the rows are appended to the job's particle STAR.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.ctf.model import CtfParams
from pipelines.errors import StageInputError
from pipelines.extraction.extract import ExtractedParticles, extract_particles
from pipelines.extraction.particles_star import (
    append_particles_star,
    optics_table,
    particles_table,
)
from pipelines.io.micrographs import read_micrograph
from pipelines.io.outputs import write_mrc
from pipelines.picking.picks import Picks

__all__ = ["ExtractJobResult", "run_extract", "stack_path_for"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ExtractJobResult:
    stack_path: Path
    optics: Any  # one-row DataFrame
    particles: Any  # DataFrame, one row per extracted particle
    n_extracted: int
    n_skipped_edge: int


def stack_path_for(
    micrograph: Path, project_dir: Path, job_dir: str | Path, suffix: str = ""
) -> Path:
    """``<job>/<sub>/<stem><suffix>.mrcs`` relative to the project folder."""
    try:
        rel = micrograph.resolve().relative_to(project_dir.resolve())
        sub = Path(*rel.parts[2:-1]) if len(rel.parts) > 3 else Path()
    except ValueError:
        sub = Path()
    return Path(job_dir) / sub / f"{micrograph.stem}{suffix}.mrcs"


def run_extract(
    micrograph_path: str | Path,
    picks: Picks,
    *,
    project_dir: str | Path,
    job_dir: str | Path,
    pixel_size_a: float,
    ctf: CtfParams,
    box_px: int | None = None,
    diameter_a: float | None = None,
    downscale_box_px: int | None = None,
    ctf_max_resolution_a: float = float("nan"),
    ctf_figure_of_merit: float = float("nan"),
    optics_group_name: str = "opticsGroup1",
    append_to: str | Path | None = None,
    invert_contrast: bool = True,
    stack_suffix: str = "",
    float16: bool = True,
) -> ExtractJobResult:
    """Extract one micrograph's particles into the job folder (see module doc).

    ``stack_suffix`` goes between the stem and ``.mrcs``: a second extraction of
    the same micrograph from other picks writes a new stack, so readers of the
    first one never see its file change under them.  ``float16`` writes MRC mode 12
    (RELION 4 and later read it), else float32 (mode 2, for RELION 3.1 and older)."""
    project = Path(project_dir)
    micrograph = Path(micrograph_path)
    image, _ = read_micrograph(micrograph)
    extracted: ExtractedParticles = extract_particles(
        image,
        picks,
        pixel_size_a=pixel_size_a,
        box_px=box_px,
        diameter_a=diameter_a,
        downscale_box_px=downscale_box_px,
        invert_contrast=invert_contrast,
    )
    if not np.all(np.isfinite(extracted.images)):
        raise StageInputError(micrograph, "pixels", "non-finite", "stack has NaN/inf")
    stack_rel = stack_path_for(micrograph, project, job_dir, stack_suffix)
    stack_path = project / stack_rel
    if len(extracted.x_px):
        write_mrc(
            stack_path,
            extracted.images,
            pixel_size_a=extracted.pixel_size_a,
            float16=float16,
            is_stack=True,
        )
    try:
        micrograph_name = str(micrograph.resolve().relative_to(project.resolve()))
    except ValueError:
        micrograph_name = str(micrograph)
    optics = optics_table(
        ctf=ctf,
        image_pixel_size_a=extracted.pixel_size_a,
        image_size_px=extracted.images.shape[-1]
        if len(extracted.x_px)
        else (downscale_box_px or extracted.box_px),
        micrograph_original_pixel_size_a=pixel_size_a,
        optics_group_name=optics_group_name,
    )
    particles = particles_table(
        extracted,
        stack_name=str(stack_rel),
        micrograph_name=micrograph_name,
        ctf=ctf,
        ctf_max_resolution_a=ctf_max_resolution_a,
        ctf_figure_of_merit=ctf_figure_of_merit,
    )
    if append_to is not None and len(particles):
        append_particles_star(append_to, optics, particles)
    return ExtractJobResult(
        stack_path=stack_path,
        optics=optics,
        particles=particles,
        n_extracted=len(extracted.x_px),
        n_skipped_edge=extracted.n_skipped_edge,
    )
