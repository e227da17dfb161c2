"""Images to and from the flat Fourier pixel list, rotation of transforms, CTFs.

See :mod:`pipelines.class2d.sampling` for the transform convention.  Rotating by
``psi`` samples a transform at ``Rot(psi) k`` (``Rot`` turns (x, y) counter-clockwise,
x along columns, y along rows), so in real space ``out(x) = in(Rot(psi) x)``: the
convention of RELION's ``rlnAnglePsi`` (a reference is compared with a particle after
this rotation).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.fft

from pipelines.class2d import _kernels
from pipelines.class2d.sampling import PoseSampling
from pipelines.ctf.model import CtfParams, ctf_phase
from pipelines.errors import StageInputError

__all__ = [
    "ctf_stack",
    "images_to_pixels",
    "pixels_to_images",
    "rotate_transforms",
    "shell_average",
]


def images_to_pixels(
    images: np.ndarray, sampling: PoseSampling, *, workers: int = -1
) -> np.ndarray:
    """``(n, N, N)`` real images -> ``(n, P)`` complex64 transforms."""
    stack = np.asarray(images, dtype=np.float32)
    if stack.ndim != 3 or stack.shape[1:] != (sampling.box_px, sampling.box_px):
        raise StageInputError(
            "<array>",
            "images",
            stack.shape,
            f"must be (n, {sampling.box_px}, {sampling.box_px})",
        )
    ft = scipy.fft.rfft2(
        np.fft.ifftshift(stack, axes=(1, 2)), norm="ortho", workers=workers
    )
    return np.ascontiguousarray(ft[:, sampling.rows, sampling.cols], dtype=np.complex64)


def scatter_pixels(pixels: np.ndarray, sampling: PoseSampling) -> np.ndarray:
    """``(n, P)`` -> ``(n, N, N // 2 + 1)`` rfft grids (zero outside the radius)."""
    n = pixels.shape[0]
    grid = np.zeros((n, sampling.box_px, sampling.box_px // 2 + 1), dtype=np.complex64)
    grid[:, sampling.rows, sampling.cols] = pixels
    return grid


def pixels_to_images(
    pixels: np.ndarray, sampling: PoseSampling, *, workers: int = -1
) -> np.ndarray:
    """Inverse of :func:`images_to_pixels` (low-passed at the sampling radius)."""
    grid = scatter_pixels(pixels, sampling)
    images = scipy.fft.irfft2(
        grid, s=(sampling.box_px, sampling.box_px), norm="ortho", workers=workers
    )
    return np.ascontiguousarray(np.fft.fftshift(images, axes=(1, 2)), dtype=np.float32)


def rotate_transforms(
    grids: np.ndarray,
    source_index: np.ndarray,
    angles_deg: np.ndarray,
    sampling: PoseSampling,
    *,
    oversampling: int = 1,
) -> np.ndarray:
    """Sample ``grids`` ``(S, oN, oN//2+1)`` complex64 at ``Rot(angle) k`` -> ``(M, P)``.

    Output row ``m`` reads grid ``source_index[m]`` turned by ``angles_deg[m]``;
    ``oversampling`` is the zero-padding factor of the grids (2 for references).
    """
    src = np.ascontiguousarray(grids, dtype=np.complex64)
    size = sampling.box_px * oversampling
    if src.ndim != 3 or src.shape[1:] != (size, size // 2 + 1):
        raise StageInputError(
            "<array>", "grids", src.shape, f"must be (S, {size}, {size // 2 + 1})"
        )
    index = np.ascontiguousarray(source_index, dtype=np.int64)
    angles = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    if index.shape != angles.shape or index.ndim != 1:
        raise StageInputError(
            "<array>",
            "source_index/angles_deg",
            (index.shape, angles.shape),
            "must be equal 1D shapes",
        )
    if index.size and (index.min() < 0 or index.max() >= src.shape[0]):
        raise StageInputError("<array>", "source_index", index.max(), "out of range")
    out = np.empty((index.size, sampling.n_pixels), dtype=np.complex64)
    _kernels.rotate_gather(
        src,
        index,
        np.cos(angles),
        np.sin(angles),
        sampling.kx,
        sampling.ky,
        float(oversampling),
        out,
    )
    return out


def padded_grids(
    images: np.ndarray, oversampling: int = 2, *, workers: int = -1
) -> np.ndarray:
    """rfft grids of ``images`` ``(n, N, N)`` zero-padded ``oversampling`` times
    about their centre (for accurate rotation by :func:`rotate_transforms`); the
    values are scaled to match the unpadded ``norm="ortho"`` transform."""
    n, box, _ = images.shape
    size = box * oversampling
    padded = np.zeros((n, size, size), dtype=np.float32)
    o = size // 2 - box // 2
    padded[:, o : o + box, o : o + box] = images
    ft = scipy.fft.rfft2(
        np.fft.ifftshift(padded, axes=(1, 2)), norm="ortho", workers=workers
    )
    return np.ascontiguousarray(ft * oversampling, dtype=np.complex64)


def ctf_stack(
    sampling: PoseSampling,
    pixel_size_a: float,
    *,
    defocus_u_a: np.ndarray,
    defocus_v_a: np.ndarray,
    astigmatism_angle_deg: np.ndarray,
    voltage_kv: float,
    cs_mm: float,
    amplitude_contrast: float,
    phase_shift_deg: np.ndarray | float = 0.0,
) -> np.ndarray:
    """Per-particle CTFs ``(n, P)`` float32 at the sampled pixels.

    The same formula as :func:`pipelines.ctf.model.ctf_2d` (it calls its
    :func:`~pipelines.ctf.model.ctf_phase` with per-particle columns).
    """
    du = np.asarray(defocus_u_a, dtype=np.float64).reshape(-1, 1)
    params: Any = CtfParams(
        defocus_u_a=du,  # type: ignore[arg-type]  # broadcast columns
        defocus_v_a=np.asarray(defocus_v_a, dtype=np.float64).reshape(-1, 1),  # type: ignore[arg-type]
        astigmatism_angle_deg=np.asarray(  # type: ignore[arg-type]
            astigmatism_angle_deg, dtype=np.float64
        ).reshape(-1, 1),
        voltage_kv=float(voltage_kv),
        cs_mm=float(cs_mm),
        amplitude_contrast=float(amplitude_contrast),
        phase_shift_deg=np.broadcast_to(  # type: ignore[arg-type]
            np.asarray(phase_shift_deg, dtype=np.float64).reshape(-1, 1), du.shape
        ),
    )
    step = 1.0 / (sampling.box_px * pixel_size_a)
    ky = (sampling.ky * step)[None, :]
    kx = (sampling.kx * step)[None, :]
    return np.ascontiguousarray(-np.sin(ctf_phase(ky, kx, params)), dtype=np.float32)


def shell_average(values: np.ndarray, sampling: PoseSampling) -> np.ndarray:
    """Mean of real ``values`` ``(..., P)`` per shell -> ``(..., n_shells)``."""
    counts = np.bincount(sampling.shell, minlength=sampling.n_shells)
    matrix = np.zeros((sampling.n_pixels, sampling.n_shells))
    matrix[np.arange(sampling.n_pixels), sampling.shell] = 1.0
    flat = np.asarray(values, dtype=np.float64).reshape(-1, values.shape[-1])
    out = (flat @ matrix) / np.maximum(counts, 1)
    return out.reshape(*values.shape[:-1], sampling.n_shells)
