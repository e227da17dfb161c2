"""Shortcuts of the motion stage against the direct computations: the defect
map of PreparedFrames (one frame at a time from the integer movie), the
dose-weighting grids computed on half the rows, mirrored and kept for the next
movie, the spectral-SNR sums and weighting in one numba pass, and the held
spectra's int8 quantisation."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.motion import summing
from pipelines.motion._kernels import core as _kernels
from pipelines.motion._kernels import defects as _defect_kernels
from pipelines.motion.defects import (
    PreparedFrames,
    detect_dead_pixels,
    detect_hot_pixels,
)
from pipelines.motion.dose import (
    DamageModel,
    FrameFilters,
    critical_exposure_e_per_a2,
    frame_exposures_e_per_a2,
)
from pipelines.motion.weighting import refine_at_finer_bin, spectral_snr_weights


def test_prepared_frames_defect_map_matches_the_two_detectors(
    rng: np.random.Generator,
) -> None:
    """Hot pixels (counted only where the gain is good), dead pixels and gain
    defects: the same pixels as detect_hot_pixels | detect_dead_pixels on the
    gain-corrected frame sum."""
    n, ny, nx = 8, 96, 80
    frames = rng.poisson(3.0, size=(n, ny, nx)).astype(np.int8)
    frames[:, 10, 11] = 100  # hot
    frames[:, 40, 7] = 90  # hot where the gain is bad: a gain defect, not hot
    frames[:, 50, 60] = 0  # dead (median sum ~24 > -log 1e-9)
    gain = rng.uniform(0.9, 1.1, size=(ny, nx)).astype(np.float32)
    gain[40, 7] = 0.0
    gain[3, 3] = np.nan
    prepared = PreparedFrames(frames, gain=gain)
    clean = np.where(np.isfinite(gain) & (gain > 0), gain, 0).astype(np.float32)
    frame_sum = frames.astype(np.float32).sum(axis=0) * clean
    bad_gain = ~np.isfinite(gain) | (gain <= 0)
    hot = detect_hot_pixels(frame_sum) & ~bad_gain
    expected = bad_gain | hot | detect_dead_pixels(frame_sum)
    assert prepared.n_hot == int(hot.sum()) == 1
    found = np.zeros((ny, nx), dtype=bool)
    found[prepared.ys, prepared.xs] = True
    np.testing.assert_array_equal(found, expected)
    assert found[50, 60]
    assert found[40, 7]
    assert found[3, 3]
    np.testing.assert_array_equal(prepared.good, ~expected)


def test_defect_kernels_match_the_numpy_masks(rng: np.random.Generator) -> None:
    """The one-pass gain clean-up and defect marking give NumPy's masks exactly:
    gain defects of every kind, a given mask, hot pixels compared in float32 (a
    threshold between two float32 values, sums on both sides of it) and dead
    pixels."""
    ny, nx = 64, 72
    gain = rng.uniform(0.5, 1.5, size=(ny, nx)).astype(np.float32)
    gain[0, :5] = [np.nan, np.inf, -np.inf, 0.0, -1.0]
    gain[1, 0] = -0.0
    out = np.empty_like(gain)
    bad = np.zeros((ny, nx), dtype=bool)
    _defect_kernels.clean_gain(gain, out, bad)
    expected_bad = ~np.isfinite(gain) | (gain <= 0)
    np.testing.assert_array_equal(bad, expected_bad)
    np.testing.assert_array_equal(out, np.where(expected_bad, 0.0, gain))
    threshold = 30.000001  # not a float32: NumPy compares float32(threshold)
    above = np.nextafter(np.float32(threshold), np.float32(np.inf))
    frame_sum = rng.uniform(-1.0, 40.0, size=(ny, nx)).astype(np.float32)
    frame_sum[5, :3] = [np.float32(threshold), above, np.float32(30.0)]
    frame_sum[6, :2] = [0.0, -0.0]
    given = bad | (rng.random((ny, nx)) < 0.05)
    given[5, :3] = False
    for dead in (True, False):
        defects, good = given.copy(), np.empty((ny, nx), dtype=bool)
        n_hot = _defect_kernels.mark_defects(
            frame_sum, np.float32(threshold), dead, defects, good
        )
        hot = (frame_sum > threshold) & ~given
        expected = given | hot | ((frame_sum <= 0) if dead else False)
        assert n_hot == int(hot.sum()) > 0
        np.testing.assert_array_equal(defects, expected)
        np.testing.assert_array_equal(good, ~expected)
    assert defects[5, 1]  # above float32(threshold)
    assert not defects[5, 0]  # equal to it: above the float64 threshold


def test_prepared_frames_defect_map_with_a_mask_matches_numpy(
    rng: np.random.Generator,
) -> None:
    """PreparedFrames' defect map (gain, a given mask, hot and dead pixels) is
    NumPy's formula on a movie with defects of every kind."""
    n, ny, nx = 6, 128, 96
    frames = rng.poisson(5.0, size=(n, ny, nx)).astype(np.int16)
    frames[:, 20, 30] = 200  # hot
    frames[:, 21, 31] = 200  # hot but in the given mask: not counted hot
    frames[:, 70, 5] = 0  # dead (median sum ~30 > -log 1e-9)
    gain = rng.uniform(0.8, 1.2, size=(ny, nx)).astype(np.float32)
    gain[2, 2], gain[3, 3], gain[4, 4] = np.nan, -np.inf, 0.0
    mask = np.zeros((ny, nx), dtype=bool)
    mask[21, 31] = mask[100, 90] = True
    prepared = PreparedFrames(frames, gain=gain, defect_mask=mask)
    bad = ~np.isfinite(gain) | (gain <= 0)
    frame_sum = frames.astype(np.float32).sum(axis=0) * np.where(bad, 0, gain)
    given = bad | mask
    hot = detect_hot_pixels(frame_sum.astype(np.float32)) & ~given
    expected = given | hot | detect_dead_pixels(frame_sum.astype(np.float32))
    assert prepared.n_hot == int(hot.sum()) == 1
    found = np.zeros((ny, nx), dtype=bool)
    found[prepared.ys, prepared.xs] = True
    np.testing.assert_array_equal(found, expected)
    np.testing.assert_array_equal(prepared.good, ~expected)
    assert found[70, 5]
    assert found[21, 31]
    assert found[4, 4]


@pytest.mark.parametrize(
    ("shape", "exposures"),
    [
        ((256, 256), np.arange(1.0, 41.0)),  # uniform: the step's closed form
        ((255, 300), 2.0 + 0.7 * np.arange(1.0, 11.0)),  # odd rows
        ((64, 50), np.array([1.0, 2.5, 3.0, 7.0])),  # irregular exposures
    ],
)
def test_dose_grids_match_the_full_grid(
    shape: tuple[int, int], exposures: np.ndarray
) -> None:
    ny, nx = shape
    ky = np.fft.fftfreq(ny, d=0.83).astype(np.float32)[:, None]
    kx = np.fft.rfftfreq(nx, d=0.83).astype(np.float32)[None, :]
    inv_ne = 1.0 / critical_exposure_e_per_a2(np.sqrt(ky * ky + kx * kx), 300.0)
    weights = np.exp(-0.5 * exposures[:, None, None] * inv_ne[None])
    inv_norm = 1.0 / np.sqrt(np.mean(weights * weights, axis=0))
    steps = np.diff(exposures)
    uniform = bool(np.allclose(steps, steps[0]))
    grids = summing._dose_grids(shape, 0.83, 300.0, tuple(exposures), uniform)
    np.testing.assert_array_equal(grids[0], inv_ne)
    np.testing.assert_allclose(grids[2], inv_norm, rtol=2e-6)
    if uniform:
        assert grids[1] is not None
        np.testing.assert_allclose(
            grids[1], np.exp(-0.5 * steps[0] * inv_ne), rtol=1e-6
        )
    else:
        assert grids[1] is None
    assert not grids[0].flags.writeable  # shared with the next movie
    again = summing._dose_grids(shape, 0.83, 300.0, tuple(exposures), uniform)
    assert again[0] is grids[0]


def test_damage_filters_in_place_match_the_formula() -> None:
    """DamageModel.filters, computed in place in float32, gives exactly
    exp(-E_f / (2 Ne(k))) on the binned rfft2 grid (float32 throughout), and
    its frames decay with exposure."""
    exposures = frame_exposures_e_per_a2(12, 1.3, 0.5)
    damage = DamageModel(
        pixel_size_a=0.9, exposures_e_per_a2=exposures, voltage_kv=200.0
    )
    shape, factor = (48, 40), 2.0
    filters = damage.filters(shape, factor)
    d = 0.9 * factor
    ky = np.fft.fftfreq(shape[0], d=d).astype(np.float32)[:, None]
    kx = np.fft.rfftfreq(shape[1], d=d).astype(np.float32)[None, :]
    inv_ne = 1.0 / critical_exposure_e_per_a2(np.sqrt(ky * ky + kx * kx), 200.0)
    e32 = exposures.astype(np.float32)
    expected = np.exp(-0.5 * e32[:, None, None] * inv_ne[None]).astype(np.float32)
    assert filters.dtype == np.float32
    assert filters.shape == (12, 48, 21)
    np.testing.assert_array_equal(filters, expected)
    assert np.all(np.diff(filters[:, 10, 10]) < 0)  # later frames: less signal


def test_fused_snr_weighting_matches_the_array_path(rng: np.random.Generator) -> None:
    """The numba pass (FrameFilters made inside it) against the array path (a
    stack of the same filters, frame by frame): the weights to float32
    rounding, the refined shifts to 1e-4 px."""
    n, size = 12, 96
    shape = (size, size)
    spectra = np.fft.rfft2(rng.poisson(2.0, size=(n, *shape))).astype(np.complex64)
    spectra[:, 0, 0] = 0
    shifts = rng.normal(scale=1.5, size=(n, 2))
    damage = DamageModel(
        pixel_size_a=1.0,
        exposures_e_per_a2=frame_exposures_e_per_a2(n, 2.0, 0.0),
        voltage_kv=300.0,
    )
    frame_filters = FrameFilters(damage, shape, 2.0)
    stack = np.stack([frame_filters[f] for f in range(n)])  # the array path
    for fused, array in ((frame_filters, stack), (None, None)):
        expected = spectral_snr_weights(spectra, shape, shifts, array)
        if array is None:  # a non-contiguous stack takes the array path too
            expected = spectral_snr_weights(
                np.asfortranarray(spectra), shape, shifts, None
            )
        weights = spectral_snr_weights(spectra, shape, shifts, fused)
        assert weights is not None
        assert expected is not None
        np.testing.assert_allclose(weights, expected, rtol=1e-5, atol=1e-6)
    refined = refine_at_finer_bin(
        spectra,
        shifts / 2,
        shape,
        (2.0, 2.0),
        None,
        make_amplitudes=lambda: frame_filters,
    )
    expected = refine_at_finer_bin(spectra, shifts / 2, shape, (2.0, 2.0), stack)
    np.testing.assert_allclose(refined, expected, atol=1e-4)
    assert np.abs(refined - shifts / 2).max() > 1e-3  # the refinement did move them


def test_quantize_spectrum_matches_the_numpy_formula(rng: np.random.Generator) -> None:
    """Each block's scale is its largest |re|, |im| / 127 and each part is
    floor(x / scale + 0.5) as int8, exactly: a last block shorter than the
    rest (nxh 145 = 2 x 64 + 17), an all-zero block (scale 0, values 0) and a
    block whose largest part is negative (-127)."""
    ny, nxh, block = 6, 145, 64
    spectrum = (rng.normal(size=(ny, nxh)) + 1j * rng.normal(size=(ny, nxh))).astype(
        np.complex64
    ) * np.float32(50.0)
    spectrum[2, 64:128] = 0
    spectrum[4, 3] = -1000 + 1j
    values = np.empty((ny, nxh, 2), dtype=np.int8)
    scales = np.empty((ny, 3), dtype=np.float32)
    _kernels.quantize_spectrum(spectrum, block, values, scales)
    parts = spectrum.view(np.float32).reshape(ny, nxh, 2)
    for b in range(3):
        chunk = parts[:, b * block : (b + 1) * block]
        top = np.abs(chunk).max(axis=(1, 2))
        np.testing.assert_array_equal(scales[:, b], top / np.float32(127.0))
        inv = np.where(top > 0, np.float32(127.0) / np.maximum(top, 1e-30), 0)
        expected = np.floor(chunk * inv[:, None, None].astype(np.float32) + 0.5)
        np.testing.assert_array_equal(values[:, b * block : (b + 1) * block], expected)
    assert scales[2, 1] == 0
    assert not values[2, 64:128].any()
    assert values[4, 3, 0] == -127


@pytest.mark.parametrize(
    ("shape", "size"), [((256, 256), 128), ((250, 300), 64), ((255, 301), 100)]
)
def test_power_spectrum_kernel_matches_the_array_path(
    rng: np.random.Generator, shape: tuple[int, int], size: int
) -> None:
    """The numba pass over the half-spectrum gives the block means of the
    mirrored, fftshift-ed full power (odd sizes, crops off-centre by blocks)."""
    image = rng.normal(size=shape).astype(np.float32)
    image += np.float32(3.0) * np.sin(np.arange(shape[1]) / 3.0).astype(np.float32)
    spectrum = np.fft.rfft2(image).astype(np.complex64)
    ny, nx = shape
    sy, sx = min(size, ny), min(size, nx)
    by, bx = ny // sy, nx // sx
    start = ((ny - by * sy) // 2, (nx - bx * sx) // 2)
    expected = summing._binned_power(spectrum, shape, (sy, sx), start, np)
    found = summing.power_spectrum(spectrum, shape, size=size)
    wanted = np.log10(expected + 1e-30)
    wanted[sy // 2, sx // 2] = np.median(wanted)
    np.testing.assert_allclose(found, wanted, rtol=0, atol=2e-6)
    # the array path (a non-contiguous spectrum) is the function's other branch
    strided = np.asfortranarray(spectrum)
    np.testing.assert_allclose(
        summing.power_spectrum(strided, shape, size=size), wanted, rtol=0, atol=1e-7
    )


@pytest.mark.parametrize("dtype", [np.int8, np.uint16, np.float32, ">i2"])
def test_prepared_frames_gain_kernel_equals_numpy(
    rng: np.random.Generator, dtype: str
) -> None:
    """The numba gain multiply gives np.multiply's float32 values exactly (a
    big-endian movie takes NumPy's path, as does a non-contiguous one)."""
    n, ny, nx = 3, 40, 56
    frames = rng.poisson(5.0, size=(n, ny, nx)).astype(dtype)
    gain = rng.uniform(0.5, 2.0, size=(ny, nx)).astype(np.float32)
    gain[5, 6] = 0.0  # a gain defect: filled from its neighbours after
    prepared = PreparedFrames(frames, gain=gain, hot_pixel_sigma=None)
    strided = PreparedFrames(np.asfortranarray(frames), gain=gain, hot_pixel_sigma=None)
    for i in range(n):
        expected = np.multiply(frames[i], prepared.gain, dtype=np.float32)
        found = prepared(i).copy()
        np.testing.assert_array_equal(found[prepared.good], expected[prepared.good])
        np.testing.assert_array_equal(strided(i), found)
