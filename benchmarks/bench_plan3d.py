"""The staged 3D plan (ab-initio 1, 3, 6 classes -> classification -> refinement)
on two conformations plus junk, against the truth.

    nice -n 10 .venv/bin/python benchmarks/bench_plan3d.py [--particles 900]
        [--junk-fraction 0.2] [--snr 0.5] [--box 24] [--classes 1 3 6]
        [--mini-batches 20] [--iterations 6] [--angular-step 15] [--seed 5]

Data: the real 70S ribosome map (``$LIVESTREAM_SHARED_DATA/real``, whole, in a
box of ``--box``) and the same map less a ball holding about a quarter of its
density (``pipelines.simulate.conformations.without_region``), in equal numbers,
plus ``--junk-fraction`` of junk: pure noise images (a map of zeros, so only the
CTF fields and the noise), at random poses and ±2 px shifts, a CTF each, white
noise at ``--snr`` of the whole map's signal.  The plan sees no poses.

Printed: seconds per stage; per class of the classification its size, its
particles by truth (whole / less / junk), half-set resolution and decision; the
fraction of each conformation in a kept group whose majority it is ("correct")
and of the junk in dropped classes ("junk rejected"); per refined group the FSC
0.5 to its conformation's truth (the map aligned on it, both hands) against the
map reconstructed from the true poses of the same conformation's particles
(all of them), and the gold-standard half-map resolution; the classification's
lower bound measured in the same run (the coarse pass's two real matrix
products alone, BLAS, every particle x origin x coarse rotation x class on the
first limit's pixels, times the iterations run) and its ratio.  No peer: RELION
has no one-command staged plan, and running its InitialModel three times,
Class3D with 10 classes and Refine3D here would take hours (its Class3D alone
is 3x slower than ours on 600 particles and 2 classes, docs/class3d.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path

import numpy as np

from pipelines.class3d import InitialModelConfig
from pipelines.class3d.align import align_maps
from pipelines.class3d.orientations import shift_grid
from pipelines.class3d.pixels import pixel_set
from pipelines.class3d.staged import StagedPlanConfig, run_staged_plan, take_particles
from pipelines.class3d.vdam import _pose_grids
from pipelines.reconstruct import fourier_shell_correlation, reconstruct_halves
from pipelines.simulate.conformations import simulate_mixture, without_region
from pipelines.simulate.volumes import (
    RIBOSOME_70S_PIXEL_SIZE_A,
    load_map,
    rescale_volume,
)

DATA = (
    Path(os.environ["LIVESTREAM_SHARED_DATA"]) / "real"
    if os.environ.get("LIVESTREAM_SHARED_DATA")
    else Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
)
NAMES = ("whole", "less", "junk")


def conformations(box: int) -> tuple[np.ndarray, float]:
    volume, _ = load_map(DATA / "clean70SRibosome_vol_65p.mrc")
    px = 65 * RIBOSOME_70S_PIXEL_SIZE_A / box
    whole = rescale_volume(
        volume,
        from_pixel_size_a=RIBOSOME_70S_PIXEL_SIZE_A,
        to_pixel_size_a=px,
        box_px=box,
    )
    scale = box / 32.0  # the class3d benchmark's ball (7 px away, 6 px) at box 32
    less = without_region(whole, distance_px=7.0 * scale, radius_px=6.0 * scale)
    return np.stack([whole, less, np.zeros_like(whole)]), px


def blas_bound_s(config: InitialModelConfig, n: int, k: int, its: int) -> float:
    """Seconds of the classification's coarse matrix products alone."""
    coarse, _, _ = _pose_grids(config.angular_step_deg, config.oversampling)
    n_shift = len(shift_grid(config.offset_range_px, config.offset_step_px))
    pixels = pixel_set(config.box_px, config.initial_radius_px).n_pixels
    rng = np.random.default_rng(0)
    a = rng.standard_normal((min(n * n_shift, 2048 * 8), pixels), dtype=np.float32)
    p = rng.standard_normal((pixels, 2 * coarse.n_rotations), dtype=np.float32)
    start = time.perf_counter()
    for block in range(0, len(a), 2048):  # same blocking as the search
        a[block : block + 2048] @ p
        a[block : block + 2048] @ p
    per_row = (time.perf_counter() - start) / len(a)
    return per_row * n * n_shift * k * its


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, default=900)
    parser.add_argument("--junk-fraction", type=float, default=0.2)
    parser.add_argument("--snr", type=float, default=0.5)
    parser.add_argument("--box", type=int, default=24)
    parser.add_argument("--classes", type=int, nargs="+", default=[1, 3, 6])
    parser.add_argument("--mini-batches", type=int, default=20)
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--angular-step", type=float, default=15.0)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument(
        "--skip-align-classes",
        type=int,
        default=2,
        help="step 5's classes (0: refine the kept groups, the plan before step 5)",
    )
    args = parser.parse_args()
    maps, px = conformations(args.box)
    n_junk = round(args.junk_fraction * args.particles)
    n_good = args.particles - n_junk
    counts = [n_good // 2, n_good - n_good // 2, n_junk]
    data, truth = simulate_mixture(
        list(maps),
        counts,
        pixel_size_a=px,
        snr=args.snr,
        rng=np.random.default_rng(args.seed),
    )
    n = data.n_particles
    unposed = dataclasses.replace(
        data,
        rotations=np.broadcast_to(np.eye(3), (n, 3, 3)).copy(),
        origin_px=np.zeros((n, 2)),
    )
    config = StagedPlanConfig(
        class_counts=tuple(args.classes),
        n_minibatches=args.mini_batches,
        class_iterations=args.iterations,
        class_angular_step_deg=args.angular_step,
        skip_align_classes=args.skip_align_classes,
    )
    print(
        f"70S / 70S less a ball / junk (noise): {counts}, box {args.box}, "
        f"{px:.1f} Å/px, SNR {args.snr}; ab-initio K={args.classes}, "
        f"{args.mini_batches} mini-batches; classification {args.iterations} "
        f"iterations at {args.angular_step}°; seed {args.seed}"
    )
    start = time.perf_counter()
    plan = run_staged_plan(unposed, config=config, seed=args.seed)
    total_s = time.perf_counter() - start
    for stage, s in plan.seconds.items():  # a loop over stages
        print(f"stage {stage:<20} {s:8.1f} s")
    print(f"total                      {total_s:8.1f} s")
    labels = plan.classification.assignment.class_index
    print("class  count  whole  less  junk  half-set Å  certainty  decision")
    for d in plan.decisions:  # a loop over classes
        mine = np.bincount(truth[labels == d.index], minlength=3)
        print(
            f"{d.index + 1:5d}  {d.count:5d}  {mine[0]:5d}  {mine[1]:4d}  {mine[2]:4d}  "
            f"{d.resolution_a:10.1f}  {d.certainty:9.3f}  {d.decision}"
            + (" (junk decoy's)" if plan.reference_origin[d.index][0] < 0 else "")
            + (f" into {d.group + 1}" if d.decision == "merged" else "")
            + (f" (cc {d.correlation:.3f})" if d.correlation is not None else "")
        )
    if plan.split is not None:
        split_labels = plan.split.classification.assignment.class_index
        print(
            f"consensus of {len(plan.split.rows)} kept particles, half-map "
            f"{plan.split.consensus.resolution_a:.1f} Å; skip-align classes "
            f"(starts' log-likelihoods "
            f"{[round(v) for v in plan.split.classification.start_log_likelihoods]})"
        )
        print("split  count  whole  less  junk")
        for k in range(plan.split.classification_config.n_classes):  # classes
            mine = np.bincount(truth[plan.split.rows[split_labels == k]], minlength=3)
            print(
                f"{k + 1:5d}  {mine.sum():5d}  {mine[0]:5d}  {mine[1]:4d}  {mine[2]:4d}"
            )
    # each particle's refined group (-1: none) and each group's majority truth
    group_of = np.full(n, -1)
    group_major = []
    for i, g in enumerate(plan.refinements):  # a loop over refined groups
        group_of[g.rows] = i
        group_major.append(int(np.argmax(np.bincount(truth[g.rows], minlength=3))))
    major_of = np.array([*group_major, -1])[group_of]
    for c in (0, 1):  # a loop over the two conformations
        right = np.mean(major_of[truth == c] == c)
        print(f"{NAMES[c]}: {right:.3f} correct (in a refined group of its majority)")
    print(f"junk rejected: {np.mean(group_of[truth == 2] < 0):.3f}")
    print("group  particles  conformation  FSC0.5 to truth  true poses  half-map  s")
    for i, g in enumerate(plan.refinements):  # a loop over refined groups
        c = group_major[i]
        if c == 2:
            print(
                f"{g.class_index + 1:5d}  {len(g.rows):9d}  junk (kept), half-map "
                f"{g.result.resolution_a:.1f} Å"
            )
            continue
        true_map = reconstruct_halves(take_particles(data, np.nonzero(truth == c)[0]))
        true_a = fourier_shell_correlation(true_map.full, maps[c], px).crossing_a(0.5)
        aligned = align_maps(g.result.reconstruction.full, maps[c], pixel_size_a=px)
        found_a = fourier_shell_correlation(aligned.aligned, maps[c], px).crossing_a(
            0.5
        )
        print(
            f"{g.class_index + 1:5d}  {len(g.rows):9d}  {NAMES[c]:>12}  "
            f"{found_a:15.1f}  {true_a:10.1f}  {g.result.resolution_a:8.1f}  "
            f"{g.seconds:4.0f}"
        )
    k = plan.classification_config.n_classes
    bound = blas_bound_s(
        plan.classification_config, n, k, plan.classification.iterations
    )
    print(
        f"classification: {n * plan.classification.iterations / plan.seconds['class3d']:.1f} "
        f"particle-iterations/s with {k} classes; BLAS bound {bound:.1f} s, "
        f"ratio {plan.seconds['class3d'] / bound:.1f}"
    )


if __name__ == "__main__":
    main()
