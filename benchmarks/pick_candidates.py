"""Candidate recall of the learned picker's candidate source and of other sources.

    .venv/bin/python benchmarks/pick_candidates.py [--datasets 10017] [--max-micrographs 8]

The learned picker (``pipelines/picking/learned.py``) can only pick where it has a
candidate, so the fraction of the labels within the match tolerance of some
candidate is its recall's ceiling.  For every micrograph of the labelled real sets
of ``bench_pick_real.py`` (same cache, same tolerance, same one-to-one matching):

* ``blob``: the learned picker's own candidates, the blob picker's local maxima
  (best of its five LoG scales) at ``CANDIDATE_SD`` and ``CANDIDATE_SPACING``;
* ``LoG at f x d_min``: the local maxima of the blob picker run with one LoG scale
  of ``f`` times the smallest diameter (its background flattening and outlier mask
  then follow that one diameter too), same threshold and spacing;
* the unions of ``blob`` with each (no suppression between the two: the learned
  picker's final non-maximum suppression would choose).

Printed per data set: the candidate recall, the recall at 1.5 times the tolerance
(how many misses are near misses), candidates per label and seconds per
micrograph.  docs/picking.md (*Learned*, what was tried) quotes the results.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from pick_real_labels import (  # a sibling module (this script's folder)
    count_matches,
    load_micrographs,
    match_tolerance_px,
    select,
)

from pipelines.picking.blob import pick_blob
from pipelines.picking.learned import CANDIDATE_SD, CANDIDATE_SPACING

SCALES = (0.8, 1.0)  # single LoG scales, in smallest diameters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cache", type=Path, default=Path.home() / ".cache/livestream/picking"
    )
    parser.add_argument("--datasets", nargs="*")
    parser.add_argument("--max-micrographs", type=int)
    args = parser.parse_args()
    micrographs = select(
        load_micrographs(args.cache), args.datasets, args.max_micrographs
    )
    # (data set, source) -> [matched, matched at 1.5 tolerance, labels, candidates, s]
    totals: dict[tuple[str, str], list[float]] = {}
    for mic in micrographs:
        d_min = min(mic.diameter_range_a)
        found: dict[str, tuple[np.ndarray, float]] = {}
        sources: list[tuple[str, tuple[float, float], int]] = [
            ("blob", mic.diameter_range_a, 5)
        ]
        sources += [(f"LoG at {f} x d_min", (f * d_min, f * d_min), 1) for f in SCALES]
        for name, diameters, n_scales in sources:
            start = time.perf_counter()
            picks = pick_blob(
                mic.image,
                pixel_size_a=mic.pixel_size_a,
                diameter_range_a=diameters,
                n_scales=n_scales,
                threshold_sd=CANDIDATE_SD,
                min_distance_a=CANDIDATE_SPACING * d_min,
            )
            seconds = time.perf_counter() - start
            found[name] = (np.column_stack([picks.x_px, picks.y_px]), seconds)
        xy_blob, s_blob = found["blob"]
        for f in SCALES:
            xy, s = found[f"LoG at {f} x d_min"]
            found[f"blob + LoG at {f} x d_min"] = (np.vstack([xy_blob, xy]), s + s_blob)
        tolerance = match_tolerance_px(mic)
        for name, (xy, seconds) in found.items():
            row = totals.setdefault((mic.dataset, name), [0.0] * 5)
            row[0] += count_matches(mic.labels_xy, xy, tolerance)
            row[1] += count_matches(mic.labels_xy, xy, 1.5 * tolerance)
            row[2] += len(mic.labels_xy)
            row[3] += len(xy)
            row[4] += seconds
    print(
        "| data set | source | micrographs | candidate recall | at 1.5 x tolerance "
        "| candidates / label | s / micrograph |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for (dataset, name), (matched, near, labels, n, seconds) in totals.items():
        count = sum(m.dataset == dataset for m in micrographs)
        print(
            f"| {dataset} | {name} | {count} | {matched / labels:.3f} "
            f"| {near / labels:.3f} | {n / labels:.2f} | {seconds / count:.2f} |"
        )


if __name__ == "__main__":
    main()
