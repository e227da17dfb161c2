"""Classify a finished particle set in 2D with VDAM, like a RELION Class2D job.

Example:
    livestream class2d Extract/job005/particles.star --classes 50 \\
        --out Class2D/job006 --mini-batches 200 --seed 1 --json

Writes RELION's run_itNNN_classes.mrcs (class averages), run_itNNN_model.star
(data_model_classes), run_itNNN_data.star (every particle with rlnClassNumber,
rlnAnglePsi, rlnOriginX/YAngst, rlnMaxValueProbDistribution) and
run_itNNN_optimiser.star, NNN the number of mini-batches, with run_classes.mrcs,
run_model.star, run_data.star and run_optimiser.star linked to them;
run_selected.star (particles of the classes the
ranker selects: score >= --score-threshold and at least max(5, 0.1 n / K)
particles, less the particles whose residual
against their class average is an outlier: --particle-outlier-mad, 0 = off),
run_montage.png (class averages best score first, with particle counts) and
run_checkpoint.npz (resumable state).  Any box size: an odd box is classified at
the next even size (Fourier padding) and the outputs are written at the input box.
With --json prints one summary object (class_counts, class_scores, seconds,
particles_per_second, classes_mrcs, selected_star, montage_png, ...).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from livestream.cli.console import (
    INPUT_ERROR_STATUS,
    Progress,
    print_json,
    require_file,
)
from pipelines.class2d import (
    Class2dConfig,
    Schedule,
    assign_particles,
    initialise_state,
    read_particle_stack,
    run_minibatches,
    save_checkpoint,
)
from pipelines.class2d.box import to_working_box
from pipelines.class2d.outputs import write_class2d_snapshot
from pipelines.class2d.ranker import (
    DEFAULT_PARTICLE_OUTLIER_MAD,
    DEFAULT_THRESHOLD,
    rank_classes,
)
from pipelines.errors import StageInputError
from pipelines.extraction.particles_star import read_particles_star


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("particles", type=Path, metavar="PARTICLES.star")
    parser.add_argument("--classes", type=int, required=True, help="K")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--mini-batches", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--psi-step-deg", type=float, default=6.0)
    parser.add_argument("--offset-range-px", type=float, default=5.0)
    parser.add_argument("--max-resolution-a", type=float, default=None)
    parser.add_argument("--max-particles-per-class", type=int, default=None)
    parser.add_argument("--float16", action="store_true", help="class averages mode 12")
    parser.add_argument(
        "--pose-search",
        choices=["coarse_fine", "exhaustive"],
        default="coarse_fine",
        help="coarse-then-fine (default, faster) or exhaustive psi x shift search",
    )
    parser.add_argument(
        "--score-threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help="select classes scoring at least this (0-1)",
    )
    parser.add_argument(
        "--particle-outlier-mad",
        type=float,
        default=DEFAULT_PARTICLE_OUTLIER_MAD,
        help="drop particles of selected classes whose solvent residual exceeds "
        "the class median by this many robust sd (0 = keep all)",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON summary")


def main(args: argparse.Namespace) -> int:
    require_file(args.particles, "particles STAR")
    start = time.perf_counter()
    try:
        particles, table = read_particle_stack(args.particles)
        input_box_px = particles.box_px
        particles = to_working_box(particles)  # an odd box is padded to even
        optics, _ = read_particles_star(args.particles)
        config = Class2dConfig(
            n_classes=args.classes,
            box_px=particles.box_px,
            pixel_size_a=particles.pixel_size_a,
            psi_step_deg=args.psi_step_deg,
            offset_range_px=args.offset_range_px,
            max_resolution_a=args.max_resolution_a,
            max_particles_per_class=args.max_particles_per_class,
            pose_search=args.pose_search,
            schedule=Schedule(n_minibatches=args.mini_batches),
        )
        rng = np.random.default_rng(args.seed)
        state = initialise_state(config, particles, rng)
        with Progress(
            config.schedule.n_minibatches,
            label="class2d",
            unit="mini-batch",
            json_output=args.json,
        ) as progress:
            state = run_minibatches(
                config, state, particles, on_progress=progress.update
            )
        assignment = assign_particles(config, state, particles)
        save_checkpoint(args.out / "run_checkpoint.npz", config, state)
        ranking = rank_classes(
            config,
            state,
            assignment,
            threshold=args.score_threshold,
            particles=particles,
            particle_outlier_mad=args.particle_outlier_mad or None,
        )
        outputs = write_class2d_snapshot(
            args.out,
            config,
            state,
            assignment,
            optics,
            table,
            ranking=ranking,
            float16=args.float16,
            output_box_px=input_box_px,
        )
        selected_star, montage = outputs.selected_star, outputs.montage_png
    except StageInputError as exc:  # e.g. a stack the STAR names is missing
        print(f"livestream class2d: {exc}", file=sys.stderr)
        return INPUT_ERROR_STATUS
    seconds = time.perf_counter() - start
    counts = assignment.class_counts(config.n_classes)
    summary = {
        "class_counts": [int(c) for c in counts],
        "seconds": round(seconds, 3),
        "particles": particles.n_particles,
        "particles_processed": state.particles_processed + particles.n_particles,
        "particles_per_second": round(
            (state.particles_processed + particles.n_particles) / seconds, 2
        ),
        "mini_batches": state.minibatch_index,
        "substitutions": state.substitutions,
        "classes_mrcs": str(outputs.classes_mrcs),
        "model_star": str(outputs.model_star),
        "data_star": str(outputs.data_star),
        "selected_star": str(selected_star),
        "selected_classes": [int(c) + 1 for c in np.nonzero(ranking.selected)[0]],
        "selected_particles": ranking.n_selected_particles,
        "class_scores": [round(float(x), 4) for x in ranking.scores],
        "score_threshold": args.score_threshold,
        "montage_png": str(montage),
        "config": json.loads(config.to_json()),
    }
    if args.json:
        print_json(summary, sort_keys=True)
    else:
        active = int(np.count_nonzero(counts))
        print(
            f"{particles.n_particles} particles, {active}/{config.n_classes} classes "
            f"non-empty, {seconds:.1f} s; averages in {outputs.classes_mrcs}"
        )
        print(
            f"{int(ranking.selected.sum())} classes selected "
            f"({summary['selected_particles']} particles) in {selected_star}; "
            f"montage {montage}"
        )
    return 0
