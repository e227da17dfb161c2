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
512² movie, so that no run pays for loading numba's kernels); then, per block
tolerance (``--tolerances``, px), the relative RMS difference of the
dose-weighted sum (and of the plain one where made) to the exact path's (inside a
16 px border, where the clamped warp and the periodic shift differ), the FRC
between them in four bands of Nyquist, and the 1-min load average.  The block
modes run without the plain sum (motion's default, ``save_no_dw=False``); the
mode ``+noDW`` makes it too, at the first tolerance, for its cost.

Against the truth (``--truth-size``, 0 skips it): the test simulator's movie
(:mod:`tests.pipelines.motion_movies`, a known clean image, 1 px of local
motion, radiation damage at 300 kV), its true local field as RELION's
polynomial, the held spectra; ``sum_frames`` at each tolerance and exact; the
correlation of the dose-weighted sum with the clean image, for ``--truth-seeds``
movies (the spread between seeds is the figure's noise).

    .venv/bin/python benchmarks/bench_motion_local.py [--keep DIR] [--runs 2]
        [--size 4096] [--tolerances 0.1 0.15 0.2 0.3] [--dose-caps 2 4]
        [--truth-size 1024]
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
from pipelines.motion.blocks import (
    LOCAL_BLOCK_DOSE_CAP,
    LOCAL_BLOCK_TOLERANCE_PX,
    dose_tolerance_scale,
    local_blocks,
)
from pipelines.motion.job import run_motion
from pipelines.motion.spectra import HeldSpectra, band_spectra
from pipelines.motion.summing import sum_frames
from tests.pipelines.motion_movies import make_movie, true_local_coefficients

BORDER_PX = 16


def _scale(cap: float | None, n_frames: int) -> np.ndarray | None:
    """The dose-aware tolerance's factors as the stage makes them (1 e/Å² per
    frame, 1 Å/px, 300 kV), or None (uniform)."""
    if cap is None:
        return None
    exposures = np.arange(1, n_frames + 1, dtype=np.float64)
    return dose_tolerance_scale(exposures, 1.0, 300.0, cap)


def _timed_sum(
    original: Callable[..., Any],
    record: dict[str, Any],
    tolerance: float | None,
    cap: float | None,
) -> Callable[..., Any]:
    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = cpu_s()
        result = original(
            *args, local_tolerance_px=tolerance, local_dose_cap=cap, **kwargs
        )
        record["sum_cpu"] = cpu_s() - start
        record["sums"] = (
            np.array(result[0]),
            None if result[1] is None else np.array(result[1]),
        )
        coefficients = kwargs.get("local_coefficients")
        record["blocks"] = (
            0
            if coefficients is None or tolerance is None
            else len(
                local_blocks(
                    coefficients,
                    args[0].shape[0],
                    tolerance_px=tolerance,
                    scale=_scale(cap, args[0].shape[0]),
                )
            )
        )
        return result

    return wrapper


def run_once(
    movie: Path,
    tolerance: float | None,
    save_no_dw: bool = False,
    cap: float | None = LOCAL_BLOCK_DOSE_CAP,
) -> dict[str, Any]:
    """``run_motion`` on ``movie`` with the sum's tolerance set; CPU, sums, peak."""
    record: dict[str, Any] = {}
    original = correct_module.sum_frames
    correct_module.sum_frames = _timed_sum(original, record, tolerance, cap)
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
                save_no_dw=save_no_dw,
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


def _frc_bands(a: np.ndarray, b: np.ndarray, n_bands: int = 4) -> list[float]:
    """FRC of ``a`` and ``b`` (inside the border) in ``n_bands`` equal bands of
    radius from 0 to Nyquist."""
    inner = (slice(BORDER_PX, -BORDER_PX),) * 2
    fa = np.fft.rfft2(a[inner].astype(np.float64))
    fb = np.fft.rfft2(b[inner].astype(np.float64))
    ny, nx = a[inner].shape
    radius = np.sqrt(
        np.fft.fftfreq(ny)[:, None] ** 2 + np.fft.rfftfreq(nx)[None, :] ** 2
    )
    band = np.minimum((radius / 0.5 * n_bands).astype(int), n_bands)  # n: corners
    cross = np.bincount(band.ravel(), (fa * fb.conj()).real.ravel(), n_bands + 1)
    pa = np.bincount(band.ravel(), (np.abs(fa) ** 2).ravel(), n_bands + 1)
    pb = np.bincount(band.ravel(), (np.abs(fb) ** 2).ravel(), n_bands + 1)
    return [float(v) for v in (cross / np.sqrt(pa * pb))[:n_bands]]


def against_truth(
    size: int,
    n_frames: int,
    settings: list[tuple[str, float | None, float | None]],
    seeds: int,
) -> None:
    """Correlation of the dose-weighted sum with the simulator's clean image, per
    tolerance and exact (see the module's docstring)."""
    print(
        f"against the truth: {size}² x {n_frames}, 1 px local motion, "
        "the dose-weighted sum against the clean image (FRC bands 0-1/4-1/2-3/4-1 "
        "Nyquist)"
    )
    inner = (slice(BORDER_PX, -BORDER_PX),) * 2
    for seed in range(seeds):
        movie = make_movie(
            np.random.default_rng(100 + seed),
            n_frames=n_frames,
            size=size,
            dose_per_frame_e_per_a2=1.0,
            local_amplitude_px=1.0,
            damage_voltage_kv=300.0,
        )
        coefficients = true_local_coefficients(movie, n_frames, size)
        shifts = -(movie.drift_px - movie.drift_px[0])
        held = HeldSpectra(n_frames, (size, size))
        band_spectra(movie.frames, 1, hold=held, workers=1)
        truth = movie.clean[inner].astype(np.float64)
        truth = truth - truth.mean()
        for name, tolerance, cap in settings:
            full = sum_frames(
                movie.frames,
                shifts,
                pixel_size_a=1.0,
                exposures_e_per_a2=1.0 * np.arange(1, n_frames + 1),
                voltage_kv=300.0,
                local_coefficients=coefficients,
                held=held,
                local_tolerance_px=tolerance,
                local_dose_cap=cap,
                plain_sum=False,
                workers=1,
            )[0]
            dw = full[inner].astype(np.float64)
            dw = dw - dw.mean()
            corr = float(
                np.sum(dw * truth) / np.sqrt(np.sum(dw * dw) * np.sum(truth**2))
            )
            blocks = (
                n_frames
                if tolerance is None
                else len(
                    local_blocks(
                        coefficients,
                        n_frames,
                        tolerance_px=tolerance,
                        scale=_scale(cap, n_frames),
                    )
                )
            )
            frc = " ".join(f"{v:.4f}" for v in _frc_bands(full, movie.clean))
            print(
                f"  seed {seed} {name:9s} ({blocks:2d} blocks): correlation "
                f"{corr:.5f}, FRC with the truth in bands {frc}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, default=None)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--runs", type=int, default=1, help="rounds of the modes")
    parser.add_argument(
        "--tolerances",
        type=float,
        nargs="+",
        default=[LOCAL_BLOCK_TOLERANCE_PX],
        help="block tolerances (px) to measure",
    )
    parser.add_argument(
        "--dose-caps",
        type=float,
        nargs="*",
        default=[],
        help="also at the first tolerance with the dose-aware factors capped "
        "here (blocks.dose_tolerance_scale); mode '<tol>d<cap>'",
    )
    parser.add_argument("--truth-size", type=int, default=1024, help="0: skip")
    parser.add_argument("--truth-seeds", type=int, default=2)
    args = parser.parse_args()
    first = args.tolerances[0]
    # (name, tolerance, dose cap): uniform tolerances, dose-aware ones, exact
    settings: list[tuple[str, float | None, float | None]] = [
        *((f"{t:g}", t, None) for t in args.tolerances),
        *((f"{first:g}d{c:g}", first, c) for c in args.dose_caps),
        ("exact", None, None),
    ]
    if args.truth_size:
        against_truth(args.truth_size, args.frames, settings, args.truth_seeds)
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.keep or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        (movie,) = make_movies(folder, args.size, args.frames, 1)
        # numba's kernels loaded from its cache (seconds) before anything is timed
        warm = Path(scratch) / "warm"
        warm.mkdir()
        (small,) = make_movies(warm, 512, 12, 1)
        for tolerance in (LOCAL_BLOCK_TOLERANCE_PX, None):
            run_once(small, tolerance, True)
        bound = _bound(movie, 1, 1)
        print(
            f"{args.size}² x {args.frames} int8 MRC; bound (read + {args.frames} "
            f"rfft2, 1 thread): {bound['cpu']:.1f} CPU s"
        )
        modes = [
            (f"{first:g}+noDW", first, True, None),
            *((name, t, name == "exact", c) for name, t, c in settings),
        ]
        results: dict[str, list[dict[str, Any]]] = {name: [] for name, *_ in modes}
        for _ in range(args.runs):
            for name, tolerance, no_dw, cap in modes:
                record = run_once(movie, tolerance, no_dw, cap)
                results[name].append(record)
                print(
                    f"  {name:9s} stage {record['cpu']:5.1f} CPU s "
                    f"({record['wall']:.1f} s wall), sum {record['sum_cpu']:5.1f} "
                    f"CPU s, stage / bound {record['cpu'] / bound['cpu']:.1f}, "
                    f"blocks {record['blocks']}, peak {record['peak_gb']:.2f} GB, "
                    f"load {os.getloadavg()[0]:.1f}"
                )
        bound_after = _bound(movie, 1, 1)
        print(f"bound again after the runs: {bound_after['cpu']:.1f} CPU s")
        exact = results["exact"][0]["sums"]
        print(
            f"vs exact (inside a {BORDER_PX} px border): relative RMS difference "
            "of the dose-weighted sum [plain], FRC in bands 0-1/4-1/2-3/4-1 Nyquist"
        )
        for name, *_ in modes[:-1]:
            sums = results[name][0]["sums"]
            plain = (
                ""
                if sums[1] is None or exact[1] is None
                else f" [{_relative_rms(sums[1], exact[1]):.4f}]"
            )
            frc = " ".join(f"{v:.4f}" for v in _frc_bands(sums[0], exact[0]))
            print(
                f"  {name:9s} {_relative_rms(sums[0], exact[0]):.4f}{plain}, FRC {frc}"
            )


if __name__ == "__main__":
    main()
