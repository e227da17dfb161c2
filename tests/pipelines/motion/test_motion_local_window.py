"""The patch passes' narrow correlation window (``local.PATCH_WINDOW_PX``): 3 × 3
lags at bin 4 instead of align_stack's 5 × 5, the same shifts where the
iterations stop; the grouped patch pass on cropped spectra
(``local.COARSE_CROP``), the same converged patch shifts."""

from __future__ import annotations

import numpy as np

import pipelines.motion.align as align_module
import pipelines.motion.local as local_module
from tests.pipelines.motion_movies import make_texture


def _stack_spectra(rng: np.random.Generator, shifts: np.ndarray) -> np.ndarray:
    """rfft2 ``(2, n, 64, 33)`` of two noisy textures, each frame moved by
    ``shifts`` ``(n, 2)`` [x, y] px (Fourier shift), mean removed."""
    size = 64
    ky = np.fft.fftfreq(size)[:, None]
    kx = np.fft.rfftfreq(size)[None, :]
    stacks = []
    for _ in range(2):
        image = np.fft.rfft2(make_texture(rng, (size, size)))
        ramps = np.exp(
            -2j
            * np.pi
            * (
                kx[None] * shifts[:, 0, None, None]
                + ky[None] * shifts[:, 1, None, None]
            )
        )
        frames = np.fft.irfft2(image[None] * ramps, s=(size, size), axes=(-2, -1))
        frames += 0.5 * rng.standard_normal(frames.shape)
        frames -= frames.mean()
        stacks.append(np.fft.rfft2(frames, axes=(-2, -1)))
    return np.stack(stacks).astype(np.complex64)


def test_narrow_refine_window_stops_at_the_same_shifts(monkeypatch, rng):
    """Sub-pixel shifts, refinement from zero: the iterations stop where every
    peak is at the window's centre, so the 3 × 3 window gives the 5 × 5
    window's shifts to within the iterations' tolerance (1e-4 px; the paths
    differ where a first peak is off centre), and the narrow window is what
    was searched."""
    n = 8
    shifts = rng.uniform(-0.4, 0.4, size=(n, 2))
    spectra = _stack_spectra(rng, shifts)
    widths: list[int] = []
    peaks = align_module._subpixel_peaks

    def recorded(window, xp):
        widths.append(int(window.shape[-1]))
        return peaks(window, xp)

    monkeypatch.setattr(align_module, "_subpixel_peaks", recorded)
    results = {}
    for half in (2, 1):
        widths.clear()
        results[half] = align_module.align_stack(
            spectra,
            (64, 64),
            bfactor_px2=20.0,
            max_shift_px=1.0,
            initial_shifts_px=np.zeros((2, n, 2)),
            tolerance_px=1e-4,
            refine_half_px=half,
            workers=1,
        )
        assert widths
        assert set(widths) == {2 * half + 1}
    truth = -(shifts - shifts[0])
    assert np.sqrt(np.mean((results[2] - truth) ** 2)) < 0.1  # it did align
    np.testing.assert_allclose(results[1], results[2], atol=1e-4)


def test_patch_window_follows_the_bin(monkeypatch, rng):
    """4 unbinned px rounded up to binned px: 1 at bin 4 (both patch passes),
    4 at bin 1 (align_stack's REFINE_WINDOW_PX, as before)."""
    seen: list[int] = []
    align_stack = local_module.align_stack

    def recorded(*args, **kwargs):
        seen.append(kwargs["refine_half_px"])
        return align_stack(*args, **kwargs)

    monkeypatch.setattr(local_module, "align_stack", recorded)
    aligned = rng.standard_normal((8, 160, 160)).astype(np.float32)
    for bin_factor, expected in ((4, 1), (1, align_module.REFINE_WINDOW_PX)):
        seen.clear()
        local_module.align_patches(
            aligned,
            bin_factor,
            (160 * bin_factor, 160 * bin_factor),
            patches=(3, 3),
            bfactor_px2=150.0,
            group_half_width=1,
            workers=1,
        )
        assert len(seen) == 2
        assert seen == [expected, expected]


def test_grouped_pass_on_cropped_spectra_converges_to_the_same_shifts(monkeypatch, rng):
    """Boxes of >= 256 px: the grouped pass runs on half the band (its stack
    shape says so), and the per-frame pass, which runs on the whole band, ends
    within 0.01 px of the shifts started from the uncropped grouped pass."""
    n, size = 8, 640
    drift = rng.uniform(-0.4, 0.4, size=(n, 2))
    texture = np.fft.rfft2(make_texture(rng, (size, size)))
    ky = np.fft.fftfreq(size)[:, None]
    kx = np.fft.rfftfreq(size)[None, :]
    ramps = np.exp(
        -2j
        * np.pi
        * (kx[None] * drift[:, 0, None, None] + ky[None] * drift[:, 1, None, None])
    )
    frames = np.fft.irfft2(texture[None] * ramps, s=(size, size), axes=(-2, -1))
    frames += 0.5 * rng.standard_normal(frames.shape)
    aligned = frames.astype(np.float32)
    shapes: list[tuple[int, ...]] = []
    align_stack = local_module.align_stack

    def recorded(spectra, shape, **kwargs):
        shapes.append(tuple(shape))
        return align_stack(spectra, shape, **kwargs)

    monkeypatch.setattr(local_module, "align_stack", recorded)
    results = {}
    for min_box in (10**6, local_module.COARSE_CROP_MIN_BOX_PX):
        monkeypatch.setattr(local_module, "COARSE_CROP_MIN_BOX_PX", min_box)
        shapes.clear()
        results[min_box] = local_module.align_patches(
            aligned,
            1,
            (size, size),
            patches=(3, 3),
            bfactor_px2=150.0,
            group_half_width=1,
            workers=1,
        ).patch_shifts_px
        box = 2 * round(0.625 * size / 3)
        grouped = box if min_box > box else 2 * int(box * local_module.COARSE_CROP / 2)
        assert shapes == [(grouped, grouped), (box, box)]
    uncropped, cropped = results.values()
    np.testing.assert_allclose(cropped, uncropped, atol=0.01)
