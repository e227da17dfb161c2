"""Particles of several conformations: ground truth for 3D classification.

:func:`without_region` removes a soft ball of density from a map (a second
conformation: a domain or ligand absent); :func:`simulate_mixture` projects
several maps at random poses and shifts, each particle with its own CTF, and adds
white noise of one level for all (set by the first map's signal, so a map with
less density gives weaker particles, as on a grid).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.fft

from pipelines.errors import StageInputError
from pipelines.reconstruct.particles import PosedParticles, ctf_batch
from pipelines.simulate.projection import project, random_rotations

__all__ = ["simulate_mixture", "without_region"]


def without_region(
    volume: np.ndarray, *, distance_px: float, radius_px: float, edge_px: float = 2.0
) -> np.ndarray:
    """``volume`` ``(N, N, N)`` less a ball of ``radius_px`` (raised-cosine edge
    ``edge_px``) centred ``distance_px`` from the density's centre of mass along
    its longest principal axis (the positive density only is weighed)."""
    vol = np.asarray(volume, dtype=np.float64)
    if vol.ndim != 3 or len(set(vol.shape)) != 1:
        raise StageInputError("<array>", "volume", vol.shape, "must be (N, N, N)")
    grid = np.indices(vol.shape).reshape(3, -1).astype(np.float64)
    weight = np.maximum(vol, 0.0).ravel()
    if weight.sum() <= 0:
        raise StageInputError("<array>", "volume", "no positive density", "")
    centre = grid @ weight / weight.sum()
    _, axes = np.linalg.eigh(np.cov(grid, aweights=weight))
    target = centre + distance_px * axes[:, -1]
    distance = np.linalg.norm(grid - target[:, None], axis=0).reshape(vol.shape)
    t = np.clip((distance - radius_px) / edge_px, 0.0, 1.0)
    inside = 0.5 + 0.5 * np.cos(np.pi * t)
    return np.asarray(vol * (1.0 - inside), dtype=np.float32)


def simulate_mixture(
    volumes: list[np.ndarray],
    counts: list[int],
    *,
    pixel_size_a: float,
    snr: float,
    rng: np.random.Generator,
    max_shift_px: float = 2.0,
    defocus_range_a: tuple[float, float] = (8000.0, 25000.0),
) -> tuple[PosedParticles, np.ndarray]:
    """``counts[j]`` particles of ``volumes[j]``, shuffled: the particles (true
    poses, origins and CTF in their fields) and each one's conformation ``(n,)``.
    ``snr`` is the first conformation's signal variance over the noise variance."""
    if len(volumes) != len(counts) or not volumes:
        raise StageInputError("<argument>", "counts", counts, "one per volume")
    labels = np.repeat(np.arange(len(volumes)), counts)
    labels = labels[rng.permutation(len(labels))]
    n = len(labels)
    box = volumes[0].shape[0]
    rotations = random_rotations(n, rng)
    shifts = rng.uniform(-max_shift_px, max_shift_px, (n, 2))
    clean = np.empty((n, box, box), dtype=np.float32)
    for j, volume in enumerate(volumes):  # a loop over conformations
        mine = labels == j
        clean[mine] = project(volume, rotations[mine], shifts_px=shifts[mine])
    du = rng.uniform(*defocus_range_a, n)
    posed = PosedParticles.from_arrays(
        clean,
        pixel_size_a=pixel_size_a,
        rotations=rotations,
        origin_px=-shifts,  # content at +t has RELION origin -t
        defocus_u_a=du,
        defocus_v_a=du - rng.uniform(0, 1500, n),
        astigmatism_angle_deg=rng.uniform(0, 180, n),
    )
    ky = np.fft.fftfreq(box, pixel_size_a)[:, None]
    kx = np.fft.rfftfreq(box, pixel_size_a)[None, :]
    ctf = ctf_batch(posed, np.arange(n), ky, kx)
    images = scipy.fft.irfft2(scipy.fft.rfft2(clean) * ctf, s=(box, box))
    signal_sd = float(images[labels == 0].std())
    images += rng.standard_normal(images.shape) * (signal_sd / np.sqrt(snr))
    return dataclasses.replace(posed, images=images.astype(np.float32)), labels
