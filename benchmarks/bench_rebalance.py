"""Rebalance Orientations throughput, against one pass of the nearest-bin product.

    .venv/bin/python benchmarks/bench_rebalance.py [--particles N] [--bins B]

Default: 1,000,000 particles with a preferred-orientation distribution (views
crowded at the poles), 300 bins, percentile 90, the ``ncc_score`` criterion.

Lower bound, measured in the same run: one pass of the blocked product of the
viewing directions with the bin centres (``(n, 3) @ (3, B)``), the work any
nearest-bin assignment by a matrix product does (ours, a numba loop that keeps
only the best bin per particle, can beat it: it never writes the ``n x B`` scores);
the ratio is what the assignment, the per-bin sort and the selection cost against
it.  A KD-tree assignment (scipy's
``cKDTree``) is timed beside it for scale.  No peer is installed (cryoSPARC's job
runs only inside cryoSPARC).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.spatial import cKDTree

from pipelines.reconstruct.rebalance import (
    assign_bins,
    fibonacci_sphere,
    rebalance_orientations,
)

BLOCK_ELEMENTS = 1 << 22  # particles x bins per block of the bound's product


def _best(function: object, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, default=1_000_000)
    parser.add_argument("--bins", type=int, default=300)
    parser.add_argument("--percentile", type=float, default=90.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    directions = rng.normal(size=(args.particles, 3)) * [1.0, 1.0, 3.0]
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    score = rng.normal(size=args.particles)
    centres = fibonacci_sphere(args.bins)

    result = rebalance_orientations(
        directions, n_bins=args.bins, percentile=args.percentile, badness=-score
    )
    elapsed = _best(
        lambda: rebalance_orientations(
            directions, n_bins=args.bins, percentile=args.percentile, badness=-score
        ),
        args.repeats,
    )
    c = np.ascontiguousarray(centres.T)
    block = max(1, BLOCK_ELEMENTS // args.bins)

    def product_pass() -> None:
        for start in range(0, len(directions), block):
            directions[start : start + block] @ c

    bound = _best(product_pass, args.repeats)
    assign = _best(lambda: assign_bins(directions, centres), args.repeats)
    tree = cKDTree(centres)
    kd = _best(lambda: tree.query(directions, k=1), 1)
    n = args.particles
    print(
        f"{n} particles, {args.bins} bins, percentile {args.percentile:g}: "
        f"threshold {result.threshold_count}, {result.n_excluded} excluded"
    )
    print(
        f"rebalance (ncc_score): {elapsed:.3f} s, {n / elapsed:,.0f} particles/s; "
        f"bound (one pass of the (n,3)@(3,B) product) {bound:.3f} s, "
        f"{n / bound:,.0f} particles/s; ratio {elapsed / bound:.1f}"
    )
    print(
        f"of which the nearest-bin assignment (numba) {assign:.3f} s; for scale: "
        f"cKDTree nearest-bin query {kd:.3f} s, {n / kd:,.0f} particles/s"
    )
    print("peer: none installed (cryoSPARC's Rebalance Orientations runs in cryoSPARC)")


if __name__ == "__main__":
    main()
