"""Where the loop's templates score the labelled particles
(``bench_pick_real.py --pickers blob-2d-template --loop-diagnose``).

A sibling module of the benchmark (imported as ``pick_real_diagnose``).  For each
data set's template set and each micrograph, every local maximum of the template
picker's NCC map at the picker's spacing (``min_ncc=-1``: no threshold) and every
local maximum of its decoy map (the same picker with the templates' contrast
inverted: the anti-correlation map that the target-decoy threshold counts) are
scored against the labels.  Printed per data set: the NCC of the peaks within the
match tolerance of a label, of the other peaks and of the decoy peaks (10th, 50th,
90th percentiles), the area under the ROC curve of label peaks against the others,
each micrograph's highest decoy and target peak, and the best F1 over all peaks
(the score tuned on the labels, one-to-one matching): what the score can separate,
whatever threshold the picker chooses.  The same for the inverted contrast (the
decoy peaks as if they were picks) says whether the contrast sign is right.
"""

from __future__ import annotations

import numpy as np
from pick_real_labels import Micrograph, count_matches, match_tolerance_px
from pick_real_loop import TemplateLoop
from scipy.spatial import cKDTree

from livestream.stages.params import PickParams
from pipelines.picking.picks import Picks
from pipelines.picking.template import pick_template

__all__ = ["diagnose_loops"]


def _all_peaks(mic: Micrograph, loop: TemplateLoop, templates: np.ndarray) -> Picks:
    return pick_template(
        mic.image,
        templates,
        pixel_size_a=mic.pixel_size_a,
        diameter_a=float(np.mean(mic.diameter_range_a)),
        ctf=mic.ctf,
        template_pixel_size_a=loop.template_pixel_size_a,
        min_ncc=-1.0,
        downscale_to_a=PickParams().downscale_to_a,
    )


def _near_label(mic: Micrograph, picks: Picks) -> np.ndarray:
    xy = np.column_stack([picks.x_px, picks.y_px])
    if len(xy) == 0:
        return np.zeros(0, dtype=bool)
    distance, _ = cKDTree(mic.labels_xy).query(xy)
    return np.asarray(distance <= match_tolerance_px(mic))


def _roc_area(scores: np.ndarray, positive: np.ndarray) -> float:
    """Probability that a positive peak outscores a negative one (ranks)."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = np.empty(len(scores))
    ranks[np.argsort(scores, kind="stable")] = np.arange(1, len(scores) + 1)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _tuned(found: list[tuple[Micrograph, Picks]]) -> tuple[float, float, float, float]:
    """(F1, threshold, recall, precision) at the best threshold over all peaks."""
    scores = np.concatenate([p.score for _, p in found])
    n_labels = sum(len(m.labels_xy) for m, _ in found)
    best = (0.0, float("nan"), 0.0, 0.0)
    for threshold in np.unique(np.quantile(scores, np.linspace(0.0, 0.98, 50))):
        matched = n_picks = 0
        for mic, picks in found:
            keep = picks.score >= threshold
            xy = np.column_stack([picks.x_px[keep], picks.y_px[keep]])
            matched += count_matches(mic.labels_xy, xy, match_tolerance_px(mic))
            n_picks += int(keep.sum())
        recall, precision = matched / max(n_labels, 1), matched / max(n_picks, 1)
        f1 = 2 * recall * precision / max(recall + precision, 1e-12)
        if f1 > best[0]:
            best = (f1, float(threshold), recall, precision)
    return best


def _quantiles(values: np.ndarray) -> str:
    if len(values) == 0:
        return "none"
    low, mid, high = np.quantile(values, [0.1, 0.5, 0.9])
    return f"{mid:.3f} ({low:.3f}-{high:.3f})"


def diagnose_loops(
    micrographs: list[Micrograph], loops: dict[str, TemplateLoop | None]
) -> None:
    """Print the score diagnosis of each data set's template set (module doc)."""
    for dataset, loop in loops.items():
        if loop is None:
            continue
        targets: list[tuple[Micrograph, Picks]] = []
        decoys: list[tuple[Micrograph, Picks]] = []
        for mic in (m for m in micrographs if m.dataset == dataset):
            target = _all_peaks(mic, loop, loop.templates)
            decoy = _all_peaks(mic, loop, -loop.templates)
            targets.append((mic, target))
            decoys.append((mic, decoy))
            print(
                f"{dataset} {mic.name[:36]}: {len(target)} NCC peaks, highest "
                f"{target.score.max():.3f}; {len(decoy)} decoy peaks, highest "
                f"{decoy.score.max():.3f}",
                flush=True,
            )
        scores = np.concatenate([p.score for _, p in targets])
        near = np.concatenate([_near_label(m, p) for m, p in targets])
        decoy_scores = np.concatenate([p.score for _, p in decoys])
        print(
            f"{dataset}: NCC median (10th-90th percentile) of peaks at a label "
            f"{_quantiles(scores[near])}, of the other peaks "
            f"{_quantiles(scores[~near])}, of the decoy peaks "
            f"{_quantiles(decoy_scores)}; ROC area label vs other peaks "
            f"{_roc_area(scores, near):.3f}"
        )
        for name, found in (("templates", targets), ("inverted contrast", decoys)):
            f1, threshold, recall, precision = _tuned(found)
            print(
                f"{dataset}: {name}, tuned on the labels over all peaks: F1 "
                f"{f1:.2f} at NCC {threshold:.3f} (recall {recall:.2f}, precision "
                f"{precision:.2f})"
            )
