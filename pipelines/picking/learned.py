"""Learned picker: a classifier trained on the micrograph's own blob picks.

No labels are needed.  The blob picker proposes generous candidates (every local
maximum of its score map above ``CANDIDATE_SD``, at most ``CANDIDATE_SPACING`` of
the smallest diameter apart, so that touching particles each get one).  Each
candidate is described by rotation-invariant features of its patch, cut from the
flattened micrograph Fourier-cropped so that the patch (1.5 largest diameters) is
``PATCH_PX`` pixels across:

* the radial profile of the patch (mean in rings about the centre: a dark disc of
  particle size on a flat background),
* the radial profile of the squared patch (where the structure is),
* the rotationally averaged power spectrum of the windowed patch (how the texture
  is distributed over scales),
* the patch's mean and SD, the blob score and its power score.

The model is a logistic regression (L2-regularised, Newton steps: a few
``(n, f)`` matrix products, no loop over candidates).  It is trained by
self-training: at first the candidates whose blob score is above the micrograph's
own mixture threshold (the blob picker's default) are taken as particles and those
below it as background; then, ``ROUNDS`` times, the model relabels the candidates
(log-odds above or below 0) and is fitted again to the surest
``CONFIDENT_FRACTION`` of each side, so that the share of particles among the
candidates may be anything.  At each relabelling, of two particle calls closer
than ``SAME_PARTICLE`` smallest diameters the lower-scoring one is called
background (:func:`one_call_per_particle`): such a pair is one particle and an
off-centre view of it, or two touching ones of which the final suppression keeps
one, so the model learns that a patch half on a particle is not a pick.  The
classes are weighted to equal total weight, so
log-odds 0 is "as likely particle as background"; the picks are the candidates
above it, their log-odds the score, and non-maximum suppression at the candidates'
spacing.

With fewer than ``_MIN_CANDIDATES`` candidates, or when the blob threshold keeps
all of them or none, there is nothing to learn from: the candidates the blob
threshold keeps are returned, at the blob picker's spacing (the smallest diameter).

Several micrographs can be trained together (:func:`pick_learned_set`): one model
for the set, fitted to the candidates of all of them, which is what a live session
has once a few exposures are in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.fft
from scipy.spatial import cKDTree

from pipelines.errors import StageInputError
from pipelines.picking.blob import (
    DEFAULT_THRESHOLD_SD,
    pick_blob,
    robust_sd,
    subtract_background,
)
from pipelines.picking.filters import downscale_shape, fourier_crop
from pipelines.picking.picks import Picks, drop_edge_picks, suppress_non_maxima
from pipelines.picking.threshold import mixture_threshold

__all__ = [
    "CANDIDATE_SD",
    "CANDIDATE_SPACING",
    "PATCH_PX",
    "SAME_PARTICLE",
    "LearnedModel",
    "candidate_features",
    "fit_logistic",
    "one_call_per_particle",
    "pick_learned",
    "pick_learned_set",
]

CANDIDATE_SD = 0.5  # blob score of the candidates (robust SDs)
CANDIDATE_SPACING = 0.6  # candidates at least this many smallest diameters apart
PATCH_DIAMETERS = 1.5  # the patch, in largest diameters
PATCH_PX = 24  # ... and in pixels
ROUNDS = 2  # self-training rounds after the first fit
CONFIDENT_FRACTION = 0.5  # the surest share of each side trains the next round
SAME_PARTICLE = 0.8  # calls closer (smallest diameters): the lower is background
L2 = 1.0  # ridge on the standardised features
_NEWTON_STEPS = 25
_MIN_CANDIDATES = 20  # fewer (in the whole set): the blob picker's picks


@dataclass(frozen=True, slots=True)
class LearnedModel:
    """A fitted logistic regression on standardised features."""

    mean: np.ndarray  # (f,)
    scale: np.ndarray  # (f,)
    weights: np.ndarray  # (f,)
    bias: float

    def log_odds(self, features: np.ndarray) -> np.ndarray:
        z = (features - self.mean) / self.scale
        return np.asarray(
            np.einsum("nf,f->n", z, self.weights) + self.bias, dtype=np.float64
        )


def fit_logistic(
    features: np.ndarray, labels: np.ndarray, *, l2: float = L2
) -> LearnedModel:
    """L2-regularised logistic regression by Newton's method (IRLS); classes are
    weighted to equal total weight so that the intercept does not follow the
    self-training's class sizes."""
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale == 0] = 1.0
    z = np.column_stack([(x - mean) / scale, np.ones(len(x))])
    n_pos = max(float(y.sum()), 1.0)
    n_neg = max(float(len(y) - y.sum()), 1.0)
    sample_w = np.where(y > 0.5, 0.5 / n_pos, 0.5 / n_neg)
    ridge = np.full(z.shape[1], l2 / len(x))
    ridge[-1] = 0.0
    beta = np.zeros(z.shape[1])
    # einsum, not BLAS: these products are small (candidates x ~40), and a threaded
    # BLAS on a loaded machine spent 100 times longer synchronising than computing
    for _ in range(_NEWTON_STEPS):
        p = 1.0 / (1.0 + np.exp(-np.clip(np.einsum("nf,f->n", z, beta), -30, 30)))
        gradient = np.einsum("nf,n->f", z, sample_w * (p - y)) + ridge * beta
        weighted = z * (sample_w * p * (1 - p))[:, None]
        hessian = np.einsum("nf,ng->fg", weighted, z) + np.diag(ridge)
        hessian[np.diag_indices_from(hessian)] += 1e-9
        step = np.linalg.solve(hessian, gradient)
        beta -= step
        if np.max(np.abs(step)) < 1e-6:
            break
    return LearnedModel(mean, scale, beta[:-1], float(beta[-1]))


def _ring_matrix(box: int, n_rings: int) -> np.ndarray:
    """``(box * box, n_rings)``: the mean over each 1-px ring about ``box // 2``."""
    coords = np.arange(box) - box // 2
    r = np.hypot(coords[:, None], coords[None, :]).ravel()
    ring = np.minimum(r.astype(int), n_rings)  # n_rings: the corners, unused
    matrix = np.zeros((box * box, n_rings + 1))
    matrix[np.arange(box * box), ring] = 1.0
    matrix = matrix[:, :n_rings]
    return np.asarray(matrix / np.maximum(matrix.sum(axis=0), 1.0))


def _spectrum_ring_matrix(box: int, n_rings: int) -> np.ndarray:
    """``(box * (box // 2 + 1), n_rings)``: the mean of an ``rfft2`` power spectrum
    over rings of radial frequency (cycles per box), excluding k = 0."""
    ky = np.fft.fftfreq(box) * box
    kx = np.fft.rfftfreq(box) * box
    k = np.hypot(ky[:, None], kx[None, :]).ravel()
    ring = np.clip(np.rint(k).astype(int) - 1, -1, n_rings)
    matrix = np.zeros((k.size, n_rings + 2))
    matrix[np.arange(k.size), ring + 1] = 1.0
    matrix = matrix[:, 1 : n_rings + 1]
    return np.asarray(matrix / np.maximum(matrix.sum(axis=0), 1.0))


def candidate_features(
    image: np.ndarray, rows: np.ndarray, cols: np.ndarray, box: int
) -> np.ndarray:
    """Rotation-invariant features of the ``box`` patches of ``image`` centred at
    ``(rows, cols)``: ``(n, f)`` (module docstring)."""
    h = box // 2
    padded = np.pad(image, h, mode="reflect")
    offsets = np.arange(box) - h
    patches = padded[
        (rows + h)[:, None, None] + offsets[None, :, None],
        (cols + h)[:, None, None] + offsets[None, None, :],
    ].astype(np.float32)
    n = len(rows)
    flat = patches.reshape(n, -1)
    n_rings = h
    rings = _ring_matrix(box, n_rings).astype(np.float32)
    mean = flat.mean(axis=1)
    sd = flat.std(axis=1) + 1e-6
    profile = flat @ rings
    centred = flat - mean[:, None]
    square = (centred * centred) @ rings
    window = np.hanning(box).astype(np.float32)
    power = np.abs(
        scipy.fft.rfft2(
            (patches - mean[:, None, None]) * (window[:, None] * window[None, :])
        )
    )
    power = (power * power).reshape(n, -1) @ _spectrum_ring_matrix(box, n_rings).astype(
        np.float32
    )
    return np.column_stack(
        [
            profile - mean[:, None],
            np.log(square + 1e-6),
            np.log(power + 1e-6),
            mean,
            np.log(sd),
        ]
    ).astype(np.float64)


@dataclass(frozen=True, slots=True)
class _Candidates:
    picks: Picks  # the blob picker's candidates, in the micrograph's pixels
    features: np.ndarray  # (n, f), the blob score and power included
    initial: np.ndarray  # (n,) bool: above the blob picker's own threshold


def _candidates(
    image: np.ndarray,
    *,
    pixel_size_a: float,
    diameter_range_a: tuple[float, float],
    workers: int,
) -> _Candidates:
    d_min, d_max = sorted(float(d) for d in diameter_range_a)
    picks = pick_blob(
        image,
        pixel_size_a=pixel_size_a,
        diameter_range_a=(d_min, d_max),
        threshold_sd=CANDIDATE_SD,
        min_distance_a=CANDIDATE_SPACING * d_min,
        workers=workers,
    )
    chosen = mixture_threshold(picks.score, fallback=DEFAULT_THRESHOLD_SD)
    initial = (picks.score >= chosen.lower) & (picks.score <= chosen.upper)
    feature_px_a = max(pixel_size_a, PATCH_DIAMETERS * d_max / PATCH_PX)
    shape = downscale_shape(image.shape, feature_px_a / pixel_size_a)
    small = fourier_crop(subtract_background(image), shape, workers=workers)
    small = (small - np.median(small)) / robust_sd(small[::2, ::2])
    rows = np.clip(np.rint(picks.y_px * shape[0] / image.shape[0]), 0, shape[0] - 1)
    cols = np.clip(np.rint(picks.x_px * shape[1] / image.shape[1]), 0, shape[1] - 1)
    patch = candidate_features(small, rows.astype(int), cols.astype(int), PATCH_PX)
    features = np.column_stack(
        [patch, np.clip(picks.score, -10, 20), np.log(np.maximum(picks.power, 1e-6))]
    )
    return _Candidates(picks, features, initial)


def one_call_per_particle(
    xy: np.ndarray, odds: np.ndarray, radius_px: float
) -> np.ndarray:
    """The particle calls (``odds >= 0``) less those with a higher-scoring call
    closer than ``radius_px`` (``xy``: ``(n, 2)``): ``(n,)`` bool.  Every close pair
    loses its lower member, whether or not the higher one is itself dropped."""
    labels = odds >= 0.0
    index = np.flatnonzero(labels)
    if len(index) < 2 or radius_px <= 0:
        return labels
    pairs = cKDTree(xy[index]).query_pairs(radius_px, output_type="ndarray")
    a, b = index[pairs[:, 0]], index[pairs[:, 1]]
    labels[np.where(odds[a] < odds[b], a, b)] = False
    return labels


def _self_train(
    features: np.ndarray, initial: np.ndarray, xy: np.ndarray, radius_px: float
) -> LearnedModel:
    """The model after ``ROUNDS`` of relabelling (module docstring); ``xy`` the
    candidates' positions (micrographs of a set apart by more than ``radius_px``)."""
    labels = initial.copy()
    keep = np.ones(len(labels), dtype=bool)
    for _ in range(ROUNDS):
        model = fit_logistic(features[keep], labels[keep])
        odds = model.log_odds(features)
        labels = one_call_per_particle(xy, odds, radius_px)
        if labels.all() or not labels.any():
            break
        # the confident calls of each side (adapts to the share of particles)
        high = np.quantile(odds[labels], 1.0 - CONFIDENT_FRACTION)
        low = np.quantile(odds[~labels], CONFIDENT_FRACTION)
        keep = (odds >= high) | (odds <= low)
    return fit_logistic(features[keep], labels[keep])


def _finish(
    candidates: _Candidates, odds: np.ndarray, d_min_a: float, edge_px: int
) -> Picks:
    keep = odds >= 0.0  # as likely particle as background (balanced classes)
    picks = candidates.picks
    picks = Picks(
        x_px=picks.x_px,
        y_px=picks.y_px,
        score=odds,
        power=picks.power,
        diameter_a=picks.diameter_a,
        pixel_size_a=picks.pixel_size_a,
        shape=picks.shape,
    ).take(keep)
    picks = suppress_non_maxima(
        picks, CANDIDATE_SPACING * d_min_a / candidates.picks.pixel_size_a
    )
    return drop_edge_picks(picks, picks.shape, edge_px)


def pick_learned_set(
    micrographs: Sequence[np.ndarray],
    *,
    pixel_size_a: float,
    diameter_range_a: tuple[float, float],
    edge_px: int = 0,
    workers: int = -1,
) -> list[Picks]:
    """Pick every micrograph of a set with one model self-trained on all of them
    (module docstring); one :class:`Picks` per micrograph, the log-odds as score."""
    if len(micrographs) == 0:
        return []
    d_min, d_max = sorted(float(d) for d in diameter_range_a)
    if d_min <= 0 or pixel_size_a <= 0:
        raise StageInputError(
            "<array>", "diameter_range_a", diameter_range_a, "must be positive"
        )
    found = [
        _candidates(
            np.asarray(m),
            pixel_size_a=pixel_size_a,
            diameter_range_a=(d_min, d_max),
            workers=workers,
        )
        for m in micrographs
    ]
    features = np.concatenate([c.features for c in found])
    initial = np.concatenate([c.initial for c in found])
    if len(features) < _MIN_CANDIDATES or initial.all() or not initial.any():
        # nothing to learn from: the blob picker's own picks (its spacing)
        return [
            drop_edge_picks(
                suppress_non_maxima(c.picks.take(c.initial), d_min / pixel_size_a),
                c.picks.shape,
                edge_px,
            )
            for c in found
        ]
    # the micrographs side by side, far apart: no pair spans two of them
    offset = 2.0 * max(max(c.picks.shape) for c in found)
    xy = np.concatenate(
        [
            np.column_stack([c.picks.x_px + i * offset, c.picks.y_px])
            for i, c in enumerate(found)
        ]
    )
    model = _self_train(features, initial, xy, SAME_PARTICLE * d_min / pixel_size_a)
    return [_finish(c, model.log_odds(c.features), d_min, edge_px) for c in found]


def pick_learned(
    micrograph: np.ndarray,
    *,
    pixel_size_a: float,
    diameter_range_a: tuple[float, float],
    edge_px: int = 0,
    workers: int = -1,
) -> Picks:
    """Pick one micrograph with a model self-trained on its own candidates."""
    image = np.asarray(micrograph)
    if image.ndim != 2:
        raise StageInputError(
            "<array>", "micrograph.shape", image.shape, "need (ny, nx)"
        )
    return pick_learned_set(
        [image],
        pixel_size_a=pixel_size_a,
        diameter_range_a=diameter_range_a,
        edge_px=edge_px,
        workers=workers,
    )[0]
