"""Run the staged 3D plan for a large particle set (cryoSPARC's recommendation).

Example:
    livestream plan3d Select/job014/particles.star --out Plan3D \\
        --classes 1 3 6 --subset 100000 --sym C1 --seed 1 --json

Reads a RELION 3.1+ particle STAR (poses not needed; CTF per particle and its
optics group's voltage, Cs and amplitude contrast).  Then, as cryoSPARC
recommends for large sets:

1. a VDAM initial model with each of --classes (1, 3 and 6 classes) on a random
   subset of --subset particles (default: all up to 100,000);
2. 3D classification of ALL particles against the union of those maps (junk
   classes included: decoys that draw the junk) and one empty map (a decoy for
   images of nothing);
3. a class is kept when it is not the empty map's, holds at least
   --min-class-fraction (5 %) of the particles, its particles' median largest
   posterior is at least 0.75 of the most certain class's, and its half-set
   resolution is within 1.5 times the best kept class's; a kept class whose map
   superposes on a larger kept class's with a correlation of at least 0.95 is
   merged into it;
4. with --skip-align-classes K >= 2 (the default, 2): a consensus refinement of
   every kept particle (junk dropped) from the largest kept class's map, then
   3D classification without alignment (`livestream class3d --skip-align`) of
   them at its poses into K classes, and a gold-standard refinement of each of
   those classes holding at least --min-class-fraction of them; with
   --skip-align-classes 0, a gold-standard refinement of each kept group's
   particles from its class map.

Writes RELION-style job folders inside --out: InitialModel/job001 .. (one per
run: run_itNNN_classKKK.mrc, run_itNNN_classKKK_slices.png, run_checkpoint.npz;
no run_data.star, the subset is not assigned to these classes), the next
Class3D/jobNNN (the files of `livestream class3d`), with step 4's split the
consensus Refine3D/jobNNN and the skip-align Class3D/jobNNN, then Refine3D/jobNNN
per refined group (the files of `livestream refine3d` less the per-iteration
maps and the post-processing) and plan3d.json (what --json prints).  With --json prints one
object: subset, stages (job folder, seconds), class_fractions, classes (count,
resolution, decision), split (consensus job and resolution, skip-align job,
class counts, the starts' log-likelihoods; null without it), refinements
(class, particles, resolution_a, map), seconds.  Exit status 2, with one line naming the file, field and value, when an
input is missing or unusable.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from livestream.cli.console import (
    INPUT_ERROR_STATUS,
    Progress,
    print_json,
    require_file,
    run_alone,
)
from pipelines.class3d import save_checkpoint
from pipelines.class3d.outputs import write_initial_model
from pipelines.class3d.refine_outputs import write_refine_result
from pipelines.class3d.staged import (
    DEFAULT_CLASS_COUNTS,
    ConformationSplit,
    StagedPlan,
    StagedPlanConfig,
    run_staged_plan,
)
from pipelines.class3d.state import DEFAULT_SCHEDULE
from pipelines.errors import StageInputError
from pipelines.extraction.particles_star import read_particles_star
from pipelines.reconstruct import read_posed_particles
from pipelines.reconstruct.outputs import write_central_slices_png, write_map

PROG = "livestream plan3d"


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("particles", type=Path, metavar="PARTICLES.star")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--subset",
        type=int,
        default=None,
        help="ab-initio subset size (all up to 100,000)",
    )
    parser.add_argument(
        "--classes",
        type=int,
        nargs="+",
        default=list(DEFAULT_CLASS_COUNTS),
        help="classes of each ab-initio run (1 3 6)",
    )
    parser.add_argument("--sym", default="C1", help="point group of the refinements")
    parser.add_argument(
        "--mini-batches",
        type=int,
        default=DEFAULT_SCHEDULE.n_minibatches,
        help=f"VDAM mini-batches per run ({DEFAULT_SCHEDULE.n_minibatches})",
    )
    parser.add_argument(
        "--iterations", type=int, default=15, help="classification iterations (15)"
    )
    parser.add_argument(
        "--angular-step",
        type=float,
        default=7.5,
        help="classification pose step, deg (7.5)",
    )
    parser.add_argument(
        "--min-class-fraction",
        type=float,
        default=0.05,
        help="smallest class kept (0.05)",
    )
    parser.add_argument(
        "--particle-diameter-a",
        type=float,
        default=None,
        help="mask diameter in Å (default 0.9 of the box)",
    )
    parser.add_argument(
        "--skip-align-classes",
        type=int,
        default=2,
        help="classes at the consensus poses (2; 0: refine the kept groups)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    parser.add_argument("--json", action="store_true", help="print a JSON summary")


def _config(args: argparse.Namespace) -> StagedPlanConfig:
    return StagedPlanConfig(
        class_counts=tuple(args.classes),
        subset_size=args.subset,
        symmetry=args.sym,
        particle_diameter_a=args.particle_diameter_a,
        n_minibatches=args.mini_batches,
        class_iterations=args.iterations,
        class_angular_step_deg=args.angular_step,
        min_class_fraction=args.min_class_fraction,
        skip_align_classes=args.skip_align_classes,
    )


def write_plan(
    out: Path, plan: StagedPlan, optics: Any, table: Any
) -> list[dict[str, Any]]:
    """The job folders of ``plan`` inside ``out``; one entry per stage."""
    stages: list[dict[str, Any]] = []
    job = 0
    for run in plan.initial_models:  # a loop over the ab-initio runs
        job += 1
        folder = out / "InitialModel" / f"job{job:03d}"
        stem = f"run_it{run.state.minibatch_index:03d}"
        px = run.config.pixel_size_a
        for k, volume in enumerate(run.state.maps, start=1):  # a loop over classes
            write_map(folder / f"{stem}_class{k:03d}.mrc", volume, pixel_size_a=px)
            write_central_slices_png(
                folder / f"{stem}_class{k:03d}_slices.png", volume, projections=True
            )
        save_checkpoint(folder / "run_checkpoint.npz", run.config, run.state)
        stages.append(
            {
                "stage": f"initial_model_k{run.config.n_classes}",
                "job": str(folder),
                "class_fractions": [
                    round(float(f), 4) for f in run.state.class_fractions
                ],
                "seconds": round(run.seconds, 3),
            }
        )
    job += 1
    folder = out / "Class3D" / f"job{job:03d}"
    result = plan.classification
    write_initial_model(
        folder,
        iteration=result.iterations,
        config=plan.classification_config,
        state=result.state,
        maps=result.state.maps,
        optics=optics,
        particles=table,
        assignment=result.assignment,
    )
    save_checkpoint(
        folder / "run_checkpoint.npz", plan.classification_config, result.state
    )
    stages.append(
        {
            "stage": "class3d",
            "job": str(folder),
            "iterations": result.iterations,
            "seconds": round(plan.seconds["class3d"], 3),
        }
    )
    if plan.split is not None:
        job = _write_split(out, job, plan.split, optics, table, stages)
    for group in plan.refinements:  # a loop over the refined groups
        job += 1
        folder = out / "Refine3D" / f"job{job:03d}"
        files = write_refine_result(
            folder,
            config=group.config,
            result=group.result,
            optics=optics,
            particles=table.iloc[group.rows].reset_index(drop=True),
        )
        stages.append(
            {
                "stage": "refine3d",
                "job": str(folder),
                "class": group.class_index + 1,
                "classes_of": "class3d_skip_align" if plan.split else "class3d",
                "merged": [m + 1 for m in group.merged],
                "n_particles": len(group.rows),
                "resolution_a": round(group.result.resolution_a, 3),
                "map": str(files.map_path),
                "data_star": str(files.data_star),
                "iterations": len(group.result.iterations),
                "seconds": round(group.seconds, 3),
            }
        )
    return stages


def _write_split(
    out: Path,
    job: int,
    split: ConformationSplit,
    optics: Any,
    table: Any,
    stages: list[dict[str, Any]],
) -> int:
    """The consensus Refine3D job and the skip-align Class3D job of step 4's
    split (numbered after ``job``), appended to ``stages``; the last number."""
    rows = table.iloc[split.rows].reset_index(drop=True)
    folder = out / "Refine3D" / f"job{job + 1:03d}"
    files = write_refine_result(
        folder,
        config=split.consensus_config,
        result=split.consensus,
        optics=optics,
        particles=rows,
    )
    stages.append(
        {
            "stage": "consensus_refine3d",
            "job": str(folder),
            "n_particles": len(split.rows),
            "resolution_a": round(split.consensus.resolution_a, 3),
            "map": str(files.map_path),
            "data_star": str(files.data_star),
            "seconds": round(split.consensus_seconds, 3),
        }
    )
    folder = out / "Class3D" / f"job{job + 2:03d}"
    result = split.classification
    write_initial_model(
        folder,
        iteration=result.iterations,
        config=split.classification_config,
        state=result.state,
        maps=result.state.maps,
        optics=optics,
        particles=rows,
        assignment=result.assignment,
    )
    counts = np.bincount(
        result.assignment.class_index, minlength=split.classification_config.n_classes
    )
    stages.append(
        {
            "stage": "class3d_skip_align",
            "job": str(folder),
            "class_counts": [int(c) for c in counts],
            "iterations": result.iterations,
            "start_log_likelihoods": [
                round(v, 2) for v in result.start_log_likelihoods
            ],
            "chosen_start": result.chosen_start,
            "seconds": round(split.classification_seconds, 3),
        }
    )
    return job + 2


def _summary(
    plan: StagedPlan, stages: list[dict[str, Any]], n: int, seconds: float
) -> dict[str, Any]:
    fractions = plan.classification.state.class_fractions
    origin = plan.reference_origin
    return {
        "n_particles": n,
        "subset": len(plan.subset_rows),
        "stages": stages,
        "class_fractions": [round(float(f), 4) for f in fractions],
        "classes": [
            {
                "class": d.index + 1,
                "reference": {
                    "initial_model_classes": plan.initial_models[
                        origin[d.index][0]
                    ].config.n_classes,
                    "class": origin[d.index][1] + 1,
                },
                "count": d.count,
                "fraction": round(d.fraction, 4),
                "resolution_a": round(d.resolution_a, 2),
                "decision": d.decision,
                "refined_with": d.group + 1 if d.group >= 0 else None,
            }
            for d in plan.decisions
        ],
        "split": None
        if plan.split is None
        else {
            "n_particles": len(plan.split.rows),
            "consensus_resolution_a": round(plan.split.consensus.resolution_a, 3),
            "class_fractions": [
                round(float(f), 4)
                for f in plan.split.classification.state.class_fractions
            ],
            "chosen_start": plan.split.classification.chosen_start,
        },
        "chosen_classes": [g.class_index + 1 for g in plan.refinements],
        "resolution_a": [round(g.result.resolution_a, 3) for g in plan.refinements],
        "seconds": round(seconds, 3),
    }


def main(args: argparse.Namespace) -> int:
    require_file(args.particles, "particles STAR")
    start = time.perf_counter()
    try:
        config = _config(args)
        particles = read_posed_particles(args.particles, require_poses=False)
        optics, table = read_particles_star(args.particles)
    except StageInputError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return INPUT_ERROR_STATUS
    with Progress(
        len(config.class_counts) + 2,
        label="plan3d",
        unit="stage",
        json_output=args.json,
    ) as progress:
        plan = run_staged_plan(
            particles, config=config, seed=args.seed, on_progress=progress.update
        )
    out: Path = args.out
    stages = write_plan(out, plan, optics, table)
    summary = _summary(plan, stages, particles.n_particles, time.perf_counter() - start)
    out.mkdir(parents=True, exist_ok=True)
    (out / "plan3d.json").write_text(json.dumps(summary, indent=1, sort_keys=True))
    if args.json:
        print_json(summary, sort_keys=True)
    else:
        kept = ", ".join(
            f"class {g.class_index + 1}: {len(g.rows)} particles, "
            f"{g.result.resolution_a:.1f} Å"
            for g in plan.refinements
        )
        print(
            f"{particles.n_particles} particles, {len(plan.decisions)} classes, "
            f"refined {kept or 'none'}; {summary['seconds']:.1f} s; jobs in {out}"
        )
    return 0


if __name__ == "__main__":  # python -m livestream.cli.plan3d: this command alone
    sys.exit(run_alone(PROG, __doc__, add_args, main))
