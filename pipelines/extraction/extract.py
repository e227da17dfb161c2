"""Particle extraction: boxes around picks, contrast inversion, Fourier-crop
downscaling and background normalisation.

Boxes are ``box_px`` square in the micrograph's pixels, the particle centre (the
pick rounded to the nearest pixel) at box pixel ``box_px // 2`` (RELION's
convention).  A pick whose box would cross the micrograph's border is SKIPPED and
counted in ``n_skipped_edge`` (not padded: padding invents a background that biases
normalisation and 2D classification).  Downscaling is a Fourier crop of the whole
stack in one batched FFT.  Normalisation makes the background ring -- the pixels
outside a circle of the particle radius -- zero mean and unit standard deviation,
as ``relion_preprocess --norm``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft
from numpy.typing import NDArray

from pipelines.errors import StageInputError
from pipelines.picking.filters import fourier_crop
from pipelines.picking.picks import Picks

__all__ = [
    "RELION_IT_SMALL_BOXES_PX",
    "ExtractedParticles",
    "default_box_px",
    "downscaled_box_px",
    "extract_particles",
]

# RELION-it's list of downscaled box sizes (relion_it.py).
RELION_IT_SMALL_BOXES_PX = (
    48, 64, 96, 128, 160, 192, 256, 288, 300, 320, 360, 384,
    400, 420, 450, 480, 512, 640, 768, 896, 1024,
)  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class ExtractedParticles:
    """A particle stack from one micrograph and where each image came from.

    ``images`` is ``(n, box, box)`` float32 at ``pixel_size_a`` (after any
    downscaling); ``x_px``/``y_px`` are the picks in the micrograph's pixels and
    ``pick_index`` their rows in the input picks.
    """

    images: np.ndarray
    x_px: np.ndarray
    y_px: np.ndarray
    score: np.ndarray
    pick_index: np.ndarray
    n_skipped_edge: int
    box_px: int  # box in the micrograph's pixels
    pixel_size_a: float  # pixel of ``images``
    micrograph_pixel_size_a: float


def default_box_px(
    diameter_a: float, pixel_size_a: float, *, factor: float = 1.5
) -> int:
    """``factor`` × the diameter in pixels, rounded up to an even FFT-friendly size."""
    size = int(np.ceil(factor * diameter_a / pixel_size_a))
    size = scipy.fft.next_fast_len(size, real=True)
    while size % 2:
        size = scipy.fft.next_fast_len(size + 1, real=True)
    return int(size)


def downscaled_box_px(
    box_px: int, pixel_size_a: float, *, max_pixel_a: float = 3.75
) -> int:
    """RELION-it's choice: the smallest box of :data:`RELION_IT_SMALL_BOXES_PX`
    whose pixel is finer than ``max_pixel_a`` (Nyquist 7.5 Å), never larger than the
    box itself."""
    for small in RELION_IT_SMALL_BOXES_PX:
        if small >= box_px:
            return box_px
        if pixel_size_a * box_px / small < max_pixel_a:
            return small
    return box_px


def extract_particles(
    micrograph: np.ndarray,
    picks: Picks,
    *,
    pixel_size_a: float,
    box_px: int | None = None,
    diameter_a: float | None = None,
    downscale_box_px: int | None = None,
    invert_contrast: bool = True,
    normalise: bool = True,
    workers: int = -1,
) -> ExtractedParticles:
    """Cut, invert, downscale and normalise the particles of one micrograph.

    micrograph: ``(ny, nx)``.  ``box_px`` defaults to :func:`default_box_px` of
    ``diameter_a`` (one of them is needed); ``diameter_a`` defaults to
    ``box_px / 1.5`` pixels and sets the normalisation circle.
    ``downscale_box_px`` (``None`` = no downscaling) is the output box.
    """
    image = np.asarray(micrograph, dtype=np.float32)
    if image.ndim != 2:
        raise StageInputError(
            "<array>", "micrograph.shape", image.shape, "need (ny, nx)"
        )
    if box_px is None:
        if diameter_a is None:
            raise StageInputError("<args>", "box_px", None, "give box_px or diameter_a")
        box_px = default_box_px(diameter_a, pixel_size_a)
    if box_px < 4 or box_px % 2:
        raise StageInputError("<args>", "box_px", box_px, "must be even and >= 4")
    out_box = downscale_box_px or box_px
    if out_box > box_px or out_box % 2:
        raise StageInputError(
            "<args>", "downscale_box_px", out_box, f"must be even and <= {box_px}"
        )
    diameter_px = diameter_a / pixel_size_a if diameter_a else box_px / 1.5

    ny, nx = image.shape
    half = box_px // 2
    cx = np.rint(picks.x_px).astype(np.int64)
    cy = np.rint(picks.y_px).astype(np.int64)
    inside = (cx - half >= 0) & (cx + half <= nx) & (cy - half >= 0) & (cy + half <= ny)
    index = np.flatnonzero(inside)
    offsets = np.arange(box_px) - half
    rows = cy[index][:, None, None] + offsets[None, :, None]
    cols = cx[index][:, None, None] + offsets[None, None, :]
    stack = image[rows, cols]  # (n, box, box) by one gather
    if invert_contrast:
        stack = -stack
    if out_box != box_px:
        stack = fourier_crop(stack, (out_box, out_box), workers=workers)
    out_pixel_a = pixel_size_a * box_px / out_box
    if normalise and len(index):
        stack = normalise_background(
            stack, radius_px=0.5 * diameter_px * out_box / box_px
        )
    return ExtractedParticles(
        images=np.ascontiguousarray(stack, dtype=np.float32),
        x_px=picks.x_px[index],
        y_px=picks.y_px[index],
        score=picks.score[index],
        pick_index=index,
        n_skipped_edge=int(len(picks) - len(index)),
        box_px=int(box_px),
        pixel_size_a=float(out_pixel_a),
        micrograph_pixel_size_a=float(pixel_size_a),
    )


def normalise_background(stack: np.ndarray, *, radius_px: float) -> NDArray[np.float32]:
    """Zero mean, unit sd of the pixels outside ``radius_px`` of each box centre."""
    box = stack.shape[-1]
    coords = np.arange(box) - box // 2
    ring = (coords[:, None] ** 2 + coords[None, :] ** 2) > radius_px * radius_px
    if ring.sum() < 8:
        raise StageInputError(
            "<args>", "diameter_a", radius_px * 2, "no background ring left in the box"
        )
    background: NDArray[np.float64] = stack[:, ring].astype(np.float64)
    mean = background.mean(axis=1)
    sd = background.std(axis=1)
    sd = np.where(sd > 0, sd, 1.0)
    normalised: NDArray[np.float64] = (stack - mean[:, None, None]) / sd[:, None, None]
    return normalised.astype(np.float32)
