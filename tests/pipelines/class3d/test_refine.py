"""Gold-standard refinement: from a 40 Å start it approaches the map of the true
poses, and the two halves never see each other's particles."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pipelines.class3d.refine import RefineConfig, local_rotations, refine
from pipelines.errors import StageInputError
from pipelines.reconstruct import (
    PosedParticles,
    fourier_shell_correlation,
    reconstruct_halves,
)
from pipelines.reconstruct.mask import lowpass_map
from tests.pipelines.class3d.conftest import BOX, PX
from tests.pipelines.reconstruct.conftest import simulate_particles


def _unposed(particles: PosedParticles) -> PosedParticles:
    n = particles.n_particles
    return dataclasses.replace(
        particles, rotations=np.tile(np.eye(3), (n, 1, 1)), origin_px=np.zeros((n, 2))
    )


def _angle_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    trace = np.einsum("nij,nij->n", a, b)
    return np.degrees(np.arccos(np.clip((trace - 1.0) / 2.0, -1.0, 1.0)))


def test_local_rotations_are_a_ball_around_the_identity() -> None:
    near = local_rotations(2.0, 2.0)
    assert len(near) == 33  # lattice points within radius 2 of the origin
    assert np.allclose(near[0], np.eye(3))
    assert np.allclose(near @ np.transpose(near, (0, 2, 1)), np.eye(3), atol=1e-12)
    angles = _angle_deg(near, np.broadcast_to(np.eye(3), near.shape))
    assert angles.max() == pytest.approx(4.0)
    assert sorted(np.unique(np.round(angles, 6)))[:2] == [0.0, 2.0]


@pytest.mark.slow  # six iterations on 500 particles: ~40 s on a loaded machine
def test_refinement_from_40_a_reaches_the_true_pose_map(
    ribosome_32: np.ndarray,
) -> None:
    truth = ribosome_32
    particles = simulate_particles(
        truth, 500, pixel_size_a=PX, rng=np.random.default_rng(5), snr=0.2
    )
    true_map = reconstruct_halves(particles).full
    config = RefineConfig(box_px=BOX, pixel_size_a=PX, max_iterations=6)
    result = refine(_unposed(particles), truth, config)

    def shell(volume: np.ndarray) -> float:
        return fourier_shell_correlation(volume, truth, PX).crossing_index(0.5)

    start = lowpass_map(truth, pixel_size_a=PX, resolution_a=40.0)
    found = shell(result.reconstruction.full)
    assert found > shell(start) + 3.0  # 40 Å is shell 8 (and a soft edge)
    assert found > shell(true_map) - 1.0  # within one shell of the true poses
    error = _angle_deg(result.rotations, particles.rotations)
    assert np.median(error) < 8.0
    shift = np.hypot(*(result.origin_px - particles.origin_px).T)
    assert np.median(shift) < 0.75
    assert result.iterations[-1].final
    assert result.iterations[-1].radius_px == BOX // 2  # the last at all data
    steps = [record.step_deg for record in result.iterations]
    assert steps == sorted(steps, reverse=True)  # sampling only ever gets finer


def test_a_half_of_pure_noise_stays_noise(ribosome_32: np.ndarray) -> None:
    """Gold standard: half 2 holds noise only.  Aligned against its own map, it
    can build nothing beyond the 40 Å the halves share (had it seen half 1's
    particles or map, noise aligned to them would rebuild the structure:
    Einstein from noise), so its map has no signal there and the half-map FSC
    stays at low resolution (which also holds half 1's search back)."""
    particles = _unposed(
        simulate_particles(
            ribosome_32, 200, pixel_size_a=PX, rng=np.random.default_rng(8), snr=0.5
        )
    )
    half2 = particles.subset == 2
    noise = np.random.default_rng(9).standard_normal(particles.images.shape)
    images = np.where(half2[:, None, None], noise, particles.images)
    config = RefineConfig(box_px=BOX, pixel_size_a=PX, max_iterations=3)
    result = refine(
        dataclasses.replace(particles, images=images.astype(np.float32)),
        ribosome_32,
        config,
    )
    assert np.array_equal(result.subset, particles.subset)
    rec = result.reconstruction

    def to_truth(volume: np.ndarray, shells: slice) -> float:
        return float(
            fourier_shell_correlation(volume, ribosome_32, PX).fsc[shells].mean()
        )

    assert to_truth(rec.half1, slice(2, 6)) > 0.8  # half 1 has the structure
    assert abs(to_truth(rec.half2, slice(10, 17))) < 0.1  # beyond 32 Å: none
    assert rec.resolution_a > 40.0


def test_a_reference_of_another_box_is_refused(ribosome_32: np.ndarray) -> None:
    particles = simulate_particles(
        ribosome_32, 8, pixel_size_a=PX, rng=np.random.default_rng(1)
    )
    config = RefineConfig(box_px=BOX, pixel_size_a=PX)
    with pytest.raises(StageInputError, match="reference"):
        refine(particles, np.zeros((24, 24, 24), dtype=np.float32), config)
