"""Throughput of VDAM 2D classification and its ratio to the BLAS/FFT lower bound;
VDAM against plain EM (passes over the data for the same quality).

    .venv/bin/python benchmarks/bench_class2d.py [--small] [--no-em]

Pose sampling (RELION Class2D defaults): psi every 6° (60 rotations), translations
on a 1 px grid within 5 px (81 shifts), all Fourier pixels to Nyquist - 1.  The
lower bound of one mini-batch is the dense likelihood matrix product
(B*T, 2P) x (2P, K*n_psi) plus the rfft2 of the particles, timed on the same
shapes in the same run; the ratio is measured time / lower bound.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.fft

from pipelines.class2d import (
    Class2dConfig,
    Schedule,
    assign_particles,
    initialise_state,
    run_em_pass,
    run_minibatches,
    vdam_step,
)
from pipelines.class2d.expectation import sampling_of
from pipelines.class2d.sampling import restrict_sampling
from pipelines.class2d.vdam import current_radius_px
from pipelines.simulate.projection import random_rotations
from pipelines.simulate.volumes import phantom_volume
from tests.pipelines.class2d.class2d_synthetic import (
    best_rotated_correlation,
    simulate_views,
)


def _random_particles(box: int, n: int, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    from pipelines.class2d import ParticleStack
    from pipelines.simulate.projection import project

    volume = phantom_volume(box, 2.0, rng)
    images = project(volume, random_rotations(n, rng))
    images = (
        images / images.std() + rng.standard_normal(images.shape).astype(np.float32) * 3
    )
    return ParticleStack(
        images=images.astype(np.float32),
        pixel_size_a=2.0,
        defocus_u_a=rng.uniform(8000, 25000, n),
        defocus_v_a=rng.uniform(8000, 25000, n),
        astigmatism_angle_deg=rng.uniform(0, 180, n),
        phase_shift_deg=np.zeros(n),
    )


def _lower_bound_s(
    config: Class2dConfig, batch: int, radius_px: int, rng: np.random.Generator
) -> float:
    s, _ = restrict_sampling(sampling_of(config), radius_px)
    j = config.n_classes * s.n_psi
    a = rng.standard_normal((config.chunk_size * s.n_shifts, 2 * s.n_pixels)).astype(
        np.float32
    )
    b = rng.standard_normal((2 * s.n_pixels, j)).astype(np.float32)
    imgs = rng.standard_normal((batch, config.box_px, config.box_px)).astype(np.float32)
    a @ b  # warm up
    t0 = time.perf_counter()
    for _ in range(int(np.ceil(batch / config.chunk_size))):
        a @ b
    scipy.fft.rfft2(imgs, workers=-1)
    return time.perf_counter() - t0


def bench_speed(
    box: int, n_classes: int, batch: int, rng: np.random.Generator, *, adaptive: bool
) -> None:
    """Time the second mini-batch (the first compiles kernels and sets moments)."""
    particles = _random_particles(box, batch, rng)
    config = Class2dConfig(
        n_classes=n_classes,
        box_px=box,
        pixel_size_a=2.0,
        adaptive_resolution=adaptive,
        schedule=Schedule(n_minibatches=200, initial_min=batch, final_min=batch),
    )
    state = vdam_step(config, initialise_state(config, particles, rng), particles)
    radius = current_radius_px(config, state)
    s, _ = restrict_sampling(sampling_of(config), radius)
    t0 = time.perf_counter()
    vdam_step(config, state, particles)
    elapsed = time.perf_counter() - t0
    bound = _lower_bound_s(config, batch, radius, rng)
    poses = n_classes * s.n_psi * s.n_shifts
    print(
        f"box {box:4d} K {n_classes:4d} radius {radius:3d} px"
        f"{' (adaptive)' if adaptive else ' (full)    '}: {batch} particles x {poses} "
        f"poses (psi {s.n_psi}, shifts {s.n_shifts}, pixels {s.n_pixels}): "
        f"{batch / elapsed:8.1f} particles/s (E+M step {elapsed:.2f} s); "
        f"lower bound {bound:.2f} s; ratio {elapsed / bound:.2f}",
        flush=True,
    )


def _quality(data, config, state) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    result = assign_particles(config, state, data.particles)
    correct = sum(
        np.bincount(data.view_index[result.class_index == k]).max()
        for k in range(config.n_classes)
        if np.any(result.class_index == k)
    )
    corr = [
        max(best_rotated_correlation(ref, view) for ref in state.references)
        for view in data.views
    ]
    return correct / data.particles.n_particles, float(np.min(corr))


def bench_em_vs_vdam(n_particles: int, rng: np.random.Generator) -> None:
    volume = phantom_volume(40, 4.0, rng)
    data = simulate_views(
        volume, n_views=6, n_particles=n_particles, pixel_size_a=4.0, snr=0.15, rng=rng
    )
    base = {
        "n_classes": 8,
        "box_px": 40,
        "pixel_size_a": 4.0,
        "psi_step_deg": 10.0,
        "offset_range_px": 3.0,
    }
    n_batches = 30
    schedule = Schedule(
        n_minibatches=n_batches, initial_min=100, final_min=max(200, n_particles // 10)
    )
    config = Class2dConfig(**base, schedule=schedule)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    state = run_minibatches(
        config,
        initialise_state(config, data.particles, np.random.default_rng(1)),
        data.particles,
    )
    accuracy, corr = _quality(data, config, state)
    passes = state.particles_processed / n_particles
    print(
        f"VDAM {n_batches} mini-batches = {passes:.2f} passes over {n_particles} particles: "
        f"accuracy {accuracy:.3f}, worst view correlation {corr:.3f} "
        f"({time.perf_counter() - t0:.1f} s)"
    )
    em = initialise_state(config, data.particles, np.random.default_rng(1))
    for iteration in range(1, 7):
        t0 = time.perf_counter()
        em = run_em_pass(config, em, data.particles)
        accuracy, corr = _quality(data, config, em)
        print(
            f"EM pass {iteration}: accuracy {accuracy:.3f}, worst view correlation "
            f"{corr:.3f} ({time.perf_counter() - t0:.1f} s)",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--no-em", action="store_true")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    if args.small:
        bench_speed(64, 10, 64, rng, adaptive=True)
    else:
        for box, k in ((64, 50), (64, 100), (128, 50)):
            for adaptive in (False, True):
                bench_speed(box, k, 128, rng, adaptive=adaptive)
    if not args.no_em:
        bench_em_vs_vdam(600 if args.small else 2000, rng)


if __name__ == "__main__":
    main()
