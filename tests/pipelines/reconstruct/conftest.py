"""Simulated particles with known poses, shifts and CTF for the reconstruction tests."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft

from pipelines.ctf.model import CtfParams, ctf_2d
from pipelines.reconstruct import PosedParticles
from pipelines.simulate.projection import project, random_rotations
from pipelines.simulate.volumes import phantom_volume


def simulate_particles(
    volume: np.ndarray,
    n: int,
    *,
    pixel_size_a: float,
    rng: np.random.Generator,
    snr: float | None = None,
    max_shift_px: float = 2.0,
    defocus_range_a: tuple[float, float] = (8000.0, 25000.0),
) -> PosedParticles:
    """Projections at random poses and shifts, each with its own astigmatic CTF
    (computed one by one with :func:`ctf_2d`, independently of the code under test)
    and white noise at ``snr`` (signal variance / noise variance; None: no noise)."""
    box = volume.shape[0]
    rotations = random_rotations(n, rng)
    shifts = rng.uniform(-max_shift_px, max_shift_px, (n, 2))
    clean = project(volume, rotations, shifts_px=shifts)
    du = rng.uniform(*defocus_range_a, n)
    dv = du - rng.uniform(0, 1500, n)
    angle = rng.uniform(0, 180, n)
    ctfs = np.stack(
        [
            ctf_2d(
                (box, box),
                pixel_size_a,
                CtfParams(defocus_u_a=u, defocus_v_a=v, astigmatism_angle_deg=a),
            )
            for u, v, a in zip(du, dv, angle, strict=True)
        ]
    )
    images = scipy.fft.irfft2(scipy.fft.rfft2(clean) * ctfs, s=(box, box))
    if snr is not None:
        images /= images.std()
        images += rng.standard_normal(images.shape) / np.sqrt(snr)
    return PosedParticles.from_arrays(
        images.astype(np.float32),
        pixel_size_a=pixel_size_a,
        rotations=rotations,
        origin_px=-shifts,  # content at +t has RELION origin -t
        defocus_u_a=du,
        defocus_v_a=dv,
        astigmatism_angle_deg=angle,
    )


@pytest.fixture(scope="session")
def phantom_32() -> np.ndarray:
    return phantom_volume(32, 3.0, np.random.default_rng(11))


@pytest.fixture(scope="session")
def clean_particles_32(phantom_32: np.ndarray) -> PosedParticles:
    return simulate_particles(
        phantom_32, 2000, pixel_size_a=3.0, rng=np.random.default_rng(12)
    )
