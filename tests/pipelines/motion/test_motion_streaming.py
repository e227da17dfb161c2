"""The streaming motion path: integer movies prepared one frame at a time, one FFT
per frame for both alignment bands, windowed cross-correlation, cumulative group
sums, the fused shift-and-accumulate sum -- each against the direct computation."""

from __future__ import annotations

import mrcfile
import numpy as np
import pytest
import scipy.fft

from pipelines.io.movies import read_movie
from pipelines.motion._kernels import core as motion_kernels
from pipelines.motion.align import (
    _bfactor_filter,
    _correlation_products,
    _fused_window,
    _group_sums,
    _phase_ramps_1d,
    window_cc,
)
from pipelines.motion.correct import (
    HOLD_MAX_BYTES,
    _held_spectra,
    correct_motion,
    prepare_frames,
)
from pipelines.motion.defects import PreparedFrames
from pipelines.motion.spectra import (
    HELD_EXACT,
    HeldSpectra,
    band_spectra,
    binned_spectra,
    crop_spectrum_to,
    drop_held,
    keep_held,
    take_held,
)
from pipelines.motion.summing import sum_frames
from tests.pipelines.motion_movies import make_movie, random_eer_events, write_eer


def test_window_cc_is_the_irfft2_window(rng):
    for shape, half in (((64, 48), 4), ((33, 40), 7)):
        ny, nx = shape
        product = (
            rng.standard_normal((3, ny, nx // 2 + 1))
            + 1j * rng.standard_normal((3, ny, nx // 2 + 1))
        ).astype(np.complex64)
        full = scipy.fft.irfft2(product, s=shape) * (ny * nx)
        rows = np.arange(-half, half + 1) % ny
        cols = np.arange(-half, half + 1) % nx
        expected = full[:, rows[:, None], cols[None, :]]
        got = window_cc(product, shape, half, np)
        assert got.shape == (3, 2 * half + 1, 2 * half + 1)
        assert np.abs(got - expected).max() < 1e-4 * np.abs(expected).max()


def test_fused_window_equals_the_product_then_window_cc(rng):
    """The numba pass that reduces each row's product to the window's x lags at
    once gives the window of the stack-sized product path."""
    shape = (24, 30)
    spectra = (
        rng.standard_normal((2, 6, 24, 16)) + 1j * rng.standard_normal((2, 6, 24, 16))
    ).astype(np.complex64)
    ramps = _phase_ramps_1d(shape, rng.normal(0, 2, (2, 6, 2)))
    filt = _bfactor_filter(shape, 5.0, np)
    for h, half in ((0, 4), (2, 4), (1, 7)):
        product = np.empty_like(spectra)
        motion_kernels.correlation_products(spectra, *ramps, filt, h, product)
        expected = window_cc(product, shape, half, np).reshape(
            12, *([2 * half + 1] * 2)
        )
        got = _fused_window(spectra, shape, ramps, filt, h, half)
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() < 1e-5 * np.abs(expected).max()


def test_group_sums_from_cumulative_sums_match_the_definition(rng):
    spectra = rng.standard_normal((2, 9, 4, 3)).astype(np.complex64)
    n = spectra.shape[-3]
    for h in (1, 2, 4, 12):
        weighted, plain = _group_sums(spectra.copy(), h, np)
        for i in range(n):
            js = [j for j in range(i - h, i + h + 1) if 0 <= j < n]
            w = [(h + 1 - abs(j - i)) / (h + 1) for j in js]
            ref_plain = spectra[:, js].sum(axis=1)
            ref_weighted = np.tensordot(spectra[:, js], np.array(w), axes=([1], [0]))
            assert np.allclose(plain[:, i], ref_plain, atol=1e-5)
            assert np.allclose(weighted[:, i], ref_weighted, atol=1e-5)


def test_fused_correlation_kernel_equals_the_array_path(rng):
    """The numba pass (phase ramps, total, triangle group sums, product) equals the
    array version, stacks of patches and single stacks, with and without groups."""
    shape = (24, 30)
    for lead, h in (((3,), 2), ((), 0), ((), 4)):
        n = 9
        spectra = (
            rng.standard_normal((*lead, n, 24, 16))
            + 1j * rng.standard_normal((*lead, n, 24, 16))
        ).astype(np.complex64)
        shifts = rng.normal(0.0, 3.0, (*lead, n, 2))
        filt = _bfactor_filter(shape, 5.0, np)
        expected = _correlation_products(spectra, shape, shifts, filt, h, np)
        stacks = spectra.reshape(-1, n, 24, 16)
        ramp_y, ramp_x = _phase_ramps_1d(shape, shifts.reshape(-1, n, 2))
        got = np.empty_like(stacks)
        motion_kernels.correlation_products(stacks, ramp_y, ramp_x, filt, h, got)
        scale = np.abs(expected).max()
        assert np.abs(got.reshape(expected.shape) - expected).max() < 1e-5 * scale


def test_uniform_dose_weights_in_the_kernel_equal_per_frame_weights(rng):
    """A uniform dose takes the closed-form normalisation and the in-kernel weight
    update; a dose that is not uniform the per-frame weights: the same sums."""
    frames = rng.poisson(1.2, (10, 64, 80)).astype(np.float32)
    shifts = rng.normal(0.0, 2.0, (10, 2))
    exposures = np.arange(1.0, 11.0)
    uneven = exposures.copy()
    uneven[4] += 1e-5
    kwargs = {"pixel_size_a": 1.0, "voltage_kv": 300.0, "workers": 1}
    a = sum_frames(frames, shifts, exposures_e_per_a2=exposures, **kwargs)
    b = sum_frames(frames, shifts, exposures_e_per_a2=uneven, **kwargs)
    for got, expected in zip(a, b, strict=True):
        assert np.abs(got - expected).max() < 1e-4 * np.abs(expected).max()


def test_int8_frames_prepared_one_at_a_time_equal_the_float32_stack(rng):
    frames = rng.poisson(2.0, (6, 64, 80)).astype(np.int8)
    frames[:, 10, 20] = 90  # a hot pixel
    gain = (1.0 + 0.05 * rng.standard_normal((64, 80))).astype(np.float32)
    gain[3, 4] = 0.0  # a gain defect
    mask = np.zeros((64, 80), bool)
    mask[30, 30] = True
    expected, n_defects, n_hot = prepare_frames(frames, gain=gain, defect_mask=mask)
    prepared = PreparedFrames(frames, gain=gain, defect_mask=mask)
    assert (prepared.n_defects, prepared.n_hot) == (n_defects, n_hot) == (3, 1)
    assert len(prepared) == 6
    for i in range(6):
        assert np.array_equal(prepared(i), expected[i])
    assert frames[0, 10, 20] == 90  # the movie itself is never modified


def test_one_fft_gives_the_search_band_and_the_refinement_band(rng):
    frames = rng.standard_normal((3, 256, 192)).astype(np.float32)
    search, shape, fine, fine_shape = band_spectra(frames, 4, workers=1)
    expected, expected_shape = binned_spectra(frames, 4, workers=1)
    assert shape == expected_shape == (64, 48)
    assert np.allclose(search, expected, atol=1e-3)
    # refinement band: the lower three quarters of the 2 x 2 block-sum grid
    assert fine_shape == (96, 72)
    blocks = frames.reshape(3, 128, 2, 96, 2).sum(axis=(2, 4))
    direct = crop_spectrum_to(np.fft.rfft2(blocks).astype(np.complex64), fine_shape)
    assert fine is not None
    assert np.allclose(fine, direct, atol=1e-3)
    _, _, none, _ = band_spectra(frames, 4, fine=False, workers=1)
    assert none is None


def _gradient_movie(rng, n=6, shape=(256, 320)):
    """Poisson frames under a 40 % illumination gradient: low frequencies orders
    of magnitude above the shot noise (what the exact low block is for)."""
    ny, nx = shape
    light = 1.5 * (1.0 + 0.4 * np.arange(nx) / nx)[None, :] * np.ones((ny, 1))
    return rng.poisson(np.broadcast_to(light, (n, ny, nx))).astype(np.uint8)


def test_held_spectra_round_off_is_far_below_the_shot_noise(rng):
    frames = _gradient_movie(rng)
    n, ny, nx = frames.shape
    held = HeldSpectra(n, (ny, nx))
    search, shape, fine, fine_shape = band_spectra(frames, 4, hold=held, workers=1)
    spectra = np.fft.rfft2(frames.astype(np.float32)).astype(np.complex64)
    # the search band is cut from the same full-size transform, exactly
    assert np.allclose(search, crop_spectrum_to(spectra, shape), atol=1e-2)
    noise = float(np.mean(np.abs(spectra[:, 64:-64, 64:]) ** 2))
    # the refinement band is cut from the held spectra when it is needed
    assert fine is None
    assert fine_shape == (96, 120)
    band = held.band(fine_shape)
    expected = crop_spectrum_to(spectra, fine_shape)
    assert band.shape == expected.shape
    assert float(np.mean(np.abs(band - expected) ** 2)) < 1e-3 * noise
    assert held.values.nbytes == spectra.nbytes // 4  # 2 bytes per coefficient
    for i in range(n):
        got = held.spectrum(i)
        m = HELD_EXACT  # kept as complex64 (numpy's FFT vs scipy's: 1e-7)
        top = float(np.abs(spectra[i]).max())
        assert np.abs(got[:m, :m] - spectra[i, :m, :m]).max() < 1e-6 * top
        assert np.abs(got[-m:, :m] - spectra[i, -m:, :m]).max() < 1e-6 * top
        error = float(np.mean(np.abs(got - spectra[i]) ** 2))
        assert 0 < error < 1e-3 * noise  # int8 with a scale per 64 values: ~4e-5


@pytest.mark.parametrize("uniform", [True, False])
def test_sum_of_held_spectra_equals_the_sum_of_transformed_frames(rng, uniform):
    frames = _gradient_movie(rng)
    n, ny, nx = frames.shape
    shifts = rng.normal(0, 3, (n, 2))
    # uniform: the one-pass kernel advances each weight by a factor; else the
    # exposures are irregular and every frame's weight is its own exponential
    exposures = np.arange(1, n + 1.0) if uniform else np.cumsum(rng.uniform(0.5, 3, n))
    kwargs = {
        "pixel_size_a": 1.0,
        "exposures_e_per_a2": exposures,
        "voltage_kv": 300,
        "workers": 1,
    }
    held = HeldSpectra(n, (ny, nx))
    band_spectra(frames, 4, hold=held, workers=1)
    expected = sum_frames(frames, shifts, **kwargs)
    got = sum_frames(frames, shifts, held=held, **kwargs)
    for a, b in zip(got, expected, strict=True):
        assert float(np.mean(np.abs(a - b) ** 2)) < 1e-3 * float(np.var(b))
    # a local model: the held spectra are summed in temporal blocks, each block's
    # sums warped once (pipelines.motion.blocks); a zero model is one block and
    # the identity warp, so the sums are the held sums without a model
    local = np.zeros((2, 18))
    in_blocks = sum_frames(
        frames, shifts, local_coefficients=local, held=held, **kwargs
    )
    for a, b in zip(in_blocks[:2], got[:2], strict=True):
        assert np.allclose(a, b, rtol=1e-5, atol=1e-5 * float(np.abs(b).max()))
    # the plain spectrum is the rfft2 of the real sum: Hermitian where the held
    # sum's rounding is not (columns 0 and Nyquist)
    error = float(np.mean(np.abs(in_blocks[2] - got[2]) ** 2))
    assert error < 1e-3 * float(np.var(got[2]))
    # without a tolerance every frame is prepared again and warped by its own field
    direct = sum_frames(frames, shifts, local_coefficients=local, **kwargs)
    exact = sum_frames(
        frames,
        shifts,
        local_coefficients=local,
        held=held,
        local_tolerance_px=None,
        **kwargs,
    )
    assert np.array_equal(direct[1], exact[1])


def test_spectra_are_held_only_within_the_memory_limit():
    held = _held_spectra(4, (256, 320), np)
    assert held is not None
    assert held.shape == (256, 320)
    # 40 super-resolution 8192² fractions would hold 2.7 GB: transformed twice instead
    assert HOLD_MAX_BYTES < 40 * 8192 * 4097 * 2
    assert HOLD_MAX_BYTES >= 40 * 4096 * 2049 * 2  # a 4096² x 40 movie is held
    assert _held_spectra(40, (8192, 8192), np) is None
    assert _held_spectra(1, (256, 320), np) is None  # nothing to align


def test_sum_from_prepared_integer_frames_equals_the_float_path(rng):
    frames = rng.poisson(1.5, (5, 96, 128)).astype(np.uint8)
    gain = (1.0 + 0.05 * rng.standard_normal((96, 128))).astype(np.float32)
    shifts = rng.normal(0, 2, (5, 2))
    kwargs = {
        "pixel_size_a": 1.0,
        "exposures_e_per_a2": np.arange(1, 6.0),
        "voltage_kv": 300,
    }
    work, _, _ = prepare_frames(frames, gain=gain)
    prepared = PreparedFrames(frames, gain=gain)
    dw, no_dw, _ = sum_frames(frames, shifts, prepare=prepared, workers=1, **kwargs)
    # the reference: the frames shifted one by one with numpy's own FFT
    ky = np.fft.fftfreq(96)[:, None]
    kx = np.fft.rfftfreq(128)[None, :]
    plain = sum(
        np.fft.rfft2(work[t]) * np.exp(-2j * np.pi * (kx * sx + ky * sy))
        for t, (sx, sy) in enumerate(shifts)
    )
    assert np.allclose(no_dw, np.fft.irfft2(plain, s=(96, 128)), atol=1e-3)
    dw_float, no_dw_float, _ = sum_frames(work, shifts, workers=1, **kwargs)
    assert np.allclose(dw, dw_float, atol=1e-4)
    assert np.allclose(no_dw, no_dw_float, atol=1e-4)


def test_correct_motion_on_the_raw_integers_equals_on_float32(rng):
    movie = make_movie(rng, n_frames=12, size=256, dose_per_frame_e_per_a2=2.0)
    counts = np.clip(np.round(movie.frames), 0, 127).astype(np.int8)
    kwargs = {
        "pixel_size_a": 1.0,
        "dose_per_frame_e_per_a2": 2.0,
        "voltage_kv": 300.0,
        "patches": None,
    }
    raw = correct_motion(counts, workers=1, **kwargs)
    as_float = correct_motion(counts.astype(np.float32), workers=1, **kwargs)
    assert np.allclose(raw.shifts_px, as_float.shifts_px, atol=1e-6)
    assert np.allclose(raw.micrograph, as_float.micrograph, atol=1e-4)
    truth = -(movie.drift_px - movie.drift_px[0])
    assert np.sqrt(np.mean(np.sum((raw.shifts_px - truth) ** 2, axis=1))) < 0.2


def test_native_reading_keeps_one_byte_per_pixel(tmp_path, rng):
    data = rng.integers(0, 5, (4, 40, 56)).astype(np.int8)
    path = tmp_path / "movie.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(data)
    native = read_movie(path, native=True)
    assert native.dtype == np.int8
    assert np.array_equal(native, data)
    shape = (32, 40)
    events = random_eer_events(rng, 6, shape, rate=0.2)
    eer = tmp_path / "movie.eer"
    write_eer(str(eer), events, shape)
    grouped = read_movie(eer, eer_frames_per_group=3, native=True)
    assert grouped.dtype == np.uint8
    assert np.array_equal(grouped, read_movie(eer, eer_frames_per_group=3))


def test_held_store_is_reused_only_for_the_same_size_and_never_shared():
    drop_held()
    first = take_held(4, (64, 96))
    assert take_held(4, (64, 96)) is not first  # taken out: a second movie gets its own
    keep_held(first)
    assert take_held(4, (64, 96)) is first
    keep_held(first)
    other = take_held(5, (64, 96))  # another size: a new store, the kept one freed
    assert other is not first
    assert len(other) == 5
    assert take_held(4, (64, 96)) is not first
    drop_held()


def test_two_movies_in_a_row_give_what_each_gives_alone(rng):
    """The held store kept from one movie carries nothing into the next."""
    kwargs = {
        "pixel_size_a": 1.0,
        "dose_per_frame_e_per_a2": 2.0,
        "voltage_kv": 300.0,
        "workers": 1,
        "save_no_dw": True,
    }
    movies = []
    for amplitude in (0.0, 1.5):  # the second one with local motion (blocks)
        movie = make_movie(
            rng,
            n_frames=12,
            size=256,
            dose_per_frame_e_per_a2=2.0,
            local_amplitude_px=amplitude,
        )
        movies.append(np.clip(np.round(movie.frames), 0, 127).astype(np.int8))
    alone = []
    for frames in movies:
        drop_held()  # each alone: a new store
        alone.append(correct_motion(frames, **kwargs))
    drop_held()
    first = correct_motion(movies[0], **kwargs)
    store = take_held(12, (256, 256))  # the first movie's, kept
    keep_held(store)
    second = correct_motion(movies[1], **kwargs)
    assert take_held(12, (256, 256)) is store  # the second movie reused it
    in_a_row = [first, second]
    assert first.local is None  # the global path, then the local one (blocks)
    assert second.local is not None
    assert not np.array_equal(first.micrograph, second.micrograph)
    for one, row in zip(alone, in_a_row, strict=True):
        assert np.array_equal(one.shifts_px, row.shifts_px)
        assert np.array_equal(one.micrograph, row.micrograph)
        assert np.array_equal(one.micrograph_no_dw, row.micrograph_no_dw)
        assert (one.local is None) == (row.local is None)
    drop_held()
