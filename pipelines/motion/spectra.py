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

from types import ModuleType
from typing import Any

import numpy as np

from pipelines.motion.align import bin_frames, fft_kwargs
from pipelines.xp import fft_module

__all__ = ["binned_spectra", "crop_spectrum_to"]


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
