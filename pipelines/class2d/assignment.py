"""The final pass: class, psi, shift and max probability for every particle."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pipelines.class2d.expectation import expect_particles
from pipelines.class2d.particles import ParticleStack
from pipelines.class2d.state import Class2dConfig, Class2dState

__all__ = ["Assignment", "assign_particles"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Assignment:
    """Per particle ``(n,)``: ``class_index`` (0-based), ``psi_deg``, ``shift_px``
    ``(n, 2)`` [x, y] (where its content sits relative to the box centre, in the
    particle's own frame; RELION's origin is ``-shift_px``),
    ``max_probability`` (RELION's rlnMaxValueProbDistribution)."""

    class_index: np.ndarray
    psi_deg: np.ndarray
    shift_px: np.ndarray
    max_probability: np.ndarray
    class_probability: np.ndarray

    def class_counts(self, n_classes: int) -> np.ndarray:
        return np.bincount(self.class_index, minlength=n_classes)

    def relion_table(self, particles_table: Any, pixel_size_a: float) -> Any:
        """A copy of the particles DataFrame with RELION's Class2D columns:
        ``rlnClassNumber`` (1-based), ``rlnAnglePsi``, ``rlnOriginX/YAngst``
        (``-shift_px`` in Å) and ``rlnMaxValueProbDistribution``."""
        table = particles_table.copy()
        table["rlnClassNumber"] = self.class_index + 1
        table["rlnAnglePsi"] = self.psi_deg
        table["rlnOriginXAngst"] = -self.shift_px[:, 0] * pixel_size_a
        table["rlnOriginYAngst"] = -self.shift_px[:, 1] * pixel_size_a
        table["rlnMaxValueProbDistribution"] = self.max_probability
        return table


def assign_particles(
    config: Class2dConfig, state: Class2dState, particles: ParticleStack
) -> Assignment:
    """MAP assignment of every particle; with ``max_particles_per_class`` a class
    keeps its most probable members and the rest go to their next-best class."""
    sums = expect_particles(
        config,
        state.references,
        state.noise_sigma2,
        state.class_fractions,
        particles,
        np.arange(particles.n_particles),
        accumulate=False,
    )
    classes = sums.best_class.copy()
    cap = config.max_particles_per_class
    if cap is not None:
        classes = _capped_classes(sums.class_probability, classes, cap)
    return Assignment(
        class_index=classes,
        psi_deg=sums.best_psi_deg,
        shift_px=sums.best_shift_px,
        max_probability=sums.max_probability,
        class_probability=sums.class_probability,
    )


def _capped_classes(prob: np.ndarray, classes: np.ndarray, cap: int) -> np.ndarray:
    n, k = prob.shape
    allowed = np.ones((n, k), dtype=bool)
    for _ in range(k):  # rounds over classes, each one vectorised
        counts = np.bincount(classes, minlength=k)
        over = np.nonzero(counts > cap)[0]
        if over.size == 0 or not allowed.any(axis=1).all():
            break
        for c in over:
            members = np.nonzero(classes == c)[0]
            order = members[np.argsort(-prob[members, c])]
            allowed[order[cap:], c] = False
        masked = np.where(allowed, prob, -1.0)
        classes = np.argmax(masked, axis=1)
    return classes
