"""The template loop's guard: a new set is used only if it picks about as much as
the blob picker on the same micrographs.

Before the scheduler switches the pick stage to a new template set, the last
``guard_exposures`` exposures whose pick is done (and not skipped by curation)
are picked again in memory, with the pick stage's own code
(:func:`livestream.stages.post_ctf.pick_particles`), twice: with the stage's
configured picker (the blob picker) and with the candidate set.  Nothing is
written, and no ledger row changes: the trial leaves the picks and the particle
pool as they were.  When the templates pick fewer than ``min_pick_ratio`` times
what the blob picker picks there, the set is rejected and the stage keeps
picking as before (docs/picking.md, *Templates from the live 2D classes*).  On
EMPIAR-10017 the first set the loop made found 72 picks where the blob picker
found 4620 (recall 0.02 against 0.80): a count is what a facility can check
without labels, and a set that picks a small fraction of the blob picks is what
that failure looks like.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from livestream.ledger.schema import StageResult, StageState, result_from_json
from livestream.ledger.store import Ledger
from livestream.stages.params import PickParams
from livestream.stages.post_ctf import pick_particles
from livestream.stages.task import StageTask, picklable
from mdcatch.records import Exposure
from pipelines.picking.picks import Picks

__all__ = [
    "GuardVerdict",
    "blob_recovered",
    "done_results",
    "judge_trial",
    "recent_picked",
    "share_upper_bound",
    "trial_picks",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class GuardVerdict:
    """What the guard measured on ``exposures`` micrographs and decided.

    ``blob_recovered``: of the blob picker's better half of picks (their scores at
    or above the median, pooled over the exposures; ``blob_better_half`` of them),
    the share with a template pick within a quarter of the particle's diameter
    (:func:`blob_recovered`).  The set fails that rule only when the share is below
    ``min_blob_recovered`` with 95 % confidence (:func:`share_upper_bound`), so a
    few dozen picks do not decide it on chance."""

    exposures: int
    blob_picks: int
    template_picks: int
    min_pick_ratio: float
    blob_recovered: float = 1.0
    blob_better_half: int = 0
    min_blob_recovered: float = 0.0

    @property
    def ratio(self) -> float:
        """Template picks over blob picks (1 when the blob picker found none)."""
        return self.template_picks / self.blob_picks if self.blob_picks else 1.0

    @property
    def accepted(self) -> bool:
        """Both the count and the agreement rule hold; nothing to compare (no
        exposure, no blob pick) accepts the set."""
        upper = share_upper_bound(self.blob_recovered, self.blob_better_half)
        return self.ratio >= self.min_pick_ratio and upper >= self.min_blob_recovered

    def as_json(self) -> dict[str, object]:
        return {
            "exposures": self.exposures,
            "blob_picks": self.blob_picks,
            "template_picks": self.template_picks,
            "ratio": round(self.ratio, 4),
            "min_pick_ratio": self.min_pick_ratio,
            "blob_recovered": round(self.blob_recovered, 4),
            "blob_better_half": self.blob_better_half,
            "min_blob_recovered": self.min_blob_recovered,
            "accepted": self.accepted,
        }


def share_upper_bound(share: float, n: int, z: float = 1.645) -> float:
    """The one-sided 95 % upper bound of a share measured as ``share`` of ``n``
    (Wilson's score interval; 1 when ``n`` is 0)."""
    if n <= 0:
        return 1.0
    z2 = z * z
    centre = (share + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(share * (1 - share) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return min(1.0, centre + half)


def recent_picked(db: sqlite3.Connection, pick_stage: str, n: int) -> list[str]:
    """The ``n`` most recently acquired exposures whose ``pick_stage`` row is done
    and was not skipped, newest first."""
    rows = db.execute(
        "SELECT s.exposure_id, s.figures FROM stages s JOIN exposures e"
        " ON e.exposure_id = s.exposure_id WHERE s.stage = ? AND s.state = 'done'"
        " ORDER BY e.acquired_unix_s DESC",
        (pick_stage,),
    )
    chosen: list[str] = []
    for eid, figures in rows:
        if not result_from_json(pick_stage, "{}", figures).skipped:
            chosen.append(str(eid))
            if len(chosen) == n:
                break
    return chosen


def done_results(ledger: Ledger, exposure_id: str) -> dict[str, StageResult]:
    """The results of the exposure's done stages, by stage name."""
    return {
        row.stage: row.result
        for row in ledger.rows_of(exposure_id)
        if row.state is StageState.DONE
    }


def trial_picks(
    pick_stage: str,
    exposures: Sequence[tuple[Exposure, dict[str, StageResult]]],
    project_path: Path,
    blob: PickParams,
    templates: PickParams,
) -> list[tuple[Picks, Picks]]:
    """The picks of ``blob`` and of ``templates`` on each of ``exposures`` (each
    with its done results), in memory with the pick stage's code."""
    found: list[tuple[Picks, Picks]] = []
    for exposure, previous in exposures:
        pair = []
        for params in (blob, templates):
            task = StageTask(
                stage=pick_stage,
                kind="pick",
                params=params,
                exposure=picklable(exposure),
                project_path=project_path,
                previous=previous,
            )
            picks, _, _, _ = pick_particles(task, params)
            pair.append(picks)
        found.append((pair[0], pair[1]))
    return found


def judge_trial(
    found: Sequence[tuple[Picks, Picks]],
    *,
    diameter_a: float,
    min_pick_ratio: float,
    min_blob_recovered: float,
) -> GuardVerdict:
    """The verdict on ``found`` (:func:`trial_picks`): the counts summed and the
    agreement pooled over the exposures, a match within a quarter of
    ``diameter_a``."""
    recovered = n_sure = 0.0
    for blob, templates in found:
        share, n = blob_recovered(
            blob, templates, 0.25 * diameter_a / blob.pixel_size_a
        )
        recovered += share * n
        n_sure += n
    return GuardVerdict(
        exposures=len(found),
        blob_picks=sum(len(b) for b, _ in found),
        template_picks=sum(len(t) for _, t in found),
        min_pick_ratio=min_pick_ratio,
        blob_recovered=recovered / n_sure if n_sure else 1.0,
        blob_better_half=round(n_sure),
        min_blob_recovered=min_blob_recovered,
    )


def blob_recovered(
    blob: Picks, templates: Picks, tolerance_px: float
) -> tuple[float, int]:
    """The share of the blob picker's better half of picks (scores at or above
    their median) that have a template pick within ``tolerance_px``, and how many
    that half holds (share 1 when it is empty)."""
    if len(blob) == 0:
        return 1.0, 0
    sure = blob.score >= np.median(blob.score)
    xy = np.column_stack([blob.x_px[sure], blob.y_px[sure]])
    if len(templates) == 0:
        return 0.0, len(xy)
    from scipy.spatial import cKDTree  # ~0.3 s: on the first check, not at start

    tree = cKDTree(np.column_stack([templates.x_px, templates.y_px]))
    distance, _ = tree.query(xy, distance_upper_bound=tolerance_px)
    return float(np.mean(distance <= tolerance_px)), len(xy)
