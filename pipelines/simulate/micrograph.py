"""Micrographs: particles at known places and poses in ice, imaged through the CTF.

Image formation (weak phase object, per unit dose):

    I(r) = T(r) * (1 + 2 * F^-1[ -ctf(k) * D(k) * MTF(k) * F[phi](k) ](r))

``phi`` is the projected phase (particles, amorphous ice and carbon texture,
contamination), ``T`` the transmission after inelastic loss
``exp(-thickness / mean free path)``, ``D`` radiation damage, ``MTF`` the detector.
``-ctf`` makes particles dark, as in a raw micrograph (see :mod:`pipelines.ctf.model`).
The CTF is the micrograph's (every particle's truth carries the same defocus).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import scipy.fft
from numpy.typing import NDArray

from pipelines.ctf.model import CtfParams, ctf_2d
from pipelines.errors import StageInputError
from pipelines.simulate import _projection_kernels
from pipelines.simulate.optics import critical_exposure_e_per_a2, mtf_2d
from pipelines.simulate.placement import place_points
from pipelines.simulate.projection import (
    matrix_to_euler,
    prepare_volume_transform,
    project,
    random_rotations,
)
from pipelines.simulate.truth import (
    CarbonEdge,
    ContaminationBlob,
    MicrographTruth,
    ParticleTruth,
)
from pipelines.simulate.volumes import phantom_volume

__all__ = [
    "MicrographParams",
    "Specimen",
    "build_specimen",
    "expected_image_ft",
    "simulate_micrograph",
]

_CONTAMINATION_PHASE_RAD_PER_A = 1e-4
_PROJECTION_BATCH = 128


def _default_ctf() -> CtfParams:
    return CtfParams(
        defocus_u_a=15000.0, defocus_v_a=14000.0, astigmatism_angle_deg=30.0
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class MicrographParams:
    """What to simulate.  ``None`` distances default from the volume's box."""

    shape_px: tuple[int, int] = (1024, 1024)
    pixel_size_a: float = 1.0
    n_particles: int = 40
    ctf: CtfParams = field(default_factory=_default_ctf)
    min_distance_px: float | None = None  # default: 0.9 * box
    edge_margin_px: float | None = None  # default: box / 2 + 1
    particle_contrast_rad: float = 0.25  # peak projected phase of the top view
    ice_thickness_a: float = 300.0
    ice_gradient_a: float = 0.0  # thickness change from left to right edge
    ice_phase_sd_rad: float = 0.1  # white amorphous-ice phase texture per pixel
    carbon_edge: bool = False
    carbon_thickness_a: float = 150.0
    carbon_phase_sd_rad: float = 0.06
    n_contamination: int = 0
    inelastic_mean_free_path_a: float = 3500.0
    phantom_box_px: int = 96  # box of the phantom made when no volume is given


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Specimen:
    """The specimen before the microscope: projected phase and transmission.

    ``phase_rad`` and ``transmission`` are ``(ny, nx)`` float32.
    """

    phase_rad: np.ndarray
    transmission: np.ndarray
    truth: MicrographTruth


def _contamination(
    params: MicrographParams, rng: np.random.Generator
) -> tuple[ContaminationBlob, ...]:
    ny, nx = params.shape_px
    size = min(ny, nx)
    return tuple(
        ContaminationBlob(
            x_px=float(rng.uniform(0, nx)),
            y_px=float(rng.uniform(0, ny)),
            radius_px=float(rng.uniform(0.03, 0.08) * size),
            thickness_a=float(rng.uniform(2000.0, 6000.0)),
        )
        for _ in range(params.n_contamination)
    )


def _thickness_a(
    params: MicrographParams,
    carbon: CarbonEdge | None,
    blobs: tuple[ContaminationBlob, ...],
) -> tuple[np.ndarray, np.ndarray]:
    """(total thickness, contamination thickness) maps ``(ny, nx)`` in Å."""
    ny, nx = params.shape_px
    ramp = np.linspace(-0.5, 0.5, nx)[None, :] if nx > 1 else np.zeros((1, 1))
    thickness: NDArray[np.floating[Any]] = np.broadcast_to(
        params.ice_thickness_a + params.ice_gradient_a * ramp, (ny, nx)
    ).astype(np.float32)
    if carbon is not None:
        thickness = thickness + carbon.thickness_a * carbon.mask((ny, nx))
    extra = np.zeros((ny, nx), dtype=np.float32)
    for blob in blobs:  # a few blobs, each a vectorised bounding box
        y0, y1 = (
            max(int(blob.y_px - blob.radius_px), 0),
            min(int(blob.y_px + blob.radius_px) + 2, ny),
        )
        x0, x1 = (
            max(int(blob.x_px - blob.radius_px), 0),
            min(int(blob.x_px + blob.radius_px) + 2, nx),
        )
        yy, xx = np.mgrid[y0:y1, x0:x1]
        r2 = ((xx - blob.x_px) ** 2 + (yy - blob.y_px) ** 2) / blob.radius_px**2
        extra[y0:y1, x0:x1] += blob.thickness_a * np.sqrt(np.clip(1.0 - r2, 0.0, None))
    return thickness + extra, extra


def build_specimen(
    params: MicrographParams,
    rng: np.random.Generator,
    *,
    volume: np.ndarray | None = None,
    workers: int = -1,
) -> Specimen:
    """Place particles (random poses, no overlaps) and build phase and transmission."""
    ny, nx = params.shape_px
    if volume is None:
        box = params.phantom_box_px
        vol = (
            phantom_volume(box, params.pixel_size_a, rng)
            if params.n_particles > 0
            else np.zeros((1, 1, 1), dtype=np.float32)
        )
    else:
        vol = np.asarray(volume, dtype=np.float32)
        box = vol.shape[0]
    if params.n_particles > 0 and box > min(ny, nx):
        raise StageInputError(
            "<argument>", "volume", vol.shape, f"larger than {params.shape_px}"
        )
    carbon = None
    if params.carbon_edge:
        carbon = CarbonEdge(
            angle_deg=float(rng.uniform(0.0, 360.0)),
            offset_px=float(rng.uniform(0.1, 0.35) * min(ny, nx)),
            thickness_a=params.carbon_thickness_a,
        )
    blobs = _contamination(params, rng)
    exclusion = np.array(
        [[b.x_px, b.y_px, b.radius_px + 0.5 * box] for b in blobs]
    ).reshape(-1, 3)
    centres = np.empty((0, 2))
    if params.n_particles > 0:
        centres = place_points(
            params.n_particles,
            params.shape_px,
            rng,
            min_distance_px=params.min_distance_px or 0.9 * box,
            edge_margin_px=params.edge_margin_px or 0.5 * box + 1,
            exclusion=exclusion,
        )
    n = len(centres)
    rotations = random_rotations(n, rng)
    euler = matrix_to_euler(rotations)
    phase = np.zeros((ny, nx), dtype=np.float32)
    scale = params.particle_contrast_rad / max(float(vol.sum(axis=0).max()), 1e-30)
    if n:
        transform = prepare_volume_transform(vol, workers=workers)
        whole = np.floor(centres + 0.5)
        corners = (whole[:, ::-1] - box // 2).astype(np.int64)  # [y, x]
        fractions = centres - whole  # [x, y]
        for start in range(0, n, _PROJECTION_BATCH):  # batches bound the memory
            stop = min(start + _PROJECTION_BATCH, n)
            images = project(
                vol,
                rotations[start:stop],
                shifts_px=fractions[start:stop],
                transform=transform,
                workers=workers,
            )
            _projection_kernels.add_patches(
                phase, images * np.float32(scale), corners[start:stop]
            )
    phase += rng.normal(scale=params.ice_phase_sd_rad, size=(ny, nx)).astype(np.float32)
    if carbon is not None:
        texture = rng.normal(scale=params.carbon_phase_sd_rad, size=(ny, nx))
        phase += (texture * carbon.mask((ny, nx))).astype(np.float32)
    thickness, extra = _thickness_a(params, carbon, blobs)
    phase += (_CONTAMINATION_PHASE_RAD_PER_A * extra).astype(np.float32)
    transmission = np.exp(-thickness / params.inelastic_mean_free_path_a).astype(
        np.float32
    )
    ctf = params.ctf
    particles = tuple(
        ParticleTruth(
            x_px=float(c[0]),
            y_px=float(c[1]),
            rot_deg=float(e[0]),
            tilt_deg=float(e[1]),
            psi_deg=float(e[2]),
            defocus_u_a=ctf.defocus_u_a,
            defocus_v_a=ctf.defocus_v_a,
            astigmatism_angle_deg=ctf.astigmatism_angle_deg,
        )
        for c, e in zip(centres, euler, strict=True)
    )
    truth = MicrographTruth(
        shape_px=(ny, nx),
        pixel_size_a=params.pixel_size_a,
        ctf=ctf,
        box_px=box,
        particles=particles,
        ice_thickness_a=params.ice_thickness_a,
        ice_gradient_a=params.ice_gradient_a,
        carbon_edge=carbon,
        contamination=blobs,
    )
    return Specimen(phase_rad=phase, transmission=transmission, truth=truth)


def expected_image_ft(
    specimen: Specimen,
    *,
    mtf: tuple[np.ndarray, np.ndarray] | None = None,
    workers: int = -1,
) -> NDArray[np.complex64]:
    """``-2 ctf * MTF * F[phi]`` on the rfft2 grid, complex64 (the contrast transform).

    ``I = T * (1 + irfft2(this * D))`` per unit dose, for a damage filter ``D``.
    """
    truth = specimen.truth
    ft: NDArray[np.complexfloating[Any]] = scipy.fft.rfft2(
        specimen.phase_rad, workers=workers
    )
    ft *= -2.0 * ctf_2d(truth.shape_px, truth.pixel_size_a, truth.ctf)
    if mtf is not None:
        ft *= mtf_2d(truth.shape_px, *mtf)
    return ft.astype(np.complex64)


def simulate_micrograph(
    params: MicrographParams,
    rng: np.random.Generator,
    *,
    volume: np.ndarray | None = None,
    dose_e_per_a2: float | None = None,
    damage: bool = True,
    mtf: tuple[np.ndarray, np.ndarray] | None = None,
    workers: int = -1,
) -> tuple[np.ndarray, MicrographTruth]:
    """A micrograph ``(ny, nx)`` float32 and its truth.

    Without ``dose_e_per_a2`` the image is the noise-free intensity per unit dose
    (mean ~ transmission, dark particles).  With it, the image holds Poisson counts
    at ``dose * pixel_size_a**2`` electrons per pixel, and (``damage``) the
    signal is attenuated by the damage filter averaged over the exposure.
    """
    specimen = build_specimen(params, rng, volume=volume, workers=workers)
    truth = specimen.truth
    ft = expected_image_ft(specimen, mtf=mtf, workers=workers)
    if dose_e_per_a2 is not None and damage and dose_e_per_a2 > 0:
        ky = np.fft.fftfreq(truth.shape_px[0], d=truth.pixel_size_a)[:, None]
        kx = np.fft.rfftfreq(truth.shape_px[1], d=truth.pixel_size_a)[None, :]
        ne = critical_exposure_e_per_a2(
            np.sqrt(ky * ky + kx * kx), truth.ctf.voltage_kv
        )
        x = dose_e_per_a2 / (2.0 * ne)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_damage = np.where(x > 0, (1.0 - np.exp(-x)) / x, 1.0)
        ft *= mean_damage.astype(np.float32)
    contrast = scipy.fft.irfft2(ft, s=truth.shape_px, workers=workers)
    image = specimen.transmission * (1.0 + contrast.astype(np.float32))
    if dose_e_per_a2 is None:
        return image.astype(np.float32), truth
    if dose_e_per_a2 <= 0:
        raise StageInputError(
            "<argument>", "dose_e_per_a2", dose_e_per_a2, "must be > 0"
        )
    lam = np.clip(image, 0.0, None) * (dose_e_per_a2 * truth.pixel_size_a**2)
    counts = rng.poisson(lam).astype(np.float32)
    return counts, replace(truth, dose_e_per_a2=dose_e_per_a2)
