"""Binned frame spectra for alignment, without aliasing (Fourier cropping).

Summing ``b × b`` pixel blocks (real-space binning) folds the frequencies above the
binned Nyquist back into the band the alignment uses.  The folded signal does not
move with the specimen the way the rest does, so every binned frame is no longer an
exactly shifted copy of the others, and the measured shifts lock towards whole
binned pixels: on a noise-free simulated 1024² movie binned by 4 the shifts were
off by 0.068 px RMS (0.06 px at frame 0), against 0.008 px with cropping.

:func:`binned_spectra` therefore bins by Fourier cropping: each frame is summed in
blocks of ``factor // 2`` (a box whose aliasing lands only on frequencies that are
cropped away, up to a residue below ~0.4 of the box's Nyquist response where
cryo-EM frames have almost no signal), transformed once, and its spectrum is cut to
the band of the ``factor``-binned grid.  The Nyquist row and column are zeroed (they
have no partner on the cropped grid) and so is the DC term (the mean).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np

from pipelines.motion._kernels import core as _motion_kernels
from pipelines.motion.align import bin_frames, fft_kwargs
from pipelines.xp import fft_module

__all__ = [
    "HELD_BLOCK",
    "HELD_EXACT",
    "HeldSpectra",
    "band_spectra",
    "binned_spectra",
    "crop_spectrum_to",
    "drop_held",
    "fine_band",
    "frame_bands",
    "keep_held",
    "take_held",
]


HELD_BLOCK = 64  # coefficients along x that share one int8 scale in HeldSpectra
HELD_EXACT = 64  # HeldSpectra keeps frequencies below this (rows ±, columns) exact


class HeldSpectra:
    """Every frame's full-size rfft2 spectrum, kept from the alignment pass for the
    final sum, at two bytes per coefficient: the frame is then prepared and
    transformed once (:func:`band_spectra` cuts the alignment bands from the same
    transform).

    Each spectrum is held as int8 real and imaginary parts with one float32 scale
    per ``HELD_BLOCK`` coefficients of a row (``max |re|, |im|`` / 127), except the
    lowest frequencies (``HELD_EXACT`` rows at each end, ``HELD_EXACT`` columns),
    kept as complex64: a smooth background (illumination, ice) makes them orders
    of magnitude larger than the rest, and a block scale set by them would be
    coarse for its neighbours.  Elsewhere a block's largest value is a few times
    the shot noise of one frame, so the rounding error is ~1e-4 of the noise
    power (below the float16 rounding of the written micrograph).
    ``n × ny × (nx // 2 + 1) × 2`` bytes: 0.67 GB for 4096² × 40, a quarter of
    complex64.
    """

    def __init__(self, n_frames: int, shape: tuple[int, int]) -> None:
        ny, nx = shape
        nxh = nx // 2 + 1
        self.shape = (int(ny), int(nx))
        self.values = np.empty((n_frames, ny, nxh, 2), dtype=np.int8)
        self.scales = np.empty((n_frames, ny, -(-nxh // HELD_BLOCK)), dtype=np.float32)
        m = max(1, min(HELD_EXACT, ny // 2, nxh))
        self.low = np.empty((n_frames, 2 * m, m), dtype=np.complex64)

    def __len__(self) -> int:
        return int(self.values.shape[0])

    @property
    def nbytes(self) -> int:
        return int(self.values.nbytes + self.scales.nbytes + self.low.nbytes)

    def put(self, index: int, spectrum: np.ndarray) -> None:
        """Hold frame ``index``'s rfft2 ``spectrum`` ``(ny, nx // 2 + 1)``."""
        ny = self.shape[0]
        if spectrum.shape != self.values.shape[1:3]:
            raise ValueError(
                f"spectrum {spectrum.shape} vs held {self.values.shape[1:3]}"
            )
        spectrum = np.ascontiguousarray(spectrum, dtype=np.complex64)
        _motion_kernels.quantize_spectrum(
            spectrum, HELD_BLOCK, self.values[index], self.scales[index]
        )
        m = self.low.shape[-1]
        self.low[index, :m] = spectrum[:m, :m]
        self.low[index, m:] = spectrum[ny - m :, :m]

    def spectrum(self, index: int) -> np.ndarray:
        """Frame ``index``'s spectrum as held, complex64 (for checks and tests)."""
        ny, nx = self.shape
        nxh = nx // 2 + 1
        scale = np.repeat(self.scales[index], HELD_BLOCK, axis=1)[:, :nxh]
        values = self.values[index].astype(np.float32)
        out = np.empty((ny, nxh), dtype=np.complex64)
        out.real = values[..., 0] * scale
        out.imag = values[..., 1] * scale
        m = self.low.shape[-1]
        out[:m, :m] = self.low[index, :m]
        out[ny - m :, :m] = self.low[index, m:]
        return out

    def band(self, shape: tuple[int, int]) -> np.ndarray:
        """Every frame's spectrum cut to the band of the smaller real grid
        ``shape`` ``(fy, fx)`` (even), as :func:`crop_spectrum_to` cuts it:
        ``(n, fy, fx // 2 + 1)`` complex64."""
        fy, fx = shape
        if fy > self.shape[0] or fx > self.shape[1] or fy % 2 or fx % 2:
            raise ValueError(f"band {shape} of held spectra {self.shape}")
        out = np.empty((len(self), fy, fx // 2 + 1), dtype=np.complex64)
        _motion_kernels.decode_band(self.values, self.scales, HELD_BLOCK, self.low, out)
        out[:, fy // 2, :] = 0
        out[:, :, fx // 2] = 0
        out[:, 0, 0] = 0
        return out


# The store of the last movie, kept for the next one of the same size in this
# process (``take_held`` / ``keep_held``): at 4096² × 40 it is 0.67 GB, and the
# first touch of that many fresh pages cost ~0.5-0.8 CPU s a movie in page faults.
_HELD_LOCK = threading.Lock()
_HELD_KEPT: list[HeldSpectra] = []  # at most one


def take_held(n_frames: int, shape: tuple[int, int]) -> HeldSpectra:
    """A :class:`HeldSpectra` for ``n_frames`` frames of ``shape``: the one kept by
    :func:`keep_held` when its size matches, else a new one (a kept store of
    another size is freed first, so the two never take memory together).

    The store is taken out of the cache: two movies in the process at once never
    share one (the second gets a new store).  Its contents are those of the last
    movie: every frame must be :meth:`HeldSpectra.put` before it is read (the
    alignment pass, :func:`band_spectra`, puts them all)."""
    shape = (int(shape[0]), int(shape[1]))
    with _HELD_LOCK:
        kept = _HELD_KEPT.pop() if _HELD_KEPT else None
    if kept is not None and len(kept) == n_frames and kept.shape == shape:
        return kept
    del kept  # freed before the new store is allocated
    return HeldSpectra(n_frames, shape)


def keep_held(held: HeldSpectra) -> None:
    """Keep ``held`` for the next :func:`take_held` of its size (replacing the one
    kept, if any).  The caller must not use ``held`` afterwards."""
    with _HELD_LOCK:
        _HELD_KEPT.clear()
        _HELD_KEPT.append(held)


def drop_held() -> None:
    """Free the kept store, if any (its memory goes back to the system)."""
    with _HELD_LOCK:
        _HELD_KEPT.clear()


def crop_spectrum_to(
    spectrum: Any, shape: tuple[int, int], *, xp: ModuleType = np
) -> Any:
    """The rfft2 ``spectrum`` ``(..., by, bx // 2 + 1)`` cut to the band of the
    smaller real grid ``shape`` ``(my, mx)`` (even sizes), Nyquist row/column and
    DC zeroed."""
    my, mx = shape
    by = spectrum.shape[-2]
    half = my // 2
    out = xp.concatenate(
        [
            spectrum[..., :half, : mx // 2 + 1],
            spectrum[..., by - half :, : mx // 2 + 1],
        ],
        axis=-2,
    )
    out[..., half, :] = 0
    out[..., :, mx // 2] = 0
    out[..., 0, 0] = 0
    return out


def binned_spectra(
    frames: Any, factor: int, *, workers: int = -1, xp: ModuleType = np
) -> tuple[Any, tuple[int, int]]:
    """rfft2 spectra ``(n, my, mx // 2 + 1)`` complex64 of ``frames`` ``(n, ny, nx)``
    binned by ``factor`` (``my = 2 * (ny // (2 * factor))``, likewise ``mx``) and
    the binned real shape ``(my, mx)``.

    A shift of ``s`` binned pixels is ``s * factor`` pixels of ``frames``.  With
    ``factor`` 1 the frames are transformed as they are (odd sizes cropped by one).
    """
    if frames.ndim != 3:
        raise ValueError(f"frames must be (n_frames, ny, nx), got shape {frames.shape}")
    if factor < 1:
        raise ValueError(f"bin factor must be >= 1, got {factor}")
    fft = fft_module(xp)
    n, ny, nx = frames.shape
    my, mx = 2 * (ny // (2 * factor)), 2 * (nx // (2 * factor))
    if my < 2 or mx < 2:
        raise ValueError(f"frames {ny}x{nx} are too small to bin by {factor}")
    block = factor // 2 if factor % 2 == 0 else 1
    # the region whose block sums are transformed: a whole number of binned pixels
    region_y, region_x = my * factor, mx * factor
    grid = (region_y // block, region_x // block)
    out = xp.empty((n, my, mx // 2 + 1), dtype=xp.complex64)
    for i in range(n):  # one frame at a time: the full-size work stays in cache/RAM
        frame = xp.asarray(frames[i, :region_y, :region_x], dtype=xp.float32)
        small = bin_frames(frame, block, xp=xp)
        spectrum = fft.rfft2(small, s=grid, **fft_kwargs(xp, workers))
        out[i] = crop_spectrum_to(spectrum, (my, mx), xp=xp)
    return out, (my, mx)


def frame_bands(shape: tuple[int, int], factor: int) -> tuple[int, tuple[int, int]]:
    """The block size and the real-space grid ``(gy, gx)`` of the block sums that
    :func:`band_spectra` transforms for a search bin ``factor``: blocks of
    ``factor // 2`` (1 for odd factors) over a whole number of binned pixels."""
    ny, nx = shape
    my, mx = 2 * (ny // (2 * factor)), 2 * (nx // (2 * factor))
    if my < 2 or mx < 2:
        raise ValueError(f"frames {ny}x{nx} are too small to bin by {factor}")
    block = factor // 2 if factor % 2 == 0 else 1
    return block, (my * factor // block, mx * factor // block)


def fine_band(grid: tuple[int, int], block: int) -> tuple[int, int]:
    """The refinement band ``(fy, fx)`` (even) on the block-sum grid ``grid``: all
    of it when the frames were not block-summed (no aliasing), else its lower
    three quarters, where a ``block``-sum folds in only frequencies above 0.31
    cycles per original pixel (about 3.2 Å at 1 Å/px: no signal in one frame)."""
    gy, gx = grid
    if block == 1:
        return 2 * (gy // 2), 2 * (gx // 2)
    return 2 * ((3 * gy) // 8), 2 * ((3 * gx) // 8)


def band_spectra(
    frames: Any,
    factor: int,
    *,
    fine: bool = True,
    prepare: Callable[[int], Any] | None = None,
    hold: HeldSpectra | None = None,
    workers: int = -1,
    xp: ModuleType = np,
) -> tuple[Any, tuple[int, int], Any, tuple[int, int]]:
    """One pass over the frames, one FFT each: the search-band spectra of
    :func:`binned_spectra` (bin ``factor``) and, with ``fine``, the refinement-band
    spectra (:func:`fine_band`) cut from the same transform.

    Returns ``(search, (my, mx), refine, (fy, fx))``, ``refine`` None without
    ``fine``.  ``prepare(i)`` gives frame ``i`` as float32 ``(ny, nx)`` (gain and
    defects applied; it may reuse one buffer) so that ``frames`` can stay in the
    file's integer type; without it ``frames[i]`` is used as it is.  Only the
    cropped stacks are kept: ``n × (my × mx + fy × fx) / 2`` complex values.

    With ``hold`` (NumPy only; the bands must cover the whole frame) each frame
    is transformed at full size instead of block-summed, the search band is cut
    from that transform and the whole spectrum is kept in ``hold`` for the final
    sum (:func:`pipelines.motion.summing.sum_frames`): the one full-size FFT per
    frame the sum needs anyway, and no second preparation of the frame.  The
    refinement band is then not made here (``refine`` None): cut it from
    ``hold`` (:meth:`HeldSpectra.band`) when it is needed, so it does not take
    memory during the search.
    """
    if frames.ndim != 3:
        raise ValueError(f"frames must be (n_frames, ny, nx), got shape {frames.shape}")
    if factor < 1:
        raise ValueError(f"bin factor must be >= 1, got {factor}")
    fft = fft_module(xp)
    n, ny, nx = frames.shape
    block, grid = frame_bands((ny, nx), factor)
    my, mx = grid[0] * block // factor, grid[1] * block // factor
    fy, fx = fine_band(grid, block)
    search = xp.empty((n, my, mx // 2 + 1), dtype=xp.complex64)
    refine = (
        xp.empty((n, fy, fx // 2 + 1), dtype=xp.complex64)
        if fine and hold is None
        else None
    )
    region_y, region_x = grid[0] * block, grid[1] * block
    binned = np.empty(grid, dtype=np.float32)
    if hold is not None:
        if xp is not np or (region_y, region_x) != (ny, nx):
            raise ValueError(
                f"hold needs NumPy and bands covering the frame: {region_y}x"
                f"{region_x} of {ny}x{nx}"
            )
        if hold.shape != (ny, nx) or len(hold) != n:
            raise ValueError(f"hold {len(hold)}x{hold.shape} vs frames {frames.shape}")
    for i in range(n):
        frame = prepare(i) if prepare is not None else frames[i]
        if hold is not None:
            full = fft.rfft2(
                np.asarray(frame, dtype=np.float32), **fft_kwargs(xp, workers)
            )
            search[i] = crop_spectrum_to(full, (my, mx), xp=xp)
            hold.put(i, full)
            continue
        if xp is np and block > 1:
            source = np.asarray(frame[:region_y, :region_x], dtype=np.float32)
            _motion_kernels.block_sum(source, block, binned)
            small: Any = binned
        else:
            small = bin_frames(
                xp.asarray(frame[:region_y, :region_x], dtype=xp.float32), block, xp=xp
            )
        spectrum = fft.rfft2(small, **fft_kwargs(xp, workers))
        search[i] = crop_spectrum_to(spectrum, (my, mx), xp=xp)
        if refine is not None:
            refine[i] = crop_spectrum_to(spectrum, (fy, fx), xp=xp)
    return search, (my, mx), refine, (fy, fx)
