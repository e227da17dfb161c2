"""Superposing maps: :func:`align_maps` (rotation, shift and hand of one map onto
another) and :func:`align_symmetry` (``relion_align_symmetry``'s job: the rotation
that puts a map's symmetry axes where a point group's operators expect them).

Both search rotations on a grid by correlating Fourier samples within a
resolution radius (one trilinear gather per batch of rotations, numba), keep the
best few and refine them on finer local grids.  :func:`align_maps` searches with
amplitudes (blind to shifts and to the hand), then scores the best rotations of
each hand in real space with the shift from an FFT cross-correlation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft
import scipy.ndimage

from pipelines.class3d import _kernels
from pipelines.class3d.orientations import pose_grid
from pipelines.errors import StageInputError
from pipelines.reconstruct.symmetry import symmetry_matrices
from pipelines.simulate.projection import prepare_volume_transform

__all__ = [
    "MapAlignment",
    "align_maps",
    "align_symmetry",
    "mirror_map",
    "rotate_map",
    "symmetrise_map",
]

_PADDING = 2


@dataclass(frozen=True, slots=True, kw_only=True)
class MapAlignment:
    """``aligned`` ``(N, N, N)``: the moving map rotated by ``rotation`` (after
    inversion when ``mirrored``) and shifted by ``shift_px`` ([x, y, z]) onto the
    reference; ``correlation`` their real-space correlation coefficient."""

    aligned: np.ndarray
    rotation: np.ndarray
    shift_px: np.ndarray
    mirrored: bool
    correlation: float


def _cube(volume: np.ndarray, name: str) -> np.ndarray:
    v = np.asarray(volume, dtype=np.float32)
    if v.ndim != 3 or len(set(v.shape)) != 1 or v.shape[0] % 2:
        raise StageInputError(
            "<array>", name, v.shape, "must be an even cube (N, N, N)"
        )
    return v


def _ball(radius_px: float) -> np.ndarray:
    """Frequencies ``(M, 3)`` [x, y, z] of the half ball 1 <= |k| <= radius."""
    n = int(np.ceil(radius_px))
    k = np.arange(-n, n + 1, dtype=np.float64)
    z, y, x = np.meshgrid(k, k, np.arange(n + 1, dtype=np.float64), indexing="ij")
    r = np.sqrt(x * x + y * y + z * z)
    keep = (
        (r >= 1)
        & (r <= radius_px)
        & ((x > 0) | ((x == 0) & (y > 0)) | ((x == 0) & (y == 0) & (z > 0)))
    )
    return np.stack([x[keep], y[keep], z[keep]], axis=1)


def _samples(
    transform: np.ndarray, rotations: np.ndarray, points: np.ndarray
) -> np.ndarray:
    """``(R, M)`` values of ``transform`` at ``R^T p`` (points in unpadded units)."""
    out = np.empty((len(rotations), len(points)), dtype=np.complex64)
    p = np.ascontiguousarray(points * _PADDING)
    _kernels.gather_pixels(
        transform,
        np.ascontiguousarray(rotations, dtype=np.float64),
        np.ascontiguousarray(p[:, 0]),
        np.ascontiguousarray(p[:, 1]),
        np.ascontiguousarray(p[:, 2]),
        out,
    )
    return out


def _shell_normalised(values: np.ndarray, shells: np.ndarray) -> np.ndarray:
    """Values divided by their rms per shell (so that every shell counts alike)."""
    power = np.bincount(shells, np.abs(values) ** 2) / np.maximum(
        np.bincount(shells), 1
    )
    return np.asarray(values / np.sqrt(np.maximum(power[shells], 1e-30)))


def _local_rotations(centre: np.ndarray, step_deg: float, n: int = 2) -> np.ndarray:
    """Rotations ``centre @ D`` for small rotations D on a (2n+1)^3 Euler-like grid
    of ``step_deg`` about the three axes."""
    steps = np.arange(-n, n + 1) * np.deg2rad(step_deg)
    a, b, c = np.meshgrid(steps, steps, steps, indexing="ij")
    vectors = np.stack([a.ravel(), b.ravel(), c.ravel()], axis=1)
    theta = np.linalg.norm(vectors, axis=1)
    axis = vectors / np.maximum(theta, 1e-12)[:, None]
    kmat = np.zeros((len(vectors), 3, 3))
    kmat[:, 0, 1], kmat[:, 0, 2], kmat[:, 1, 2] = -axis[:, 2], axis[:, 1], -axis[:, 0]
    kmat -= np.transpose(kmat, (0, 2, 1))
    s, c1 = np.sin(theta)[:, None, None], (1 - np.cos(theta))[:, None, None]
    small = np.eye(3)[None] + s * kmat + c1 * (kmat @ kmat)
    return np.asarray(centre[None] @ small)


def rotate_map(
    volume: np.ndarray, rotation: np.ndarray, shift_px: np.ndarray | None = None
) -> np.ndarray:
    """``out(x) = volume(R^T (x - shift))`` about the centre voxel ``N // 2``
    (trilinear; ``shift_px`` [x, y, z]); its transform at ``k`` is the input's
    at ``R^T k``."""
    v = _cube(volume, "volume")
    n = v.shape[0]
    c = n // 2
    t = np.zeros(3) if shift_px is None else np.asarray(shift_px, dtype=np.float64)
    # index space is (z, y, x): reverse the axes of R^T
    m = np.asarray(rotation).T[::-1, ::-1]
    offset = np.full(3, float(c)) - m @ (np.full(3, float(c)) + t[::-1])
    out = scipy.ndimage.affine_transform(v, m, offset=offset, order=1, mode="constant")
    return np.asarray(out, dtype=np.float32)


def mirror_map(volume: np.ndarray) -> np.ndarray:
    """``volume(-x)`` about the centre voxel."""
    return np.roll(volume[::-1, ::-1, ::-1], 1, axis=(0, 1, 2))


def _best_shift(
    moving: np.ndarray, reference: np.ndarray, max_shift_px: float
) -> tuple[np.ndarray, float]:
    """Integer shift [x, y, z] maximising the cross-correlation, and the
    correlation coefficient there."""
    n = moving.shape[0]
    fm = scipy.fft.rfftn(moving - moving.mean())
    fr = scipy.fft.rfftn(reference - reference.mean())
    cc = scipy.fft.irfftn(fr * np.conj(fm), s=moving.shape)
    k = np.fft.fftfreq(n, 1.0 / n)
    z, y, x = np.meshgrid(k, k, k, indexing="ij")
    cc = np.where(np.sqrt(x * x + y * y + z * z) <= max_shift_px, cc, -np.inf)
    idx = np.unravel_index(int(np.argmax(cc)), cc.shape)
    shift = np.array([k[idx[2]], k[idx[1]], k[idx[0]]])
    norm = np.sqrt(
        ((moving - moving.mean()) ** 2).sum()
        * ((reference - reference.mean()) ** 2).sum()
    )
    return shift, float(cc[idx] / max(norm, 1e-30))


def align_maps(
    moving: np.ndarray,
    reference: np.ndarray,
    *,
    pixel_size_a: float,
    resolution_a: float | None = None,
    step_deg: float = 12.0,
    n_best: int = 6,
    max_shift_px: float | None = None,
) -> MapAlignment:
    """The rotation, shift and hand that superpose ``moving`` on ``reference``.

    The rotation search correlates shell-normalised Fourier amplitudes within
    ``resolution_a`` (default: N / 4 shells)
    over a ``step_deg`` grid; the ``n_best`` peaks are refined twice on
    local grids, and for each of them and for both hands the real-space
    correlation at the best shift decides.
    """
    mov = _cube(moving, "moving")
    ref = _cube(reference, "reference")
    if mov.shape != ref.shape:
        raise StageInputError("<array>", "moving", mov.shape, f"must match {ref.shape}")
    n = ref.shape[0]
    radius = (
        n / 4.0
        if resolution_a is None
        else min(n / 2 - 1, n * pixel_size_a / resolution_a)
    )
    points = _ball(radius)
    shells = np.rint(np.linalg.norm(points, axis=1)).astype(np.int64)
    ft_ref = prepare_volume_transform(ref, oversampling=_PADDING)
    ft_mov = prepare_volume_transform(mov, oversampling=_PADDING)
    target = _shell_normalised(
        np.abs(_samples(ft_ref, np.eye(3)[None], points)[0]), shells
    )
    target -= target.mean()

    def scores(rotations: np.ndarray) -> np.ndarray:
        values = np.abs(_samples(ft_mov, rotations, points))
        values = np.stack([_shell_normalised(v, shells) for v in values])
        values -= values.mean(axis=1, keepdims=True)
        return np.asarray(values @ target / np.linalg.norm(values, axis=1))

    grid = pose_grid(step_deg).rotations
    coarse = scores(grid)
    candidates = grid[np.argsort(-coarse)[: 4 * n_best]]
    refined = []
    for rotation in candidates:  # a loop over a few peaks
        best = rotation
        for step in (step_deg / 3.0, step_deg / 9.0):
            local = _local_rotations(best, step)
            best = local[int(np.argmax(scores(local)))]
        refined.append(best)
    refined_rot = np.asarray(refined)
    keep = refined_rot[np.argsort(-scores(refined_rot))[:n_best]]
    limit = n / 4.0 if max_shift_px is None else max_shift_px
    best_result: MapAlignment | None = None
    for mirrored in (False, True):
        source = mirror_map(mov) if mirrored else mov
        for rotation in keep:  # a loop over a few peaks
            rotated = rotate_map(source, rotation)
            shift, cc = _best_shift(rotated, ref, limit)
            if best_result is None or cc > best_result.correlation:
                best_result = MapAlignment(
                    aligned=rotate_map(source, rotation, shift),
                    rotation=rotation,
                    shift_px=shift,
                    mirrored=mirrored,
                    correlation=cc,
                )
    assert best_result is not None
    return best_result


def symmetrise_map(volume: np.ndarray, symmetry: str) -> np.ndarray:
    """The average of ``volume`` over the operators of ``symmetry``."""
    v = _cube(volume, "volume")
    ops = symmetry_matrices(symmetry)
    return np.asarray(np.mean([rotate_map(v, op) for op in ops], axis=0), np.float32)


def align_symmetry(
    volume: np.ndarray,
    symmetry: str,
    *,
    pixel_size_a: float,
    resolution_a: float | None = None,
    step_deg: float = 10.0,
) -> tuple[np.ndarray, np.ndarray]:
    """``(rotation, aligned)``: the rotation ``Q`` whose map ``rotate_map(volume,
    Q)`` agrees best with its own images under ``symmetry``'s operators (the
    correlation of Fourier samples ``F(Q^T k)`` with ``F(Q^T g k)``, summed over
    the group), refined on local grids; and that rotated map symmetrised."""
    v = _cube(volume, "volume")
    ops = symmetry_matrices(symmetry)
    if len(ops) == 1:
        return np.eye(3), v
    n = v.shape[0]
    # low resolution finds the axes; at most 8 shells keeps large groups cheap
    radius = (
        min(n / 4.0, 8.0)
        if resolution_a is None
        else min(n / 2 - 1, n * pixel_size_a / resolution_a)
    )
    points = _ball(radius)
    ft = prepare_volume_transform(v, oversampling=_PADDING)

    def scores(rotations: np.ndarray) -> np.ndarray:
        # the aligned map's transform at k is F(Q^T k); it has the symmetry when
        # it agrees with itself at g k: compare F(Q^T k) with F(Q^T g k)
        base = _samples(ft, rotations, points)
        total = np.zeros(len(rotations))
        for g in ops[1:]:  # a loop over the group's operators
            moved = _samples(ft, rotations, points @ g.T)
            num = (np.conj(base) * moved).real.sum(axis=1)
            den = np.sqrt(
                (np.abs(base) ** 2).sum(axis=1) * (np.abs(moved) ** 2).sum(axis=1)
            )
            total += num / np.maximum(den, 1e-30)
        return total / (len(ops) - 1)

    grid = pose_grid(step_deg).rotations
    best = grid[int(np.argmax(scores(grid)))]
    for step in (step_deg / 3.0, step_deg / 9.0):
        local = _local_rotations(best, step)
        best = local[int(np.argmax(scores(local)))]
    aligned = symmetrise_map(rotate_map(v, best), symmetry)
    return best, aligned
