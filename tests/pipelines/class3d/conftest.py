"""The 70S ribosome map of ``../shared/data/real`` at a small box, and particles
simulated from it with known poses, shifts and CTF (SNR 0.1)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from pipelines.reconstruct import PosedParticles
from pipelines.simulate.volumes import (
    RIBOSOME_70S_PIXEL_SIZE_A,
    load_map,
    rescale_volume,
)
from tests.pipelines.reconstruct.conftest import simulate_particles

BOX = 32
RIBOSOME_BOX_A = 65 * RIBOSOME_70S_PIXEL_SIZE_A
PX = RIBOSOME_BOX_A / BOX  # the whole 65^3 map in a box of 32 (10.2 Å/px)


@pytest.fixture(scope="session")
def ribosome_32(shared_data: Path) -> np.ndarray:
    volume, _ = load_map(shared_data / "real" / "clean70SRibosome_vol_65p.mrc")
    return rescale_volume(
        volume,
        from_pixel_size_a=RIBOSOME_70S_PIXEL_SIZE_A,
        to_pixel_size_a=PX,
        box_px=BOX,
    )


@pytest.fixture(scope="session")
def ribosome_particles(ribosome_32: np.ndarray) -> PosedParticles:
    return simulate_particles(
        ribosome_32, 3000, pixel_size_a=PX, rng=np.random.default_rng(7), snr=0.1
    )


def take(particles: PosedParticles, rows: np.ndarray) -> PosedParticles:
    """The particles ``rows`` of a set (every per-particle array sliced)."""
    fields = {
        f.name: getattr(particles, f.name)[rows]
        for f in dataclasses.fields(particles)
        if f.name != "pixel_size_a"
    }
    return PosedParticles(pixel_size_a=particles.pixel_size_a, **fields)
