"""Particle sets exchanged with other programs: cryoSPARC ``.cs`` datasets (through
cryosparc-tools) and RELION STAR, with the pose conventions between them.

A room of its own because it joins the extraction tables
(:mod:`pipelines.extraction.particles_star`) and the reconstruction geometry
(:mod:`pipelines.reconstruct.geometry`); nothing inside ``pipelines`` imports it, so
``pipelines.io`` (which both of those use) stays free of them.

Public API:

- :func:`particles_to_dataset`, :func:`dataset_to_particles`,
  :func:`exposures_to_dataset`: RELION tables <-> cryoSPARC ``Dataset``
- :func:`euler_to_rotvec`, :func:`rotvec_to_euler`, :func:`rotvec_viewing_directions`:
  RELION ZYZ Euler angles <-> cryoSPARC rotation vectors
- :class:`ParticleSet`, :func:`read_particle_set`: a STAR or ``.cs`` particle set
  read, filtered and written back in its own format
"""

from pipelines.exchange.cryosparc import (
    dataset_to_particles,
    exposures_to_dataset,
    particles_to_dataset,
)
from pipelines.exchange.particle_sets import ParticleSet, read_particle_set
from pipelines.exchange.poses import (
    euler_to_rotvec,
    rotvec_to_euler,
    rotvec_viewing_directions,
)

__all__ = [
    "ParticleSet",
    "dataset_to_particles",
    "euler_to_rotvec",
    "exposures_to_dataset",
    "particles_to_dataset",
    "read_particle_set",
    "rotvec_to_euler",
    "rotvec_viewing_directions",
]
