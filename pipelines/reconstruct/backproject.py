"""Fourier-space back-projection with CTF weighting and Wiener-like regularisation.

What ``relion_reconstruct`` does, on the CPU:

1. each image (``N x N``, not padded) is Fourier transformed, recentred by its
   origin (a phase ramp) and multiplied by its CTF;
2. it is inserted as a central slice at ``padding R^T k`` (trilinearly, for every
   operator ``S`` of the symmetry group at the pose ``R S``) into
   ``data = sum CTF * F`` and ``weight = sum CTF^2`` on a ``(Np, Np, Np // 2 + 1)``
   grid, ``Np = padding N`` (:mod:`._kernels`): RELION's ``backproject2Dto3D``
   scales the slice's coordinates by the padding factor, so the volume's grid is
   finer than the slice's and the image itself is never padded;
3. the map is ``data / (weight + 1 / tau^2)``, where ``1 / tau^2`` is the shell's
   average weight divided by the spectral SNR (RELION's ``tau2`` from the FSC:
   ``SSNR = FSC / (1 - FSC)``), inverse transformed, cropped to the box, set to its
   background outside a sphere of radius ``N / 2`` with a raised-cosine edge of 3
   pixels (RELION's ``softMaskOutsideMap`` in ``windowToOridimRealSpace``) and
   divided by the ``sinc^2`` taper of trilinear interpolation (gridding correction).

``insertion="padded"`` keeps the earlier scheme (each image zero-padded to
``Np`` before its transform, every sample of that transform inserted at
``R^T k``): 4 times the insertion work, and a map 3–4 shells behind at low SNR
(``docs/reconstruct.md``); for comparison only.

Unlike ``relion_reconstruct`` there are no iterative gridding (Pipe-Menon) weights:
the division is per voxel.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import numba
import numpy as np
import scipy.fft

from pipelines.errors import StageInputError
from pipelines.reconstruct import _kernels

# the projector's 1 / sinc^2 (trilinear taper on a grid padded to Np): one source
from pipelines.reconstruct.geometry import gridding_correction
from pipelines.reconstruct.mask import soft_mask_outside_sphere
from pipelines.reconstruct.particles import PosedParticles, ctf_batch
from pipelines.reconstruct.symmetry import symmetry_matrices

__all__ = [
    "OUTSIDE_SPHERE_EDGE_PX",
    "FourierSums",
    "backproject",
    "insert_transforms",
    "ssnr_from_fsc",
    "weights_to_map",
]

DEFAULT_PADDING = 2
OUTSIDE_SPHERE_EDGE_PX = 3.0
"""Raised-cosine edge of the mask outside the box's sphere (RELION's default)."""
Insertion = Literal["scaled", "padded"]
_BATCH_BYTES = 2**27


@dataclass(frozen=True, slots=True, kw_only=True)
class FourierSums:
    """The sums of one (half) set: ``data`` complex128 and ``weight`` float64,
    both ``(Np, Np, Np // 2 + 1)`` centred along z and y, for a box of ``box_px``."""

    data: np.ndarray
    weight: np.ndarray
    box_px: int
    padding: int
    n_particles: int

    def __add__(self, other: FourierSums) -> FourierSums:
        if (other.box_px, other.padding) != (self.box_px, self.padding):
            raise StageInputError(
                "<array>", "sums", (other.box_px, other.padding), "box/padding differ"
            )
        return FourierSums(
            data=self.data + other.data,
            weight=self.weight + other.weight,
            box_px=self.box_px,
            padding=self.padding,
            n_particles=self.n_particles + other.n_particles,
        )


def _prepare_batch(
    particles: PosedParticles, rows: np.ndarray, npad: int, ctf_correct: bool
) -> tuple[np.ndarray, np.ndarray]:
    """CTF-weighted, recentred transforms and CTF^2, ``(b, Np, Np // 2 + 1)``, of
    the images zero-padded to ``Np`` (``Np`` = the box: not padded).

    Rows are in FFT order (row ``ky mod Np``); float32 / complex64.
    """
    box = particles.box_px
    if npad == box:
        padded = np.asarray(particles.images[rows], dtype=np.float32)
    else:
        padded = np.zeros((len(rows), npad, npad), dtype=np.float32)
        o = npad // 2 - box // 2
        padded[:, o : o + box, o : o + box] = particles.images[rows]
    ft = scipy.fft.rfft2(padded, workers=1)
    ky = np.fft.fftfreq(npad, 1.0 / npad).astype(np.float32)[:, None]
    kx = np.arange(npad // 2 + 1, dtype=np.float32)[None, :]
    # the image centre is at Np // 2: move it to 0, then recentre by the origin
    # (exp(-2 pi i k.(origin - Np // 2) / Np), separable in x and y)
    shift = (particles.origin_px[rows] - npad // 2).astype(np.float32)
    ft *= np.exp(np.complex64(-2j * np.pi / npad) * shift[:, 0, None, None] * kx)
    ft *= np.exp(np.complex64(-2j * np.pi / npad) * shift[:, 1, None, None] * ky)
    if not ctf_correct:
        return ft, np.ones(ft.shape, dtype=np.float32)
    step = np.float32(1.0 / (npad * particles.pixel_size_a))
    ctf = ctf_batch(particles, rows, ky * step, kx * step)
    premultiplied = particles.ctf_premultiplied[rows][:, None, None]
    ft = np.where(premultiplied, ft, ft * ctf)
    return np.ascontiguousarray(ft), np.ascontiguousarray(ctf * ctf)


def _prepare_parallel(
    particles: PosedParticles, rows: np.ndarray, npad: int, ctf_correct: bool
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_prepare_batch` over chunks of ``rows`` in threads (NumPy and the
    FFT release the GIL), one chunk per numba thread."""
    n_chunks = min(numba.get_num_threads(), max(1, len(rows) // 16))
    chunks = np.array_split(rows, n_chunks)
    if n_chunks == 1:
        return _prepare_batch(particles, rows, npad, ctf_correct)
    with ThreadPoolExecutor(max_workers=n_chunks) as pool:
        parts = list(
            pool.map(lambda c: _prepare_batch(particles, c, npad, ctf_correct), chunks)
        )
    return (
        np.concatenate([part[0] for part in parts]),
        np.concatenate([part[1] for part in parts]),
    )


def backproject(
    particles: PosedParticles,
    *,
    rows: np.ndarray | None = None,
    symmetry: str = "C1",
    padding: int = DEFAULT_PADDING,
    ctf_correct: bool = True,
    batch_size: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    insertion: Insertion = "scaled",
) -> FourierSums:
    """Insert particles ``rows`` (default: all) once per symmetry operator.

    ``insertion="scaled"`` (RELION's): the transform of the unpadded image, its
    samples at ``padding R^T k``; ``"padded"``: the transform of the image
    zero-padded ``padding`` times, at ``R^T k`` (see the module docstring).

    ``ctf_correct=False`` inserts the images as they are with weight 1 (no CTF
    correction: for comparison only).  Batches of ``batch_size`` particles (default:
    about 128 MB of transforms) are prepared with NumPy and inserted by the numba
    kernel; ``on_progress(done, total)``, if given, is called after each batch with
    the particles inserted so far.
    """
    if padding < 1:
        raise StageInputError("<argument>", "padding", padding, "must be >= 1")
    if insertion not in ("scaled", "padded"):
        raise StageInputError(
            "<argument>", "insertion", insertion, "must be 'scaled' or 'padded'"
        )
    box = particles.box_px
    npad = padding * box
    # the size of the images' transforms and the scale of their coordinates
    nft, scale = (box, float(padding)) if insertion == "scaled" else (npad, 1.0)
    ops = symmetry_matrices(symmetry)
    chosen = np.arange(particles.n_particles) if rows is None else np.asarray(rows)
    per_particle = nft * (nft // 2 + 1) * 12  # complex64 transform + float32 CTF^2
    size = batch_size or max(1, _BATCH_BYTES // per_particle)
    data = np.zeros((npad, npad, npad // 2 + 1), dtype=np.complex128)
    weight = np.zeros(data.shape, dtype=np.float64)
    radius_px = float(nft // 2)  # in the transform's own Fourier pixels
    slab_px = max(2, npad // (4 * numba.get_num_threads()))
    for start in range(0, len(chosen), size):
        batch = chosen[start : start + size]
        fimages, ctf2 = _prepare_parallel(particles, batch, nft, ctf_correct)
        rotations = np.einsum("bij,sjk->bsik", particles.rotations[batch], ops)
        rotations = np.ascontiguousarray(rotations.reshape(-1, 3, 3))
        image_index = np.repeat(np.arange(len(batch)), len(ops))
        for parity in (0, 1):
            _kernels.insert_slices_scaled(
                data,
                weight,
                fimages,
                ctf2,
                image_index,
                rotations,
                scale,
                radius_px,
                slab_px,
                parity,
            )
        if on_progress is not None:
            on_progress(start + len(batch), len(chosen))
    _make_x0_plane_hermitian(data, weight)
    return FourierSums(
        data=data,
        weight=weight,
        box_px=box,
        padding=padding,
        n_particles=len(chosen),
    )


def insert_transforms(
    fimages: np.ndarray,
    ctf2: np.ndarray,
    image_index: np.ndarray,
    rotations: np.ndarray,
    *,
    box_px: int,
    padding: int = DEFAULT_PADDING,
    radius_px: float | None = None,
) -> FourierSums:
    """Sums of prepared slices: ``fimages`` ``(b, Np, Np // 2 + 1)`` complex64
    (CTF-weighted, recentred, FFT row order, as :func:`backproject` prepares them;
    any per-pose weight already applied) and ``ctf2`` (same shape, float32),
    inserted at ``rotations`` ``(n, 3, 3)`` for images ``image_index`` ``(n,)``.

    ``radius_px`` (unpadded pixels, default ``box_px // 2``) limits the frequencies
    inserted.  For callers with their own poses and weights (the 3D pose search).
    """
    npad = padding * box_px
    if fimages.shape[1:] != (npad, npad // 2 + 1) or ctf2.shape != fimages.shape:
        raise StageInputError(
            "<array>", "fimages", fimages.shape, f"must be (b, {npad}, {npad // 2 + 1})"
        )
    data = np.zeros((npad, npad, npad // 2 + 1), dtype=np.complex128)
    weight = np.zeros(data.shape, dtype=np.float64)
    radius = float(padding * (box_px // 2 if radius_px is None else radius_px))
    slab_px = max(2, npad // (4 * numba.get_num_threads()))
    rots = np.ascontiguousarray(rotations, dtype=np.float64)
    index = np.ascontiguousarray(image_index, dtype=np.int64)
    for parity in (0, 1):
        _kernels.insert_slices(
            data,
            weight,
            np.ascontiguousarray(fimages, dtype=np.complex64),
            np.ascontiguousarray(ctf2, dtype=np.float32),
            index,
            rots,
            radius,
            slab_px,
            parity,
        )
    _make_x0_plane_hermitian(data, weight)
    return FourierSums(
        data=data,
        weight=weight,
        box_px=box_px,
        padding=padding,
        n_particles=len(fimages),
    )


def _make_x0_plane_hermitian(data: np.ndarray, weight: np.ndarray) -> None:
    """Give the x = 0 plane both Hermitian halves' samples (in place)."""
    plane = data[:, :, 0]
    mirrored = np.conj(np.roll(plane[::-1, ::-1], 1, axis=(0, 1)))
    data[:, :, 0] = plane + mirrored
    w = weight[:, :, 0]
    weight[:, :, 0] = w + np.roll(w[::-1, ::-1], 1, axis=(0, 1))


def ssnr_from_fsc(fsc: np.ndarray, *, whole_map: bool = False) -> np.ndarray:
    """RELION's spectral SNR from a half-map FSC: ``FSC / (1 - FSC)``.

    For the map of both halves the FSC is first raised to ``sqrt(2 FSC / (1 + FSC))``
    (the correlation of the whole map with the truth); FSC is kept in [0.001, 0.999].
    """
    f = np.clip(np.asarray(fsc, dtype=np.float64), 0.001, 0.999)
    if whole_map:
        f = np.sqrt(2.0 * f / (1.0 + f))
    return np.asarray(f / (1.0 - f))


def _radius_grid(npad: int) -> np.ndarray:
    k = np.arange(npad) - npad // 2
    kx = np.arange(npad // 2 + 1)
    return np.asarray(np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + kx**2))


def weights_to_map(
    sums: FourierSums,
    *,
    ssnr: np.ndarray | float,
    outside_sphere_edge_px: float | None = OUTSIDE_SPHERE_EDGE_PX,
) -> np.ndarray:
    """The map ``(N, N, N)`` float32 of ``sums`` regularised with ``ssnr``.

    ``ssnr`` is one number or one per shell ``(N // 2 + 1,)`` of the unpadded box
    (interpolated onto the padded grid; 0 beyond the last shell).  Outside the
    sphere of radius ``N / 2`` the map is set to its background with a raised-cosine
    edge of ``outside_sphere_edge_px`` (RELION's; ``None``: no mask), before the
    gridding correction, as RELION orders them.
    """
    box, npad = sums.box_px, sums.box_px * sums.padding
    radius = _radius_grid(npad)
    shells = np.rint(radius).astype(np.int64)
    n_pad_shells = npad // 2 + 1
    inside = shells < n_pad_shells
    counts = np.bincount(shells[inside], minlength=n_pad_shells)
    total = np.bincount(shells[inside], sums.weight[inside], minlength=n_pad_shells)
    mean_weight = total / np.maximum(counts, 1)
    ssnr_values = np.atleast_1d(np.asarray(ssnr, dtype=np.float64))
    if ssnr_values.size == 1:
        per_shell = np.full(n_pad_shells, float(ssnr_values[0]))
    else:
        if ssnr_values.shape != (box // 2 + 1,):
            raise StageInputError(
                "<array>", "ssnr", ssnr_values.shape, f"must be ({box // 2 + 1},)"
            )
        per_shell = np.interp(
            np.arange(n_pad_shells) / sums.padding,
            np.arange(box // 2 + 1),
            ssnr_values,
            right=0.0,
        )
    with np.errstate(divide="ignore"):
        inverse_tau2 = np.where(
            per_shell > 0, mean_weight / np.maximum(per_shell, 1e-300), np.inf
        )
    denominator = sums.weight + np.where(
        inside, inverse_tau2[np.minimum(shells, n_pad_shells - 1)], np.inf
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        fvol = np.where(denominator > 0, sums.data / denominator, 0.0)
    fvol = np.where(np.isfinite(denominator), fvol, 0.0)
    # fvol is centred along z and y: rather than shifting it, transform as it is and
    # multiply by (-1)^(z + y) in real space (even Np); keep the central box, which
    # sits around index 0 of the unshifted result
    real = scipy.fft.irfftn(fvol.astype(np.complex64), s=(npad, npad, npad), workers=-1)
    index = (np.arange(box) - box // 2) % npad
    sign = 1.0 - 2.0 * (index % 2)
    volume = real[np.ix_(index, index, index)] * (
        sign[:, None, None] * sign[None, :, None]
    )
    if outside_sphere_edge_px is not None:
        volume = soft_mask_outside_sphere(volume, edge_px=outside_sphere_edge_px)
    return np.asarray(volume * gridding_correction(box, npad), dtype=np.float32)
