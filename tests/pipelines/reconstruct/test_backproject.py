"""Back-projection: recovery of a known volume, symmetry, half sets, input checks."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.errors import StageInputError
from pipelines.reconstruct import (
    PosedParticles,
    _kernels,
    backproject,
    fourier_shell_correlation,
    reconstruct_halves,
    symmetry_matrices,
    weights_to_map,
)
from pipelines.simulate.projection import project, random_rotations
from pipelines.simulate.volumes import phantom_volume
from tests.pipelines.reconstruct.conftest import simulate_particles


def test_noise_free_particles_give_back_the_volume(
    phantom_32: np.ndarray, clean_particles_32: PosedParticles
) -> None:
    result = reconstruct_halves(clean_particles_32)
    fsc = fourier_shell_correlation(result.full, phantom_32, 3.0).fsc
    # every shell up to 0.9 Nyquist: the CTFs (8000-25000 Å, astigmatic), the
    # shifts and the poses are all undone (the simulation applies each CTF on the
    # unpadded 32-px grid, where its fastest rings alias: hence 0.98 near Nyquist)
    assert fsc[1:9].min() > 0.995, np.round(fsc, 3)
    assert fsc[1:15].min() > 0.98, np.round(fsc, 3)
    assert np.corrcoef(result.full.ravel(), phantom_32.ravel())[0, 1] > 0.99
    assert result.n_half1 == result.n_half2 == 1000
    assert result.fsc.crossing_a(0.143) == pytest.approx(6.0, rel=0.05)  # Nyquist


def test_without_ctf_correction_the_map_is_wrong(
    phantom_32: np.ndarray, clean_particles_32: PosedParticles
) -> None:
    corrected = reconstruct_halves(clean_particles_32, ssnr=1000.0).full
    plain = reconstruct_halves(clean_particles_32, ssnr=1000.0, ctf_correct=False).full
    good = fourier_shell_correlation(corrected, phantom_32, 3.0).fsc
    bad = fourier_shell_correlation(plain, phantom_32, 3.0).fsc
    assert good[5:15].mean() > bad[5:15].mean() + 0.1


def _images_and_poses(n: int, box: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    volume = phantom_volume(box, 3.0, rng)
    rotations = random_rotations(n, rng)
    return project(volume, rotations), rotations


@pytest.mark.parametrize(
    "symbol", ["C2", "C5", "D1", "D3", "D6", "T", "O", "I", "I1", "I2", "I3", "I4"]
)
def test_symmetry_equals_the_expanded_particle_set(symbol: str) -> None:
    images, rotations = _images_and_poses(24, 20, 3)
    ops = symmetry_matrices(symbol)
    particles = PosedParticles.from_arrays(
        images, pixel_size_a=3.0, rotations=rotations, defocus_u_a=12000.0
    )
    expanded = PosedParticles.from_arrays(
        np.repeat(images, len(ops), axis=0),
        pixel_size_a=3.0,
        rotations=np.einsum("nij,sjk->nsik", rotations, ops).reshape(-1, 3, 3),
        defocus_u_a=12000.0,
    )
    with_sym = weights_to_map(backproject(particles, symmetry=symbol), ssnr=100.0)
    expanded_c1 = weights_to_map(backproject(expanded), ssnr=100.0)
    fsc = fourier_shell_correlation(with_sym, expanded_c1, 3.0).fsc
    assert fsc[1:10].min() > 0.99, np.round(fsc, 4)


@pytest.mark.parametrize("symbol", ["D3", "O"])
def test_symmetry_improves_a_symmetric_volume_from_few_views(symbol: str) -> None:
    rng = np.random.default_rng(21)
    volume = phantom_volume(32, 3.0, rng, symmetry=symbol)
    particles = simulate_particles(volume, 40, pixel_size_a=3.0, rng=rng, snr=2.0)
    sym = reconstruct_halves(particles, symmetry=symbol).full
    asym = reconstruct_halves(particles).full
    fsc_sym = fourier_shell_correlation(sym, volume, 3.0).fsc
    fsc_asym = fourier_shell_correlation(asym, volume, 3.0).fsc
    assert fsc_sym[2:12].mean() > fsc_asym[2:12].mean() + 0.1
    assert fsc_sym[2:8].min() > 0.8


def test_half_sets_follow_random_subset_else_parity(
    clean_particles_32: PosedParticles,
) -> None:
    assert list(clean_particles_32.subset[:4]) == [1, 2, 1, 2]
    only_first = np.ones(clean_particles_32.n_particles, dtype=int)
    particles = PosedParticles.from_arrays(
        clean_particles_32.images,
        pixel_size_a=3.0,
        rotations=clean_particles_32.rotations,
        subset=only_first,
    )
    with pytest.raises(StageInputError, match="subset"):
        reconstruct_halves(particles)


def test_inputs_are_checked() -> None:
    images = np.zeros((3, 8, 8), dtype=np.float32)
    with pytest.raises(StageInputError, match="rotations"):
        PosedParticles.from_arrays(
            images, pixel_size_a=1.0, rotations=np.zeros((2, 3, 3))
        )
    with pytest.raises(StageInputError, match="images"):
        PosedParticles.from_arrays(
            np.zeros((3, 8, 6)), pixel_size_a=1.0, rotations=np.zeros((3, 3, 3))
        )
    with pytest.raises(StageInputError, match="subset"):
        PosedParticles.from_arrays(
            images,
            pixel_size_a=1.0,
            rotations=np.zeros((3, 3, 3)),
            subset=np.array([1, 2, 3]),
        )


def test_slab_partition_does_not_change_the_sums(rng: np.random.Generator) -> None:
    """One slab (every sample visited) against slabs of 2 and 5 planes (each visits
    only the part of a row that can reach it), axis-aligned poses included."""
    n, npad = 60, 48
    rotations = random_rotations(n, rng)
    rotations[:4] = [
        np.eye(3),
        [[0, -1, 0], [1, 0, 0], [0, 0, 1]],
        [[1, 0, 0], [0, 0, -1], [0, 1, 0]],
        [[0, 0, 1], [0, 1, 0], [-1, 0, 0]],
    ]
    shape = (n, npad, npad // 2 + 1)
    fimages = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(
        np.complex64
    )
    ctf2 = rng.uniform(0, 1, shape).astype(np.float32)
    sums = []
    for slab_px in (npad, 2, 5):
        data = np.zeros((npad, npad, npad // 2 + 1), dtype=np.complex128)
        weight = np.zeros(data.shape)
        for parity in (0, 1):
            _kernels.insert_slices(
                data,
                weight,
                fimages,
                ctf2,
                np.arange(n),
                rotations,
                24.0,
                slab_px,
                parity,
            )
        sums.append((data, weight))
    for data, weight in sums[1:]:
        np.testing.assert_allclose(data, sums[0][0], rtol=0, atol=1e-9)
        np.testing.assert_allclose(weight, sums[0][1], rtol=0, atol=1e-9)
    assert np.count_nonzero(sums[0][1]) > 0.3 * sums[0][1].size
