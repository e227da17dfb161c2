"""Accuracy of motion correction on realistic simulated movies (``bench_motion.py
--accuracy``).

A movie from :mod:`pipelines.simulate` at the simulator's default specimen (ice
phase texture 0.1 rad, particle contrast 0.25 rad), 1 Å/px, 1 e/Å² per frame, 40
frames, ~300 particles per 4096² frame, 1 px of local motion, gain and defects.  It
prints the RMS error of the global shifts against the truth, *raw* (relative to
frame 0, RELION's convention and the simulator's reference: the target) and
*centred* (mean difference over frames removed), for a plain alignment (B = 500
px², no damage-matched filters, no SNR weights, no trajectory smoothing) and for
``correct_motion``, the per-frame error profile, and the error of the local field
(global + local model) on a 5×5 grid against ``shifts + local motion``.

    .venv/bin/python benchmarks/bench_motion.py --accuracy [--small] [--seed N]
"""

from __future__ import annotations

import time

import numpy as np

from pipelines.motion.correct import align_global, correct_motion, prepare_frames
from pipelines.motion.local import evaluate_local_model
from pipelines.simulate.micrograph import MicrographParams
from pipelines.simulate.movie import MovieParams, simulate_movie

__all__ = ["measure_accuracy"]

PARTICLES_PER_PX2 = 300 / 4096**2


def _rms_px(error: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.sum(error**2, axis=-1))))


def _report(label: str, error: np.ndarray, axes: tuple[int, ...]) -> None:
    centred = error - error.mean(axis=axes, keepdims=True)
    print(f"  {label}: raw {_rms_px(error):.3f} px, centred {_rms_px(centred):.3f} px")


def measure_accuracy(
    size: int,
    seed: int,
    workers: int,
    *,
    n_frames: int = 40,
    dose_per_frame_e_per_a2: float = 1.0,
    local_motion_px: float = 1.0,
) -> None:
    """Simulate one realistic ``size``² movie, correct it, print the errors."""
    rng = np.random.default_rng(seed)
    params = MovieParams(
        micrograph=MicrographParams(
            shape_px=(size, size),
            pixel_size_a=1.0,
            n_particles=max(1, round(PARTICLES_PER_PX2 * size * size)),
        ),
        n_frames=n_frames,
        dose_per_frame_e_per_a2=dose_per_frame_e_per_a2,
        local_motion_px=local_motion_px,
    )
    start = time.perf_counter()
    frames, truth = simulate_movie(params, rng, workers=workers)
    print(
        f"accuracy, {size}² x {n_frames} frames, {dose_per_frame_e_per_a2:g} e/Å²/frame, 1 Å/px, "
        f"{params.micrograph.n_particles} particles, seed {seed} "
        f"(simulated in {time.perf_counter() - start:.1f} s)"
    )
    drift = truth.shifts_px - truth.shifts_px[0]
    gain = 1.0 / truth.gain
    work, _, _ = prepare_frames(frames, gain=gain)
    old, _, _ = align_global(
        work,
        bfactor_px2=500.0,
        group_half_width=2,
        snr_weighting=False,
        workers=workers,
    )
    del work
    _report("global, B 500, unweighted, unsmoothed (Fourier-binned)", old + drift, (0,))
    start = time.perf_counter()
    result = correct_motion(
        frames,
        pixel_size_a=1.0,
        dose_per_frame_e_per_a2=dose_per_frame_e_per_a2,
        voltage_kv=300.0,
        gain=gain,
        patches=(5, 5),
        workers=workers,
    )
    elapsed = time.perf_counter() - start
    _report("global, now", result.shifts_px + drift, (0,))
    per_frame = np.hypot(*(result.shifts_px + drift).T)
    print(
        "  per-frame raw error (px): "
        + " ".join(f"{v:.2f}" for v in per_frame)
        + f"; worst {per_frame[1:].max() / np.median(per_frame[1:]):.1f} x median"
    )
    grid = (np.arange(5) + 0.5) / 5 * size
    x, y = (a.ravel() for a in np.meshgrid(grid, grid))
    z = np.arange(n_frames, dtype=float)
    true_field = -(
        truth.shifts_px[:, None, :]
        + truth.local_motion.shift_px(z[:, None], y[None], x[None])
    )
    estimate = np.broadcast_to(result.shifts_px[:, None, :], true_field.shape)
    if result.local is not None:
        estimate = estimate + evaluate_local_model(
            result.local.coefficients, z, x / size - 0.5, y / size - 0.5
        )
    model = "global + local model" if result.local is not None else "global only"
    _report(f"local field on 5x5 grid ({model})", estimate - true_field, (0, 1))
    local_rms = _rms_px(truth.local_motion.shift_px(z[:, None], y[None], x[None]))
    print(f"  true local motion RMS {local_rms:.3f} px; correct_motion {elapsed:.1f} s")
