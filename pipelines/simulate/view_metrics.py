"""How close class averages are to the true views of a simulated particle set:
correlation and FSC after the best in-plane rotation and shift (tests, benchmarks).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = ["aligned_fsc", "best_rotated_correlation", "fsc_resolution_a"]


def best_rotated_correlation(image: np.ndarray, reference: np.ndarray) -> float:
    """Max normalised cross-correlation over psi (3° steps) and integer shifts."""
    import scipy.ndimage

    b = (reference - reference.mean()) / reference.std()
    fb = np.conj(scipy.fft.fft2(b))
    best = -1.0
    for angle in np.arange(0, 360, 3.0):
        a = scipy.ndimage.rotate(image, angle, reshape=False, order=1)
        a = (a - a.mean()) / (a.std() + 1e-12)
        cc = scipy.fft.ifft2(scipy.fft.fft2(a) * fb).real / a.size
        best = max(best, float(cc.max()))
    return best


def aligned_fsc(image: np.ndarray, reference: np.ndarray) -> NDArray[np.float64]:
    """FSC per Fourier ring (ring 0 .. box/2 - 1) between ``reference`` and
    ``image`` turned (3° steps) and shifted (whole pixels) onto it."""
    import scipy.ndimage

    b = (reference - reference.mean()) / reference.std()
    fb = np.conj(scipy.fft.fft2(b))
    best, best_image = -np.inf, image
    for angle in np.arange(0, 360, 3.0):
        a = scipy.ndimage.rotate(image, angle, reshape=False, order=1)
        a = (a - a.mean()) / (a.std() + 1e-12)
        cc = scipy.fft.ifft2(scipy.fft.fft2(a) * fb).real
        peak = np.unravel_index(int(cc.argmax()), cc.shape)
        if cc[peak] > best:
            best = float(cc[peak])
            best_image = np.roll(a, (-peak[0], -peak[1]), axis=(0, 1))
    f1, f2 = scipy.fft.fft2(best_image), scipy.fft.fft2(b)
    n = image.shape[0]
    k = np.fft.fftfreq(n) * n
    ring = np.rint(np.hypot(k[:, None], k[None, :])).astype(int).ravel()
    cross = np.bincount(ring, (f1 * np.conj(f2)).real.ravel())
    p1 = np.bincount(ring, (np.abs(f1) ** 2).ravel())
    p2 = np.bincount(ring, (np.abs(f2) ** 2).ravel())
    fsc: NDArray[np.float64] = cross / np.sqrt(p1 * p2 + 1e-30)
    return fsc[: n // 2]


def fsc_resolution_a(fsc: np.ndarray, box_px: int, pixel_size_a: float) -> float:
    """Resolution (Å) of the first ring where ``fsc`` falls below 0.5 (Nyquist if
    it never does)."""
    below = np.nonzero(fsc[1:] < 0.5)[0]
    ring = (below[0] + 1) if below.size else len(fsc)
    return box_px * pixel_size_a / max(int(ring), 1)
