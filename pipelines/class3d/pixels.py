"""Fourier pixels of the particles: which ones the pose search reads, and the
particles' transforms and CTFs on them.

A :class:`PixelSet` is the half plane of an ``N x N`` image's ``rfft2`` within a
radius (``kx > 0``, or ``kx = 0`` and ``ky > 0``: each independent complex pixel
once, no DC), sorted by radius so that the pixels within a smaller radius are a
prefix of the list (the coarse pass reads the prefix).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft

from pipelines.reconstruct.particles import PosedParticles, ctf_batch

__all__ = ["PixelSet", "pixel_set", "prepare_particles", "soft_circle"]


@dataclass(frozen=True, slots=True, kw_only=True)
class PixelSet:
    """``kx``, ``ky`` ``(M,)`` float64 frequencies (1/N units), ``shell`` ``(M,)``
    int rounded radius, ``row``/``col`` ``(M,)`` their index in ``rfft2`` output."""

    box_px: int
    kx: np.ndarray
    ky: np.ndarray
    shell: np.ndarray
    row: np.ndarray
    col: np.ndarray

    @property
    def n_pixels(self) -> int:
        return int(self.kx.shape[0])

    def within(self, radius_px: float) -> int:
        """How many leading pixels lie within ``radius_px``."""
        radius = np.hypot(self.kx, self.ky)
        return int(np.searchsorted(radius, radius_px, side="right"))


def pixel_set(box_px: int, radius_px: float) -> PixelSet:
    """The half-plane pixels of a ``box_px`` image within ``radius_px``, by radius."""
    ky = np.fft.fftfreq(box_px, 1.0 / box_px)
    kx = np.arange(box_px // 2 + 1, dtype=np.float64)
    gy, gx = np.meshgrid(ky, kx, indexing="ij")
    radius = np.hypot(gx, gy)
    keep = ((gx > 0) | ((gx == 0) & (gy > 0))) & (radius <= radius_px)
    rows, cols = np.nonzero(keep)
    order = np.argsort(radius[rows, cols], kind="stable")
    rows, cols = rows[order], cols[order]
    return PixelSet(
        box_px=box_px,
        kx=gx[rows, cols],
        ky=gy[rows, cols],
        shell=np.rint(radius[rows, cols]).astype(np.int64),
        row=rows.astype(np.int64),
        col=cols.astype(np.int64),
    )


def soft_circle(box_px: int, radius_px: float, edge_px: float = 3.0) -> np.ndarray:
    """A circular mask ``(N, N)`` float32: 1 inside ``radius_px``, a raised-cosine
    edge ``edge_px`` wide, 0 outside."""
    y, x = np.indices((box_px, box_px)) - box_px // 2
    r = np.hypot(x, y)
    t = np.clip((r - radius_px) / edge_px, 0.0, 1.0)
    return (0.5 + 0.5 * np.cos(np.pi * t)).astype(np.float32)


def _normalised(images: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Background (outside the mask) to mean 0, sd 1, then masked (as RELION)."""
    background = mask < 0.5
    values = images[:, background]
    mean = values.mean(axis=1)
    std = values.std(axis=1)
    std = np.where(std > 0, std, 1.0)
    out = (images - mean[:, None, None]) / std[:, None, None]
    return np.asarray(out * mask, dtype=np.float32)


def prepare_particles(
    particles: PosedParticles,
    rows: np.ndarray,
    pixels: PixelSet,
    mask: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Transforms ``(B, M)`` complex64 (image centre moved to the origin) and CTFs
    ``(B, M)`` float32 of particles ``rows`` on ``pixels``."""
    images = _normalised(np.asarray(particles.images[rows], dtype=np.float32), mask)
    ft = scipy.fft.rfft2(np.fft.ifftshift(images, axes=(1, 2)), workers=-1)
    values = ft[:, pixels.row, pixels.col].astype(np.complex64)
    step = 1.0 / (pixels.box_px * particles.pixel_size_a)
    ctf = ctf_batch(
        particles, rows, pixels.ky[None, :] * step, pixels.kx[None, :] * step
    )
    return values, np.ascontiguousarray(ctf[:, 0, :], dtype=np.float32)


def padded_transforms(
    particles: PosedParticles,
    rows: np.ndarray,
    mask: np.ndarray,
    padding: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Padded transforms ``(B, Np, Np // 2 + 1)`` complex64 in FFT row order with
    the centre moved to the origin, times the CTF, and the CTF^2 (float32): what
    the back-projection inserts (before a shift and a weight per pose)."""
    box = particles.box_px
    npad = padding * box
    images = _normalised(np.asarray(particles.images[rows], dtype=np.float32), mask)
    padded = np.zeros((len(rows), npad, npad), dtype=np.float32)
    o = npad // 2 - box // 2
    padded[:, o : o + box, o : o + box] = images
    ft = scipy.fft.rfft2(np.fft.ifftshift(padded, axes=(1, 2)), workers=-1)
    step = np.float32(1.0 / (npad * particles.pixel_size_a))
    ky = np.fft.fftfreq(npad, 1.0 / npad).astype(np.float32)[:, None]
    kx = np.arange(npad // 2 + 1, dtype=np.float32)[None, :]
    ctf = ctf_batch(particles, rows, ky * step, kx * step)
    return (ft * ctf).astype(np.complex64), (ctf * ctf).astype(np.float32)
