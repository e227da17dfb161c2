"""Synthetic micrographs for the picking and extraction tests (not a test module).

A phantom is a set of 3D Gaussian blobs inside a sphere; its projection along any
rotation is a set of 2D Gaussians, rendered exactly by splatting the rotated centres
and filtering with the Gaussian's transfer function.  A micrograph is the sum of
projections at known centres, multiplied by ``-CTF`` (dark particles), plus white
noise scaled to a per-particle SNR: the variance of the CTF-filtered signal inside
the particles' discs over the noise variance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from pipelines.ctf.model import CtfParams, ctf_2d


@dataclass(frozen=True, slots=True, kw_only=True)
class BlobPhantom:
    centres_a: np.ndarray  # (n_blobs, 3) z, y, x in Å about the particle centre
    sigma_a: float
    diameter_a: float


@dataclass(frozen=True, slots=True, kw_only=True)
class SyntheticMicrograph:
    image: np.ndarray  # (ny, nx) float32, dark particles
    x_px: np.ndarray  # true centres, columns
    y_px: np.ndarray  # true centres, rows
    pixel_size_a: float
    ctf: CtfParams
    diameter_a: float
    noise_sd: float


def make_phantom(
    rng: np.random.Generator, *, diameter_a: float, n_blobs: int = 24
) -> BlobPhantom:
    radius = 0.5 * diameter_a
    sigma = 0.14 * diameter_a
    directions = rng.normal(size=(n_blobs, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    lengths = (radius - 1.5 * sigma) * rng.uniform(0, 1, n_blobs) ** (1 / 3)
    return BlobPhantom(
        centres_a=directions * lengths[:, None], sigma_a=sigma, diameter_a=diameter_a
    )


def _render(
    shape: tuple[int, int],
    pixel_size_a: float,
    phantom: BlobPhantom,
    x_px: np.ndarray,
    y_px: np.ndarray,
    rotations: Rotation,
    ctf: CtfParams | None,
) -> np.ndarray:
    """Projections at ``(x_px, y_px)`` in a ``shape`` image, CTF-filtered (not negated)."""
    rotated = rotations.as_matrix() @ phantom.centres_a.T[None]  # (n, 3, n_blobs)
    py = y_px[:, None] + rotated[:, 1, :] / pixel_size_a
    px = x_px[:, None] + rotated[:, 2, :] / pixel_size_a
    image = np.zeros(shape, dtype=np.float64)
    y0 = np.floor(py).astype(int)
    x0 = np.floor(px).astype(int)
    fy = py - y0
    fx = px - x0
    for dy, dx, w in (
        (0, 0, (1 - fy) * (1 - fx)),
        (0, 1, (1 - fy) * fx),
        (1, 0, fy * (1 - fx)),
        (1, 1, fy * fx),
    ):
        np.add.at(image, ((y0 + dy) % shape[0], (x0 + dx) % shape[1]), w)
    ky = np.fft.fftfreq(shape[0], d=pixel_size_a)[:, None]
    kx = np.fft.rfftfreq(shape[1], d=pixel_size_a)[None, :]
    transfer = np.exp(-2 * np.pi**2 * phantom.sigma_a**2 * (ky**2 + kx**2))
    if ctf is not None:
        transfer = transfer * ctf_2d(shape, pixel_size_a, ctf, dtype=np.float64)
    return scipy.fft.irfft2(scipy.fft.rfft2(image) * transfer, s=shape)


def random_rotations(n: int, rng: np.random.Generator) -> Rotation:
    return Rotation.random(n, random_state=rng)


def simulate(
    rng: np.random.Generator,
    *,
    shape: tuple[int, int] = (512, 512),
    pixel_size_a: float = 4.0,
    phantom: BlobPhantom,
    n_particles: int = 40,
    snr: float = 0.1,
    defocus_a: float = 20000.0,
    margin_px: int | None = None,
) -> SyntheticMicrograph:
    """Particles at non-overlapping random centres (``>= 1.2`` diameters apart)."""
    d_px = phantom.diameter_a / pixel_size_a
    margin = int(d_px) if margin_px is None else margin_px
    xs: list[float] = []
    ys: list[float] = []
    tries = 0
    while len(xs) < n_particles and tries < 20000:
        tries += 1
        x = rng.uniform(margin, shape[1] - 1 - margin)
        y = rng.uniform(margin, shape[0] - 1 - margin)
        if all(
            (x - a) ** 2 + (y - b) ** 2 >= (1.2 * d_px) ** 2
            for a, b in zip(xs, ys, strict=True)
        ):
            xs.append(x)
            ys.append(y)
    x_px = np.array(xs)
    y_px = np.array(ys)
    ctf = CtfParams(
        defocus_u_a=defocus_a * 1.02,
        defocus_v_a=defocus_a * 0.98,
        astigmatism_angle_deg=30.0,
    )
    signal = _render(
        shape, pixel_size_a, phantom, x_px, y_px, random_rotations(len(x_px), rng), ctf
    )
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    nearest, _ = cKDTree(np.column_stack([x_px, y_px])).query(
        np.column_stack([xx.ravel(), yy.ravel()])
    )
    inside = (nearest <= 0.5 * d_px).reshape(shape)
    signal_var = float(np.var(signal[inside]))
    noise_sd = float(np.sqrt(signal_var / snr))
    image = -signal + rng.normal(0.0, noise_sd, size=shape)
    return SyntheticMicrograph(
        image=image.astype(np.float32),
        x_px=x_px,
        y_px=y_px,
        pixel_size_a=pixel_size_a,
        ctf=ctf,
        diameter_a=phantom.diameter_a,
        noise_sd=noise_sd,
    )


def project_templates(
    phantom: BlobPhantom,
    rng: np.random.Generator,
    *,
    n: int,
    box_px: int,
    pixel_size_a: float,
) -> np.ndarray:
    """``(n, box, box)`` projections (white, no CTF) centred at ``box // 2``."""
    rotations = random_rotations(n, rng)
    out = np.empty((n, box_px, box_px))
    for i in range(n):  # a handful of templates
        out[i] = _render(
            (box_px, box_px),
            pixel_size_a,
            phantom,
            np.array([box_px // 2]),
            np.array([box_px // 2]),
            rotations[i : i + 1],
            None,
        )
    return out.astype(np.float32)


def match_picks(
    x_true: np.ndarray,
    y_true: np.ndarray,
    x_pick: np.ndarray,
    y_pick: np.ndarray,
    *,
    tolerance_px: float,
) -> tuple[float, float]:
    """Greedy nearest matching within ``tolerance_px``: (recall, precision)."""
    if len(x_pick) == 0:
        return 0.0, 0.0
    d = np.hypot(x_true[:, None] - x_pick[None], y_true[:, None] - y_pick[None])
    pairs = np.argwhere(d <= tolerance_px)
    order = np.argsort(d[pairs[:, 0], pairs[:, 1]])
    used_t: set[int] = set()
    used_p: set[int] = set()
    for t, p in pairs[order]:
        if t not in used_t and p not in used_p:
            used_t.add(int(t))
            used_p.add(int(p))
    return len(used_t) / len(x_true), len(used_p) / len(x_pick)
