"""Specimen motion during a movie: whole-frame drift and smooth local motion.

Convention: in frame ``f`` the specimen point that frame 0 shows at ``r`` appears at
``r + s_f + l_f(r)`` (content moves by ``+shift``), so an aligner shifts frame ``f``
by ``-(s_f + l_f)``.  Shifts are ``[x, y]`` in pixels; frame 0 has zero shift.

The local (beam-induced) part is a polynomial in normalised time ``t = f / (F - 1)``
and normalised position ``u = x / (nx - 1) - 1/2``, ``v = y / (ny - 1) - 1/2``:

    l_f(x, y) = sum_{p in (1, 2)} sum_{b in B} c[p, b] * t^p * b(u, v),
    B = {u, v, u^2 - 1/12, u v, v^2 - 1/12}

whose spatial terms average to ~0 over the field, so the whole-frame drift is the
mean motion.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.ndimage
from numpy.typing import NDArray

__all__ = ["LocalMotion", "random_drift", "random_local_motion"]

_TIME_POWERS = (1, 2)
_N_SPATIAL = 5


def _spatial_basis(u: np.ndarray, v: np.ndarray) -> list[np.ndarray]:
    return [u, v, u * u - 1.0 / 12.0, u * v, v * v - 1.0 / 12.0]


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class LocalMotion:
    """Smooth local motion of a movie of ``n_frames`` frames of ``shape_px`` (ny, nx).

    ``coefficients_px`` is ``(2, len(time powers), 5)``: [x, y] x (t, t^2) x
    (u, v, u^2 - 1/12, uv, v^2 - 1/12).
    """

    shape_px: tuple[int, int]
    n_frames: int
    coefficients_px: np.ndarray

    def _normalised(
        self,
        frame: np.ndarray | float,
        y_px: np.ndarray | float,
        x_px: np.ndarray | float,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ny, nx = self.shape_px
        t = np.asarray(frame, dtype=np.float64) / max(self.n_frames - 1, 1)
        u = np.asarray(x_px, dtype=np.float64) / max(nx - 1, 1) - 0.5
        v = np.asarray(y_px, dtype=np.float64) / max(ny - 1, 1) - 0.5
        return t, u, v

    def shift_px(
        self,
        frame: np.ndarray | float,
        y_px: np.ndarray | float,
        x_px: np.ndarray | float,
    ) -> NDArray[np.float64]:
        """Local shift ``(..., 2)`` [x, y] at frame(s) and position(s) (broadcast)."""
        t, u, v = self._normalised(frame, y_px, x_px)
        t, u, v = np.broadcast_arrays(t, u, v)
        basis = _spatial_basis(u, v)
        out = np.zeros((*t.shape, 2))
        for ip, p in enumerate(_TIME_POWERS):  # 2 x 5 terms, each a whole array
            tp = t**p
            for ib, b in enumerate(basis):
                out[..., 0] += self.coefficients_px[0, ip, ib] * tp * b
                out[..., 1] += self.coefficients_px[1, ip, ib] * tp * b
        return out

    def spatial_coefficients_px(self, frame: int) -> NDArray[np.float64]:
        """``(2, 5)`` [x, y] coefficients of the spatial basis at ``frame`` (time summed)."""
        t = float(frame) / max(self.n_frames - 1, 1)
        powers = np.array([t**p for p in _TIME_POWERS])
        coefficients: NDArray[np.float64] = np.einsum(
            "apb,p->ab", self.coefficients_px, powers
        )
        return coefficients

    def field_px(self, frame: int) -> tuple[np.ndarray, np.ndarray]:
        """``(shift_x, shift_y)`` each ``(ny, nx)`` float32 over the whole frame."""
        ny, nx = self.shape_px
        t, u, v = self._normalised(
            frame, np.arange(ny)[:, None], np.arange(nx)[None, :]
        )
        basis = _spatial_basis(u, v)
        fields = []
        for axis in range(2):
            acc = np.zeros((ny, nx), dtype=np.float32)
            for ip, p in enumerate(_TIME_POWERS):
                for ib, b in enumerate(basis):
                    c = self.coefficients_px[axis, ip, ib] * float(t) ** p
                    if c:
                        acc += np.float32(c) * b.astype(np.float32)
            fields.append(acc)
        return fields[0], fields[1]


def random_local_motion(
    shape_px: tuple[int, int],
    n_frames: int,
    amplitude_px: float,
    rng: np.random.Generator,
) -> LocalMotion:
    """Random smooth local motion whose largest shift (corners, last frame) is ~amplitude."""
    coefficients = rng.normal(size=(2, len(_TIME_POWERS), _N_SPATIAL))
    motion = LocalMotion(
        shape_px=shape_px, n_frames=n_frames, coefficients_px=coefficients
    )
    ny, nx = shape_px
    corners_y = np.array([0, 0, ny - 1, ny - 1, (ny - 1) / 2])
    corners_x = np.array([0, nx - 1, 0, nx - 1, (nx - 1) / 2])
    peak = np.abs(motion.shift_px(n_frames - 1, corners_y, corners_x)).max()
    scale = amplitude_px / peak if peak > 0 else 0.0
    return LocalMotion(
        shape_px=shape_px, n_frames=n_frames, coefficients_px=coefficients * scale
    )


def random_drift(
    n_frames: int,
    total_px: float,
    rng: np.random.Generator,
    *,
    jitter_px: float = 0.2,
    decay_frames: float = 8.0,
) -> NDArray[np.float64]:
    """Whole-frame shifts ``(n_frames, 2)`` [x, y]: fast early drift that slows down.

    A decaying exponential path of length ~``total_px`` in a random direction, a
    slow bend, plus a smoothed random walk of step ~``jitter_px``; frame 0 is 0.
    """
    f = np.arange(n_frames, dtype=np.float64)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    bend = rng.normal(scale=0.5)
    path = (
        total_px
        * (1.0 - np.exp(-f / decay_frames))
        / (1.0 - np.exp(-max(n_frames - 1, 1) / decay_frames))
    )
    theta = angle + bend * f / max(n_frames - 1, 1)
    shifts: NDArray[np.float64] = np.column_stack(
        [path * np.cos(theta), path * np.sin(theta)]
    )
    walk = np.cumsum(rng.normal(scale=jitter_px, size=(n_frames, 2)), axis=0)
    smooth_walk: NDArray[np.float64] = scipy.ndimage.gaussian_filter1d(
        walk, sigma=1.5, axis=0, mode="nearest"
    )
    shifts += smooth_walk
    relative: NDArray[np.float64] = shifts - shifts[0]
    return relative
