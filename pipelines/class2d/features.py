"""Per-class features for ranking 2D classes (after RELION's class ranker).

Every feature is scale-free, so it means the same at any box, pixel size or
intensity scale.  From the run: the half-set FSC resolution (as a fraction of
Nyquist), the class's share of the particles and the mean maximum posterior
probability of its members *within their class* (RELION's
``rlnMaxValueProbDistribution``, the joint maximum over class and pose, divided by
the particle's posterior mass on its class: how sharply the pose is determined —
rotation and translation accuracy in one number — without the class ambiguity,
which near-duplicate classes of one good view share and which made their particles
look like junk).
From the class average (normalised to zero mean and unit sd inside the particle
mask of radius R): the moments of density in three masks — *protein* (r < 0.6 R),
*ring* (0.6 R <= r < 0.85 R) and *solvent* (0.85 R <= r < R) — the fraction of
the low-passed average's variance that is in the protein disc, how much of the
average a plane explains (a carbon edge is a ramp or step across the whole box), and
a granulometry: the share of the bright (> 1 sd) area that survives a binary
opening with a disc of radius 2 px (compact protein-sized blobs survive, speckle
does not).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.class2d.assignment import Assignment
from pipelines.class2d.state import Class2dConfig, Class2dState
from pipelines.class2d.vdam import class_resolution_a
from pipelines.errors import StageInputError

__all__ = ["FEATURE_NAMES", "ClassFeatures", "compute_class_features"]

FEATURE_NAMES = (
    "resolution_fraction",
    "class_fraction",
    "mean_max_probability",
    "protein_mean",
    "protein_sd",
    "ring_sd",
    "solvent_sd",
    "solvent_kurtosis",
    "lowpass_protein_fraction",
    "plane_fraction",
    "granulometry",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ClassFeatures:
    """``values`` ``(K, len(FEATURE_NAMES))``; ``counts`` ``(K,)`` particles per
    class; ``resolution_a`` ``(K,)`` (inf where the half-sets never agree)."""

    values: np.ndarray
    counts: np.ndarray
    resolution_a: np.ndarray

    def column(self, name: str) -> np.ndarray:
        return self.values[:, FEATURE_NAMES.index(name)]


def _masks(box_px: int, radius_px: float) -> tuple[np.ndarray, ...]:
    c = box_px // 2
    y, x = np.mgrid[:box_px, :box_px]
    r = np.hypot(x - c, y - c)
    inside = r < radius_px
    protein = r < 0.6 * radius_px
    ring = (r >= 0.6 * radius_px) & (r < 0.85 * radius_px)
    solvent = (r >= 0.85 * radius_px) & inside
    return inside, protein, ring, solvent, (x - c).astype(float), (y - c).astype(float)


def _image_features(averages: np.ndarray, radius_px: float) -> np.ndarray:
    """``(K, 8)``: protein mean/sd, ring sd, solvent sd/kurtosis, low-pass protein
    fraction, plane fraction, granulometry (vectorised over classes except the
    morphological opening, one call per class)."""
    import scipy.ndimage  # ~0.1 s: loaded on the first ranking, not with the module

    box = averages.shape[-1]
    inside, protein, ring, solvent, x, y = _masks(box, radius_px)
    values = averages[:, inside].astype(np.float64)
    mean = values.mean(axis=1)
    sd = values.std(axis=1)
    sd = np.where(sd > 0, sd, 1.0)
    z = (averages - mean[:, None, None]) / sd[:, None, None]
    zp, zr, zs = z[:, protein], z[:, ring], z[:, solvent]
    solvent_centred = zs - zs.mean(axis=1, keepdims=True)
    solvent_var = np.maximum(solvent_centred.var(axis=1), 1e-12)
    kurtosis = np.mean(solvent_centred**4, axis=1) / solvent_var**2 - 3.0
    low = scipy.ndimage.gaussian_filter(z, sigma=(0, 2.0, 2.0))
    low = low - low[:, inside].mean(axis=1)[:, None, None]
    low_power = low**2
    lowpass_fraction = low_power[:, protein].sum(axis=1) / np.maximum(
        low_power[:, inside].sum(axis=1), 1e-12
    )
    design = np.stack([np.ones(int(inside.sum())), x[inside], y[inside]], axis=1)
    coef, *_ = np.linalg.lstsq(design, z[:, inside].T, rcond=None)
    fitted = design @ coef
    plane = np.var(fitted, axis=0) / np.maximum(z[:, inside].var(axis=1), 1e-12)
    bright = (z > 1.0) & inside[None]
    disc = np.hypot(*np.mgrid[-2:3, -2:3]) <= 2.0
    opened = np.stack(
        [scipy.ndimage.binary_opening(b, structure=disc) for b in bright]
    )  # one morphological opening per class
    granulometry = opened.sum(axis=(1, 2)) / np.maximum(bright.sum(axis=(1, 2)), 1)
    return np.stack(
        [
            zp.mean(axis=1),
            zp.std(axis=1),
            zr.std(axis=1),
            zs.std(axis=1),
            kurtosis,
            lowpass_fraction,
            plane,
            granulometry,
        ],
        axis=1,
    )


def compute_class_features(
    config: Class2dConfig, state: Class2dState, assignment: Assignment
) -> ClassFeatures:
    """Features of every class of a run (see the module docstring)."""
    k = config.n_classes
    if state.references.shape[0] != k:
        raise StageInputError(
            "<state>", "references", state.references.shape, f"need {k} classes"
        )
    counts = assignment.class_counts(k)
    n = max(int(counts.sum()), 1)
    resolution = class_resolution_a(config, state)
    nyquist_a = 2.0 * config.pixel_size_a
    resolution_fraction = np.where(
        np.isfinite(resolution), nyquist_a / np.maximum(resolution, nyquist_a), 0.0
    )
    rows = np.arange(assignment.class_index.size)
    own = assignment.class_probability[rows, assignment.class_index]
    within = assignment.max_probability / np.maximum(own, assignment.max_probability)
    prob_sum = np.bincount(assignment.class_index, weights=within, minlength=k)
    mean_prob = prob_sum / np.maximum(counts, 1)
    image = _image_features(state.references, config.mask_radius_px)
    values = np.column_stack(
        [resolution_fraction, counts / n, mean_prob, image]
    ).astype(np.float64)
    return ClassFeatures(values=values, counts=counts, resolution_a=resolution)
