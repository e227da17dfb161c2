"""Throughput of VDAM 2D classification (exhaustive and coarse-then-fine pose
search) and its ratio to the BLAS/FFT lower bound; VDAM against plain EM.

    .venv/bin/python benchmarks/bench_class2d.py [--small] [--no-em]

Pose sampling (RELION Class2D defaults): psi every 6° (60 rotations), translations
on a 1 px grid within 5 px (81 shifts), all Fourier pixels to Nyquist - 1 (the
timed E-step runs at the full radius, the worst case).  Particles: projections of
a phantom in K/2 distinct views at SNR 0.1 with CTF; the state is warmed up by a
few coarse-then-fine mini-batches (adaptive resolution), so posteriors are as
sharp as in a running classification.  Timed: the E-step of one batch
(likelihoods, posterior, weighted sums), per pose search.

Lower bounds (timed in the same run): exhaustive = the dense products
(B*T, 2P) x (2P, K*n_psi) and (B, P) x (P, K*n_psi) + the rfft2 of the batch;
coarse_fine = the multiply-adds of the products it actually evaluated (coarse pass
+ fine blocks) at the BLAS rate of those dense products + the same rfft2.  Also
printed: coarse_fine time / the exhaustive dense bound, and quality (agreement of
the MAP class with the exhaustive search, accuracy against the true views).
"""

from __future__ import annotations

import argparse
import dataclasses
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
)
from pipelines.class2d.expectation import expect_particles, sampling_of
from pipelines.class2d.pose_grid import build_coarse_grid
from pipelines.simulate.particle_sets import simulate_views
from pipelines.simulate.view_metrics import best_rotated_correlation
from pipelines.simulate.volumes import phantom_volume


def _dense_bound_s(
    config: Class2dConfig, batch: int, rng: np.random.Generator
) -> tuple[float, float, float]:
    """(seconds of the dense likelihood products, multiply-adds/s, seconds of
    the rfft2) for ``batch`` particles."""
    s = sampling_of(config)
    j = config.n_classes * s.n_psi
    rows = config.chunk_size * s.n_shifts
    a = rng.standard_normal((rows, 2 * s.n_pixels)).astype(np.float32)
    b = rng.standard_normal((2 * s.n_pixels, j)).astype(np.float32)
    c = rng.standard_normal((config.chunk_size, s.n_pixels)).astype(np.float32)
    d = rng.standard_normal((s.n_pixels, j)).astype(np.float32)
    a @ b  # warm up
    t0 = time.perf_counter()
    a @ b
    c @ d
    per_chunk = time.perf_counter() - t0
    macs = config.chunk_size * j * s.n_pixels * (2 * s.n_shifts + 1)
    imgs = rng.standard_normal((batch, config.box_px, config.box_px)).astype(np.float32)
    t0 = time.perf_counter()
    scipy.fft.rfft2(imgs, workers=-1)
    fft_s = time.perf_counter() - t0
    return per_chunk * batch / config.chunk_size, macs / per_chunk, fft_s


def _majority_accuracy(view: np.ndarray, classes: np.ndarray, k: int) -> float:
    return sum(
        np.bincount(view[classes == c]).max() for c in range(k) if np.any(classes == c)
    ) / max(classes.size, 1)


def bench_speed(
    box: int, n_classes: int, batch: int, rng: np.random.Generator, *, warm: int = 6
) -> None:
    """Time one batch's E-step with each pose search on a warmed-up state."""
    data = simulate_views(
        phantom_volume(box, 2.0, rng),
        n_views=max(2, n_classes // 2),
        n_particles=4 * batch,
        pixel_size_a=2.0,
        snr=0.1,
        rng=rng,
    )
    schedule = Schedule(n_minibatches=4 * warm, initial_min=batch, final_min=batch)
    config = Class2dConfig(
        n_classes=n_classes, box_px=box, pixel_size_a=2.0, schedule=schedule
    )
    t0 = time.perf_counter()
    state = initialise_state(config, data.particles, np.random.default_rng(1))
    state = run_minibatches(config, state, data.particles, warm)
    warm_s = time.perf_counter() - t0
    s = sampling_of(config)
    grid = build_coarse_grid(s)
    print(
        f"box {box} K {n_classes}: psi {s.n_psi} x shifts {s.n_shifts} x pixels "
        f"{s.n_pixels} (radius {s.radius_px}); coarse pass: radius "
        f"{grid.sampling.radius_px} ({grid.sampling.n_pixels} pixels); "
        f"{warm} warm-up mini-batches {warm_s:.0f} s",
        flush=True,
    )
    bound_s, mac_rate, fft_s = _dense_bound_s(config, batch, rng)
    batch_idx = np.arange(batch)
    results = {}
    for search in ("exhaustive", "coarse_fine"):
        c = dataclasses.replace(config, pose_search=search, adaptive_resolution=False)
        t0 = time.perf_counter()
        sums = expect_particles(
            c,
            state.references,
            state.noise_sigma2,
            state.class_fractions,
            data.particles,
            batch_idx,
        )
        elapsed = time.perf_counter() - t0
        results[search] = sums
        own_bound = sums.product_macs / mac_rate + fft_s
        accuracy = _majority_accuracy(
            data.view_index[:batch], sums.best_class, n_classes
        )
        same = np.mean(sums.best_class == results["exhaustive"].best_class)
        print(
            f"  {search:11s}: {batch / elapsed:7.1f} particles/s ({elapsed:6.2f} s for "
            f"{batch}); poses scored/particle {sums.fine_evaluated:8.0f}"
            f" (coarse kept {sums.coarse_kept:6.1f}); products "
            f"{sums.product_macs:.3g} MAC; own lower bound {own_bound:.2f} s, "
            f"ratio {elapsed / own_bound:.2f}; exhaustive dense bound "
            f"{bound_s + fft_s:.2f} s, ratio {elapsed / (bound_s + fft_s):.2f}; "
            f"accuracy {accuracy:.3f}, MAP class = exhaustive {same:.3f}",
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


def bench_em_vs_vdam(
    n_particles: int, rng: np.random.Generator, pose_search: str = "coarse_fine"
) -> None:
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
        "pose_search": pose_search,
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
        f"[{pose_search}] VDAM {n_batches} mini-batches = {passes:.2f} passes over {n_particles} particles: "
        f"accuracy {accuracy:.3f}, worst view correlation {corr:.3f} "
        f"({time.perf_counter() - t0:.1f} s)"
    )
    em = initialise_state(config, data.particles, np.random.default_rng(1))
    for iteration in range(1, 7):
        t0 = time.perf_counter()
        em = run_em_pass(config, em, data.particles)
        accuracy, corr = _quality(data, config, em)
        print(
            f"[{pose_search}] EM pass {iteration}: accuracy {accuracy:.3f}, worst view correlation "
            f"{corr:.3f} ({time.perf_counter() - t0:.1f} s)",
            flush=True,
        )


_CASES = ((64, 50), (64, 100), (128, 50), (128, 100))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--no-em", action="store_true")
    parser.add_argument("--no-speed", action="store_true")
    parser.add_argument("--warm", type=int, default=6, help="warm-up mini-batches")
    parser.add_argument(
        "--case", action="append", help="BOXxK, e.g. 128x50 (default: the four)"
    )
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    cases = [tuple(int(v) for v in c.split("x")) for c in args.case or []]
    if args.no_speed:
        cases = []
    elif args.small:
        bench_speed(64, 10, 64, rng, warm=min(args.warm, 3))
    for box, k in cases or ([] if args.small or args.no_speed else _CASES):
        bench_speed(box, k, 64, rng, warm=args.warm)
    if not args.no_em:
        for search in ("exhaustive", "coarse_fine"):
            bench_em_vs_vdam(600 if args.small else 2000, rng, search)


if __name__ == "__main__":
    main()
