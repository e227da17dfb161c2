"""Build a 3D initial model from particles alone (relion_refine --denovo_3dref --grad).

Example:
    livestream initial-model Select/job014/particles.star --classes 1 \\
        --out InitialModel/job015 --sym D2 --mini-batches 60 --starts 4 --seed 1 --json

Reads a RELION 3.1+ particle STAR (poses not needed; CTF per particle and its
optics group's voltage, Cs and amplitude contrast).  Starts from random poses (one
blob per class) and runs VDAM mini-batches: every orientation of a 15° grid and
every origin within 3 px are scored on low-resolution Fourier pixels, the poses
holding 99.9 % of the posterior are rescored to the current resolution limit, the
best few are back-projected with their posterior weights, and the running Fourier
sums take a step (0.9 -> 0.3) while mini-batches and the resolution limit grow.
--starts independent random starts each run the whole schedule, and the one whose
maps fit 300 common particles best is kept (a start caught in a local optimum
fits worse, clearly so by the end; earlier its figure can be level with a good
start's, so the starts are not cut short).  With --classes K > 1 the
K maps are then the references of a 3D classification (--class-iterations EM
iterations over every particle, 15° then 7.5°, as `livestream class3d`), whose
maps, classes and poses are written.  Runs in C1; with --sym the symmetry axes are then found in the map (as
relion_align_symmetry does) and the group applied.  Finally every particle is
given its best pose and class.

Writes to --out: run_itNNN_classKKK.mrc, run_itNNN_classKKK_slices.png,
run_itNNN_data.star (poses, rlnClassNumber), run_itNNN_model.star and
run_checkpoint.npz (the state, resumable).  With --json prints one object: maps,
class_fractions, resolution_a (per class, from the half-set FSC at 0.143: an
optimistic progress figure), data_star, model_star, seconds.  Exit status 2, with
one line naming the file, field and value, when an input is missing or unusable.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from livestream.cli.console import (
    INPUT_ERROR_STATUS,
    Progress,
    print_json,
    require_file,
)
from pipelines.class3d import (
    ClassificationOptions,
    InitialModelConfig,
    assign_particles,
    best_of_starts,
    run_minibatches,
    save_checkpoint,
)
from pipelines.class3d.align import align_symmetry
from pipelines.class3d.classify import classify_initial_model
from pipelines.class3d.outputs import class_resolution_a, write_initial_model
from pipelines.class3d.state import DEFAULT_SCHEDULE
from pipelines.errors import StageInputError
from pipelines.extraction.particles_star import read_particles_star
from pipelines.reconstruct import read_posed_particles, symmetry_matrices

PROG = "livestream initial-model"
DEFAULT_STARTS = 4
DEFAULT_CLASS_ITERATIONS = 5


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("particles", type=Path, metavar="PARTICLES.star")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--classes", type=int, default=1, help="classes K (1)")
    parser.add_argument("--sym", default="C1", help="point group, applied after C1")
    parser.add_argument(
        "--mini-batches",
        type=int,
        default=DEFAULT_SCHEDULE.n_minibatches,
        help=f"VDAM mini-batches ({DEFAULT_SCHEDULE.n_minibatches})",
    )
    parser.add_argument(
        "--starts",
        type=int,
        default=DEFAULT_STARTS,
        help=f"random starts, the best-fitting kept ({DEFAULT_STARTS})",
    )
    parser.add_argument(
        "--class-iterations",
        type=int,
        default=DEFAULT_CLASS_ITERATIONS,
        help="classification iterations after VDAM when --classes > 1 "
        f"({DEFAULT_CLASS_ITERATIONS})",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    parser.add_argument(
        "--particle-diameter-a",
        type=float,
        default=None,
        help="mask diameter in Å (default 0.9 of the box)",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON summary")


def main(args: argparse.Namespace) -> int:
    require_file(args.particles, "particles STAR")
    start = time.perf_counter()
    try:
        symmetry_matrices(args.sym)  # a bad group fails before any work
        particles = read_posed_particles(args.particles, require_poses=False)
        optics, table = read_particles_star(args.particles)
        config = InitialModelConfig(
            n_classes=args.classes,
            box_px=particles.box_px,
            pixel_size_a=particles.pixel_size_a,
            particle_diameter_a=args.particle_diameter_a,
            symmetry=args.sym,
            schedule=replace(DEFAULT_SCHEDULE, n_minibatches=args.mini_batches),
        )
        options = ClassificationOptions(n_iterations=args.class_iterations)
        if args.starts < 1:
            raise StageInputError("<argument>", "starts", args.starts, "must be >= 1")
    except StageInputError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return INPUT_ERROR_STATUS
    rng = np.random.default_rng(args.seed)
    n_batches = config.schedule.n_minibatches
    trial = n_batches if args.starts > 1 else 0
    with Progress(
        n_batches, label="initial model", unit="mini-batch", json_output=args.json
    ) as progress:
        # several starts: each runs to the end, the best fit is kept; one: below
        state, choice = best_of_starts(
            config,
            particles,
            rng,
            n_starts=args.starts,
            trial_minibatches=trial,
            finalists_to_end=True,
            on_progress=progress.update,
        )
        state = run_minibatches(config, state, particles, on_progress=progress.update)
    vdam_state = state
    class_iterations = 0
    if config.n_classes > 1:
        with Progress(
            options.n_iterations,
            label="classification",
            unit="iteration",
            json_output=args.json,
        ) as progress:
            classified = classify_initial_model(
                config,
                state,
                particles,
                rng=rng,
                options=options,
                on_progress=progress.update,
            )
        state, assignment = classified.state, classified.assignment
        class_iterations = classified.iterations
    else:
        assignment = assign_particles(config, state, particles)
    maps = state.maps
    if args.sym.upper() != "C1":
        aligned = [
            align_symmetry(m, args.sym, pixel_size_a=config.pixel_size_a) for m in maps
        ]
        maps = np.stack([volume for _, volume in aligned])
        # the map turned by Q is seen at R Q^T where the old one was seen at R
        turn = np.stack([q for q, _ in aligned])[assignment.class_index]
        assignment = replace(
            assignment,
            rotations=assignment.rotations @ np.transpose(turn, (0, 2, 1)),
        )
    out: Path = args.out
    files = write_initial_model(
        out,
        iteration=vdam_state.minibatch_index,
        config=config,
        state=state,
        maps=maps,
        optics=optics,
        particles=table,
        assignment=assignment,
    )
    save_checkpoint(out / "run_checkpoint.npz", config, vdam_state)
    seconds = time.perf_counter() - start
    resolution = class_resolution_a(config, state)
    summary = {
        "maps": [str(p) for p in files.maps],
        "slices_png": [str(p) for p in files.slices],
        "data_star": str(files.data_star),
        "model_star": str(files.model_star),
        "class_fractions": [round(float(f), 4) for f in state.class_fractions],
        "resolution_a": [round(float(r), 2) for r in resolution],
        "symmetry": args.sym,
        "n_particles": particles.n_particles,
        "mini_batches": vdam_state.minibatch_index,
        "starts": args.starts,
        "chosen_start": choice.chosen + 1,
        "start_scores": [
            [None if np.isnan(v) else round(float(v), 3) for v in row]
            for row in choice.scores
        ],
        "class_iterations": class_iterations,
        "seconds": round(seconds, 3),
    }
    if args.json:
        print_json(summary, sort_keys=True)
    else:
        print(
            f"{particles.n_particles} particles, {vdam_state.minibatch_index} "
            f"mini-batches (start {choice.chosen + 1} of {args.starts}), "
            f"{config.n_classes} class(es): {min(resolution):.1f} Å (half-set FSC), "
            f"{seconds:.1f} s; maps in {out}"
        )
    return 0
