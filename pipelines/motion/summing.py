"""Summing aligned frames: local warp, global shift, dose weighting, power spectrum.

With the frames' spectra held from the alignment pass
(:class:`pipelines.motion.spectra.HeldSpectra`) they are shifted by their global
correction (exact phase ramp), dose-weighted and summed in one pass, and two
inverse transforms finish the job.  With a local model the held spectra are summed
in temporal blocks (:mod:`pipelines.motion.blocks`): each block's two sums are
transformed back and warped by the block's mean local field.  Otherwise (no held
spectra, or as many blocks as frames would not save) each frame is prepared again,
resampled by its local polynomial correction, transformed, shifted and added.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import lru_cache
from types import ModuleType
from typing import Any, cast

import numpy as np

from pipelines.motion._kernels import core as _motion_kernels
from pipelines.motion._kernels import power as _power_kernels
from pipelines.motion.align import fft_kwargs, phase_ramp
from pipelines.motion.blocks import (
    LOCAL_BLOCK_DOSE_CAP,
    LOCAL_BLOCK_TOLERANCE_PX,
    MAX_BLOCKS_PER_FRAME,
    block_coefficients,
    dose_tolerance_scale,
    local_blocks,
    spatial_coefficients,
    start_weights,
    sum_held_block,
    warp_block_add,
)
from pipelines.motion.dose import critical_exposure_e_per_a2
from pipelines.motion.spectra import HeldSpectra
from pipelines.xp import fft_module, to_numpy

__all__ = ["power_spectrum", "sum_frames"]


def _local_coefficients_at(
    coefficients: np.ndarray, z: float
) -> tuple[np.ndarray, np.ndarray]:
    spatial = spatial_coefficients(coefficients, np.array([z]))[0]  # (2, 6)
    return np.ascontiguousarray(spatial[0]), np.ascontiguousarray(spatial[1])


def _blocks_that_save(
    coefficients: np.ndarray,
    n_frames: int,
    tolerance_px: float | None,
    scale: np.ndarray | None = None,
) -> list[tuple[int, int]] | None:
    """The temporal blocks of the local warp
    (:func:`pipelines.motion.blocks.local_blocks`, per-frame tolerance factors
    ``scale``), or None when ``tolerance_px`` is None or they would not save
    (more than ``MAX_BLOCKS_PER_FRAME`` per frame: the field moves too fast)."""
    if tolerance_px is None:
        return None
    blocks = local_blocks(
        coefficients, n_frames, tolerance_px=tolerance_px, scale=scale
    )
    return blocks if len(blocks) <= MAX_BLOCKS_PER_FRAME * n_frames else None


def _sum_held(
    held: HeldSpectra,
    shifts_px: np.ndarray,
    damage: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None],
    blocks: list[tuple[int, int]] | None,
    coefficients: np.ndarray | None,
    workers: int,
    plain_sum: bool = True,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """:func:`sum_frames` from the held spectra: ``damage`` is ``(inv_ne,
    inv_norm, exposures, step)`` of :func:`pipelines.motion.blocks.sum_held_block`; with
    ``blocks`` (and the local ``coefficients``) block by block
    (:func:`_sum_held_blocks`), else all frames in one pass."""
    fft = fft_module(np)
    ny, nx = held.shape
    shifts = np.asarray(shifts_px, dtype=np.float64)
    ramps_y = np.exp(-2j * np.pi * np.fft.fftfreq(ny)[None, :] * shifts[:, 1:2])
    ramps_x = np.exp(-2j * np.pi * np.fft.rfftfreq(nx)[None, :] * shifts[:, 0:1])
    in_blocks = blocks is not None and coefficients is not None
    # the blocks' dose weights: one recurrence through the movie's frames
    weights = start_weights(damage, 0) if in_blocks else None
    following = [0]  # the frame whose weight ``weights`` holds

    def accumulate(
        plain: np.ndarray,
        weighted: np.ndarray,
        start: int,
        stop: int,
        add_plain: bool = False,
    ) -> None:
        # the vectorised kernel: a block, or all frames in one pass
        if weights is not None:
            if start != following[0]:  # not the next frames: a fresh start
                weights[...] = start_weights(damage, start)
            following[0] = stop
        sum_held_block(
            held,
            ramps_y,
            ramps_x,
            damage,
            plain,
            weighted,
            start,
            stop,
            weights,
            add_plain,
        )

    if in_blocks:
        assert blocks is not None  # for mypy: in_blocks says so
        assert coefficients is not None
        return _sum_held_blocks(
            held.shape, accumulate, blocks, coefficients, workers, plain_sum
        )
    plain = np.empty((ny, nx // 2 + 1), dtype=np.complex64)
    weighted = np.empty_like(plain)
    accumulate(plain, weighted, 0, len(held))
    dw = fft.irfft2(weighted, s=(ny, nx), workers=workers)
    no_dw = fft.irfft2(plain, s=(ny, nx), workers=workers) if plain_sum else None
    return (
        dw.astype(np.float32, copy=False),
        None if no_dw is None else no_dw.astype(np.float32, copy=False),
        plain,
    )


def _sum_held_blocks(
    shape: tuple[int, int],
    accumulate: Callable[[np.ndarray, np.ndarray, int, int, bool], None],
    blocks: list[tuple[int, int]],
    coefficients: np.ndarray,
    workers: int,
    plain_sum: bool = True,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """The dose-weighted and plain sums, warped block by block: for each block
    ``(start, stop)`` ``accumulate(plain, weighted, start, stop, add_plain)`` sums its
    held spectra (:func:`pipelines.motion.blocks.sum_held_block`), inverse FFTs bring the
    sums to real space and one warp by the block's mean local field
    (:func:`pipelines.motion.blocks.warp_block_add`, both sums at once, no
    full-size intermediate) adds them into the outputs.  With ``plain_sum`` the plain sum's spectrum is
    the rfft2 of the warped plain sum (the micrograph written, locally
    corrected).  Without it only the dose-weighted sum is transformed back and
    warped (one inverse FFT and one image's warp a block instead of two), the
    plain sum is None and its spectrum is the sum of the blocks' unwarped plain
    spectra (globally aligned; the local motion's residual blur stays in it:
    the power spectrum differs little, docs/motion_speed.md)."""
    fft = fft_module(np)
    ny, nx = shape
    k = 2 if plain_sum else 1  # images transformed back and warped per block
    sums = np.empty((k, ny, nx // 2 + 1), dtype=np.complex64)  # weighted, plain
    real = np.empty((k, ny, nx), dtype=np.float32)
    out = np.zeros_like(real)
    plain_total = None if plain_sum else np.zeros_like(sums[0])
    for start, stop in blocks:
        if plain_total is None:
            accumulate(sums[1], sums[0], start, stop, False)
        else:  # the plain sum added to the total in the same pass
            accumulate(plain_total, sums[0], start, stop, True)
        # the inverse FFT in two steps into the same buffers every block (NumPy's
        # ``out=``): scipy's irfft2 allocated ~270 MB a call at 4096², and the
        # page faults cost more system time than the transform
        np.fft.ifft(sums[:k], axis=-2, out=cast(Any, sums[:k]))  # complex64
        np.fft.irfft(sums[:k], n=nx, axis=-1, out=cast(Any, real))
        cx, cy = block_coefficients(coefficients, start, stop)
        warp_block_add(real, out, cx, cy)
    if plain_total is not None:
        return out[0], None, plain_total
    spectrum = fft.rfft2(out[1], workers=workers)
    return out[0], out[1], spectrum.astype(np.complex64, copy=False)


def _each(weights: Iterator[Any], n: int, skip: bool) -> Iterator[Any]:
    """``weights``, or ``n`` Nones when the kernel advances the weight itself."""
    if skip:
        yield from (None for _ in range(n))
    else:
        yield from weights


def _inverse_norm(
    inv_ne: Any,
    exposures: np.ndarray,
    uniform_step: float | None,
    weights: Callable[[], Iterator[Any]],
    xp: ModuleType,
) -> Any:
    """``1 / sqrt(mean_t w_t²)`` per frequency, float32: the dose weights'
    normalisation.  With a uniform dose step ``w_t² = w_0² q^t`` is a geometric
    series (closed form); otherwise the weights are summed."""
    n = exposures.shape[0]
    if uniform_step is not None:  # q = exp(-step / Ne): -log q = rate
        # float32 (expm1 keeps the small rates' relative precision): the float64
        # version made six 8-byte arrays of the 4096 x 2049 half-plane
        inv32 = inv_ne.astype(xp.float32, copy=False)
        rate = xp.float32(uniform_step) * inv32
        tiny = xp.float32(1e-12)
        series = xp.where(
            rate > tiny,
            xp.expm1(xp.float32(-n) * rate) / xp.expm1(-xp.maximum(rate, tiny)),
            xp.float32(n),
        )
        series *= xp.exp(xp.float32(-float(exposures[0])) * inv32)
        norm = series
        del rate
    else:
        norm = xp.zeros_like(inv_ne)
        for weight in weights():
            norm += weight * weight
    return (xp.float32(1.0) / xp.sqrt(norm / xp.float32(n))).astype(
        xp.float32, copy=False
    )


def _inv_ne_and_step(
    shape: tuple[int, int],
    pixel_size_a: float,
    voltage_kv: float,
    exposures: np.ndarray,
    uniform: bool,
    xp: ModuleType,
    rows: int | None = None,
) -> tuple[Any, Any]:
    """``1 / Ne(k)`` on the rfft2 grid of ``shape`` (its first ``rows`` rows)
    and, for a uniform dose, the weight's factor from one frame to the next,
    ``exp(-step / (2 Ne))`` (else None)."""
    ny, nx = shape
    ky = xp.fft.fftfreq(ny, d=pixel_size_a).astype(xp.float32)[:rows, None]
    kx = xp.fft.rfftfreq(nx, d=pixel_size_a).astype(xp.float32)[None, :]
    inv_ne = 1.0 / critical_exposure_e_per_a2(
        xp.sqrt(ky * ky + kx * kx), voltage_kv, xp=xp
    )
    # uniform dose: each frame's weight is the previous one times a fixed factor
    step_e = float(exposures[1] - exposures[0]) if uniform else 0.0
    step = xp.exp(-0.5 * step_e * inv_ne) if uniform else None
    return inv_ne, step


def _weights(
    inv_ne: Any, step: Any, exposures: np.ndarray, xp: ModuleType
) -> Iterator[Any]:
    """Each frame's (unnormalised) dose weight ``exp(-E_t / (2 Ne))`` in turn."""
    current = xp.exp(-0.5 * float(exposures[0]) * inv_ne)
    for t in range(exposures.shape[0]):
        if t > 0:
            current = (
                current * step
                if step is not None
                else xp.exp(-0.5 * float(exposures[t]) * inv_ne)
            )
        yield current


@lru_cache(maxsize=1)
def _dose_grids(
    shape: tuple[int, int],
    pixel_size_a: float,
    voltage_kv: float,
    exposures_key: tuple[float, ...],
    uniform: bool,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """``1 / Ne``, the uniform-dose step (or None) and the weights'
    normalisation on the rfft2 grid of ``shape`` (NumPy, read-only, kept for the
    next movie of the same shape and dose).  They depend on ``|ky|`` only
    through its square, so rows ``0 .. ny // 2`` are computed and mirrored."""
    ny = shape[0]
    exposures = np.asarray(exposures_key, dtype=np.float64)
    half = ny // 2  # rows 0 .. half: |ky| takes all its values there
    inv_ne_h, step_h = _inv_ne_and_step(
        shape, pixel_size_a, voltage_kv, exposures, uniform, np, rows=half + 1
    )
    steps = np.diff(exposures)
    inv_norm_h = _inverse_norm(
        inv_ne_h,
        exposures,
        float(steps[0]) if uniform else None,
        lambda: _weights(inv_ne_h, step_h, exposures, np),
        np,
    )

    def mirrored(top: np.ndarray) -> np.ndarray:
        full = np.empty((ny, top.shape[1]), dtype=np.float32)
        full[: half + 1] = top
        full[half + 1 :] = top[1 : ny - half][::-1]
        full.setflags(write=False)
        return full

    return (
        mirrored(inv_ne_h),
        None if step_h is None else mirrored(step_h),
        mirrored(inv_norm_h),
    )


def sum_frames(
    frames: Any,
    shifts_px: np.ndarray,
    *,
    pixel_size_a: float,
    exposures_e_per_a2: np.ndarray,
    voltage_kv: float,
    local_coefficients: np.ndarray | None = None,
    prepare: Callable[[int], Any] | None = None,
    held: HeldSpectra | None = None,
    local_tolerance_px: float | None = LOCAL_BLOCK_TOLERANCE_PX,
    local_dose_cap: float | None = LOCAL_BLOCK_DOSE_CAP,
    plain_sum: bool = True,
    workers: int = -1,
    xp: ModuleType = np,
) -> tuple[Any, Any, Any]:
    """Dose-weighted sum, plain sum (both ``(ny, nx)`` float32; the plain sum None
    without ``plain_sum``) and the rfft2 of the plain sum.

    ``frames`` ``(n, ny, nx)`` float32; ``shifts_px`` ``(n, 2)`` global correction
    shifts; ``exposures_e_per_a2`` ``(n,)`` accumulated exposure at each frame's end;
    ``local_coefficients`` ``(2, 18)`` RELION polynomial or None; ``prepare(i)``
    gives frame ``i`` as float32 when ``frames`` are the file's raw integers
    (:class:`pipelines.motion.defects.PreparedFrames`).  One full-size rfft2 per
    frame, one fused shift-and-accumulate pass (numba) and two inverse FFTs.
    With ``held`` (the frames' spectra kept by
    :func:`pipelines.motion.spectra.band_spectra`) and no local model, the frames
    are neither prepared nor transformed again: the held spectra are shifted and
    summed.  With ``held`` and a local model the held spectra are summed in
    temporal blocks whose frames' local fields are within ``local_tolerance_px``
    of the block's mean (:func:`pipelines.motion.blocks.local_blocks`), each
    block's sums warped once by that mean; when that would take more than
    ``MAX_BLOCKS_PER_FRAME`` blocks per frame, or ``local_tolerance_px`` is None,
    every frame is warped by its own field (the exact path).  With
    ``local_dose_cap`` a frame's tolerance is scaled by its dose weights
    (:func:`pipelines.motion.blocks.dose_tolerance_scale`, at most that
    factor).  Without
    ``plain_sum`` the plain sum is not transformed back (nor, in blocks,
    warped); the spectrum returned is then, in blocks, the sum of the blocks'
    unwarped plain spectra (:func:`_sum_held_blocks`).
    """
    if held is not None and (held.shape != tuple(frames.shape[1:]) or xp is not np):
        raise ValueError(f"held spectra {held.shape} vs frames {frames.shape[1:]}")
    n, ny, nx = frames.shape
    blocks = None
    if held is not None and local_coefficients is not None:
        scale = (
            None
            if local_dose_cap is None
            else dose_tolerance_scale(
                np.asarray(exposures_e_per_a2, dtype=np.float64),
                float(pixel_size_a),
                float(voltage_kv),
                local_dose_cap,
            )
        )
        blocks = _blocks_that_save(local_coefficients, n, local_tolerance_px, scale)
    use_held = held is not None and (local_coefficients is None or blocks is not None)
    fft = fft_module(xp)
    exposures = np.asarray(exposures_e_per_a2, dtype=np.float64)
    steps = np.diff(exposures)
    uniform = n > 1 and bool(np.allclose(steps, steps[0], rtol=1e-6, atol=1e-9))
    if xp is np:  # made once per shape, pixel, voltage and exposures: a worker's
        # movies share them (0.2-1 CPU s at 4096² on the loaded 2-core machine)
        inv_ne, step, inv_norm = _dose_grids(
            (ny, nx),
            float(pixel_size_a),
            float(voltage_kv),
            tuple(float(e) for e in exposures),
            uniform,
        )
    else:
        inv_ne, step = _inv_ne_and_step(
            (ny, nx), pixel_size_a, voltage_kv, exposures, uniform, xp
        )

    def weights() -> Iterator[Any]:
        return _weights(inv_ne, step, exposures, xp)

    if xp is not np:
        inv_norm = _inverse_norm(
            inv_ne, exposures, float(steps[0]) if uniform else None, weights, xp
        )
    if use_held:  # every frame in one pass over the held spectra (or per block)
        assert held is not None  # for mypy: use_held says so
        return _sum_held(
            held,
            shifts_px,
            (inv_ne, inv_norm, exposures, step),
            blocks,
            local_coefficients,
            workers,
            plain_sum,
        )
    ky_ramp = np.fft.fftfreq(ny)
    kx_ramp = np.fft.rfftfreq(nx)
    plain = xp.zeros((ny, nx // 2 + 1), dtype=xp.complex64)
    weighted = xp.zeros_like(plain)
    warped = np.empty((ny, nx), dtype=np.float32)
    if xp is np:  # the kernel advances the weight in place (uniform dose)
        weight = (np.exp(-0.5 * float(exposures[0]) * inv_ne) * inv_norm).astype(
            np.float32
        )
        advance = step.astype(np.float32) if step is not None else inv_norm
    for t, raw_weight in enumerate(_each(weights(), n, step is not None and xp is np)):
        frame = prepare(t) if prepare is not None else frames[t]
        if local_coefficients is not None:
            cx, cy = _local_coefficients_at(local_coefficients, float(t))
            source = np.ascontiguousarray(to_numpy(frame), dtype=np.float32)
            warped.fill(0.0)
            warp_block_add(source[None], warped[None], cx, cy)
            frame = xp.asarray(warped)
        spectrum = fft.rfft2(xp.asarray(frame), **fft_kwargs(xp, workers))
        if xp is np:
            sx, sy = (float(v) for v in shifts_px[t])
            if raw_weight is not None:  # not uniform: this frame's own weight
                np.multiply(raw_weight, inv_norm, out=weight)
            _motion_kernels.accumulate_shifted(
                spectrum,
                np.exp(-2j * np.pi * ky_ramp * sy).astype(np.complex64),
                np.exp(-2j * np.pi * kx_ramp * sx).astype(np.complex64),
                weight,
                advance,
                step is not None,
                plain,
                weighted,
            )
            continue
        spectrum *= phase_ramp((ny, nx), shifts_px[t], xp=xp)
        plain += spectrum
        weighted += spectrum * (raw_weight * inv_norm)
    dw = fft.irfft2(weighted, s=(ny, nx), **fft_kwargs(xp, workers)).astype(xp.float32)
    no_dw = (
        fft.irfft2(plain, s=(ny, nx), **fft_kwargs(xp, workers)).astype(xp.float32)
        if plain_sum
        else None
    )
    return dw, no_dw, plain


def power_spectrum(
    spectrum: Any, shape: tuple[int, int], *, size: int = 512, xp: ModuleType = np
) -> Any:
    """Centred log10 power spectrum ``(size, size)`` float32 from an rfft2 spectrum.

    The full-resolution power is block-averaged (a smoothed periodogram); the DC
    pixel is set to the median so it does not dominate a display.
    """
    ny, nx = shape
    size_y, size_x = min(size, ny), min(size, nx)
    by, bx = ny // size_y, nx // size_x
    y0 = (ny - by * size_y) // 2
    x0 = (nx - bx * size_x) // 2
    if xp is np and spectrum.dtype == np.complex64 and spectrum.flags.c_contiguous:
        # one numba pass over the half-spectrum, no full-size temporaries
        binned = np.empty((size_y, size_x), dtype=np.float32)
        _power_kernels.binned_power(spectrum, nx, by, bx, y0, x0, binned)
    else:
        binned = _binned_power(spectrum, shape, (size_y, size_x), (y0, x0), xp)
    out = xp.log10(binned + 1e-30)
    out[size_y // 2, size_x // 2] = xp.median(out)
    return out.astype(xp.float32)


def _binned_power(
    spectrum: Any,
    shape: tuple[int, int],
    size: tuple[int, int],
    start: tuple[int, int],
    xp: ModuleType,
) -> Any:
    """:func:`power_spectrum`'s block means with arrays (CuPy, other dtypes)."""
    ny, nx = shape
    size_y, size_x = size
    y0, x0 = start
    by, bx = ny // size_y, nx // size_x
    power = (spectrum.real**2 + spectrum.imag**2).astype(xp.float32)
    full = xp.empty((ny, nx), dtype=xp.float32)
    nxh = nx // 2 + 1
    full[:, :nxh] = power
    cols = xp.arange(nxh, nx)
    rows = (-xp.arange(ny)) % ny
    full[:, nxh:] = power[rows[:, None], (nx - cols)[None, :]]
    full = xp.fft.fftshift(full)
    crop = full[y0 : y0 + by * size_y, x0 : x0 + bx * size_x]
    return crop.reshape(size_y, by, size_x, bx).mean(axis=(1, 3))
