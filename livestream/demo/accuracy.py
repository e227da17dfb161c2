"""How well the demo's pickers find the simulated particles: recall and precision
of the blob and the template picker against the simulator's coordinates.

After the demo's service stops, every processed exposure's motion-corrected
micrograph is picked again by the pick stage's own code
(:func:`livestream.stages.post_ctf.pick_particles`) twice: with the configured
blob parameters and with the latest template set.  A pick matches a true particle
closer than half the smallest diameter searched; each true particle and each pick
matches at most once (a minimum-distance assignment).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

from livestream.ledger.schema import StageState
from livestream.ledger.store import Ledger
from livestream.stages.params import PickParams
from livestream.stages.post_ctf import pick_particles
from livestream.stages.task import StageTask, picklable
from mdcatch.records import Exposure

__all__ = ["PickScore", "match_picks", "score_pickers"]


@dataclass(frozen=True, slots=True, kw_only=True)
class PickScore:
    n_true: int = 0
    n_picks: int = 0
    n_matched: int = 0

    @property
    def recall(self) -> float:
        return self.n_matched / self.n_true if self.n_true else float("nan")

    @property
    def precision(self) -> float:
        return self.n_matched / self.n_picks if self.n_picks else float("nan")

    def __add__(self, other: PickScore) -> PickScore:
        return PickScore(
            n_true=self.n_true + other.n_true,
            n_picks=self.n_picks + other.n_picks,
            n_matched=self.n_matched + other.n_matched,
        )


def match_picks(
    truth_xy: np.ndarray, picks_xy: np.ndarray, *, tolerance_px: float
) -> PickScore:
    """One-to-one matching of ``(n, 2)`` true and ``(m, 2)`` picked centres
    closer than ``tolerance_px`` (minimum total distance)."""
    truth = np.asarray(truth_xy, dtype=np.float64).reshape(-1, 2)
    picks = np.asarray(picks_xy, dtype=np.float64).reshape(-1, 2)
    if len(truth) == 0 or len(picks) == 0:
        return PickScore(n_true=len(truth), n_picks=len(picks))
    distance = cdist(truth, picks)
    far = distance > tolerance_px
    cost = np.where(far, 1e6, distance)
    rows, cols = linear_sum_assignment(cost)
    matched = int(np.count_nonzero(~far[rows, cols]))
    return PickScore(n_true=len(truth), n_picks=len(picks), n_matched=matched)


def score_pickers(
    ledger_path: Path,
    project: Path,
    exposures: Mapping[str, Exposure],
    truth: Mapping[str, np.ndarray],
    pickers: Mapping[str, PickParams],
    *,
    pick_stage: str = "pick",
) -> dict[str, PickScore]:
    """Each picker's score summed over the exposures whose pick row is done (not
    skipped by curation)."""
    ledger = Ledger(ledger_path, read_only=True)
    try:
        rows = {eid: ledger.rows_of(eid) for eid in exposures}
    finally:
        ledger.close()
    scores = {name: PickScore() for name in pickers}
    for eid, exposure in exposures.items():
        done = {r.stage: r.result for r in rows[eid] if r.state is StageState.DONE}
        pick = done.get(pick_stage)
        if pick is None or pick.skipped or eid not in truth:
            continue
        for name, params in pickers.items():
            task = StageTask(
                stage=pick_stage,
                kind="pick",
                params=params,
                exposure=picklable(exposure),
                project_path=project,
                previous=done,
            )
            picks, _, _, pixel_size_a = pick_particles(task, params)
            tolerance_px = 0.5 * params.diameter_min_a / pixel_size_a
            scores[name] += match_picks(
                truth[eid],
                np.column_stack([picks.x_px, picks.y_px]),
                tolerance_px=tolerance_px,
            )
    return scores
