"""The whole chain per exposure at real size, with N worker processes.

A simulated session: one realistic 4096² x 40-frame movie from
:mod:`pipelines.simulate` (1 Å/px, 1 e/Å² per frame, ~300 particles, 1 px of
local motion, uniform gain, the simulator's hot and dead pixels) written as int8
MRC under ``--movies`` names, run through the real stage functions of
:mod:`livestream.stages` -- motion, CTF, curation, picking, extraction -- by
``--workers`` processes (each stage single-threaded, as the service runs them:
parallelism comes from exposures).  Prints, per worker count, exposures per hour,
exposures per hour per core, the median time of each stage and each worker's peak
memory (ru_maxrss), and from the measured seconds per exposure on one core the
cores needed for 300 and 600 exposures per hour.

    .venv/bin/python benchmarks/bench_chain.py [--small] [--movies 4] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import resource
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import mrcfile
import numpy as np

from livestream.ledger.schema import StageResult
from livestream.stages.params import (
    CtfParams,
    CurateParams,
    ExtractParams,
    MotionParams,
    PickParams,
    StageParams,
)
from livestream.stages.registry import run_stage
from livestream.stages.task import StageTask
from mdcatch.records import Exposure, Optics, Software
from pipelines.simulate.micrograph import MicrographParams
from pipelines.simulate.movie import MovieParams, simulate_movie

CHAIN: tuple[tuple[str, StageParams], ...] = (
    ("motion", MotionParams()),
    ("ctf", CtfParams()),
    ("curate", CurateParams()),
    ("pick", PickParams()),
    ("extract", ExtractParams()),
)
PARTICLES_PER_PX2 = 300 / 4096**2


def make_movies(folder: Path, size: int, n_frames: int, n_movies: int) -> list[Path]:
    """One simulated movie written as int8 MRC, then copied to ``n_movies`` names
    (the work per exposure does not depend on which movie it is)."""
    rng = np.random.default_rng(3)
    params = MovieParams(
        micrograph=MicrographParams(
            shape_px=(size, size),
            pixel_size_a=1.0,
            n_particles=max(1, round(PARTICLES_PER_PX2 * size * size)),
        ),
        n_frames=n_frames,
        dose_per_frame_e_per_a2=1.0,
        local_motion_px=1.0,
        gain_sd=0.0,  # no gain reference to pass: a uniform detector
    )
    frames, _ = simulate_movie(params, rng, workers=-1)
    first = folder / "movie_000.mrc"
    with mrcfile.new(first, overwrite=True) as mrc:
        mrc.set_data(np.clip(frames, 0, 127).astype(np.int8))
        mrc.voxel_size = 1.0
    paths = [first]
    for i in range(1, n_movies):
        path = folder / f"movie_{i:03d}.mrc"
        path.write_bytes(first.read_bytes())
        paths.append(path)
    return paths


def run_exposure(movie: Path, project: Path) -> dict[str, float]:
    """Every stage of the chain on one exposure: ``{stage: seconds}``."""
    exposure = Exposure(
        exposure_id=movie.stem,
        software=Software.EPU,
        metadata_path=movie.with_suffix(".xml"),
        movie_path=movie,
        acquired_utc=datetime(2026, 1, 1, tzinfo=UTC),
        optics=Optics(voltage_kv=300.0, pixel_size_a=1.0, cs_mm=2.7),
        exposure_time_s=2.0,
        total_dose_e_per_a2=40.0,
        n_frames=40,
        target_defocus_um=1.5,
    )
    previous: dict[str, StageResult] = {}
    times: dict[str, float] = {}
    for name, params in CHAIN:
        task = StageTask(
            stage=name,
            kind=params.kind,
            params=params,
            exposure=exposure,
            project_path=project,
            previous=dict(previous),
        )
        start = time.perf_counter()
        previous[name] = run_stage(task)
        times[name] = time.perf_counter() - start
    times["n_particles"] = float(previous["extract"].figures.get("n_particles", 0.0))
    return times


def _worker(movie: Path, project: Path) -> tuple[dict[str, float], int, float]:
    import os  # deferred: the worker's own pid

    times = run_exposure(movie, project)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    return times, os.getpid(), peak


def bench(movies: list[Path], project: Path, workers: int) -> float:
    """Run the session on ``workers`` processes; print; return s per exposure-core."""
    context = multiprocessing.get_context("spawn")
    start = time.perf_counter()
    with context.Pool(workers, maxtasksperchild=None) as pool:
        results = pool.starmap(_worker, [(m, project) for m in movies])
    wall = time.perf_counter() - start
    per_hour = len(movies) / wall * 3600
    peaks: dict[int, float] = {}
    for _, pid, peak in results:
        peaks[pid] = max(peaks.get(pid, 0.0), peak)
    print(
        f"\n{workers} worker(s), {len(movies)} exposures in {wall:.0f} s: "
        f"{per_hour:.0f} exposures/h, {per_hour / workers:.0f} exposures/h/core; "
        f"peak RSS per worker {', '.join(f'{p:.2f}' for p in peaks.values())} GB"
    )
    total = 0.0
    for name, _ in CHAIN:
        median = statistics.median(r[0][name] for r in results)
        total += median
        print(f"  {name:8s} {median:7.1f} s (median)")
    print(
        f"  {'chain':8s} {total:7.1f} s; particles per exposure "
        f"{statistics.median(r[0]['n_particles'] for r in results):.0f}"
    )
    return wall * workers / len(movies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="1024² x 20 movies")
    parser.add_argument("--movies", type=int, default=4)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    size, n_frames = (1024, 20) if args.small else (4096, 40)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        movies = make_movies(folder, size, n_frames, args.movies)
        print(
            f"{args.movies} exposures of {size}² x {n_frames} frames "
            f"(simulated in {time.perf_counter() - start:.0f} s)"
        )
        core_s = []
        for workers in args.workers:
            project = folder / f"project_{workers}"
            project.mkdir()
            core_s.append(bench(movies, project, workers))
        per_exposure = max(core_s)  # the slowest measured core-seconds per exposure
        print(f"\ncore-seconds per exposure (worst of the runs): {per_exposure:.0f}")
        for rate in (300, 600):
            print(
                f"  {rate} exposures/h need {math.ceil(rate * per_exposure / 3600)} cores"
            )


if __name__ == "__main__":
    main()
