"""Simulated particle stacks with known views, psi, shifts and CTF, and their RELION
particle STAR files: the ground truth of the 2D classification tests and benchmarks.

Example::

    data = simulate_views(volume, n_views=4, n_particles=500, pixel_size_a=4.0,
                          snr=0.3, rng=rng)
    optics, particles = write_particle_set(folder, "Extract/p.mrcs", data, 4.0)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.fft

from pipelines.class2d import ParticleStack
from pipelines.ctf.model import CtfParams, ctf_2d
from pipelines.io.outputs import write_mrc
from pipelines.simulate.projection import euler_to_matrix, project

__all__ = ["SyntheticSet", "simulate_views", "write_particle_set"]


@dataclass(frozen=True)
class SyntheticSet:
    particles: ParticleStack
    views: np.ndarray  # (n_views, N, N) clean projections at psi 0, centred
    view_index: np.ndarray  # (n,)
    psi_deg: np.ndarray
    shift_px: np.ndarray  # (n, 2) content offset [x, y]


def simulate_views(
    volume: np.ndarray,
    *,
    n_views: int,
    n_particles: int,
    pixel_size_a: float,
    snr: float,
    rng: np.random.Generator,
    max_shift_px: float = 2.0,
) -> SyntheticSet:
    """Particles from ``n_views`` distinct (rot, tilt) views at random psi and shift,
    each with its own defocus (1-2.5 µm) CTF and white noise at ``snr`` (power)."""
    box = volume.shape[0]
    rot = np.linspace(0, 360, n_views, endpoint=False) + 17.0
    tilt = np.linspace(20, 160, n_views)
    views = project(volume, euler_to_matrix(rot, tilt, 0.0))
    view_index = rng.integers(0, n_views, n_particles)
    psi = rng.uniform(0, 360, n_particles)
    shift = rng.uniform(-max_shift_px, max_shift_px, (n_particles, 2))
    clean = project(
        volume, euler_to_matrix(rot[view_index], tilt[view_index], psi), shifts_px=shift
    )
    defocus = rng.uniform(10000, 25000, n_particles)
    optics = CtfParams(defocus_u_a=0.0, defocus_v_a=0.0)  # voltage, Cs, Q0 shared
    ctfs = np.stack(
        [
            ctf_2d(
                (box, box), pixel_size_a, replace(optics, defocus_u_a=d, defocus_v_a=d)
            )
            for d in defocus
        ]
    )  # per particle: test setup only
    ft = scipy.fft.rfft2(clean) * ctfs
    signal = scipy.fft.irfft2(ft, s=(box, box)).astype(np.float32)
    signal /= signal.std()
    noisy = signal + rng.standard_normal(signal.shape).astype(np.float32) / np.sqrt(snr)
    n = n_particles
    stack = ParticleStack(
        images=noisy.astype(np.float32),
        pixel_size_a=pixel_size_a,
        defocus_u_a=defocus,
        defocus_v_a=defocus.copy(),
        astigmatism_angle_deg=np.zeros(n),
        phase_shift_deg=np.zeros(n),
        voltage_kv=optics.voltage_kv,
        cs_mm=optics.cs_mm,
        amplitude_contrast=optics.amplitude_contrast,
    )
    return SyntheticSet(stack, views, view_index, psi, shift)


def write_particle_set(
    folder: Path, stack_rel: str, data: SyntheticSet, pixel_size_a: float
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write ``data``'s images to ``folder/stack_rel`` and return RELION ``optics``
    and ``particles`` tables whose image names are relative to ``folder``."""
    images = data.particles.images
    write_mrc(folder / stack_rel, images, pixel_size_a=pixel_size_a, float16=False)
    n = len(images)
    optics = pd.DataFrame(
        {
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnOpticsGroup": [1],
            "rlnVoltage": [float(data.particles.voltage_kv)],
            "rlnSphericalAberration": [float(data.particles.cs_mm)],
            "rlnAmplitudeContrast": [float(data.particles.amplitude_contrast)],
            "rlnImagePixelSize": [pixel_size_a],
            "rlnImageSize": [images.shape[-1]],
            "rlnImageDimensionality": [2],
        }
    )
    particles = pd.DataFrame(
        {
            "rlnImageName": [f"{i:06d}@{stack_rel}" for i in range(1, n + 1)],
            "rlnDefocusU": data.particles.defocus_u_a,
            "rlnDefocusV": data.particles.defocus_v_a,
            "rlnDefocusAngle": np.zeros(n),
            "rlnOpticsGroup": np.ones(n, dtype=int),
        }
    )
    return optics, particles
