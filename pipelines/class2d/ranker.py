"""Score 2D classes in [0, 1] and select the particles of the good ones.

The score is a logistic of a weighted sum of standardised features
(:mod:`pipelines.class2d.features`)::

    score = 1 / (1 + exp(-sum_i w_i (f_i - c_i) / s_i))

with the centres ``c``, scales ``s`` and weights ``w`` of :data:`RANKER_TERMS`;
each standardised feature is clipped to +-3 so that no single term decides alone.
The numbers were chosen by hand on simulated runs (phantom and 70S ribosome
particles mixed with empty boxes, ice, carbon edges and aggregates;
``tests/pipelines/class2d/test_ranker.py`` regenerates such sets from seeds).  The
feature that separated best is the mean maximum posterior probability of a class's
members (junk has no consistent pose, so its posterior is flat: 0.04-0.53 for junk
classes, 0.58-0.99 for particle classes); ribosome aggregates do align (0.71-0.74)
but put density at the mask's rim, which the solvent sd (> 0.16 for them, 0.09-0.15
for most particle classes) penalises; the low-pass protein fraction and the plane
fraction (carbon edges) add small corrections.  (Those ranges were measured on
the joint maximum over class and pose; the feature is now taken within the
assigned class, so near-duplicate classes of one good view no longer look like
junk; the ranker tests kept or improved their rates with the same centres and
weights: 70S seed 21 FN 0.075 -> 0.000.)  The half-set resolution and the
class fraction are computed and reported but carry no weight as terms:
near-empty junk averages reached the same FSC resolution as particle classes in
these simulations (the class's particle count enters through the minimum support
and the shrinkage below).  Classes
with no particles score 0.
A class is selected when its score is at least :data:`DEFAULT_THRESHOLD` *and* it
holds at least the minimum support :func:`min_class_support` =
``max(MIN_SUPPORT_PARTICLES, ceil(MIN_SUPPORT_FRACTION * n / K))`` particles (``n``
in the pool, ``K`` classes: at least 5 particles and a tenth of an even share; a
rule of 10 and a fifth rejected a 5-particle class of good particles in the ranker
tests).

Early in a live session the pool is small and the classes of a few particles are
the least trustworthy: the mean maximum probability of 1-4 particles is noise (the
demo selected a 1-particle and a 4-particle class at score 1.00 while rejecting
classes of 60-290).  So, besides the minimum support, the mean maximum probability
enters the score shrunk towards the term's neutral centre ``c`` with a pseudo-count
of ``n0 =`` :data:`SHRINK_PSEUDO_COUNT` particles, ``(n p + n0 c) / (n + n0)``: a
class of a few particles gets a probability term near 0 and is judged on its
image, a class of hundreds keeps its own value.  A class under the support scores
``score * n / (2 support)``, under 0.5, so the montage (best score first) and the
``class2d`` event do not show a handful of particles as a sure class.  These
rules depend only on the class's own count and the pool, so the selection changes
smoothly as the pool grows (``tests/livestream/class2d/test_selection_stability.py``
measures the flip rate).

When :func:`rank_classes` is given the particle images, a particle-level stage
follows (:mod:`pipelines.class2d.particle_selection`): inside each selected class,
particles whose residual against the class average at their pose puts density
where the average is solvent, or whose match to it is weak, by more than
``particle_outlier_mad`` robust sd from the class median (default 4), are dropped
from the selection, so an aggregate or an empty box assigned to a good class is not
kept with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.class2d.assignment import Assignment
from pipelines.class2d.features import ClassFeatures, compute_class_features
from pipelines.class2d.particle_selection import (
    DEFAULT_PARTICLE_OUTLIER_MAD,
    ParticleOutliers,
    find_particle_outliers,
)
from pipelines.class2d.particles import ParticleStack
from pipelines.class2d.state import Class2dConfig, Class2dState
from pipelines.errors import StageInputError
from pipelines.io.outputs import write_star

__all__ = [
    "DEFAULT_PARTICLE_OUTLIER_MAD",
    "DEFAULT_THRESHOLD",
    "MIN_SUPPORT_FRACTION",
    "MIN_SUPPORT_PARTICLES",
    "RANKER_TERMS",
    "SHRINK_PSEUDO_COUNT",
    "ClassRanking",
    "min_class_support",
    "rank_classes",
    "score_classes",
    "select_particles",
]

_Z_LIMIT = 3.0  # standardised features are clipped to +-3: no one term dominates

DEFAULT_THRESHOLD = 0.5
"""Classes scoring at least this are selected."""

MIN_SUPPORT_FRACTION = 0.1
"""A selected class holds at least this fraction of an even share ``n / K`` of the
pool (and at least :data:`MIN_SUPPORT_PARTICLES`)."""

MIN_SUPPORT_PARTICLES = 5
"""No class of fewer particles is selected, whatever the pool."""

_SHRUNK_FEATURE = "mean_max_probability"  # shrunk towards its centre (module doc)
SHRINK_PSEUDO_COUNT = 5.0
"""Particles' worth of weight the term's neutral centre gets in a class's mean
maximum probability: a class of 10 particles keeps two thirds of its own value,
one of 100 particles 95 %.  (10 delayed the selection of growing
particle classes in the simulated sessions: flip rate 0.036 against 0.016.)"""

RANKER_TERMS: tuple[tuple[str, float, float, float], ...] = (
    # (feature, centre, scale, weight)
    ("mean_max_probability", 0.65, 0.10, 3.0),
    ("solvent_sd", 0.15, 0.03, -2.0),
    ("lowpass_protein_fraction", 0.65, 0.10, 0.5),
    ("plane_fraction", 0.05, 0.05, -1.0),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ClassRanking:
    """Per class ``(K,)``: ``scores`` in [0, 1], ``selected``, ``counts``;
    ``order`` the class indices best first; the features they came from;
    ``particle_outliers`` the particle-level stage's result (None when it did
    not run); ``min_support`` the fewest particles a selected class holds."""

    scores: np.ndarray
    selected: np.ndarray
    counts: np.ndarray
    order: np.ndarray
    threshold: float
    features: ClassFeatures
    particle_outliers: ParticleOutliers | None = None
    min_support: int = 0

    def selected_particles(self, assignment: Assignment) -> np.ndarray:
        """Boolean ``(n,)``: the particles assigned to a selected class, less the
        particle-level outliers."""
        chosen = np.asarray(self.selected[assignment.class_index], dtype=bool)
        if self.particle_outliers is None:
            return chosen
        outlier = self.particle_outliers.outlier
        if outlier.shape != chosen.shape:
            raise StageInputError(
                "<argument>",
                "assignment",
                chosen.shape,
                f"the ranking's particle stage saw {outlier.shape} particles",
            )
        kept: np.ndarray = chosen & ~outlier
        return kept

    @property
    def n_selected_particles(self) -> int:
        """Particles in the selected classes less the particle-level outliers."""
        total = int(self.counts[self.selected].sum())
        if self.particle_outliers is None:
            return total
        return total - int(self.particle_outliers.outlier.sum())

    def selected_class_counts(self) -> np.ndarray:
        """``(K,)`` particles kept per class (0 for rejected classes)."""
        kept = np.where(self.selected, self.counts, 0)
        if self.particle_outliers is None:
            return kept
        return kept - np.bincount(
            self.particle_outliers.class_index[self.particle_outliers.outlier],
            minlength=kept.size,
        )


def min_class_support(n_particles: int, n_classes: int) -> int:
    """The fewest particles a selected class may hold in a pool of
    ``n_particles`` classified into ``n_classes`` (module docstring)."""
    share = MIN_SUPPORT_FRACTION * n_particles / max(n_classes, 1)
    return max(MIN_SUPPORT_PARTICLES, math.ceil(share))


def score_classes(features: ClassFeatures, *, min_support: int = 0) -> np.ndarray:
    """``(K,)`` scores in [0, 1] (0 for empty classes); the mean maximum
    probability of a class of few particles is shrunk towards its centre, and a
    class under ``min_support`` particles scores ``score * n / (2 min_support)``
    (under 0.5: the montage and the event do not show it as a sure class)."""
    logit = np.zeros(features.values.shape[0])
    counts = features.counts.astype(np.float64)
    for name, centre, scale, weight in RANKER_TERMS:
        value = features.column(name)
        if name == _SHRUNK_FEATURE:
            value = (counts * value + SHRINK_PSEUDO_COUNT * centre) / (
                counts + SHRINK_PSEUDO_COUNT
            )
        z = np.clip((value - centre) / scale, -_Z_LIMIT, _Z_LIMIT)
        logit += weight * z
    scores = 1.0 / (1.0 + np.exp(-np.clip(logit, -50.0, 50.0)))
    counts = features.counts
    scaled = scores * 0.5 * counts / max(min_support, 1)
    scores = np.where(counts >= min_support, scores, scaled)
    return np.where(counts > 0, scores, 0.0)


def rank_classes(
    config: Class2dConfig,
    state: Class2dState,
    assignment: Assignment,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    particles: ParticleStack | None = None,
    particle_outlier_mad: float | None = DEFAULT_PARTICLE_OUTLIER_MAD,
) -> ClassRanking:
    """Features, scores and the selection of every class of a run.

    With ``particles`` (the images the assignment was made from) and a
    ``particle_outlier_mad`` (None turns it off), the particle-level stage of
    :mod:`pipelines.class2d.particle_selection` drops outliers inside the selected
    classes (see :meth:`ClassRanking.selected_particles`)."""
    if not 0.0 <= threshold <= 1.0:
        raise StageInputError("<argument>", "threshold", threshold, "must be in [0, 1]")
    if particle_outlier_mad is not None and not particle_outlier_mad > 0:
        raise StageInputError(
            "<argument>", "particle_outlier_mad", particle_outlier_mad, "must be > 0"
        )
    features = compute_class_features(config, state, assignment)
    support = min_class_support(assignment.class_index.size, config.n_classes)
    scores = score_classes(features, min_support=support)
    selected = (scores >= threshold) & (features.counts >= support)
    outliers = None
    if particles is not None and particle_outlier_mad is not None:
        outliers = find_particle_outliers(
            config,
            state.references,
            assignment,
            particles,
            selected[assignment.class_index],
            outlier_mad=particle_outlier_mad,
        )
    return ClassRanking(
        scores=scores,
        selected=selected,
        counts=features.counts,
        order=np.argsort(-scores, kind="stable"),
        threshold=threshold,
        features=features,
        particle_outliers=outliers,
        min_support=support,
    )


def select_particles(
    path: str | Path,
    config: Class2dConfig,
    ranking: ClassRanking,
    assignment: Assignment,
    optics: Any,
    particles_table: Any,
) -> Path:
    """Write the particles of the selected classes as a RELION particles STAR
    (``data_optics`` + ``data_particles`` with ``rlnClassNumber``, ``rlnAnglePsi``,
    ``rlnOriginX/YAngst``, ``rlnMaxValueProbDistribution``), atomically; when the
    ranking ran the particle-level stage its outliers are left out."""
    n = assignment.class_index.size
    if len(particles_table) != n:
        raise StageInputError(
            path, "data_particles", len(particles_table), f"need {n} rows"
        )
    table = assignment.relion_table(particles_table, config.pixel_size_a)
    keep = ranking.selected_particles(assignment)
    return write_star(path, {"optics": optics, "particles": table[keep]})
