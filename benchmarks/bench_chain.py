"""The whole chain per exposure at real size, with N worker processes, in core-seconds.

A simulated session: one realistic 4096² x 40-frame movie from
:mod:`pipelines.simulate` (1 Å/px, 1 e/Å² per frame, ~300 particles, 1 px of
local motion, uniform gain, the simulator's hot and dead pixels) written as int8
MRC under ``--movies`` names, run through the real stage functions of
:mod:`livestream.stages` -- motion, CTF, curation, picking, extraction -- by
``--workers`` processes (each stage with one FFT thread, as the service runs them:
parallelism comes from exposures).

Inside each worker, around each stage call: wall time, **CPU time** (user + system
of the worker process, all its threads: ``time.process_time``) and the stage's own
peak RSS (the kernel's high-water mark, reset before the stage through
``/proc/self/clear_refs`` and read from ``VmHWM``).  CPU seconds are what a
dedicated core would have to deliver, so they mean something on a shared machine
where wall time does not; they too stretch with the load (shared caches, memory
bandwidth, hyper-threads), so the load average during the run is printed beside
them.  Before the exposures, each worker measures the motion stage's lower bound on
the same movie: reading it and one float32 rfft2 per frame, one thread
(``bench_motion._bound``); motion's ratio to it is printed.

Prints, per worker count: exposures per hour (wall) and per core (wall x workers,
and CPU), each stage's median wall, CPU and peak, the bound and the ratio, each
worker's peak RSS and start-up CPU, the load average; at the end the core-seconds
per exposure and the cores needed for 300 and 600 exposures per hour.

Peak memory is ``VmHWM``, not ``ru_maxrss``: a process started by ``spawn``
(fork + exec) inherits the parent's high-water mark in ``ru_maxrss``, so a worker
of a parent that has simulated the movie reports the simulation's peak (4.4 GB)
whatever it used itself.

    .venv/bin/python benchmarks/bench_chain.py [--small] [--movies 4] [--workers 1 2]
        [--keep DIR] [--default-malloc]

The workers are set up as the service's pool workers are: numba's OpenMP threads
sleep when idle (:mod:`livestream.scheduling.openmp`) and glibc's ``malloc`` keeps
freed memory for the next task (:mod:`livestream.scheduling.allocator`);
``--default-malloc`` runs them with glibc's default.

``--keep DIR`` simulates the movie into DIR once and reuses it on later runs.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import resource
import shutil
import statistics
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mrcfile
import numpy as np
from bench_motion import _bound

from livestream.ledger.schema import StageResult
from livestream.scheduling.allocator import keep_freed_memory
from livestream.scheduling.openmp import passive_openmp
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
RATES_PER_HOUR = (300, 600)
LOAD_SAMPLE_S = 5.0


def make_movies(folder: Path, size: int, n_frames: int, n_movies: int) -> list[Path]:
    """One simulated movie written as int8 MRC, then copied to ``n_movies`` names
    (the work per exposure does not depend on which movie it is).  A movie of the
    right shape already in ``folder`` is reused."""
    first = folder / "movie_000.mrc"
    if not _has_shape(first, (n_frames, size, size)):
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
        with mrcfile.new(first, overwrite=True) as mrc:
            mrc.set_data(np.clip(frames, 0, 127).astype(np.int8))
            mrc.voxel_size = 1.0
        del frames
    paths = [first]
    for i in range(1, n_movies):
        path = folder / f"movie_{i:03d}.mrc"
        if not path.is_file() or path.stat().st_size != first.stat().st_size:
            shutil.copyfile(first, path)
        paths.append(path)
    return paths


def _has_shape(path: Path, shape: tuple[int, int, int]) -> bool:
    if not path.is_file():
        return False
    with mrcfile.mmap(path, mode="r", permissive=True) as mrc:
        return mrc.data is not None and tuple(mrc.data.shape) == shape


# --- measured inside the worker -------------------------------------------------


def reset_peak() -> bool:
    """Reset this process's peak RSS (Linux ``clear_refs`` 5); False where the
    kernel does not allow it (then :func:`peak_gb` is the peak since start)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_gb() -> float:
    """This process's own peak RSS in GB: ``VmHWM`` (since start or the last
    :func:`reset_peak`); ``ru_maxrss`` where there is no ``/proc``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def cpu_s() -> float:
    """User + system CPU seconds of this process so far, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def exposure_of(movie: Path) -> Exposure:
    """The exposure record of a simulated movie (300 kV, 1 Å/px, 40 e/Å²)."""
    return Exposure(
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


def run_exposure(movie: Path, project: Path) -> dict[str, Any]:
    """Every stage of the chain on one exposure, in this process:
    ``{"stages": {stage: (wall s, CPU s, peak GB)}, ...}``."""
    exposure = exposure_of(movie)
    previous: dict[str, StageResult] = {}
    stages: dict[str, tuple[float, float, float]] = {}
    cpu_before = cpu_s()
    for name, params in CHAIN:
        task = StageTask(
            stage=name,
            kind=params.kind,
            params=params,
            exposure=exposure,
            project_path=project,
            previous=dict(previous),
        )
        reset_peak()
        cpu = time.process_time()
        start = time.perf_counter()
        previous[name] = run_stage(task)
        stages[name] = (
            time.perf_counter() - start,
            time.process_time() - cpu,
            peak_gb(),
        )
    return {
        "stages": stages,
        "cpu_s": cpu_s() - cpu_before,  # the stages and the glue between them
        "cpu_before_s": cpu_before,  # this worker's CPU before this exposure
        "pid": os.getpid(),
        "n_particles": previous["extract"].figures.get("n_particles", 0.0),
    }


def _bound_task(movie: Path, workers: int) -> dict[str, Any]:
    reset_peak()
    bound = _bound(movie, 1, workers)
    return {**bound, "pid": os.getpid(), "peak_gb": peak_gb()}


def init_worker(keep_freed: bool) -> None:
    """A worker set up as the service's pool worker's initializer sets it up
    (:mod:`livestream.scheduling.executors`): OpenMP's idle threads sleep, and
    with ``keep_freed`` glibc's malloc keeps freed memory."""
    passive_openmp()
    if keep_freed:
        keep_freed_memory()


# --- the parent -------------------------------------------------------------------


class LoadSampler:
    """The 1-minute load average, sampled every few seconds while it runs."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            self.samples.append(os.getloadavg()[0])
            if self._stop.wait(LOAD_SAMPLE_S):
                return

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def describe(self) -> str:
        s = self.samples
        return f"mean {statistics.mean(s):.1f}, range {min(s):.1f}-{max(s):.1f}"


def bench(
    movies: list[Path], project: Path, workers: int, keep_freed: bool = True
) -> dict[str, float]:
    """Run the session on ``workers`` processes; print; return the per-exposure
    core-seconds (``cpu``: CPU time; ``wall``: wall time x workers).  With
    ``keep_freed`` (the service's default, ``[workers] keep_freed_memory``) each
    worker's glibc malloc keeps freed memory, as the service's pool workers do."""
    context = multiprocessing.get_context("spawn")
    fft_workers = MotionParams().fft_workers
    with (
        LoadSampler() as load,
        context.Pool(workers, init_worker, (keep_freed,)) as pool,
    ):
        bounds = pool.starmap(_bound_task, [(movies[0], fft_workers)] * workers)
        start = time.perf_counter()
        results = pool.starmap(run_exposure, [(m, project) for m in movies])
        wall = time.perf_counter() - start
    n = len(movies)
    per_hour = n / wall * 3600
    chain_cpu = statistics.median(r["cpu_s"] for r in results)
    print(
        f"\n{workers} worker(s), {n} exposures in {wall:.0f} s wall; "
        f"1-min load average during the run {load.describe()} "
        f"({os.cpu_count()} cores)"
    )
    print(f"  {'stage':8s} {'wall s':>8s} {'CPU s':>8s} {'CPU %':>6s} {'peak GB':>8s}")
    for name, _ in CHAIN:
        wall_s, stage_cpu, peak = (
            statistics.median(r["stages"][name][i] for r in results) for i in range(3)
        )
        print(
            f"  {name:8s} {wall_s:8.1f} {stage_cpu:8.1f} "
            f"{100 * stage_cpu / chain_cpu:6.1f} {peak:8.2f}"
        )
    chain_wall = statistics.median(
        sum(s[0] for s in r["stages"].values()) for r in results
    )
    print(
        f"  {'chain':8s} {chain_wall:8.1f} {chain_cpu:8.1f} {100.0:6.1f}   "
        f"(medians over {n} exposures; particles per exposure "
        f"{statistics.median(r['n_particles'] for r in results):.0f})"
    )
    _print_bound(bounds, results)
    _print_workers(results, bounds)
    cpu_per_hour = 3600 / chain_cpu
    print(
        f"  exposures/h {per_hour:.1f} (wall); per core: {per_hour / workers:.1f} "
        f"from wall x workers, {cpu_per_hour:.1f} from CPU seconds"
    )
    return {"cpu": chain_cpu, "wall": wall * workers / n}


def _print_bound(bounds: list[dict[str, Any]], results: list[dict[str, Any]]) -> None:
    bound_wall = statistics.median(b["read"] + b["fft"] for b in bounds)
    bound_cpu = statistics.median(b["cpu"] for b in bounds)
    motion_wall = statistics.median(r["stages"]["motion"][0] for r in results)
    motion_cpu = statistics.median(r["stages"]["motion"][1] for r in results)
    print(
        f"  motion bound (read + rfft2 per frame, 1 thread, in each worker): "
        f"{bound_wall:.1f} s wall, {bound_cpu:.1f} CPU s; motion / bound "
        f"{motion_wall / bound_wall:.1f} (wall), {motion_cpu / bound_cpu:.1f} (CPU)"
    )


def _print_workers(results: list[dict[str, Any]], bounds: list[dict[str, Any]]) -> None:
    peaks: dict[int, float] = {}
    start_up: dict[int, float] = {}
    for r in results:
        pid = r["pid"]
        peaks[pid] = max([peaks.get(pid, 0.0), *(s[2] for s in r["stages"].values())])
        start_up[pid] = min(start_up.get(pid, math.inf), r["cpu_before_s"])
    for b in bounds:  # the bound ran first: its CPU is not start-up
        if b["pid"] in start_up:
            start_up[b["pid"]] -= b["cpu"]
    print(
        "  peak RSS per worker (VmHWM) "
        + ", ".join(f"{p:.2f}" for p in peaks.values())
        + " GB; start-up CPU per worker (spawn, imports) "
        + ", ".join(f"{c:.1f}" for c in start_up.values())
        + " s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="1024² x 20 movies")
    parser.add_argument("--movies", type=int, default=4)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--keep", type=Path, help="folder to simulate the movie into once and reuse"
    )
    parser.add_argument(
        "--default-malloc",
        action="store_true",
        help="workers with glibc's default malloc, not the service's keep_freed_memory",
    )
    args = parser.parse_args()
    size, n_frames = (1024, 20) if args.small else (4096, 40)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        movie_folder = folder if args.keep is None else args.keep
        movie_folder.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        movies = make_movies(movie_folder, size, n_frames, args.movies)
        print(
            f"{args.movies} exposures of {size}² x {n_frames} frames "
            f"(made in {time.perf_counter() - start:.0f} s; read from the page cache)"
        )
        runs = []
        for workers in args.workers:
            project = folder / f"project_{workers}"
            project.mkdir()
            runs.append(bench(movies, project, workers, not args.default_malloc))
    _print_cores(runs)


def _print_cores(runs: list[dict[str, float]]) -> None:
    cpu = max(r["cpu"] for r in runs)  # the slowest measured
    wall = max(r["wall"] for r in runs)
    print(
        f"\ncore-seconds per exposure (worst of the runs): {cpu:.1f} CPU s; "
        f"{wall:.1f} s of wall x workers"
    )
    for rate in RATES_PER_HOUR:
        print(
            f"  {rate} exposures/h need {math.ceil(rate * cpu / 3600)} cores "
            f"(CPU seconds), {math.ceil(rate * wall / 3600)} (wall x workers)"
        )


if __name__ == "__main__":
    main()
