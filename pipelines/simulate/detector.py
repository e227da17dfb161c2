"""The counting detector: per-pixel gain, its reference's orientation, defects.

A pixel's expected count is ``gain * dose_per_pixel * intensity``.  The gain
*reference* a microscope writes is what corrects raw frames by multiplication:
``1 / gain``.  It may be stored rotated and/or flipped relative to the movies
(RELION ``--gain_rot`` / ``--gain_flip``, MotionCor2 ``-RotGain`` / ``-FlipGain``).
Here, as in RELION, the reference is brought to the movie's orientation by first
rotating it ``quarter_turns`` times 90° clockwise (as displayed with row 0 at the
top: ``np.rot90(ref, -quarter_turns)``), then flipping it: ``GainFlip.UPSIDE_DOWN``
reverses the rows, ``GainFlip.LEFT_RIGHT`` the columns.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from pipelines.errors import StageInputError

__all__ = [
    "DetectorDefects",
    "GainFlip",
    "gain_reference_from_gain",
    "orient_gain_to_movie",
    "random_defects",
    "random_gain",
]


class GainFlip(enum.IntEnum):
    """RELION's ``--gain_flip`` values."""

    NONE = 0
    UPSIDE_DOWN = 1
    LEFT_RIGHT = 2


def orient_gain_to_movie(
    reference: np.ndarray, quarter_turns: int, flip: GainFlip
) -> np.ndarray:
    """A stored gain reference ``(h, w)`` in the movie's orientation (rotate, then flip)."""
    ref = np.rot90(np.asarray(reference), -int(quarter_turns) % 4)
    if flip is GainFlip.UPSIDE_DOWN:
        ref = ref[::-1, :]
    elif flip is GainFlip.LEFT_RIGHT:
        ref = ref[:, ::-1]
    return np.ascontiguousarray(ref)


def gain_reference_from_gain(
    gain: np.ndarray, quarter_turns: int, flip: GainFlip
) -> np.ndarray:
    """The stored reference (``1 / gain``, float32) that :func:`orient_gain_to_movie` undoes."""
    ref = 1.0 / np.asarray(gain, dtype=np.float32)
    if flip is GainFlip.UPSIDE_DOWN:
        ref = ref[::-1, :]
    elif flip is GainFlip.LEFT_RIGHT:
        ref = ref[:, ::-1]
    return np.ascontiguousarray(np.rot90(ref, int(quarter_turns) % 4), dtype=np.float32)


def random_gain(
    shape: tuple[int, int], rng: np.random.Generator, *, sd: float = 0.05
) -> np.ndarray:
    """Per-pixel gain ``(ny, nx)`` float32, mean ~1: pixel noise plus column banding."""
    if not 0.0 <= sd < 0.3:
        raise StageInputError("<argument>", "gain sd", sd, "must be in [0, 0.3)")
    ny, nx = shape
    pixel = rng.normal(scale=sd, size=(ny, nx))
    columns = rng.normal(scale=0.5 * sd, size=(1, nx))
    return np.clip(1.0 + pixel + columns, 0.2, None).astype(np.float32)


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class DetectorDefects:
    """Hot pixels (always bright) and dead pixels (always 0), ``(ny, nx)`` bool."""

    hot: NDArray[np.bool_]
    dead: NDArray[np.bool_]
    hot_counts_per_frame: float

    @property
    def mask(self) -> NDArray[np.bool_]:
        """True where a pixel is defective."""
        return self.hot | self.dead


def random_defects(
    shape: tuple[int, int],
    rng: np.random.Generator,
    *,
    hot_fraction: float = 2e-5,
    dead_fraction: float = 2e-5,
    hot_counts_per_frame: float = 30.0,
) -> DetectorDefects:
    """Random hot and dead pixels (disjoint), plus one dead column when the field is wide."""
    ny, nx = shape
    draw = rng.random((ny, nx))
    hot = draw < hot_fraction
    dead = (draw >= hot_fraction) & (draw < hot_fraction + dead_fraction)
    if nx >= 256 and dead_fraction > 0:
        dead[:, int(rng.integers(0, nx))] = True
        hot &= ~dead
    return DetectorDefects(
        hot=hot, dead=dead, hot_counts_per_frame=hot_counts_per_frame
    )
