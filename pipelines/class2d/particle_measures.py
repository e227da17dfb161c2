"""Per-particle measures against the class average at the particle's pose.

For every particle (module :mod:`pipelines.class2d.particle_selection` uses them to
find outliers inside the selected classes):

1. the class average (masked by the particle mask of radius R) is rotated by the
   particle's ``psi`` and shifted by its ``shift_px`` (bilinear, a numba kernel:
   :func:`pose_class_images`), and multiplied by the particle's CTF;
2. its amplitude is fitted to the particle inside the mask by least squares and
   subtracted, leaving the residual;
3. the residual is low-passed (Gaussian, sigma :data:`LOWPASS_SIGMA_PX`) and its
   mean power is taken over the *solvent* of the class at that pose: every pixel
   where the low-passed class average is less than :data:`SUPPORT_THRESHOLD_SD`
   in-mask standard deviations above its level outside the mask (inside or outside
   the mask).  An aggregate puts density exactly there; a single particle leaves
   noise;
4. that power is divided by the particle's own noise power (mean square of the
   image minus its 1 px Gaussian blur): the *solvent ratio*, scale-free (the same
   at any intensity scale and for micrographs of different noise levels);
5. the *match SNR* is the fitted template's signal over the same noise:
   ``<image, model>`` inside the mask over ``|model| * noise sd``.

The work is vectorised over chunks of particles (interpolation, FFTs, filters);
the only Python loop runs over chunks.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.fft
import scipy.ndimage

from pipelines.class2d import _selection_kernels
from pipelines.class2d.assignment import Assignment
from pipelines.class2d.particles import ParticleStack
from pipelines.class2d.state import Class2dConfig
from pipelines.ctf.model import CtfParams, ctf_phase, frequency_grid
from pipelines.errors import StageInputError

__all__ = [
    "LOWPASS_SIGMA_PX",
    "SUPPORT_THRESHOLD_SD",
    "measure_particles",
    "pose_class_images",
]

LOWPASS_SIGMA_PX = 2.0
"""Gaussian low-pass of the residual and of the class average (pixels)."""

SUPPORT_THRESHOLD_SD = 0.5
"""The class's particle support: low-passed average above this many sd."""


def _class_support(references: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """``(K, N, N)`` float: 1 where the low-passed average is particle density."""
    low = scipy.ndimage.gaussian_filter(
        references, (0, LOWPASS_SIGMA_PX, LOWPASS_SIGMA_PX)
    )
    level = low[:, ~inside].mean(axis=1) if (~inside).any() else np.zeros(len(low))
    spread = low[:, inside].std(axis=1)
    spread = np.where(spread > 0, spread, 1.0)
    z = (low - level[:, None, None]) / spread[:, None, None]
    support: np.ndarray = (z > SUPPORT_THRESHOLD_SD) & inside[None]
    return support.astype(np.float64)


def pose_class_images(
    stack: np.ndarray,
    classes: np.ndarray,
    psi_deg: np.ndarray,
    shift_px: np.ndarray,
) -> np.ndarray:
    """``(B, C, N, N)``: per particle its class's ``C`` images from ``stack``
    ``(K, C, N, N)`` at the particle's pose (bilinear, zero outside the box): pixel
    ``p`` reads the class image at ``Rot(psi) (p - shift)`` about the centre
    ``N // 2``, the convention of :mod:`pipelines.class2d.fourier`."""
    images = np.ascontiguousarray(stack, dtype=np.float64)
    index = np.ascontiguousarray(classes, dtype=np.int64)
    angle = np.deg2rad(np.asarray(psi_deg, dtype=np.float64))
    shift = np.asarray(shift_px, dtype=np.float64)
    b = index.size
    if images.ndim != 4 or images.shape[2] != images.shape[3]:
        raise StageInputError("<array>", "stack", images.shape, "must be (K, C, N, N)")
    if index.shape != (b,) or angle.shape != (b,) or shift.shape != (b, 2):
        raise StageInputError(
            "<array>",
            "classes/psi_deg/shift_px",
            (index.shape, angle.shape, shift.shape),
            "must be (B,), (B,), (B, 2)",
        )
    if b and (index.min() < 0 or index.max() >= images.shape[0]):
        raise StageInputError("<array>", "classes", int(index.max()), "out of range")
    out = np.empty((b, *images.shape[1:]), dtype=np.float64)
    _selection_kernels.pose_gather(
        images,
        index,
        np.cos(angle),
        np.sin(angle),
        np.ascontiguousarray(shift[:, 0]),
        np.ascontiguousarray(shift[:, 1]),
        out,
    )
    return out


def _ctf_grid(particles: ParticleStack, rows: np.ndarray) -> np.ndarray:
    """``(B, N, N // 2 + 1)`` CTFs of ``rows`` on the rfft2 grid."""
    box = particles.box_px
    ky, kx = frequency_grid((box, box), particles.pixel_size_a)

    def column(values: Any) -> Any:
        return np.broadcast_to(np.asarray(values, dtype=np.float64), (len(rows),))[
            :, None, None
        ]

    params: Any = CtfParams(
        defocus_u_a=column(particles.defocus_u_a[rows]),
        defocus_v_a=column(particles.defocus_v_a[rows]),
        astigmatism_angle_deg=column(particles.astigmatism_angle_deg[rows]),
        voltage_kv=float(particles.voltage_kv),
        cs_mm=float(particles.cs_mm),
        amplitude_contrast=float(particles.amplitude_contrast),
        phase_shift_deg=column(np.asarray(particles.phase_shift_deg)[rows]),
    )
    return np.asarray(-np.sin(ctf_phase(ky[None], kx[None], params)))


def measure_particles(
    config: Class2dConfig,
    references: np.ndarray,
    assignment: Assignment,
    particles: ParticleStack,
    indices: np.ndarray,
    *,
    chunk_size: int = 256,
    workers: int = -1,
) -> tuple[np.ndarray, np.ndarray]:
    """``(solvent_ratio, match_snr)``, each ``(len(indices),)``: the low-passed
    residual power in the class's solvent at the particle's pose over the
    particle's noise power, and the fitted template's SNR (module docstring)."""
    n = assignment.class_index.size
    box = config.box_px
    if particles.n_particles != n or particles.box_px != box:
        raise StageInputError(
            "<particles>",
            "images",
            particles.images.shape,
            f"need {n} particles of box {box} (one per assignment row)",
        )
    if references.shape != (config.n_classes, box, box):
        raise StageInputError(
            "<state>",
            "references",
            references.shape,
            f"need ({config.n_classes}, N, N)",
        )
    c = box // 2
    y, x = np.mgrid[:box, :box] - c
    inside = np.hypot(x, y) < config.mask_radius_px
    masked = np.asarray(references, dtype=np.float64) * inside
    stack = np.stack([masked, _class_support(masked, inside)], axis=1)
    indices = np.asarray(indices, dtype=np.int64)
    ratio = np.empty(indices.size)
    match = np.empty(indices.size)
    sigma = (0, LOWPASS_SIGMA_PX, LOWPASS_SIGMA_PX)
    for start in range(0, indices.size, chunk_size):  # chunks of particles
        rows = indices[start : start + chunk_size]
        posed = pose_class_images(
            stack,
            assignment.class_index[rows],
            assignment.psi_deg[rows],
            assignment.shift_px[rows],
        )
        model, solvent = posed[:, 0], posed[:, 1] < 0.5
        model = scipy.fft.irfft2(
            scipy.fft.rfft2(model, workers=workers) * _ctf_grid(particles, rows),
            s=(box, box),
            workers=workers,
        )
        image = np.asarray(particles.images[rows], dtype=np.float64)
        image = image - image.mean(axis=(1, 2), keepdims=True)
        high = image - scipy.ndimage.gaussian_filter(image, (0, 1.0, 1.0))
        noise = np.maximum((high**2).mean(axis=(1, 2)), 1e-30)
        fit = (image * model)[:, inside].sum(axis=1)
        norm = np.maximum((model * model)[:, inside].sum(axis=1), 1e-30)
        residual = image - (fit / norm)[:, None, None] * model
        low = scipy.ndimage.gaussian_filter(residual, sigma)
        power = (low**2 * solvent).sum(axis=(1, 2)) / np.maximum(
            solvent.sum(axis=(1, 2)), 1
        )
        ratio[start : start + rows.size] = power / noise
        match[start : start + rows.size] = fit / np.sqrt(norm * noise)
    return ratio, match
