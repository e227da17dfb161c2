"""Benchmark CTF estimation per micrograph: time per step and ratio to a lower bound.

    .venv/bin/python benchmarks/bench_ctf.py [--small] [--repeats N] [--workers N]

Micrographs of 4096² (skipped with --small) and 1024² at 1 Å/px, simulated with a
known CTF.  The lower bound, measured in the same run on the same machine, is what
the method cannot avoid: the batched ``scipy.fft.rfft2`` of all its overlapping
512² tiles (float32, same ``workers``).  Printed: seconds per step (best of
``--repeats``), micrographs per second, the ratio of the whole estimate and of the
spectrum step to that bound, and the defocus error against the truth.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import scipy.fft

from pipelines.ctf.estimate import estimate_ctf
from pipelines.ctf.model import CtfParams
from pipelines.ctf.spectrum import tile_starts
from pipelines.simulate.thon import make_thon_micrograph

TILE_PX = 512


def time_tile_ffts(image: np.ndarray, workers: int, repeats: int) -> float:
    """Best time of one batched rfft2 over every tile the estimator uses."""
    ys = tile_starts(image.shape[0], TILE_PX)
    xs = tile_starts(image.shape[1], TILE_PX)
    tiles = np.stack(
        [image[y : y + TILE_PX, x : x + TILE_PX] for y in ys for x in xs]
    ).astype(np.float32)
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        scipy.fft.rfft2(tiles, workers=workers)
        best = min(best, time.perf_counter() - start)
    return best


def bench(size: int, workers: int, repeats: int, rng: np.random.Generator) -> None:
    truth = CtfParams(
        defocus_u_a=18300.0,
        defocus_v_a=17700.0,
        astigmatism_angle_deg=35.0,
        bfactor_a2=40.0,
    )
    image = make_thon_micrograph(truth, shape=(size, size), contrast=0.05, rng=rng)
    best_steps: dict[str, float] = {}
    best_total = np.inf
    fit = None
    for _ in range(repeats):
        steps: dict[str, float] = {}
        start = time.perf_counter()
        fit = estimate_ctf(
            image,
            pixel_size_a=1.0,
            voltage_kv=300.0,
            cs_mm=2.7,
            tile_px=TILE_PX,
            workers=workers,
            timings=steps,
        )
        total = time.perf_counter() - start
        if total < best_total:
            best_total, best_steps = total, steps
    assert fit is not None
    bound = time_tile_ffts(image, workers, repeats)
    mean = 0.5 * (fit.defocus_u_a + fit.defocus_v_a)
    error = 100.0 * (mean - truth.defocus_mean_a) / truth.defocus_mean_a
    print(
        f"micrograph {size}x{size}, {fit.n_tiles} tiles of {TILE_PX}², workers {workers}"
    )
    for step, seconds in best_steps.items():
        print(f"  {step:11s} {seconds * 1e3:9.1f} ms")
    print(
        f"  {'total':11s} {best_total * 1e3:9.1f} ms  ({1.0 / best_total:.2f} micrographs/s)"
    )
    print(f"  lower bound (batched rfft2 of the tiles) {bound * 1e3:.1f} ms")
    print(
        f"  ratio total / bound {best_total / bound:.1f}; "
        f"spectrum step / bound {best_steps['spectrum'] / bound:.2f}"
    )
    print(
        f"  fit U {fit.defocus_u_a:.0f} V {fit.defocus_v_a:.0f} angle "
        f"{fit.astigmatism_angle_deg:.1f} (truth 18300/17700/35.0), mean error "
        f"{error:+.3f} %, FOM {fit.figure_of_merit:.3f}, fit resolution "
        f"{fit.fit_resolution_a:.2f} Å"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="only the 1024² case")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    sizes = [1024] if args.small else [4096, 1024]
    for size in sizes:
        bench(size, args.workers, args.repeats, rng)
    return 0


if __name__ == "__main__":
    sys.exit(main())
