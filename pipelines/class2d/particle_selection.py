"""Particle-level selection inside the selected 2D classes: reject outliers.

A class-level ranker keeps or drops whole classes, so junk that the classifier put
into a good class (typically an aggregate: a particle near the centre with
overlapping neighbours) is kept with it.  This stage compares every particle of a
selected class with its class average at the particle's assigned pose, as RELION
users do with per-particle outlier cuts after Class2D, through two scale-free
measures of :mod:`pipelines.class2d.particle_measures`: the *solvent ratio* (power
of the low-passed residual where the class average is solvent, over the particle's
noise power: an aggregate puts density there) and the *match SNR* (the fitted
class average's signal over the noise: an empty box has none).

Within each selected class a particle is an outlier when its solvent ratio exceeds
the class median by more than ``outlier_mad`` robust standard deviations
(``1.4826 * MAD``; default :data:`DEFAULT_PARTICLE_OUTLIER_MAD` = 4), or when its
match SNR is below the class median by more than ``outlier_mad`` of them.  A class
with fewer than :data:`MIN_CLASS_MEMBERS` members is compared with the median and
MAD of all tested particles instead (its own MAD means little; both measures are
normalised by each particle's noise, so they are comparable across classes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.class2d.assignment import Assignment
from pipelines.class2d.particle_measures import measure_particles
from pipelines.class2d.particles import ParticleStack
from pipelines.class2d.state import Class2dConfig
from pipelines.errors import StageInputError

__all__ = [
    "DEFAULT_PARTICLE_OUTLIER_MAD",
    "MIN_CLASS_MEMBERS",
    "ParticleOutliers",
    "find_particle_outliers",
    "flag_class_outliers",
]

DEFAULT_PARTICLE_OUTLIER_MAD = 4.0
"""Outlier: solvent ratio above, or match SNR below, the class median by more
than this many robust sd (1.4826 MAD)."""

MIN_CLASS_MEMBERS = 10
"""Smaller classes are judged against the median and MAD of all tested particles."""

_MAD_TO_SD = 1.4826


@dataclass(frozen=True, slots=True, kw_only=True)
class ParticleOutliers:
    """Per particle ``(n,)`` (NaN outside the candidates): ``solvent_ratio`` and
    ``match_snr`` (module docstring), their robust z within the class
    (``solvent_z`` high = suspicious, ``match_z`` low = suspicious; NaN where not
    tested); ``outlier`` (bool), ``class_index`` (the assignment's); the
    ``outlier_mad`` used."""

    solvent_ratio: np.ndarray
    match_snr: np.ndarray
    solvent_z: np.ndarray
    match_z: np.ndarray
    outlier: np.ndarray
    class_index: np.ndarray
    outlier_mad: float


def flag_class_outliers(
    statistic: np.ndarray,
    class_index: np.ndarray,
    *,
    outlier_mad: float,
    min_class_members: int = MIN_CLASS_MEMBERS,
) -> tuple[np.ndarray, np.ndarray]:
    """Robust z ``(n,)`` within each class and the outliers ``z > outlier_mad``
    (high side only).  Classes under ``min_class_members`` use the median and MAD
    of all ``statistic``; where the MAD is 0 (fewer than 3 distinct values) z is
    NaN and nothing is an outlier."""
    if not outlier_mad > 0:
        raise StageInputError(
            "<argument>", "particle_outlier_mad", outlier_mad, "must be > 0"
        )
    z = np.full(statistic.shape, np.nan)
    if statistic.size == 0:
        return z, np.zeros(0, dtype=bool)

    def robust_centre(values: np.ndarray) -> tuple[float, float]:
        median = float(np.median(values))
        return median, _MAD_TO_SD * float(np.median(np.abs(values - median)))

    pooled = robust_centre(statistic)
    for cls in np.unique(class_index):  # one vectorised median per class
        members = np.nonzero(class_index == cls)[0]
        if members.size >= min_class_members:
            median, spread = robust_centre(statistic[members])
        else:
            median, spread = pooled
        if spread > 0:
            z[members] = (statistic[members] - median) / spread
    return z, np.nan_to_num(z, nan=-np.inf) > outlier_mad


def find_particle_outliers(
    config: Class2dConfig,
    references: np.ndarray,
    assignment: Assignment,
    particles: ParticleStack,
    candidates: np.ndarray,
    *,
    outlier_mad: float = DEFAULT_PARTICLE_OUTLIER_MAD,
) -> ParticleOutliers:
    """Test the ``candidates`` (boolean ``(n,)``, e.g. the particles of the
    selected classes) against their class averages; see the module docstring."""
    n = assignment.class_index.size
    candidates = np.asarray(candidates, dtype=bool)
    if candidates.shape != (n,):
        raise StageInputError("<argument>", "candidates", candidates.shape, f"({n},)")
    if not outlier_mad > 0:
        raise StageInputError(
            "<argument>", "particle_outlier_mad", outlier_mad, "must be > 0"
        )
    rows = np.nonzero(candidates)[0]
    classes = assignment.class_index[rows]
    columns = {name: np.full(n, np.nan) for name in ("ratio", "match", "zr", "zm")}
    columns["ratio"][rows], columns["match"][rows] = measure_particles(
        config, references, assignment, particles, rows
    )
    outlier = np.zeros(n, dtype=bool)
    columns["zr"][rows], high = flag_class_outliers(
        columns["ratio"][rows], classes, outlier_mad=outlier_mad
    )
    negative_z, low = flag_class_outliers(
        -columns["match"][rows], classes, outlier_mad=outlier_mad
    )
    columns["zm"][rows] = -negative_z
    outlier[rows] = high | low
    return ParticleOutliers(
        solvent_ratio=columns["ratio"],
        match_snr=columns["match"],
        solvent_z=columns["zr"],
        match_z=columns["zm"],
        outlier=outlier,
        class_index=np.asarray(assignment.class_index),
        outlier_mad=float(outlier_mad),
    )
