"""The motion stage on a movie with local motion: the sum in temporal blocks of
the held spectra against the exact per-frame warp, in CPU seconds, with the bound.

The movie is ``bench_chain.py``'s (4096² x 40 int8 MRC, 1 Å/px, 1 e/Å² per frame,
1 px of local motion, which the F-test keeps), made once into ``--keep DIR`` or
reused from there.  In one process, alternating: ``run_motion`` (one FFT thread,
as the chain runs it) with the sum in blocks (``sum_frames``'s default,
:mod:`pipelines.motion.blocks`) and with every frame warped by its own field
(``local_tolerance_px=None``, the exact path).  ``sum_frames`` is wrapped to time
it and keep its two sums; the bound (read + one float32 rfft2 per frame,
``bench_motion._bound``) is measured in the same run.

Prints per run: CPU s of the stage and of its sum, the ratio to the bound, the
number of blocks, the stage's peak RSS (after an untimed run of each mode on a
512² movie, so that no run pays for loading numba's kernels); then the relative RMS difference of the
dose-weighted and plain sums between the two paths (inside a 16 px border, where
the clamped warp and the periodic shift differ) and the 1-min load average.

    .venv/bin/python benchmarks/bench_motion_local.py [--keep DIR] [--runs 2]
        [--size 4096]
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from bench_chain import cpu_s, make_movies, peak_gb, reset_peak
from bench_motion import _bound

import pipelines.motion.correct as correct_module
from pipelines.motion.blocks import LOCAL_BLOCK_TOLERANCE_PX, local_blocks
from pipelines.motion.job import run_motion

BORDER_PX = 16


def _timed_sum(
    original: Callable[..., Any], record: dict[str, Any], tolerance: float | None
) -> Callable[..., Any]:
    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = cpu_s()
        result = original(*args, local_tolerance_px=tolerance, **kwargs)
        record["sum_cpu"] = cpu_s() - start
        record["sums"] = (np.array(result[0]), np.array(result[1]))
        coefficients = kwargs.get("local_coefficients")
        record["blocks"] = (
            0
            if coefficients is None
            else len(local_blocks(coefficients, args[0].shape[0]))
        )
        return result

    return wrapper


def run_once(movie: Path, tolerance: float | None) -> dict[str, Any]:
    """``run_motion`` on ``movie`` with the sum's tolerance set; CPU, sums, peak."""
    record: dict[str, Any] = {}
    original = correct_module.sum_frames
    correct_module.sum_frames = _timed_sum(original, record, tolerance)
    try:
        reset_peak()
        with tempfile.TemporaryDirectory() as out:
            start, wall = cpu_s(), time.perf_counter()
            run_motion(
                movie,
                out,
                pixel_size_a=1.0,
                dose_per_frame_e_per_a2=1.0,
                voltage_kv=300.0,
                workers=1,
            )
            record["cpu"] = cpu_s() - start
            record["wall"] = time.perf_counter() - wall
        record["peak_gb"] = peak_gb()
    finally:
        correct_module.sum_frames = original
    return record


def _relative_rms(a: np.ndarray, b: np.ndarray) -> float:
    inner = (slice(BORDER_PX, -BORDER_PX),) * 2
    diff = a[inner].astype(np.float64) - b[inner]
    return float(np.sqrt(np.mean(diff * diff) / np.var(b[inner].astype(np.float64))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, default=None)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--runs", type=int, default=1, help="pairs of runs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.keep or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        (movie,) = make_movies(folder, args.size, args.frames, 1)
        # numba's kernels loaded from its cache (seconds) before anything is timed
        warm = Path(scratch) / "warm"
        warm.mkdir()
        (small,) = make_movies(warm, 512, 12, 1)
        for tolerance in (LOCAL_BLOCK_TOLERANCE_PX, None):
            run_once(small, tolerance)
        bound = _bound(movie, 1, 1)
        print(
            f"{args.size}² x {args.frames} int8 MRC; bound (read + {args.frames} "
            f"rfft2, 1 thread): {bound['cpu']:.1f} CPU s"
        )
        modes = (("blocks", LOCAL_BLOCK_TOLERANCE_PX), ("exact", None))
        results: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in modes}
        for _ in range(args.runs):
            for name, tolerance in modes:
                record = run_once(movie, tolerance)
                results[name].append(record)
                print(
                    f"  {name:6s} stage {record['cpu']:5.1f} CPU s "
                    f"({record['wall']:.1f} s wall), sum {record['sum_cpu']:5.1f} "
                    f"CPU s, stage / bound {record['cpu'] / bound['cpu']:.1f}, "
                    f"blocks {record['blocks']}, peak {record['peak_gb']:.2f} GB, "
                    f"load {os.getloadavg()[0]:.1f}"
                )
        bound_after = _bound(movie, 1, 1)
        print(f"bound again after the runs: {bound_after['cpu']:.1f} CPU s")
        blocks, exact = results["blocks"][0]["sums"], results["exact"][0]["sums"]
        print(
            "blocks vs exact, relative RMS difference (inside a "
            f"{BORDER_PX} px border): dose-weighted "
            f"{_relative_rms(blocks[0], exact[0]):.4f}, plain "
            f"{_relative_rms(blocks[1], exact[1]):.4f}"
        )


if __name__ == "__main__":
    main()
