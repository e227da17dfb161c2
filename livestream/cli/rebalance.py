"""Rebalance Orientations: thin out over-represented views of a posed particle set.

Example:
    livestream rebalance Refine3D/job020/run_data.star --out Rebalance/job021 \\
        --bins 300 --percentile 90 --criterion ncc_score --json

PARTICLES is a RELION particle STAR with poses (rlnAngleRot, rlnAngleTilt) or a
cryoSPARC .cs with alignments3D/pose.  The sphere is cut into --bins bins by a
Fibonacci spiral; each particle goes to the bin nearest its viewing direction.  Bins
holding more than the --percentile-th percentile of the populated bins' counts lose
particles down to that count, worst first by --criterion: random (order from
--seed), ncc_score (lowest picking score; rlnAutopickFigureOfMerit or
pick_stats/ncc_score), error3d (highest alignments3D/error), alpha (lowest
alignments3D/alpha), error2d (highest alignments2D/error).  A second run with the
same parameters removes nothing.

Writes to --out, in the input's format with every other column unchanged:
rebalanced.star / excluded.star (or .cs), and viewing_directions.png,
bin_counts.png, rebalancing.png.  With --json prints one object: n_in,
n_rebalanced, n_excluded, threshold_count, rebalanced_path, excluded_path, plots,
n_bins, percentile, criterion, seconds.  Exit status 2, with one line naming the
file and field, when the input or a column the criterion needs is missing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from livestream.cli.console import (
    INPUT_ERROR_STATUS,
    print_json,
    require_file,
    run_alone,
)
from pipelines.errors import StageInputError
from pipelines.exchange import read_particle_set
from pipelines.reconstruct.rebalance import (
    CRITERIA,
    DEFAULT_BINS,
    DEFAULT_CRITERION,
    DEFAULT_PERCENTILE,
    rebalance_orientations,
)
from pipelines.reconstruct.rebalance_plots import write_rebalance_plots

PROG = "livestream rebalance"


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("particles", type=Path, metavar="PARTICLES")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--bins", type=int, default=DEFAULT_BINS, help=f"bins ({DEFAULT_BINS})"
    )
    parser.add_argument(
        "--percentile",
        type=float,
        default=DEFAULT_PERCENTILE,
        help=f"threshold percentile of bin counts ({DEFAULT_PERCENTILE:g})",
    )
    parser.add_argument(
        "--criterion",
        choices=sorted(CRITERIA),
        default=DEFAULT_CRITERION,
        help=f"which particles of a bin go first ({DEFAULT_CRITERION})",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    parser.add_argument("--json", action="store_true", help="print a JSON summary")


def main(args: argparse.Namespace) -> int:
    require_file(args.particles, "particle set")
    start = time.perf_counter()
    try:
        if args.bins < 1:
            raise StageInputError("<command line>", "--bins", args.bins, "must be >= 1")
        particles = read_particle_set(args.particles)
        directions = particles.viewing_directions()
        result = rebalance_orientations(
            directions,
            n_bins=args.bins,
            percentile=args.percentile,
            badness=particles.badness(args.criterion),
            rng=np.random.default_rng(args.seed),
        )
    except StageInputError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return INPUT_ERROR_STATUS
    out: Path = args.out
    suffix = particles.suffix
    kept = particles.subset(result.keep).write(out / f"rebalanced{suffix}")
    excluded = particles.subset(~result.keep).write(out / f"excluded{suffix}")
    plots = write_rebalance_plots(out, directions, result)
    seconds = time.perf_counter() - start
    summary = {
        "n_in": len(particles),
        "n_rebalanced": int(result.keep.sum()),
        "n_excluded": result.n_excluded,
        "threshold_count": result.threshold_count,
        "rebalanced_path": str(kept),
        "excluded_path": str(excluded),
        "plots": {name: str(path) for name, path in plots.items()},
        "n_bins": args.bins,
        "percentile": args.percentile,
        "criterion": args.criterion,
        "seconds": round(seconds, 3),
    }
    if args.json:
        print_json(summary, sort_keys=True)
    else:
        print(
            f"{len(particles)} particles, threshold {result.threshold_count} per bin: "
            f"{result.n_excluded} excluded, {int(result.keep.sum())} kept in {kept}"
        )
    return 0


if __name__ == "__main__":  # python -m livestream.cli.rebalance: this command alone
    sys.exit(run_alone(PROG, __doc__, add_args, main))
