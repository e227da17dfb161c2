"""Benchmark motion correction at real size: the whole stage against its bound.

A 4096 x 4096 x 40-frame counting movie (int8 MRC) of a drifting texture at ~1.2
e/px/frame, and the same counts as LZW TIFF (uint8) and EER (each frame split into
``--eer-readouts`` 0/1 readouts, decoded and grouped back to 40 fractions).  Per
format, each in a fresh process (so its peak memory is its own): the time and
CPU seconds of
:func:`pipelines.motion.job.run_motion` (read, gain + defects, global and 5 x 5
local alignment, dose-weighted sum, power spectrum, writing; what ``livestream
motion`` runs), its peak RSS and drift error against the integer truth; and, in
the same run, the lower bound any method must pay: reading the movie (EER decoded
and grouped) and one float32 rfft2 per frame, with the read's CPU seconds
apart (for EER the decoding).  ``--small`` uses 1024 x 1024 x 20.

    .venv/bin/python benchmarks/bench_motion.py [--small] [--workers N]
        [--eer-readouts 25] [--workdir DIR]   # keep (and reuse) the movies in DIR
    .venv/bin/python benchmarks/bench_motion.py --accuracy [--small] [--seed N]

``--accuracy`` measures the errors against the simulator's truth instead
(:mod:`bench_motion_accuracy`).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import mrcfile
import numpy as np
import scipy.fft

from mdcatch.records import MovieFormat
from pipelines.io.movies import read_movie
from pipelines.motion.job import run_motion
from pipelines.simulate.eer import write_eer
from pipelines.simulate.writers import write_movie


def make_movie_file(
    path: Path, size: int, n_frames: int, rng: np.random.Generator
) -> np.ndarray:
    """An int8 MRC movie of a drifting texture (integer drift) at ~1.2 e/px/frame."""
    ky = np.fft.fftfreq(size)[:, None]
    kx = np.fft.rfftfreq(size)[None, :]
    k = np.sqrt(ky * ky + kx * kx)
    amplitude = (np.maximum(k, 1.0 / size) ** -0.8 * np.exp(-((k / 0.35) ** 2))).astype(
        np.float32
    )
    noise = rng.standard_normal((size, size), dtype=np.float32)
    texture = scipy.fft.irfft2(
        scipy.fft.rfft2(noise, workers=-1) * amplitude, s=(size, size), workers=-1
    )
    texture = 1.2 * np.clip(1.0 + 0.3 * texture / texture.std(), 0, None)
    t = np.arange(n_frames)
    drift = np.round(np.stack([6 * np.sqrt(t + 1) - 6, -4 * np.log1p(t)], 1)).astype(
        int
    )
    with mrcfile.new_mmap(
        path, shape=(n_frames, size, size), mrc_mode=0, overwrite=True
    ) as mrc:
        for i in range(n_frames):
            shifted = np.roll(texture, (drift[i, 1], drift[i, 0]), axis=(0, 1))
            mrc.data[i] = rng.poisson(shifted).astype(np.int8)
    return -(drift - drift[0])


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    return value, time.perf_counter() - start


def write_formats(
    mrc_path: Path, eer_raw_per_fraction: int, rng: np.random.Generator
) -> dict[str, tuple[Path, int]]:
    """The same counts as LZW TIFF (uint8) and EER (each fraction spread over
    ``eer_raw_per_fraction`` 0/1 readouts by :func:`eer_readouts`, ~2 % of the
    counts lost to coincidences): ``{format: (path, raw frames per fraction)}``."""
    with mrcfile.mmap(mrc_path, mode="r") as mrc:
        counts = np.clip(np.asarray(mrc.data), 0, None).astype(np.uint8)
    tiff = mrc_path.with_suffix(".tif")
    write_movie(counts, tiff, fmt=MovieFormat.TIFF, pixel_size_a=1.0)
    eer = mrc_path.with_suffix(".eer")
    k = eer_raw_per_fraction
    write_eer(
        (readout for frame in counts for readout in eer_readouts(frame, k, rng)),
        eer,
        pixel_size_a=1.0,
        rng=rng,
        n_frames=k * counts.shape[0],
    )
    return {"MRC int8": (mrc_path, 1), "TIFF LZW": (tiff, 1), "EER": (eer, k)}


def eer_readouts(
    counts: np.ndarray, k: int, rng: np.random.Generator
) -> Iterator[np.ndarray]:
    """``k`` 0/1 readouts whose sum is about ``counts`` ``(ny, nx)``: each
    electron lands in a uniformly random readout; two in one pixel and readout
    count once (at ~1.2 e/px and 25 readouts ~2 % of the counts).  Quicker than
    :func:`pipelines.simulate.eer.split_counts_into_subframes` (exact, 6 CPU s
    per 4096² fraction): writing 1,000 raw 4096² readouts took over an hour on
    the loaded machine."""
    flat = counts.ravel()
    pixels = np.flatnonzero(flat)
    events = np.repeat(pixels, flat[pixels].astype(np.int64))
    readout = rng.integers(0, k, events.size, dtype=np.uint8)
    order = np.argsort(readout, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(readout, minlength=k))])
    frame = np.zeros(counts.size, dtype=np.uint8)
    for r in range(k):
        chosen = events[order[bounds[r] : bounds[r + 1]]]
        frame[chosen] = 1
        yield frame.reshape(counts.shape)
        frame[chosen] = 0


def _bound(path: Path, group: int, workers: int) -> dict[str, float]:
    """Read the movie (integers, EER decoded and grouped) and take one float32
    rfft2 per frame: the work any motion correction must do."""
    cpu = time.process_time()
    start = time.perf_counter()
    frames = read_movie(path, eer_frames_per_group=group, native=True)
    if isinstance(frames, np.memmap):  # an MRC is mapped: read it here
        frames = np.array(frames)
    t_read = time.perf_counter() - start
    cpu_read = time.process_time()
    buffer = np.empty(frames.shape[1:], np.float32)
    start = time.perf_counter()
    for frame in frames:
        buffer[...] = frame
        scipy.fft.rfft2(buffer, workers=workers)
    t_fft = time.perf_counter() - start
    return {
        "read": t_read,
        "fft": t_fft,
        "cpu": time.process_time() - cpu,
        "read_cpu": cpu_read - cpu,
    }


def _method(path: Path, group: int, workers: int, out: str) -> dict[str, object]:
    """``livestream motion``'s whole stage: read, gain, align, local, sum, write."""
    start = time.perf_counter()
    cpu = time.process_time()
    result = run_motion(
        path,
        out,
        pixel_size_a=1.0,
        dose_per_frame_e_per_a2=1.0 / group,
        voltage_kv=300.0,
        eer_group_dose_e_per_a2=1.0,
        workers=workers,
    )
    return {
        "time": time.perf_counter() - start,
        "cpu": time.process_time() - cpu,
        "shifts": result.shifts_px,
        "local": result.local_rms_residual_px,
    }


def _child(queue, fn, *args):
    value = fn(*args)
    value["peak_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    queue.put(value)


def in_process(fn, *args) -> dict:
    """Run ``fn(*args)`` in a fresh process: its own peak memory (ru_maxrss)."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(queue, fn, *args))
    process.start()
    value = queue.get()
    process.join()
    return value


def bench(
    size: int,
    n_frames: int,
    workers: int,
    folder: Path,
    rng: np.random.Generator,
    eer_raw_per_fraction: int,
) -> None:
    path = folder / f"movie_{size}.mrc"
    saved = folder / f"truth_{size}_{eer_raw_per_fraction}.npy"
    if saved.is_file():  # --workdir: the files of an earlier run (slow to write)
        truth, t_make, t_formats = np.load(saved), 0.0, 0.0
        k = eer_raw_per_fraction
        movies = {
            "MRC int8": (path, 1),
            "TIFF LZW": (path.with_suffix(".tif"), 1),
            "EER": (path.with_suffix(".eer"), k),
        }
        print(f"reusing the movies in {folder}")
    else:
        truth, t_make = timed(make_movie_file, path, size, n_frames, rng)
        movies, t_formats = timed(write_formats, path, eer_raw_per_fraction, rng)
        np.save(saved, truth)
    print(
        f"\n== {size} x {size} x {n_frames} frames, {workers} workers "
        f"(movie made in {t_make:.0f} s, TIFF/EER written in {t_formats:.0f} s; "
        f"EER: {eer_raw_per_fraction} readouts per fraction, "
        f"{eer_raw_per_fraction * n_frames} in all)"
    )
    print(
        f"{'format':9s} {'file MB':>8s} {'motion s':>9s} {'peak GB':>8s} "
        f"{'read s':>7s} {'FFT s':>6s} {'bound s':>8s} {'ratio':>6s} {'drift RMS px':>13s}"
        f" | CPU s: {'motion':>7s} {'read':>6s} {'rest':>6s} {'bound':>6s} "
        f"{'ratio':>6s}"
    )
    for name, (movie, group) in movies.items():
        bound = in_process(_bound, movie, group, workers)
        out = tempfile.mkdtemp(dir=folder)
        method = in_process(_method, movie, group, workers, out)
        shifts = np.asarray(method["shifts"])
        error = np.sqrt(np.mean(np.sum((shifts - truth) ** 2, axis=1)))
        lower = bound["read"] + bound["fft"]
        print(
            f"{name:9s} {movie.stat().st_size / 1e6:8.0f} {method['time']:9.1f} "
            f"{method['peak_gb']:8.2f} {bound['read']:7.1f} {bound['fft']:6.1f} "
            f"{lower:8.1f} {method['time'] / lower:6.2f} {error:13.4f}"
            f" |        {method['cpu']:7.1f} {bound['read_cpu']:6.1f} "
            f"{method['cpu'] - bound['read_cpu']:6.1f} {bound['cpu']:6.1f} "
            f"{method['cpu'] / bound['cpu']:6.2f}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="small movie only")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--accuracy",
        action="store_true",
        help="errors vs the truth on a realistic simulated 4096² movie (--small: 1024²)",
    )
    parser.add_argument("--seed", type=int, default=1, help="simulation seed")
    parser.add_argument(
        "--eer-readouts",
        type=int,
        default=10,
        help="EER readouts per 1 e/Å² fraction (Falcon 4: ~25; writing them is slow)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        help="write the movies here and keep them; reused when already there",
    )
    args = parser.parse_args()
    if args.accuracy:
        from bench_motion_accuracy import measure_accuracy

        measure_accuracy(1024 if args.small else 4096, args.seed, args.workers)
        return
    rng = np.random.default_rng(7)
    sizes = [(1024, 20)] if args.small else [(4096, 40)]
    if args.workdir is not None:  # keep the movies (and reuse them next time)
        args.workdir.mkdir(parents=True, exist_ok=True)
        for size, n in sizes:
            bench(size, n, args.workers, args.workdir, rng, args.eer_readouts)
        return
    with tempfile.TemporaryDirectory() as tmp:
        for size, n in sizes:
            bench(size, n, args.workers, Path(tmp), rng, args.eer_readouts)


if __name__ == "__main__":
    main()
