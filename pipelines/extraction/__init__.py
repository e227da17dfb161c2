"""Particle extraction: normalised boxes cut from micrographs, and the RELION particle STAR files it writes (``data_optics`` + ``data_particles``, appended to the session pool), and the RELION Extract file layer (``run_extract``)."""

from pipelines.extraction.extract import (
    ExtractedParticles,
    default_box_px,
    extract_particles,
)
from pipelines.extraction.job import (
    ExtractJobResult,
    run_extract,
)
from pipelines.extraction.particles_star import (
    append_particles_star,
    read_particles_star,
    write_particles_star,
)

__all__ = [
    "ExtractJobResult",
    "ExtractedParticles",
    "append_particles_star",
    "default_box_px",
    "extract_particles",
    "read_particles_star",
    "run_extract",
    "write_particles_star",
]
