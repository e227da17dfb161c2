"""Time to simulate a movie, against the FFTs and Poisson draws it cannot avoid.

    .venv/bin/python benchmarks/bench_simulate.py [--small] [--frames N] [--workers W]

Default: a 4096 x 4096 x 40 movie (1 e/Å² per frame, 0.83 Å/px, 300 particles,
drift and local motion, damage, K2 MTF when the shared data has it, gain and
defects); ``--small``: 1024 x 1024 x 40 with 20 particles.

The machine may be shared: wall and CPU seconds are both printed.  Lower bound, measured in the same run on arrays of the same (padded) size: the one
forward real FFT of the specimen plus one inverse real FFT per frame (scipy.fft,
same workers), and one uniform random number per pixel and frame (the shot noise
is drawn by inversion of one uniform per pixel).  The ratio says how much the
rest (specimen, projections, damage filters, warps, gain) costs on top.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import scipy.fft

from pipelines.ctf.model import CtfParams
from pipelines.simulate.micrograph import MicrographParams, build_specimen
from pipelines.simulate.movie import MovieParams, simulate_movie
from pipelines.simulate.volumes import phantom_volume

T = TypeVar("T")
MTF = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "data"
    / "real"
    / "mtf_k2_300kV.star"
)


def timed(fn: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[T, float, float]:
    """``fn``'s result, wall seconds and CPU seconds (all threads of this process)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def fft_bound_s(shape: tuple[int, int], n_frames: int, workers: int) -> float:
    image = np.random.default_rng(0).random(shape, dtype=np.float32)
    start = time.perf_counter()
    ft = scipy.fft.rfft2(image, workers=workers)
    for _ in range(n_frames):
        scipy.fft.irfft2(ft, s=shape, workers=workers)
    return time.perf_counter() - start


def uniforms_bound_s(shape: tuple[int, int], n_frames: int) -> float:
    """One random number per pixel and frame: what any shot-noise draw needs."""
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(n_frames):
        rng.random(shape, dtype=np.float32)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--small", action="store_true", help="1024 x 1024 instead of 4096"
    )
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--workers", type=int, default=-1)
    args = parser.parse_args()
    size = 1024 if args.small else 4096
    pixel_size_a = 0.83
    micrograph = MicrographParams(
        shape_px=(size, size),
        pixel_size_a=pixel_size_a,
        n_particles=20 if args.small else 300,
        ctf=CtfParams(
            defocus_u_a=15000.0, defocus_v_a=14200.0, astigmatism_angle_deg=40.0
        ),
        carbon_edge=True,
        n_contamination=2,
        ice_gradient_a=100.0,
    )
    params = MovieParams(
        micrograph=micrograph,
        n_frames=args.frames,
        dose_per_frame_e_per_a2=1.0,
        drift_px=10.0,
        local_motion_px=2.0,
        mtf_path=MTF if MTF.is_file() else None,
    )
    rng = np.random.default_rng(1)
    volume = phantom_volume(128, pixel_size_a, rng)
    simulate_movie(  # compile the numba kernels outside the timing
        MovieParams(
            micrograph=MicrographParams(shape_px=(128, 128), n_particles=1), n_frames=2
        ),
        rng,
        volume=phantom_volume(32, pixel_size_a, rng),
    )

    _, specimen_wall, specimen_cpu = timed(
        build_specimen,
        micrograph,
        np.random.default_rng(2),
        volume=volume,
        workers=args.workers,
    )
    (frames, truth), total_wall, total_cpu = timed(
        simulate_movie,
        params,
        np.random.default_rng(3),
        volume=volume,
        workers=args.workers,
    )
    padded = scipy.fft.next_fast_len(size + 2 * 20, real=True)
    _, fft_wall, fft_cpu = timed(
        fft_bound_s, (padded, padded), args.frames, args.workers
    )
    _, uni_wall, uni_cpu = timed(uniforms_bound_s, (size, size), args.frames)
    bound_wall, bound_cpu = fft_wall + uni_wall, fft_cpu + uni_cpu
    frames_wall = total_wall - specimen_wall
    n = len(truth.micrograph.particles)
    print(f"movie {size} x {size} x {args.frames} frames, {n} particles, 1 e/A^2/frame")
    print("                        wall s    cpu s")
    print(
        f"  simulate_movie      {total_wall:8.2f} {total_cpu:8.2f}"
        f"   {frames.size / total_wall / 1e6:.1f} Mpixel/s"
    )
    print(
        f"    specimen          {specimen_wall:8.2f} {specimen_cpu:8.2f}"
        "   placement, projections, textures"
    )
    print(
        f"    frames            {frames_wall:8.2f} {total_cpu - specimen_cpu:8.2f}"
        f"   {frames_wall / args.frames:.3f} s/frame"
    )
    print(
        f"  lower bound         {bound_wall:8.2f} {bound_cpu:8.2f}"
        f"   FFTs {fft_wall:.2f} s + uniforms {uni_wall:.2f} s ({padded}^2 padded)"
    )
    print(
        f"  ratio to bound      {total_wall / bound_wall:8.2f} {total_cpu / bound_cpu:8.2f}"
    )
    print(
        f"  frames: mean {frames.mean():.3f} counts/px, {frames.dtype}, "
        f"{frames.nbytes / 2**20:.0f} MiB"
    )


if __name__ == "__main__":
    main()
