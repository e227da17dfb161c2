"""Motion correction of an array of frames: gain, defects, global and local
alignment, dose weighting (MotionCor2 / RELION-motioncorr class).

Steps (each a public function, so benchmarks can time them):

1. :func:`prepare_frames` — multiply by the gain, replace defects and hot pixels
   (outliers of the frame sum) by the mean of good neighbours.
2. :func:`align_global` — bin to at most ``ALIGN_MAX_PX`` pixels by Fourier
   cropping (:mod:`pipelines.motion.spectra`: no aliasing, so no bias towards
   whole binned pixels), weight each frame by its expected damaged signal (matched
   filter), iterate the cross-correlation of every frame with the sum of the others
   (coarse pass at a strong B-factor, then ``bfactor_px2``, then weighted by the
   movie's measured spectral SNR, :mod:`pipelines.motion.weighting`, refined at
   half the bin factor when binned), sub-pixel peaks, smooth the trajectory in time
   (:mod:`pipelines.motion.trajectory`).
3. :func:`pipelines.motion.local.align_patches` — the same on ``patches`` of the
   globally aligned frames, fitted by RELION's third-order polynomial.
4. :func:`pipelines.motion.summing.sum_frames` — warp, shift, dose-weight and sum.

Shift convention (RELION's ``rlnMicrographShiftX/Y``): ``shifts_px[i]`` is the
correction applied to frame ``i``, relative to the first frame (row 0 is
``[0, 0]``); a specimen that drifted by ``+d`` pixels has shift ``-d``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from pipelines.motion.align import align_stack, fft_kwargs, shift_spectra
from pipelines.motion.defects import (
    PreparedFrames,
    apply_gain,
    detect_dead_pixels,
    detect_hot_pixels,
    mask_defects,
)
from pipelines.motion.dose import (
    DamageModel,
    FrameFilters,
    frame_exposures_e_per_a2,
)
from pipelines.motion.local import LocalMotion, align_patches
from pipelines.motion.spectra import (
    HeldSpectra,
    band_spectra,
    crop_spectrum_to,
    frame_bands,
    keep_held,
    take_held,
)
from pipelines.motion.summing import power_spectrum, sum_frames
from pipelines.motion.trajectory import smooth_trajectory
from pipelines.motion.weighting import refine_at_finer_bin, spectral_snr_weights
from pipelines.xp import fft_module, to_numpy

__all__ = [
    "ALIGN_MAX_PX",
    "HOLD_MAX_BYTES",
    "MotionResult",
    "accumulated_motion_a",
    "align_global",
    "correct_motion",
    "prepare_frames",
]

ALIGN_MAX_PX = 1024  # global alignment works on frames binned to at most this size
# the coarse global pass works on the search band cut to at most this size (its
# low-resolution part: the pass only gives the per-frame pass its start, within
# ±4 search px), with at most COARSE_ITERATIONS iterations at COARSE_TOLERANCE_PX
# (search px): its grouped sums never met 0.01 px in 10 iterations at 4096²
COARSE_MAX_PX = 512
COARSE_ITERATIONS = 4
COARSE_TOLERANCE_PX = 0.05
COARSE_GROUP_DOSE_E_PER_A2 = (
    4.0  # frames are grouped to about this dose for the coarse pass
)
EARLY_FRAMES = 4  # RELION: motion up to frame 4 is "early"
# the most memory the frames' held spectra may take (2 bytes per coefficient:
# 0.67 GB for 4096² x 40; an 8192² super-resolution EER movie of 40 fractions,
# 2.7 GB, is transformed twice instead)
HOLD_MAX_BYTES = 1_000_000_000
# global B-factor (px²) with damage-matched filters (dose known) and without
DAMAGE_BFACTOR_PX2 = 20.0
PLAIN_BFACTOR_PX2 = 500.0


@dataclass(frozen=True, slots=True, kw_only=True)
class MotionResult:
    """Everything motion correction produces for one movie.

    ``micrograph`` (dose-weighted) and ``micrograph_no_dw`` are ``(ny, nx)``
    float32; ``power_spectrum`` ``(ps, ps)`` centred log10 power of the plain sum;
    ``shifts_px`` ``(n_frames, 2)`` global correction shifts [x, y] relative to the
    first frame (RELION's sign); ``local`` the fitted local model or None;
    ``accumulated_motion_a`` ``(n_frames,)`` path length travelled up to each frame.
    """

    micrograph: np.ndarray
    micrograph_no_dw: np.ndarray | None
    power_spectrum: np.ndarray
    shifts_px: np.ndarray
    local: LocalMotion | None
    accumulated_motion_a: np.ndarray
    early_motion_a: float
    late_motion_a: float
    total_motion_a: float
    pixel_size_a: float
    dose_per_frame_e_per_a2: float
    pre_exposure_e_per_a2: float
    voltage_kv: float
    n_defect_pixels: int
    n_hot_pixels: int

    @property
    def local_coefficients(self) -> np.ndarray | None:
        """``(2, 18)`` RELION polynomial coefficients, or None."""
        return None if self.local is None else self.local.coefficients


def prepare_frames(
    frames: np.ndarray,
    *,
    gain: np.ndarray | None = None,
    defect_mask: np.ndarray | None = None,
    hot_pixel_sigma: float | None = 10.0,
    overwrite_input: bool = False,
) -> tuple[np.ndarray, int, int]:
    """Gain-corrected, defect-free float32 frames, the number of defect pixels
    replaced (gain defects, ``defect_mask``, hot and dead pixels) and of hot pixels
    found.  ``frames`` ``(n, ny, nx)``; ``gain``/``defect_mask``
    ``(ny, nx)`` already oriented like the frames."""
    if frames.ndim != 3:
        raise ValueError(f"frames must be (n_frames, ny, nx), got shape {frames.shape}")
    if overwrite_input and frames.dtype == np.float32 and frames.flags.c_contiguous:
        work = frames
    else:
        work = np.array(frames, dtype=np.float32, order="C")
    defects = np.zeros(work.shape[1:], dtype=bool)
    if gain is not None:
        defects |= apply_gain(work, np.asarray(gain, dtype=np.float32))
    if defect_mask is not None:
        mask = np.asarray(defect_mask, dtype=bool)
        if mask.shape != defects.shape:
            raise ValueError(f"defect_mask {mask.shape} vs frames {defects.shape}")
        defects |= mask
    n_hot = 0
    if hot_pixel_sigma is not None:
        frame_sum = work.sum(axis=0, dtype=np.float32)
        hot = detect_hot_pixels(frame_sum, n_sigma=hot_pixel_sigma)
        hot &= ~defects
        n_hot = int(hot.sum())
        defects |= hot | detect_dead_pixels(frame_sum)
    n_defects = mask_defects(work, defects)
    return work, n_defects, n_hot


def align_global(
    frames: Any,
    *,
    bfactor_px2: float = 500.0,
    max_shift_px: float = 80.0,
    group_half_width: int = 0,
    damage: DamageModel | None = None,
    smooth: bool = False,
    snr_weighting: bool = True,
    prepare: Callable[[int], Any] | None = None,
    hold: HeldSpectra | None = None,
    workers: int = -1,
    xp: ModuleType = np,
) -> tuple[np.ndarray, Any, int]:
    """Global correction shifts ``(n, 2)`` (unbinned px), the globally aligned
    binned frames ``(n, my, mx)`` and the bin factor used.

    A coarse pass at B-factor ``max(bfactor_px2, PLAIN_BFACTOR_PX2)`` (with
    ``group_half_width`` ``h`` > 0 on sums of ``2h + 1`` neighbouring frames: robust
    at low dose per frame) searches ``max_shift_px``; the per-frame pass at
    ``bfactor_px2`` then refines within ±4 (binned) px of it; with
    ``snr_weighting`` a last pass weights the frequencies by the spectral SNR
    measured on the frames so aligned (:func:`spectral_snr_weights`) instead of a
    B-factor.  Frames are binned by Fourier cropping
    (:func:`pipelines.motion.spectra.binned_spectra`).  With ``damage`` each frame's spectrum
    is weighted by its expected signal ``exp(-N_f / (2 Ne(k)))`` (a matched filter:
    early frames keep their high-resolution signal, late ones only low).  With
    ``smooth`` the trajectory is smoothed in time (GCV-chosen Whittaker smoother,
    :mod:`pipelines.motion.trajectory`) before the frames are aligned by it.

    All binned spectra come from one pass over the frames with one FFT each
    (:func:`pipelines.motion.spectra.band_spectra`); ``prepare(i)`` gives frame
    ``i`` as gain-corrected float32 when ``frames`` are the file's raw integers;
    with ``hold`` that pass transforms each frame at full size and keeps the
    spectra for the final sum (:class:`pipelines.motion.spectra.HeldSpectra`)."""
    fft = fft_module(xp)
    _, ny, nx = frames.shape
    factor = max(1, int(np.ceil(max(ny, nx) / ALIGN_MAX_PX)))
    spectra, shape, fine, fine_shape = band_spectra(
        frames,
        factor,
        fine=snr_weighting and factor > 1,
        prepare=prepare,
        hold=hold,
        workers=workers,
        xp=xp,
    )
    amplitudes = None if damage is None else damage.filters(shape, factor, xp=xp)
    weighted = spectra if amplitudes is None else spectra * amplitudes
    # coarse pass: a strong B-factor (broad peak, low-resolution signal) finds the
    # trajectory over the whole search range; the fine pass refines within ±4 px, so
    # a sharp, noisy fine-pass correlation cannot jump to a noise peak far away
    coarse_shape = shape
    coarse_spectra = weighted
    if max(shape) > COARSE_MAX_PX:  # the band's low-resolution part only
        cut = max(shape) / COARSE_MAX_PX
        coarse_shape = (
            max(2, 2 * int(shape[0] / (2 * cut))),
            max(2, 2 * int(shape[1] / (2 * cut))),
        )
        coarse_spectra = crop_spectrum_to(weighted, coarse_shape, xp=xp)
    coarse_scale = xp.asarray(
        [shape[1] / coarse_shape[1], shape[0] / coarse_shape[0]], dtype=xp.float64
    )
    coarse = (
        align_stack(
            coarse_spectra,
            coarse_shape,
            bfactor_px2=max(bfactor_px2, PLAIN_BFACTOR_PX2)
            / (factor**2 * float(xp.mean(coarse_scale)) ** 2),
            max_shift_px=max_shift_px / (factor * float(xp.min(coarse_scale))),
            group_half_width=group_half_width,
            n_iterations=COARSE_ITERATIONS,
            tolerance_px=COARSE_TOLERANCE_PX / float(xp.max(coarse_scale)),
            workers=workers,
            xp=xp,
        )
        * coarse_scale
    )
    del coarse_spectra
    shifts = align_stack(
        weighted,
        shape,
        bfactor_px2=bfactor_px2 / factor**2,
        max_shift_px=max_shift_px / factor,
        initial_shifts_px=coarse,
        workers=workers,
        xp=xp,
    )
    del weighted
    if snr_weighting:
        # final pass: frequencies weighted by the movie's measured spectral SNR
        weights = spectral_snr_weights(spectra, shape, shifts, amplitudes, xp=xp)
        if weights is not None:
            snr_weighted = spectra * xp.sqrt(weights)  # one stack-sized temporary
            if amplitudes is not None:
                snr_weighted *= amplitudes
            shifts = align_stack(
                snr_weighted,
                shape,
                bfactor_px2=0.0,
                max_shift_px=max_shift_px / factor,
                initial_shifts_px=shifts,
                workers=workers,
                xp=xp,
            )
            del snr_weighted
        del amplitudes
        if fine is None and hold is not None and factor > 1:
            fine = hold.band(fine_shape)  # cut now: no memory during the search
        if fine is not None:
            scale = (fine_shape[1] / shape[1], fine_shape[0] / shape[0])
            fine_bin = factor * shape[0] / fine_shape[0]
            shifts = refine_at_finer_bin(
                fine,
                shifts,
                fine_shape,
                scale,
                None,
                overwrite=True,
                # one frame at a time: no stack of filters (0.19 GB at 4096²)
                make_amplitudes=None
                if damage is None
                else lambda: FrameFilters(damage, fine_shape, fine_bin, xp=xp),
                workers=workers,
                xp=xp,
            )
            del fine
    if smooth:
        smoothed, _ = smooth_trajectory(to_numpy(shifts))
        shifts = xp.asarray(smoothed)
    aligned = fft.irfft2(
        shift_spectra(spectra, shape, shifts, xp=xp),
        s=shape,
        axes=(-2, -1),
        **fft_kwargs(xp, workers),
    ).astype(xp.float32, copy=False)  # float32 already: no 168 MB copy at 4096²
    return to_numpy(shifts) * factor, aligned, factor


def accumulated_motion_a(shifts_px: np.ndarray, pixel_size_a: float) -> np.ndarray:
    """Path length (Å) travelled up to each frame, ``(n_frames,)``; 0 at frame 0."""
    steps = np.linalg.norm(np.diff(shifts_px, axis=0), axis=1) * pixel_size_a
    return np.concatenate([[0.0], np.cumsum(steps)])


def _held_spectra(
    n_frames: int, shape: tuple[int, int], xp: ModuleType
) -> HeldSpectra | None:
    """Where the spectra of the alignment pass can be kept for the final sum: NumPy,
    several frames, at most ``HOLD_MAX_BYTES`` held, and search bands
    (``align_global``'s bin) covering the frame; else None (each frame is then
    prepared and transformed again for the sum).  The store is the previous
    movie's when it has the same size (:func:`pipelines.motion.spectra.take_held`;
    handed back with :func:`pipelines.motion.spectra.keep_held`)."""
    if n_frames < 2 or xp is not np:
        return None
    if n_frames * shape[0] * (shape[1] // 2 + 1) * 2 > HOLD_MAX_BYTES:
        return None  # long or super-resolution movies: transform twice instead
    factor = max(1, int(np.ceil(max(shape) / ALIGN_MAX_PX)))
    block, grid = frame_bands(shape, factor)
    if (grid[0] * block, grid[1] * block) != shape:
        return None
    return take_held(n_frames, shape)


def correct_motion(
    frames: np.ndarray,
    *,
    pixel_size_a: float,
    dose_per_frame_e_per_a2: float,
    voltage_kv: float,
    pre_exposure_e_per_a2: float = 0.0,
    gain: np.ndarray | None = None,
    defect_mask: np.ndarray | None = None,
    patches: tuple[int, int] | None = (5, 5),
    bfactor_px2: float | None = None,
    smooth: bool = True,
    local_bfactor_px2: float = 150.0,
    max_shift_px: float = 80.0,
    hot_pixel_sigma: float | None = 10.0,
    power_spectrum_size: int = 512,
    save_no_dw: bool = False,
    workers: int | None = None,
    xp: ModuleType = np,
) -> MotionResult:
    """Motion-correct ``frames`` ``(n_frames, ny, nx)`` (counts, any real dtype).

    ``gain`` and ``defect_mask`` are ``(ny, nx)`` in the frames' orientation;
    ``patches`` ``(n_y, n_x)`` or None for global alignment only; B-factors in
    unbinned px² (``bfactor_px2`` None: ``DAMAGE_BFACTOR_PX2`` when the dose is
    known, as the frames are then weighted by their expected damaged signal, else
    ``PLAIN_BFACTOR_PX2``).  With ``smooth`` the global trajectory is smoothed in
    time (:func:`pipelines.motion.trajectory.smooth_trajectory`).  ``workers`` threads for the FFTs (default: all CPUs).
    ``frames`` may stay in the file's integer type (one byte per pixel for
    counting detectors): gain and defects are applied one frame at a time
    (:class:`pipelines.motion.defects.PreparedFrames`) and ``frames`` is never
    modified.  With ``save_no_dw`` the plain (not dose-weighted) sum is made too
    (``micrograph_no_dw``, else None; RELION's ``--save_noDW``, off by default).
    """
    if pixel_size_a <= 0 or not np.isfinite(pixel_size_a):
        raise ValueError(f"pixel_size_a must be positive, got {pixel_size_a!r}")
    if dose_per_frame_e_per_a2 < 0:
        raise ValueError(
            f"dose_per_frame_e_per_a2 must be >= 0, got {dose_per_frame_e_per_a2!r}"
        )
    n_workers = workers if workers is not None else (os.cpu_count() or 1)
    if frames.ndim != 3:
        raise ValueError(f"frames must be (n_frames, ny, nx), got shape {frames.shape}")
    prepared = PreparedFrames(
        frames,
        gain=gain,
        defect_mask=defect_mask,
        hot_pixel_sigma=hot_pixel_sigma,
    )
    n_defects, n_hot = prepared.n_defects, prepared.n_hot
    n_frames, ny, nx = frames.shape
    group = 0
    if 0 < dose_per_frame_e_per_a2 < COARSE_GROUP_DOSE_E_PER_A2:
        group = int(
            np.ceil((COARSE_GROUP_DOSE_E_PER_A2 / dose_per_frame_e_per_a2 - 1) / 2)
        )
    exposures = frame_exposures_e_per_a2(
        n_frames, dose_per_frame_e_per_a2, pre_exposure_e_per_a2
    )
    damage = None
    if dose_per_frame_e_per_a2 > 0:
        damage = DamageModel(
            pixel_size_a=pixel_size_a,
            exposures_e_per_a2=exposures,
            voltage_kv=voltage_kv,
        )
    if bfactor_px2 is None:
        bfactor_px2 = PLAIN_BFACTOR_PX2 if damage is None else DAMAGE_BFACTOR_PX2
    held = _held_spectra(n_frames, (ny, nx), xp)
    if n_frames > 1:
        shifts, aligned, factor = align_global(
            frames,
            group_half_width=min(group, (n_frames - 1) // 2),
            bfactor_px2=bfactor_px2,
            max_shift_px=max_shift_px,
            damage=damage,
            smooth=smooth,
            prepare=prepared,
            hold=held,
            workers=n_workers,
            xp=xp,
        )
    else:
        shifts, aligned, factor = np.zeros((1, 2)), None, 1
    local = None
    if patches is not None and n_frames >= 4 and patches[0] * patches[1] >= 6:
        local = align_patches(
            aligned,
            factor,
            (ny, nx),
            patches=patches,
            bfactor_px2=local_bfactor_px2,
            group_half_width=min(group, (n_frames - 1) // 2),
            damage=damage,
            workers=n_workers,
            xp=xp,
        )
        if not local.significant:  # noise would explain the patches as well
            local = None
    dw, no_dw, spectrum = sum_frames(
        frames,
        shifts,
        pixel_size_a=pixel_size_a,
        exposures_e_per_a2=exposures,
        voltage_kv=voltage_kv,
        local_coefficients=None if local is None else local.coefficients,
        prepare=prepared,
        held=held,
        plain_sum=save_no_dw,
        workers=n_workers,
        xp=xp,
    )
    if held is not None:  # for the next movie of this size (not on an error)
        keep_held(held)
    del held
    ps = power_spectrum(spectrum, (ny, nx), size=power_spectrum_size, xp=xp)
    accumulated = accumulated_motion_a(shifts, pixel_size_a)
    early = float(accumulated[min(EARLY_FRAMES, n_frames - 1)])
    total = float(accumulated[-1])
    return MotionResult(
        micrograph=to_numpy(dw),
        micrograph_no_dw=None if no_dw is None else to_numpy(no_dw),
        power_spectrum=to_numpy(ps),
        shifts_px=shifts,
        local=local,
        accumulated_motion_a=accumulated,
        early_motion_a=early,
        late_motion_a=total - early,
        total_motion_a=total,
        pixel_size_a=float(pixel_size_a),
        dose_per_frame_e_per_a2=float(dose_per_frame_e_per_a2),
        pre_exposure_e_per_a2=float(pre_exposure_e_per_a2),
        voltage_kv=float(voltage_kv),
        n_defect_pixels=n_defects,
        n_hot_pixels=n_hot,
    )
