"""Particle picks: the record every picker returns, and what is done to it after.

A :class:`Picks` record holds one micrograph's picks as columns (x = column, y = row,
in the micrograph's own pixels).  Thresholds are applied after picking with
:func:`filter_picks`, so an operator can inspect and re-threshold without
re-picking; :func:`suppress_non_maxima` keeps the best pick in every neighbourhood;
:func:`suggest_diameter_a` proposes a particle diameter from the first picks of a
session.  Picks are read and written as RELION coordinate STAR files
(``rlnCoordinateX/Y``, ``rlnAutopickFigureOfMerit``) and as JSON-ready dicts.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from pipelines.errors import StageInputError
from pipelines.io.outputs import write_star
from pipelines.picking._kernels import greedy_keep_kernel

__all__ = [
    "Picks",
    "drop_edge_picks",
    "filter_picks",
    "picks_to_dicts",
    "read_picks_star",
    "suggest_diameter_a",
    "suppress_non_maxima",
    "write_picks_star",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Picks:
    """Picks of one micrograph, one entry per particle (all arrays ``(n,)``).

    ``score`` is the picker's figure of merit (NCC for the template picker, the
    LoG response in noise standard deviations for the blob picker); ``power`` is the
    local power under the particle relative to the micrograph (cryoSPARC's power
    score); ``diameter_a`` is the diameter the picker matched.
    """

    x_px: np.ndarray
    y_px: np.ndarray
    score: np.ndarray
    power: np.ndarray
    diameter_a: np.ndarray
    pixel_size_a: float
    shape: tuple[int, int]  # (ny, nx) of the micrograph

    def __post_init__(self) -> None:
        n = self.x_px.shape
        for name in ("y_px", "score", "power", "diameter_a"):
            if getattr(self, name).shape != n:
                raise ValueError(
                    f"Picks.{name} has shape {getattr(self, name).shape}, x_px {n}"
                )

    def __len__(self) -> int:
        return int(self.x_px.shape[0])

    def take(self, index: np.ndarray) -> Picks:
        """The picks selected by a boolean mask or an index array."""
        return replace(
            self,
            x_px=self.x_px[index],
            y_px=self.y_px[index],
            score=self.score[index],
            power=self.power[index],
            diameter_a=self.diameter_a[index],
        )

    @classmethod
    def empty(cls, *, pixel_size_a: float, shape: tuple[int, int]) -> Picks:
        zero = np.zeros(0, dtype=np.float64)
        return cls(
            x_px=zero,
            y_px=zero,
            score=zero,
            power=zero,
            diameter_a=zero,
            pixel_size_a=pixel_size_a,
            shape=shape,
        )


def suppress_non_maxima(picks: Picks, min_distance_px: float) -> Picks:
    """Keep the highest-scoring pick within every ``min_distance_px`` neighbourhood.

    Greedy in order of decreasing score: a pick is dropped when a kept pick lies
    closer than ``min_distance_px``.  The result is sorted by decreasing score.
    """
    order = np.argsort(-picks.score, kind="stable")
    ordered = picks.take(order)
    if len(ordered) < 2 or min_distance_px <= 0:
        return ordered
    points = np.column_stack([ordered.x_px, ordered.y_px])
    from scipy.spatial import cKDTree  # ~0.1 s: on first use, not with the module

    pairs = cKDTree(points).query_pairs(min_distance_px, output_type="ndarray")
    keep = _greedy_keep(len(ordered), pairs)
    return ordered.take(keep)


def drop_edge_picks(picks: Picks, shape: tuple[int, int], edge_px: float) -> Picks:
    """Keep the picks whose centre is at least ``edge_px`` from every border."""
    ny, nx = shape
    inside = (
        (picks.x_px >= edge_px)
        & (picks.x_px <= nx - 1 - edge_px)
        & (picks.y_px >= edge_px)
        & (picks.y_px <= ny - 1 - edge_px)
    )
    return picks.take(inside)


def _greedy_keep(n: int, pairs: np.ndarray) -> np.ndarray:
    """Greedy suppression over conflict pairs; indices are already in score order."""
    if pairs.size == 0:
        return np.ones(n, dtype=bool)
    pairs = np.sort(pairs, axis=1)  # (better, worse): lower index = higher score
    pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
    starts = np.searchsorted(pairs[:, 0], np.arange(n + 1)).astype(np.int64)
    worse = np.ascontiguousarray(pairs[:, 1], dtype=np.int64)
    return greedy_keep_kernel(n, starts, worse)


def filter_picks(
    picks: Picks,
    *,
    min_score: float | None = None,
    power_range: tuple[float, float] | None = None,
    edge_px: float = 0.0,
) -> Picks:
    """Apply thresholds after picking: minimum score (NCC), power range, edge margin."""
    keep = np.ones(len(picks), dtype=bool)
    if min_score is not None:
        keep &= picks.score >= min_score
    if power_range is not None:
        low, high = power_range
        keep &= (picks.power >= low) & (picks.power <= high)
    if edge_px > 0:
        ny, nx = picks.shape
        keep &= (picks.x_px >= edge_px) & (picks.x_px <= nx - 1 - edge_px)
        keep &= (picks.y_px >= edge_px) & (picks.y_px <= ny - 1 - edge_px)
    return picks.take(keep)


def suggest_diameter_a(
    picks: list[Picks] | Picks, *, top_fraction: float = 0.5
) -> float:
    """A particle diameter (Å) from the first picks of a session.

    The median matched diameter of the best ``top_fraction`` of the picks (by score),
    bounded above by the median nearest-neighbour distance (particles do not overlap).
    """
    batches = [picks] if isinstance(picks, Picks) else list(picks)
    diameters = []
    spacing = []
    for batch in batches:
        if len(batch) == 0:
            continue
        n_top = max(1, round(top_fraction * len(batch)))
        best = np.argsort(-batch.score)[:n_top]
        diameters.append(batch.diameter_a[best])
        if len(batch) > 1:
            points = np.column_stack([batch.x_px, batch.y_px])
            from scipy.spatial import cKDTree  # as in suppress_non_maxima

            dist, _ = cKDTree(points).query(points, k=2)
            spacing.append(dist[:, 1] * batch.pixel_size_a)
    if not diameters:
        raise ValueError("suggest_diameter_a needs at least one pick")
    suggestion = float(np.median(np.concatenate(diameters)))
    if spacing:
        suggestion = min(suggestion, float(np.median(np.concatenate(spacing))))
    return suggestion


def picks_to_dicts(picks: Picks) -> list[dict[str, float]]:
    """JSON-ready picks: ``{"x_px", "y_px", "score", "power", "diameter_a"}``."""
    columns = np.column_stack(
        [picks.x_px, picks.y_px, picks.score, picks.power, picks.diameter_a]
    ).tolist()
    keys = ("x_px", "y_px", "score", "power", "diameter_a")
    return [dict(zip(keys, row, strict=True)) for row in columns]


# our columns in coordinate STAR files (read back under the old names too, which
# files written before used: rlnLivestreamPower, rlnLivestreamDiameterA)
POWER_LABEL = "livestreamPower"
DIAMETER_LABEL = "livestreamDiameterA"
_OLD_POWER_LABEL = "rlnLivestreamPower"
_OLD_DIAMETER_LABEL = "rlnLivestreamDiameterA"


def write_picks_star(path: str | Path, picks: Picks) -> Path:
    """RELION coordinate STAR (``data_`` block) for one micrograph, atomically.

    Our two extra columns carry a non-RELION prefix (``_livestreamPower``,
    ``_livestreamDiameterA``): RELION skips labels it does not know, and no label
    of ours sits in its ``rln`` namespace."""
    import pandas as pd

    frame = pd.DataFrame(
        {
            "rlnCoordinateX": picks.x_px.astype(np.float64),
            "rlnCoordinateY": picks.y_px.astype(np.float64),
            "rlnAutopickFigureOfMerit": picks.score.astype(np.float64),
            "rlnClassNumber": np.zeros(len(picks), dtype=np.int64),
            "rlnAnglePsi": np.full(len(picks), -999.0),
            POWER_LABEL: picks.power.astype(np.float64),
            DIAMETER_LABEL: picks.diameter_a.astype(np.float64),
        }
    )
    return write_star(path, {"": frame})


def read_picks_star(
    path: str | Path, *, pixel_size_a: float, shape: tuple[int, int]
) -> Picks:
    """Read a coordinate STAR (RELION, cryoSPARC or ours) back into :class:`Picks`."""
    import starfile

    data: Any = starfile.read(path, always_dict=True)
    frames = [block for block in data.values() if "rlnCoordinateX" in block]
    if not frames:
        raise StageInputError(path, "rlnCoordinateX", None, "no coordinate block")
    frame = frames[0]
    n = len(frame)

    def column(name: str, default: float | NDArray[np.float64]) -> NDArray[np.float64]:
        if name in frame:
            values: NDArray[np.float64] = frame[name].to_numpy(dtype=np.float64)
            return values
        return np.broadcast_to(np.asarray(default, dtype=np.float64), (n,)).copy()

    return Picks(
        x_px=column("rlnCoordinateX", 0.0),
        y_px=column("rlnCoordinateY", 0.0),
        score=column("rlnAutopickFigureOfMerit", 0.0),
        power=column(POWER_LABEL, column(_OLD_POWER_LABEL, 1.0)),
        diameter_a=column(DIAMETER_LABEL, column(_OLD_DIAMETER_LABEL, np.nan)),
        pixel_size_a=pixel_size_a,
        shape=shape,
    )
