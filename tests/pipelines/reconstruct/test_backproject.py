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
    # shifts and the poses are all undone (measured: > 0.9993 to shell 14, 0.987 at
    # shell 15; the simulation applies each CTF on the unpadded 32-px grid, where
    # its fastest rings alias near Nyquist)
    assert fsc[1:15].min() > 0.998, np.round(fsc, 4)
    assert fsc[1:16].min() > 0.98, np.round(fsc, 4)
    assert np.corrcoef(result.full.ravel(), phantom_32.ravel())[0, 1] > 0.999
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


def _scatter_by_definition(
    npad: int,
    fimages: np.ndarray,
    ctf2: np.ndarray,
    rotations: np.ndarray,
    scale: float,
    radius: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Every sample of every slice at ``scale R^T k``, trilinearly, by ``np.add.at``
    (no row windows, no slabs): the definition the kernel must match."""
    n = fimages.shape[1]
    ky, kx = np.meshgrid(
        np.fft.fftfreq(n, 1.0 / n), np.arange(n // 2 + 1), indexing="ij"
    )
    keep = ky**2 + kx**2 <= radius**2
    k = np.stack([kx[keep], ky[keep], np.zeros(keep.sum())], axis=1)
    data = np.zeros((npad, npad, npad // 2 + 1), dtype=np.complex128)
    weight = np.zeros(data.shape)
    for i, rot in enumerate(rotations):
        q = scale * k @ rot  # R^T k for each row k
        value = fimages[i][keep].astype(np.complex128)
        w = ctf2[i][keep].astype(np.float64)
        flip = q[:, 0] < 0
        q[flip] *= -1
        value[flip] = np.conj(value[flip])
        base = np.floor(q).astype(int)
        frac = q - base
        z0, y0, x0 = base[:, 2] + npad // 2, base[:, 1] + npad // 2, base[:, 0]
        ok = (z0 >= 0) & (z0 + 1 < npad) & (y0 >= 0) & (y0 + 1 < npad)
        ok &= x0 + 1 < npad // 2 + 1
        for dz in (0, 1):
            for dy in (0, 1):
                for dx in (0, 1):
                    t = (
                        (frac[:, 2] if dz else 1 - frac[:, 2])
                        * (frac[:, 1] if dy else 1 - frac[:, 1])
                        * (frac[:, 0] if dx else 1 - frac[:, 0])
                    )
                    index = (z0[ok] + dz, y0[ok] + dy, x0[ok] + dx)
                    np.add.at(data, index, (t * value)[ok])
                    np.add.at(weight, index, (t * w)[ok])
    return data, weight


def test_scaled_insertion_matches_its_definition(rng: np.random.Generator) -> None:
    """RELION's insertion (image 24 px, coordinates scaled 2x into a 48 grid)
    against a plain scatter of every sample, for one slab and slabs of 3 planes."""
    n_img, box, padding = 30, 24, 2
    npad = padding * box
    rotations = random_rotations(n_img, rng)
    rotations[0] = np.eye(3)
    rotations[1] = [[0, 0, 1], [0, 1, 0], [-1, 0, 0]]
    shape = (n_img, box, box // 2 + 1)
    fimages = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(
        np.complex64
    )
    ctf2 = rng.uniform(0, 1, shape).astype(np.float32)
    expected = _scatter_by_definition(
        npad, fimages, ctf2, rotations, float(padding), box / 2
    )
    for slab_px in (npad, 3):
        data = np.zeros((npad, npad, npad // 2 + 1), dtype=np.complex128)
        weight = np.zeros(data.shape)
        for parity in (0, 1):
            _kernels.insert_slices_scaled(
                data,
                weight,
                fimages,
                ctf2,
                np.arange(n_img),
                rotations,
                float(padding),
                box / 2,
                slab_px,
                parity,
            )
        np.testing.assert_allclose(data, expected[0], rtol=0, atol=1e-9)
        np.testing.assert_allclose(weight, expected[1], rtol=0, atol=1e-9)
    assert np.count_nonzero(expected[1]) > 0.05 * expected[1].size
    # inside the grid every sample hands out its whole weight (trilinear weights sum
    # to 1): the total is the CTF^2 of the samples within the radius
    weight = np.zeros((npad, npad, npad // 2 + 1))
    for parity in (0, 1):
        _kernels.insert_slices_scaled(
            np.zeros(weight.shape, dtype=np.complex128),
            weight,
            fimages,
            ctf2,
            np.arange(n_img),
            rotations,
            float(padding),
            box / 2 - 1,
            4,
            parity,
        )
    ky = np.fft.fftfreq(box, 1.0 / box)[:, None]
    inside = ky**2 + np.arange(box // 2 + 1) ** 2 <= (box / 2 - 1) ** 2
    assert weight.sum() == pytest.approx(ctf2[:, inside].sum(dtype=np.float64))


def test_scaled_insertion_recovers_clean_particles_better_than_padded(
    rng: np.random.Generator,
) -> None:
    """400 noise-free particles, box 24: RELION's insertion gives back the volume
    to FSC > 0.995 up to shell 10 of 12 (measured 0.999); the padded images' does
    worse from shell 6 on (0.95 at shell 9, 0.87 at 10)."""
    truth = phantom_volume(24, 3.0, rng)
    particles = simulate_particles(truth, 400, pixel_size_a=3.0, rng=rng)
    scaled, padded = (
        fourier_shell_correlation(
            weights_to_map(backproject(particles, insertion=how), ssnr=1000.0),
            truth,
            3.0,
        ).fsc
        for how in ("scaled", "padded")
    )
    assert scaled[1:11].min() > 0.995, np.round(scaled, 3)
    assert scaled[7:12].mean() > padded[7:12].mean() + 0.03, np.round(padded, 3)
    with pytest.raises(StageInputError, match="insertion"):
        backproject(particles, insertion="nearest")  # type: ignore[arg-type]
