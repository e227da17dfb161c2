"""The pose grid, the central-slice gather and the pose search against a known map."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import scipy.fft

from pipelines.class3d import InitialModelConfig, initialise_state, pose_grid
from pipelines.class3d.expectation import project_pixels, shift_phases
from pipelines.class3d.pixels import pixel_set, prepare_particles, soft_circle
from pipelines.class3d.vdam import _search, reference_transforms
from pipelines.reconstruct import PosedParticles, reconstruct_halves
from pipelines.simulate.projection import (
    prepare_volume_transform,
    project,
    random_rotations,
)
from pipelines.simulate.volumes import phantom_volume
from tests.pipelines.class3d.conftest import BOX, PX, take


def _angle_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    trace = np.trace(np.einsum("...ij,...kj->...ik", a, b), axis1=-2, axis2=-1)
    return np.degrees(np.arccos(np.clip((trace - 1.0) / 2.0, -1.0, 1.0)))


def test_grid_covers_the_rotation_group(rng: np.random.Generator) -> None:
    grid = pose_grid(15.0)
    probes = random_rotations(200, rng)
    nearest = _angle_deg(probes[:, None], grid.rotations[None]).min(axis=1)
    assert nearest.max() < 15.0  # no rotation is further than one step from the grid
    assert np.median(nearest) < 8.0


def test_gathered_slices_are_the_simulators_projections(
    rng: np.random.Generator,
) -> None:
    volume = phantom_volume(32, 3.0, rng)
    rotations = random_rotations(4, rng)
    origins = rng.uniform(-2, 2, (4, 2))
    images = project(volume, rotations, shifts_px=-origins)  # content at -origin
    pixels = pixel_set(32, 12)
    ft = scipy.fft.rfft2(np.fft.ifftshift(images, axes=(1, 2)))
    recentred = ft[:, pixels.row, pixels.col] * np.stack(
        [shift_phases(o[None], pixels)[0] for o in origins]
    )
    slices = project_pixels(
        prepare_volume_transform(volume)[None], rotations, pixels, 2
    )
    assert np.abs(recentred - slices).max() < 0.02 * np.abs(slices).max()


def test_search_finds_the_poses_given_the_right_map(
    ribosome_particles: PosedParticles,
) -> None:
    config = InitialModelConfig(n_classes=1, box_px=BOX, pixel_size_a=PX)
    state = initialise_state(config, ribosome_particles, np.random.default_rng(1))
    reference = reconstruct_halves(take(ribosome_particles, np.arange(1000))).full
    rows = np.arange(1000, 1200)
    # the map in the units of the normalised images (least squares at the true poses)
    pixels = pixel_set(BOX, 12)
    mask = soft_circle(BOX, config.mask_radius_px)
    x, ctf = prepare_particles(ribosome_particles, rows, pixels, mask)
    model = ctf * project_pixels(
        reference_transforms(config, reference[None]),
        ribosome_particles.rotations[rows],
        pixels,
        config.padding,
    )
    phases = np.exp(
        -2j
        * np.pi
        * (ribosome_particles.origin_px[rows] @ np.stack([pixels.kx, pixels.ky]))
        / BOX
    )
    data = x * phases
    scale = np.sum((np.conj(data) * model).real) / np.sum(np.abs(model) ** 2)
    state = replace(state, maps=(scale * reference)[None].astype(np.float32))
    result, grid, shifts = _search(config, state, ribosome_particles, rows, 12)
    _, rotation, shift, _ = result.best()
    error = _angle_deg(grid.rotations[rotation], ribosome_particles.rotations[rows])
    assert np.mean(error < 15.0) > 0.6  # 15° grid; measured 0.69
    offset = np.abs(shifts[shift] - ribosome_particles.origin_px[rows])
    assert np.median(offset) <= 1.0  # 1.5 px grid
