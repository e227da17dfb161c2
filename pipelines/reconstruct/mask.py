"""Solvent masks as ``relion_mask_create`` makes them, and a raised-cosine low-pass.

:func:`create_mask`:

1. low-pass the map to ``lowpass_a`` Å (:func:`lowpass_map`; skipped when None);
2. binarise: voxels ``>= threshold`` are in; with ``threshold=None`` the
   :func:`auto_threshold` rule picks it;
3. extend the binary mask by ``extend_px``: every voxel whose Euclidean distance to
   the binary mask is at most ``extend_px`` is in (a binary dilation with a
   spherical structuring element of that radius);
4. add a raised-cosine soft edge of ``soft_edge_px``: a voxel at distance ``d`` from
   the extended mask gets ``0.5 + 0.5 cos(pi d / soft_edge_px)`` for
   ``0 < d < soft_edge_px``, 0 beyond.
"""

from __future__ import annotations

import numpy as np
import scipy.fft
import scipy.ndimage

from pipelines.errors import StageInputError

__all__ = [
    "AUTO_BACKGROUND_SIGMAS",
    "auto_threshold",
    "create_mask",
    "lowpass_map",
    "raised_cosine_filter",
    "resample_map",
    "soft_mask_outside_sphere",
]

AUTO_BACKGROUND_SIGMAS = 5.0
""":func:`auto_threshold`: how many background sd above the background mean."""
AUTO_PEAK_FRACTION = 0.1
""":func:`auto_threshold`: least fraction of the (99.9th-percentile) peak height."""
AUTO_BACKGROUND_RADIUS = 0.45
""":func:`auto_threshold`: background is outside this fraction of the box."""
LOWPASS_EDGE_SHELLS = 2.0
"""Width in Fourier shells of the raised-cosine edge of :func:`lowpass_map`."""


def _cube(volume: np.ndarray, name: str = "volume") -> np.ndarray:
    array = np.asarray(volume, dtype=np.float64)
    if array.ndim != 3 or len(set(array.shape)) != 1:
        raise StageInputError("<array>", name, array.shape, "must be a cube (N, N, N)")
    return array


def raised_cosine_filter(
    index: np.ndarray, cutoff_index: float, edge_shells: float = LOWPASS_EDGE_SHELLS
) -> np.ndarray:
    """1 below ``cutoff - edge/2``, 0 above ``cutoff + edge/2``, a cosine between."""
    low = cutoff_index - 0.5 * edge_shells
    t = np.clip((np.asarray(index, dtype=np.float64) - low) / edge_shells, 0.0, 1.0)
    return np.asarray(0.5 + 0.5 * np.cos(np.pi * t))


def lowpass_map(
    volume: np.ndarray,
    *,
    pixel_size_a: float,
    resolution_a: float,
    edge_shells: float = LOWPASS_EDGE_SHELLS,
) -> np.ndarray:
    """``volume`` ``(N, N, N)`` low-passed at ``resolution_a`` with a cosine edge."""
    vol = _cube(volume)
    box = vol.shape[0]
    if resolution_a <= 0:
        raise StageInputError("<argument>", "resolution_a", resolution_a, "must be > 0")
    cutoff = box * pixel_size_a / resolution_a
    radius = np.sqrt(_radius2(box))
    ft = scipy.fft.rfftn(vol) * raised_cosine_filter(radius, cutoff, edge_shells)
    return np.asarray(scipy.fft.irfftn(ft, s=vol.shape), dtype=np.float32)


def resample_map(volume: np.ndarray, box_px: int) -> np.ndarray:
    """``volume`` ``(N, N, N)`` resampled to ``(box_px,) * 3`` float32 over the same
    field of view (the voxel size scales by ``N / box_px``): its centred spectrum
    zero-padded or cropped about the zero frequency, so the centre voxel ``N // 2``
    goes to ``box_px // 2`` and a constant stays that constant."""
    vol = _cube(volume)
    n = vol.shape[0]
    if box_px < 2:
        raise StageInputError("<argument>", "box_px", box_px, "must be >= 2")
    if box_px == n:
        return np.array(vol, dtype=np.float32)
    spectrum = scipy.fft.fftshift(scipy.fft.fftn(scipy.fft.ifftshift(vol)))
    size = min(n, box_px)
    src = slice(n // 2 - size // 2, n // 2 - size // 2 + size)
    dst = slice(box_px // 2 - size // 2, box_px // 2 - size // 2 + size)
    out = np.zeros((box_px,) * 3, dtype=np.complex128)
    out[dst, dst, dst] = spectrum[src, src, src]
    resampled = scipy.fft.fftshift(scipy.fft.ifftn(scipy.fft.ifftshift(out))).real
    return np.asarray(resampled * (box_px / n) ** 3, dtype=np.float32)


def _radius2(box: int) -> np.ndarray:
    k = np.fft.fftfreq(box) * box
    kx = np.fft.rfftfreq(box) * box
    return np.asarray(k[:, None, None] ** 2 + k[None, :, None] ** 2 + kx**2)


def auto_threshold(volume: np.ndarray) -> float:
    """The ``--auto`` binarisation threshold of a (low-passed) map.

    ``background mean + max(5 background sd, 10 % of (peak - background mean))``:
    the background is every voxel outside a centred sphere of 0.45 box, the peak
    the 99.9th percentile of the map (robust to single hot voxels).
    """
    vol = _cube(volume)
    box = vol.shape[0]
    c = np.arange(box) - box // 2
    r2 = c[:, None, None] ** 2 + c[None, :, None] ** 2 + c**2
    background = vol[r2 > (AUTO_BACKGROUND_RADIUS * box) ** 2]
    mean, sd = float(background.mean()), float(background.std())
    peak = float(np.percentile(vol, 99.9))
    return mean + max(AUTO_BACKGROUND_SIGMAS * sd, AUTO_PEAK_FRACTION * (peak - mean))


def create_mask(
    volume: np.ndarray,
    *,
    pixel_size_a: float,
    lowpass_a: float | None = 15.0,
    threshold: float | None = None,
    extend_px: float = 3.0,
    soft_edge_px: float = 6.0,
) -> np.ndarray:
    """A soft mask ``(N, N, N)`` float32 in [0, 1] (see the module docstring)."""
    vol = _cube(volume)
    if extend_px < 0 or soft_edge_px < 0:
        raise StageInputError(
            "<argument>",
            "extend_px/soft_edge_px",
            (extend_px, soft_edge_px),
            "must be >= 0",
        )
    if lowpass_a:
        vol = lowpass_map(vol, pixel_size_a=pixel_size_a, resolution_a=lowpass_a)
    level = auto_threshold(vol) if threshold is None else float(threshold)
    binary = vol >= level
    if not binary.any():
        raise StageInputError(
            "<argument>", "threshold", level, "no voxel of the map reaches it"
        )
    extended = _distance_to(binary) <= extend_px
    mask = extended.astype(np.float64)
    if soft_edge_px > 0:
        d = _distance_to(extended)
        edge = (d > 0) & (d < soft_edge_px)
        mask[edge] = 0.5 + 0.5 * np.cos(np.pi * d[edge] / soft_edge_px)
    return mask.astype(np.float32)


def soft_mask_outside_sphere(
    volume: np.ndarray, *, radius_px: float | None = None, edge_px: float = 3.0
) -> np.ndarray:
    """The map with everything outside a sphere set to the background value, as
    RELION's ``softMaskOutsideMap`` does to every reconstruction.

    Centre at voxel ``N // 2``; ``radius_px`` defaults to ``N / 2``.  At distance
    ``r`` from the centre, with ``c = 0.5 + 0.5 cos(pi (radius + edge - r) / edge)``
    for ``radius <= r <= radius + edge`` and ``c = 1`` beyond: the value becomes
    ``(1 - c) v + c b``, where ``b`` is the ``c``-weighted mean of the map where
    ``r >= radius``.  Inside the sphere nothing changes.  Returns float64.
    """
    vol = _cube(volume)
    n = vol.shape[0]
    radius = n / 2.0 if radius_px is None else float(radius_px)
    if radius <= 0 or edge_px < 0:
        raise StageInputError(
            "<argument>", "radius_px/edge_px", (radius, edge_px), "must be > 0 / >= 0"
        )
    x = (np.arange(n) - n // 2) ** 2
    r = np.sqrt(x[:, None, None] + x[None, :, None] + x[None, None, :])
    outer = radius + edge_px
    c = np.where(r > outer, 1.0, 0.0)
    edge = (r >= radius) & (r <= outer)
    if edge_px > 0:
        c[edge] = 0.5 + 0.5 * np.cos(np.pi * (outer - r[edge]) / edge_px)
    total = float(c.sum())
    if total == 0.0:  # the sphere holds the whole box
        return vol
    background = float((c * vol).sum()) / total
    return np.asarray((1.0 - c) * vol + c * background)


def _distance_to(inside: np.ndarray) -> np.ndarray:
    """Euclidean distance of every voxel to the nearest ``inside`` voxel (0 inside)."""
    return np.asarray(scipy.ndimage.distance_transform_edt(~inside))
