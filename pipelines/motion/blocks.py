"""Temporal blocks of the local warp: consecutive frames warped as one.

RELION's local model (:mod:`pipelines.motion.local`) is zero at the first frame and
a cubic in time, so consecutive frames' local corrections differ by little.  The
final sum may then warp a *block* of consecutive frames at once: the block's frames
are shifted (global correction), dose-weighted and summed from their held spectra,
and the block's sum is warped by the block's mean local field.  A frame's field
differs from that mean by at most ``tolerance_px`` anywhere in the frame, so the
block's sum is the exact per-frame sum to second order (the deviations average to
zero over the block): its signal is attenuated by at most ``(2 pi k)² var / 2``,
1.2 % at Nyquist for 0.05 px, below the alignment's own error.

:func:`local_blocks` splits the frames greedily: a block grows while every frame's
field stays within ``tolerance_px`` of the block's mean on a grid over the frame
(the field is quadratic in ``u``, ``v``; a 17 × 17 grid with the corners finds its
largest deviation to a few per cent).  Where the field moves fast (a large cubic
term late in the movie) the blocks are short; with no local motion there is one.
:func:`dose_tolerance_scale` widens a late frame's tolerance (up to
``LOCAL_BLOCK_DOSE_CAP`` ×): its dose weights keep only the low frequencies, where
the same displacement loses less.
"""

from __future__ import annotations

import numba
import numpy as np
from numpy.typing import NDArray

from pipelines.motion._kernels.blocks import accumulate_held_blocks
from pipelines.motion._kernels.warp import warp_polynomial_add
from pipelines.motion.dose import critical_exposure_e_per_a2
from pipelines.motion.spectra import HELD_BLOCK, HeldSpectra

__all__ = [
    "LOCAL_BLOCK_DOSE_CAP",
    "LOCAL_BLOCK_TOLERANCE_PX",
    "MAX_BLOCKS_PER_FRAME",
    "block_coefficients",
    "dose_tolerance_scale",
    "local_blocks",
    "spatial_coefficients",
    "start_weights",
    "sum_held_block",
    "warp_block_add",
]

# largest distance (px) between a frame's local field and its block's mean field:
# 0.15 (was 0.1): on bench_chain's movie 10 blocks instead of 13, and against the
# simulator's true image the same FRC within 1e-4 in every band (docs/motion_speed.md
# bench_motion_local.py)
LOCAL_BLOCK_TOLERANCE_PX = 0.15
# the dose-aware tolerance's largest factor (:func:`dose_tolerance_scale`; None
# or 1: the uniform tolerance): on bench_chain's movie 6 blocks instead of 10,
# the sum 4.1-6.3 -> 3.0-4.4 CPU s, FRC with the exact sum >= 0.9996 in every band
# as before (docs/motion_speed.md, eleventh revision; 8 makes the same blocks)
LOCAL_BLOCK_DOSE_CAP: float | None = 4.0
# radial frequencies (0 excluded .. Nyquist) where the dose weights are compared
_DOSE_SHELLS = 256
# more blocks than this per frame take the exact per-frame path: a block costs
# one or two inverse FFTs and a warp of one or two images (~0.3-0.5 CPU s at
# 4096²), a frame of the exact path a preparation, a warp and an FFT (~0.5-0.6
# s); conservative, so that the blocks' approximation is used only where it
# clearly saves
MAX_BLOCKS_PER_FRAME = 0.5
# points per axis of the grid (corners included) where the fields are compared
_GRID_POINTS = 17


def spatial_coefficients(
    coefficients: np.ndarray, z: np.ndarray
) -> NDArray[np.float64]:
    """The local field's spatial coefficients ``(n_z, 2, 6)`` (x, y; basis ``(1, u,
    u², v, v², uv)``) at frames ``z`` ``(n_z,)`` of RELION's polynomial
    ``coefficients`` ``(2, 18)`` (``c[g, p]`` at index ``3 g + p - 1``)."""
    z = np.asarray(z, dtype=np.float64)
    zpow = np.stack([z, z * z, z * z * z], axis=-1)  # (n_z, 3)
    c = np.asarray(coefficients, dtype=np.float64).reshape(2, 6, 3)
    spatial: NDArray[np.float64] = np.einsum("zp,agp->zag", zpow, c)
    return spatial


def block_coefficients(
    coefficients: np.ndarray, start: int, stop: int
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Spatial coefficients ``(6,)`` x and y of the mean local field of frames
    ``start .. stop - 1`` (the field is linear in its coefficients, so the mean
    field is the polynomial of the mean coefficients)."""
    if not 0 <= start < stop:
        raise ValueError(f"block {start}..{stop} is empty")
    mean = spatial_coefficients(coefficients, np.arange(start, stop)).mean(axis=0)
    return np.ascontiguousarray(mean[0]), np.ascontiguousarray(mean[1])


def _grid_basis() -> NDArray[np.float64]:
    """``(n_points, 6)`` basis values on a regular grid over the frame, corners
    included (``u``, ``v`` from -0.5 to 0.5)."""
    axis = np.linspace(-0.5, 0.5, _GRID_POINTS)
    v_grid, u_grid = np.meshgrid(axis, axis, indexing="ij")
    u, v = u_grid.ravel(), v_grid.ravel()
    return np.stack([np.ones_like(u), u, u * u, v, v * v, u * v], axis=-1)


def dose_tolerance_scale(
    exposures_e_per_a2: np.ndarray,
    pixel_size_a: float,
    voltage_kv: float,
    cap: float,
    *,
    floor: float = 1.0,
) -> NDArray[np.float64]:
    """Per-frame factors ``(n,)`` in ``[floor, cap]`` of the block tolerance, from
    the dose weights ``w_f(k) = exp(-E_f / (2 Ne(k)))`` (RELION's critical
    exposure).

    A frame whose field is ``d_f`` from its block's mean loses, at frequency
    ``k``, a fraction ``(2 pi k d_f)² / 2`` of its signal; the dose-weighted sum
    loses ``(2 pi)² / 2 * sum_f w_f(k) k² d_f² / sum_f w_f(k)``.  With
    ``d_f² <= tol² / max_k[(k / k_N)² w_f(k) / mean_f w_f(k)]`` that loss is at
    every ``k`` at most the uniform tolerance's worst, ``(2 pi k_N tol)² / 2``
    at Nyquist ``k_N``: late frames, whose weights keep only low frequencies,
    may deviate more, early ones (which carry the high frequencies) less.
    Clipped to ``[floor, cap]``: ``cap`` bounds the extrapolation of the
    second-order loss; with ``floor`` 0 the bound above holds, with the default
    1 (never stricter than the uniform tolerance) the early frames keep the
    uniform tolerance and the loss may exceed it (by up to 51 %, at Nyquist,
    for 40 frames of 1 e/Å² at 1 Å/px; 44 % with ``cap`` 4)."""
    exposures = np.asarray(exposures_e_per_a2, dtype=np.float64)
    if exposures.ndim != 1 or exposures.size < 1:
        raise ValueError(f"exposures must be (n,) with n >= 1, got {exposures.shape}")
    if not 0 <= floor <= cap:
        raise ValueError(f"need 0 <= floor <= cap, got floor {floor!r}, cap {cap!r}")
    nyquist = 0.5 / float(pixel_size_a)
    k = np.linspace(nyquist / _DOSE_SHELLS, nyquist, _DOSE_SHELLS)
    inv_ne = 1.0 / np.asarray(
        critical_exposure_e_per_a2(k, voltage_kv), dtype=np.float64
    )
    weights = np.exp(-0.5 * exposures[:, None] * inv_ne[None, :])  # (n, shells)
    relative = weights / weights.mean(axis=0) * (k / nyquist) ** 2
    need = np.max(relative, axis=1)
    scale: NDArray[np.float64] = np.clip(
        1.0 / np.sqrt(np.maximum(need, 1e-30)), floor, cap
    )
    return scale


def local_blocks(
    coefficients: np.ndarray,
    n_frames: int,
    *,
    tolerance_px: float = LOCAL_BLOCK_TOLERANCE_PX,
    scale: np.ndarray | None = None,
) -> list[tuple[int, int]]:
    """Consecutive frame ranges ``[(start, stop), ...]`` covering ``0 .. n_frames -
    1`` in which every frame's local field (RELION polynomial ``coefficients``
    ``(2, 18)``) is within ``tolerance_px`` (times the frame's ``scale``, e.g.
    :func:`dose_tolerance_scale`, ``(n_frames,)``) of the range's mean field at
    every point of a grid over the frame; greedy, from the first frame."""
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    if not tolerance_px >= 0:
        raise ValueError(f"tolerance_px must be >= 0, got {tolerance_px!r}")
    factors = np.ones(n_frames) if scale is None else np.asarray(scale, np.float64)
    if factors.shape != (n_frames,):
        raise ValueError(f"scale must be ({n_frames},), got {factors.shape}")
    spatial = spatial_coefficients(coefficients, np.arange(n_frames))
    # the field of each frame on the grid: (n_frames, n_points, 2)
    field = np.einsum("pg,zag->zpa", _grid_basis(), spatial)
    limits = (tolerance_px * factors) ** 2
    blocks: list[tuple[int, int]] = []
    start = 0
    while start < n_frames:
        stop = start + 1
        while stop < n_frames:
            chunk = field[start : stop + 1]
            deviation = chunk - chunk.mean(axis=0)
            worst = np.max(np.sum(deviation * deviation, axis=-1), axis=-1)
            if bool(np.any(worst > limits[start : stop + 1])):
                break
            stop += 1
        blocks.append((start, stop))
        start = stop
    return blocks


def start_weights(
    dose: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None], frame: int
) -> NDArray[np.float32]:
    """Frame ``frame``'s normalised dose weight ``exp(-E / (2 Ne)) inv_norm``
    ``(ny, nx // 2 + 1)`` float32 (``dose`` as :func:`sum_held_block`'s): where
    :func:`sum_held_block` starts a movie's first block."""
    inv_ne, inv_norm, exposures, _ = dose
    weights: NDArray[np.float32] = np.exp(
        np.float32(-0.5 * float(exposures[frame])) * np.asarray(inv_ne, np.float32)
    )
    weights *= np.asarray(inv_norm, np.float32)
    return weights


def sum_held_block(
    held: HeldSpectra,
    ramp_y: np.ndarray,
    ramp_x: np.ndarray,
    dose: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None],
    plain: np.ndarray,
    weighted: np.ndarray,
    start: int,
    stop: int,
    weights: np.ndarray | None = None,
    add_plain: bool = False,
) -> None:
    """A block's sums of the held spectra over frames ``start .. stop - 1``
    (all frames: the global path's one-pass sum), from the vectorised kernel
    :func:`pipelines.motion._kernels.blocks.accumulate_held_blocks`:
    ``plain = sum_t s_t``, ``weighted = sum_t w_t s_t``, ``s_t`` frame ``t``'s
    held spectrum (:meth:`HeldSpectra.spectrum`) times its phase ramp
    ``ramp_y[t, y] * ramp_x[t, x]``, ``w_t = exp(-exposures[t] inv_ne / 2)
    inv_norm``, or ``w_{t-1} step`` when ``step`` is given (uniform dose).
    ``ramp_y`` ``(n, ny)``, ``ramp_x`` ``(n, nx // 2 + 1)`` hold every frame's
    phase ramp; ``dose`` is ``(inv_ne, inv_norm, exposures, step)`` (``step``
    None unless the dose is uniform); ``plain`` and ``weighted`` ``(ny, nx // 2
    + 1)`` complex64, C-contiguous, are overwritten.  ``weights`` (float32,
    that shape, C-contiguous) holds frame ``start``'s dose weight
    (:func:`start_weights`) and is advanced to frame ``stop``'s: consecutive
    blocks pass the same array, as one pass's recurrence; None: made here.
    With ``add_plain`` the plain sum is added to ``plain`` instead (a movie's
    total over its blocks, in the same pass)."""
    n = len(held)
    if not 0 <= start < stop <= n:
        raise ValueError(f"frames {start}..{stop} of {n} held")
    ny, nxh = held.values.shape[1], held.values.shape[2]
    if weights is None:
        weights = start_weights(dose, start)
    for name, array, dtype in (
        ("plain", plain, np.complex64),
        ("weighted", weighted, np.complex64),
        ("weights", weights, np.float32),
    ):
        if (
            array.shape != (ny, nxh)
            or array.dtype != dtype
            or not array.flags.c_contiguous
        ):
            raise ValueError(
                f"{name} must be C-contiguous {np.dtype(dtype)} {(ny, nxh)}, got "
                f"{array.dtype} {array.shape}"
            )
    inv_ne, inv_norm, exposures, step = dose
    frames = slice(start, stop)
    accumulate_held_blocks(
        held.values[frames].reshape(stop - start, ny, 2 * nxh),
        held.scales[frames],
        HELD_BLOCK,
        held.low[frames],
        np.ascontiguousarray(ramp_y[frames], dtype=np.complex64),
        np.ascontiguousarray(ramp_x[frames], dtype=np.complex64),
        np.ascontiguousarray(inv_ne, dtype=np.float32),
        np.ascontiguousarray(inv_norm, dtype=np.float32),
        np.ascontiguousarray(exposures[start : stop + 1], dtype=np.float64),
        np.ascontiguousarray(inv_norm if step is None else step, dtype=np.float32),
        step is not None,
        plain,
        weighted,
        weights,
        add_plain,
    )


def warp_block_add(
    images: np.ndarray, out: np.ndarray, coeff_x: np.ndarray, coeff_y: np.ndarray
) -> None:
    """``out[i] += warp(images[i])``: a block's sums ``images`` ``(k, ny, nx)``
    float32 moved by the block's mean field (spatial coefficients ``coeff_x``,
    ``coeff_y`` ``(6,)``, :func:`block_coefficients`) with two cubic passes and
    clamped borders, without a full-size intermediate image
    (:func:`pipelines.motion._kernels.warp.warp_polynomial_add`); the exact
    path moves each frame so, as a block of one.  ``out`` as ``images``,
    C-contiguous."""
    for name, array in (("images", images), ("out", out)):
        if array.ndim != 3 or array.dtype != np.float32 or not array.flags.c_contiguous:
            raise ValueError(
                f"{name} must be C-contiguous float32 (k, ny, nx), got "
                f"{array.dtype} {array.shape}"
            )
    if out.shape != images.shape:
        raise ValueError(f"out {out.shape} is not images' {images.shape}")
    warp_polynomial_add(
        images,
        out,
        np.ascontiguousarray(coeff_x, dtype=np.float64),
        np.ascontiguousarray(coeff_y, dtype=np.float64),
        numba.get_num_threads(),
    )
