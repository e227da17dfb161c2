"""Motion correction side by side: ``livestream motion`` and RELION's own
(``relion_run_motioncorr --use_own``) on the same simulated movie.

One realistic movie from :mod:`pipelines.simulate` (the default specimen, 1 Å/px,
1 e/Å² per frame, 8 px drift with jitter, 1 px local motion, gain and defects;
the same movie as ``bench_motion.py --accuracy``) is written as an int8 MRC movie
with its gain reference (``1 / gain``, multiplicative, stored unrotated) and a
RELION movies STAR (``data_optics`` + ``data_movies``).  Both programs then
correct it with 5 x 5 patches, dose weighting and the same number of threads, each
in its own process under ``/usr/bin/time -v``: wall seconds, CPU seconds (user +
system) and peak RSS.  In the same run the lower bound any method pays is
measured: reading the movie (integers) and one float32 rfft2 per frame, in wall
and in CPU seconds (on a shared machine the CPU ratio is the steadier one: wall
time stretches with the other jobs' load, CPU time much less).

Drift error: RMS over frames of the 2D error of the global shifts against the
simulator's truth, relative to frame 0 (raw, the target) and with the mean error
removed (centred).  RELION's shifts are read from its per-movie
``<movie>.star`` (``data_global_shift``: ``rlnMicrographFrameNumber`` from 1,
``rlnMicrographShiftX/Y`` in unbinned pixels, the correction applied to each
frame, relative to the first); ours from ``livestream motion --json`` (the same
convention).  The script checks the sign: it prints the error with RELION's shifts
negated too.

**Warm worker** (``--warm RUNS``, default 3; 0 skips it): what the live service
pays per movie, which is not the CLI's figure.  The service runs the stage in a
long-lived pool worker, so the interpreter's start, the imports, numba's first
kernel and the first touch of the kept held-spectra store
(:func:`pipelines.motion.spectra.take_held`) are paid once per worker, not per
movie.  One fresh process measures the bound (read + one rfft2 per frame, the
same threads), then calls :func:`pipelines.motion.job.run_motion` (the function
the stage calls) ``RUNS`` times on the same movie, then measures the bound again;
it prints each run's CPU seconds (``time.process_time``: user + system of the
process, all threads), wall, peak RSS (``VmHWM`` reset before each run) and ratio
to the mean of the two bounds.  The runs after the first are the warm worker's
per-movie cost.  It does this for the movie above (with its gain, as the CLI runs
it) and for ``bench_chain.py``'s movie with 1 px of local motion, which the
F-test keeps (so the local model and the sum in temporal blocks run;
``--local-movie``, default ``<workdir>/local/movie_000.mrc``, simulated there
when absent).  ``--profile`` adds the CPU seconds of each phase of the warm runs
(the functions :func:`pipelines.motion.correct.correct_motion` calls, wrapped in
the worker).  The warm worker's ``malloc`` keeps freed memory for the next movie,
as the service's pool workers do
(:func:`livestream.scheduling.allocator.keep_freed_memory`, ``[workers]
keep_freed_memory``); ``--default-malloc`` measures glibc's default instead.  The
peak is split into anonymous memory and file pages (``RssAnon`` / ``RssFile`` of
``/proc/self/status`` at the highest ``VmRSS`` sampled every 10 ms by a thread)
and the resident set between movies is printed.  The CLI's figure above stays the
one an operator pays per ``livestream motion`` call.

    .venv/bin/python benchmarks/compare_relion_motioncorr.py [--size 4096]
        [--frames 40] [--threads 2] [--seed 1] [--relion-bin /usr/bin/relion_run_motioncorr]
        [--workdir DIR [--reuse]]   # keep (reuse) the movie and the outputs there
        [--no-relion] [--warm 3] [--local-movie PATH] [--profile]
        [--default-malloc] [--active-openmp]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mrcfile
import numpy as np
import pandas as pd
import starfile
from bench_chain import make_movies, peak_gb, reset_peak
from bench_motion import _bound, in_process
from bench_motion_accuracy import PARTICLES_PER_PX2

import pipelines.motion.correct as correct_module
import pipelines.motion.job as job_module
from livestream.scheduling.allocator import keep_freed_memory
from livestream.scheduling.openmp import passive_openmp
from pipelines.motion.job import run_motion
from pipelines.simulate.micrograph import MicrographParams
from pipelines.simulate.movie import MovieParams, simulate_movie

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Side:
    name: str
    wall_s: float
    cpu_s: float
    peak_gb: float
    shifts_px: np.ndarray  # (n_frames, 2) correction, relative to frame 0


def make_movie(
    folder: Path, size: int, n_frames: int, seed: int, threads: int
) -> tuple[Path, Path, Path, np.ndarray]:
    """Simulate, write ``Movies/movie.mrc`` (int8), ``gain.mrc`` and
    ``movies.star``; return their paths and the true drift (frame 0 = 0)."""
    rng = np.random.default_rng(seed)
    params = MovieParams(
        micrograph=MicrographParams(
            shape_px=(size, size),
            pixel_size_a=1.0,
            n_particles=max(1, round(PARTICLES_PER_PX2 * size * size)),
        ),
        n_frames=n_frames,
        dose_per_frame_e_per_a2=1.0,
    )
    start = time.perf_counter()
    frames, truth = simulate_movie(params, rng, workers=threads)
    movies = folder / "Movies"
    movies.mkdir(parents=True, exist_ok=True)
    movie = movies / "movie.mrc"
    if frames.max() > 127:
        raise ValueError(f"counts up to {frames.max()} do not fit int8")
    with mrcfile.new(movie, overwrite=True) as mrc:
        mrc.set_data(np.asarray(frames, dtype=np.int8))
        mrc.voxel_size = 1.0
    del frames
    gain = folder / "gain.mrc"
    with mrcfile.new(gain, overwrite=True) as mrc:
        mrc.set_data(np.ascontiguousarray(truth.gain_reference, dtype=np.float32))
        mrc.voxel_size = 1.0
    star = folder / "movies.star"
    starfile.write(
        {
            "optics": pd.DataFrame(
                [
                    {
                        "rlnOpticsGroupName": "opticsGroup1",
                        "rlnOpticsGroup": 1,
                        "rlnMicrographOriginalPixelSize": 1.0,
                        "rlnVoltage": 300.0,
                        "rlnSphericalAberration": 2.7,
                        "rlnAmplitudeContrast": 0.1,
                    }
                ]
            ),
            "movies": pd.DataFrame(
                [{"rlnMicrographMovieName": "Movies/movie.mrc", "rlnOpticsGroup": 1}]
            ),
        },
        star,
        overwrite=True,
    )
    print(
        f"simulated {size}² x {n_frames} frames (seed {seed}, "
        f"{params.micrograph.n_particles} particles) in "
        f"{time.perf_counter() - start:.0f} s; movie {movie.stat().st_size / 1e6:.0f} MB",
        flush=True,
    )
    return movie, gain, star, truth.shifts_px - truth.shifts_px[0]


def timed_run(
    command: list[str], cwd: Path, threads: int
) -> tuple[str, float, float, float]:
    """Run ``command`` under ``/usr/bin/time -v``: stdout, wall s, CPU s, peak GB."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "NUMBA_NUM_THREADS": str(threads),
        "PYTHONPATH": str(REPO),
    }
    start = time.perf_counter()
    done = subprocess.run(
        ["/usr/bin/time", "-v", *command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
        raise subprocess.CalledProcessError(done.returncode, command)

    def field(name: str) -> float:
        match = re.search(rf"{re.escape(name)}: ([0-9.]+)", done.stderr)
        if match is None:
            raise ValueError(f"/usr/bin/time -v printed no '{name}'")
        return float(match.group(1))

    cpu = field("User time (seconds)") + field("System time (seconds)")
    peak = field("Maximum resident set size (kbytes)") * 1024 / 1e9
    return done.stdout, wall, cpu, peak


def run_ours(folder: Path, movie: Path, gain: Path, threads: int) -> Side:
    stdout, wall, cpu, peak = timed_run(
        [
            sys.executable,
            "-m",
            "livestream.cli.main",
            "motion",
            str(movie),
            "--out",
            str(folder / "ours"),
            "--gain",
            str(gain),
            "--pixel-size-a",
            "1.0",
            "--dose-per-frame",
            "1.0",
            "--voltage-kv",
            "300",
            "--patches",
            "5",
            "5",
            "--json",
        ],
        folder,
        threads,
    )
    item = json.loads(stdout)["items"][0]
    return Side("livestream motion", wall, cpu, peak, np.asarray(item["shifts_px"]))


def run_relion(exe: str, folder: Path, star: Path, gain: Path, threads: int) -> Side:
    _, wall, cpu, peak = timed_run(
        [
            exe,
            "--i",
            star.name,
            "--o",
            "relion/",
            "--use_own",
            "--j",
            str(threads),
            "--patch_x",
            "5",
            "--patch_y",
            "5",
            "--bin_factor",
            "1",
            "--bfactor",
            "150",
            "--dose_weighting",
            "--angpix",
            "1.0",
            "--voltage",
            "300",
            "--dose_per_frame",
            "1.0",
            "--gainref",
            gain.name,
            "--save_noDW",
        ],
        folder,
        threads,
    )
    shifts = starfile.read(folder / "relion" / "Movies" / "movie.star")["global_shift"]
    shifts = shifts.sort_values("rlnMicrographFrameNumber")
    xy = shifts[["rlnMicrographShiftX", "rlnMicrographShiftY"]].to_numpy(float)
    return Side(f"{exe} --use_own", wall, cpu, peak, xy - xy[0])


# the phases --profile times: (module, attribute, label); nested ones are inside
# the phase above them (pass 1 holds frame prep, holding and its FFTs)
PHASES: tuple[tuple[object, str, str], ...] = (
    (job_module, "read_movie", "read (readinto; MRC not mapped)"),
    (job_module, "read_gain", "gain read"),
    (correct_module, "PreparedFrames", "defect map"),
    (correct_module, "band_spectra", "pass 1: prepare, rfft2, hold, bands"),
    (correct_module.PreparedFrames, "__call__", "  frame prep (in pass 1 / sum)"),
    (correct_module.HeldSpectra, "put", "  holding the spectra (in pass 1)"),
    (correct_module, "align_stack", "global alignment passes"),
    (correct_module, "refine_at_finer_bin", "refinement at the finer bin"),
    (correct_module, "align_patches", "local estimation"),
    (correct_module, "sum_frames", "sum (held sum or blocks, inverse FFTs)"),
    (correct_module, "power_spectrum", "power spectrum"),
    (job_module, "write_mrc", "writing the MRC files"),
)


def rss_gb() -> dict[str, float]:
    """``VmRSS``, ``RssAnon`` and ``RssFile`` of this process in GB (Linux)."""
    values: dict[str, float] = {}
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "RssAnon", "RssFile"):
                    values[key] = int(value.split()[0]) * 1024 / 1e9
    except OSError:
        pass
    return values


class PeakSplit:
    """A thread sampling :func:`rss_gb` every 10 ms; ``peak`` is the sample with
    the highest ``VmRSS`` (its anonymous and file-backed parts)."""

    def __init__(self) -> None:
        self.peak: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            sample = rss_gb()
            if sample.get("VmRSS", 0.0) > self.peak.get("VmRSS", 0.0):
                self.peak = sample

    def __enter__(self) -> PeakSplit:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _timed(fn: Callable[..., object], totals: dict[str, float], label: str) -> object:
    def wrapper(*args: object, **kwargs: object) -> object:
        start = time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            totals[label] = totals.get(label, 0.0) + time.process_time() - start

    return wrapper


def warm_worker(
    movie: Path,
    gain: Path | None,
    threads: int,
    runs: int,
    profile: bool,
    keep_freed: bool,
    passive: bool = True,
) -> dict[str, object]:
    """In this (fresh) process: the bound, ``runs`` calls of ``run_motion`` on
    ``movie``, the bound again.  CPU s per run are ``time.process_time`` (all
    threads); ``phases`` the CPU s per phase of each run with ``profile``.  With
    ``keep_freed`` the process first calls :func:`keep_freed_memory`, as the
    service's pool worker does, and with ``passive`` sets libgomp's threads to
    sleep when idle (:func:`passive_openmp`), as the pool worker does."""
    if passive and not passive_openmp():
        print("passive_openmp() too late here: libgomp already loaded")
    if keep_freed and not keep_freed_memory():
        print("keep_freed_memory() not taken here: the default allocator")
    bounds = [_bound(movie, 1, threads)]
    records: list[dict[str, object]] = []
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in PHASES]
    with tempfile.TemporaryDirectory() as out:
        for _ in range(runs):
            totals: dict[str, float] = {}
            if profile:
                for (owner, name, original), (_, _, label) in zip(
                    originals, PHASES, strict=True
                ):
                    setattr(owner, name, _timed(original, totals, label))
            try:
                reset_peak()
                cpu, wall = time.process_time(), time.perf_counter()
                with PeakSplit() as split:
                    result = run_motion(
                        movie,
                        out,
                        pixel_size_a=1.0,
                        dose_per_frame_e_per_a2=1.0,
                        voltage_kv=300.0,
                        gain_path=gain,
                        patches=(5, 5),
                        workers=threads,
                    )
                records.append(
                    {
                        "cpu": time.process_time() - cpu,
                        "wall": time.perf_counter() - wall,
                        "peak_gb": peak_gb(),
                        "peak_anon_gb": split.peak.get("RssAnon", 0.0),
                        "peak_file_gb": split.peak.get("RssFile", 0.0),
                        "between_gb": rss_gb().get("VmRSS", 0.0),
                        "local": result.local_rms_residual_px is not None,
                        "shifts": result.shifts_px,
                        "phases": totals,
                        "load": os.getloadavg()[0],
                    }
                )
            finally:
                for owner, name, original in originals:
                    setattr(owner, name, original)
    bounds.append(_bound(movie, 1, threads))
    return {"bounds": bounds, "runs": records}


def print_warm(title: str, value: dict[str, Any], truth: np.ndarray | None) -> None:
    bounds, runs = value["bounds"], value["runs"]
    bound = sum(b["cpu"] for b in bounds) / len(bounds)
    print(
        f"\nwarm worker, {title}: bound (read + rfft2 per frame) "
        f"{bounds[0]['cpu']:.1f} CPU s before, {bounds[-1]['cpu']:.1f} after; "
        f"ratios to their mean {bound:.1f}"
    )
    print(
        f"{'run':>4s} {'CPU s':>7s} {'wall s':>7s} {'peak GB':>8s} "
        f"{'anon+file':>10s} {'after GB':>8s} {'CPU x bound':>12s} {'local kept':>11s} {'drift RMS raw px':>17s} {'load':>5s}"
    )
    for i, run in enumerate(runs, 1):
        drift = ""
        if truth is not None:
            error = run["shifts"] + truth
            drift = f"{rms(error):.3f}"
        print(
            f"{i:4d} {run['cpu']:7.1f} {run['wall']:7.1f} {run['peak_gb']:8.2f} "
            f"{run['peak_anon_gb']:4.2f}+{run['peak_file_gb']:4.2f} "
            f"{run['between_gb']:8.2f} {run['cpu'] / bound:12.2f} {run['local']!s:>11s} {drift:>17s} "
            f"{run['load']:5.1f}"
            + ("   (first: pays the worker's start)" if i == 1 else "")
        )
    if len(runs) > 1:
        warm = [run["cpu"] for run in runs[1:]]
        print(
            f"warm per movie (runs 2..): {min(warm):.1f}-{max(warm):.1f} CPU s, "
            f"{min(warm) / bound:.2f}-{max(warm) / bound:.2f}x the bound"
        )
    if runs and runs[-1]["phases"]:
        print("CPU s per phase (runs 2..; nested lines are inside the one above):")
        for _, _, label in PHASES:
            values = [run["phases"].get(label, 0.0) for run in runs[1:]] or [
                runs[0]["phases"].get(label, 0.0)
            ]
            print(f"  {label:42s} " + " ".join(f"{v:6.2f}" for v in values))


def rms(error: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.sum(error**2, axis=1))))


def run_warm(
    args: argparse.Namespace, folder: Path, movie: Path, gain: Path, truth: np.ndarray
) -> None:
    """The warm-worker measurement on ``movie`` and on the local-motion movie."""
    local_movie = args.local_movie
    if local_movie is None:
        (folder / "local").mkdir(exist_ok=True)
        (local_movie,) = make_movies(folder / "local", args.size, args.frames, 1)
    print(
        "\nCLI above: one `livestream motion` process per movie (start-up, "
        "imports, numba's first kernel included). Warm worker below: "
        "run_motion called again in one process, as the service's pool "
        "worker does."
    )
    keep = not args.default_malloc
    memory = "malloc keeping freed memory" if keep else "glibc's default malloc"
    passive = not args.active_openmp
    if not passive:
        memory += ", OpenMP threads spinning (libgomp's default)"
    value = in_process(
        warm_worker, movie, gain, args.threads, args.warm, args.profile, keep, passive
    )
    print_warm(f"this movie (gain, 5 x 5 patches; {memory})", value, truth)
    value = in_process(
        warm_worker,
        local_movie,
        None,
        args.threads,
        args.warm,
        args.profile,
        keep,
        passive,
    )
    print_warm(f"local motion ({local_movie.name}; {memory})", value, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--relion-bin", default="/usr/bin/relion_run_motioncorr")
    parser.add_argument("--workdir", type=Path, help="keep the movie and outputs here")
    parser.add_argument(
        "--reuse", action="store_true", help="reuse the movie already in --workdir"
    )
    parser.add_argument("--no-relion", action="store_true", help="ours only")
    parser.add_argument(
        "--warm", type=int, default=3, help="run_motion calls per warm worker (0: none)"
    )
    parser.add_argument(
        "--local-movie",
        type=Path,
        help="the movie with local motion for the warm worker "
        "(default: <workdir>/local/movie_000.mrc, simulated when absent)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="CPU s per phase in the warm worker"
    )
    parser.add_argument(
        "--default-malloc",
        action="store_true",
        help="the warm worker with glibc's default malloc, not the service's "
        "keep_freed_memory",
    )
    parser.add_argument(
        "--active-openmp",
        action="store_true",
        help="the warm worker with libgomp's default wait policy (idle threads "
        "spin), not the service's OMP_WAIT_POLICY=PASSIVE",
    )
    args = parser.parse_args()
    relion = shutil.which(args.relion_bin)
    folder = args.workdir or Path(tempfile.mkdtemp(prefix="motion_vs_relion_"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        saved = folder / "truth_shifts_px.npy"
        if args.reuse and saved.is_file():
            movie, gain, star = (
                folder / "Movies" / "movie.mrc",
                folder / "gain.mrc",
                folder / "movies.star",
            )
            truth = np.load(saved)
            print(f"reusing the movie in {folder}")
        else:
            movie, gain, star, truth = make_movie(
                folder, args.size, args.frames, args.seed, args.threads
            )
            np.save(saved, truth)
        with open("/proc/loadavg") as handle:
            load = handle.read().split()[:3]
        print(f"load average before the runs: {' '.join(load)}", flush=True)
        bound = in_process(_bound, movie, 1, args.threads)
        lower = bound["read"] + bound["fft"]
        sides = [run_ours(folder, movie, gain, args.threads)]
        if args.no_relion:
            pass
        elif relion is None:
            print(f"{args.relion_bin} not installed: no side-by-side")
        else:
            sides.append(run_relion(relion, folder, star, gain, args.threads))
        with open("/proc/loadavg") as handle:
            load = handle.read().split()[:3]
        print(f"load average after the runs: {' '.join(load)}")
        print(
            f"\n{args.size}² x {args.frames} frames, int8 MRC, {args.threads} threads; "
            f"bound = read {bound['read']:.1f} s + {args.frames} rfft2 "
            f"{bound['fft']:.1f} s = {lower:.1f} s"
        )
        print(
            f"{'program':18s} {'wall s':>7s} {'CPU s':>7s} {'peak GB':>8s} "
            f"{'x bound':>8s} {'CPU x bound':>12s} {'drift RMS raw px':>17s} "
            f"{'centred px':>11s}"
        )
        print(
            f"{'bound':18s} {lower:7.1f} {bound['cpu']:7.1f} {'':8s} {1.0:8.2f} "
            f"{1.0:12.2f}"
        )
        for side in sides:
            error = side.shifts_px + truth
            print(
                f"{side.name:18s} {side.wall_s:7.1f} {side.cpu_s:7.1f} "
                f"{side.peak_gb:8.2f} {side.wall_s / lower:8.2f} "
                f"{side.cpu_s / bound['cpu']:12.2f} "
                f"{rms(error):17.3f} {rms(error - error.mean(axis=0)):11.3f}"
            )
        for side in sides[1:]:
            flipped = -side.shifts_px + truth
            print(
                f"({side.name} with its shifts negated: {rms(flipped):.3f} px raw; "
                "the smaller one says the sign convention)"
            )
        if args.warm > 0:
            run_warm(args, folder, movie, gain, truth)
    finally:
        if args.workdir is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
