"""3D classification from references (relion_refine --ref --K, RELION's Class3D).

Example:
    livestream class3d Select/job014/particles.star \\
        --refs InitialModel/job015/run_it060_class001.mrc --classes 3 \\
        --out Class3D/job016 --iterations 15 --seed 1 --json

Reads a RELION 3.1+ particle STAR (poses not needed; CTF per particle and its
optics group's voltage, Cs and amplitude contrast) and one map per class, or one
map for all --classes (each particle then goes to a random class in the first
iteration, as RELION splits).  The maps must have the particles' box and pixel
size; they are brought to the particles' greyscale, low-passed to --ini-high and
masked.  Each EM iteration searches every particle's pose in every class (a 15°
grid, the best poses refined at 7.5°; origins on a 1 px grid within 3 px: RELION's
Class3D sampling), back-projects its posterior into its classes and remakes the
maps; a class that empties in the first half of the run is replaced by a copy of
the largest.  --max-particles-per-class caps a class: it keeps its most probable
members, the others go to their next class.

--skip-align (RELION's --skip_align): the poses are read from the STAR (a
consensus refinement's rlnAngleRot/Tilt/Psi and rlnOriginX/YAngst; missing
angles are an error naming the file and column) and kept; EM runs over the class
only, with the E-step on the pixels within --strict-highres-exp (40 Å), for up to
--iterations (30) per start.  With one map for all classes the classes start from
--starts (4) random splits of the particles and the split with the best total
log-likelihood is kept (the map itself is only checked against the particles:
every class map is reconstructed from the particles at their poses); with one
map per class the first posterior comes from those maps.

    livestream class3d Refine3D/job020/run_data.star \\
        --refs Refine3D/job020/run_class001.mrc --classes 2 --skip-align \\
        --out Class3D/job021 --json

Writes to --out: run_itNNN_classKKK.mrc, run_itNNN_classKKK_slices.png,
run_itNNN_data.star (input rows plus rlnClassNumber, rlnAngleRot/Tilt/Psi,
rlnOriginX/YAngst, rlnMaxValueProbDistribution), run_itNNN_model.star
(rlnClassDistribution, rlnEstimatedResolution per class) and run_checkpoint.npz.
With --json prints one object: maps, class_fractions, resolution_a, iterations,
changed_fraction, data_star, model_star, seconds (with --skip-align also
start_log_likelihoods, start_iterations, chosen_start).  Exit status 2, with one line
naming the file, field and value, when an input is missing or unusable (a map of
another box, an unreadable map, a STAR without the optics RELION requires).
"""

from __future__ import annotations

import argparse
import dataclasses
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
    require_files,
    run_alone,
)
from pipelines.class3d import (
    Assignment,
    ClassificationOptions,
    InitialModelConfig,
    InitialModelState,
    classify_particles,
    save_checkpoint,
)
from pipelines.class3d.classify import classification_config
from pipelines.class3d.outputs import class_resolution_a, write_initial_model
from pipelines.class3d.skip_align import (
    DEFAULT_RESOLUTION_A,
    SkipAlignOptions,
    classify_without_alignment,
)
from pipelines.errors import StageInputError
from pipelines.extraction.particles_star import read_particles_star
from pipelines.reconstruct import PosedParticles, read_posed_particles
from pipelines.simulate.volumes import load_map

PROG = "livestream class3d"
PIXEL_SIZE_TOLERANCE = 0.01  # relative difference of map and particle pixel sizes
DEFAULT_ITERATIONS = 15
SKIP_ALIGN_ITERATIONS = 30


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("particles", type=Path, metavar="PARTICLES.star")
    parser.add_argument(
        "--refs",
        type=Path,
        nargs="+",
        required=True,
        metavar="MAP",
        help="one reference map per class, or one for all classes",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--classes", type=int, default=None, help="classes K (the number of maps)"
    )
    parser.add_argument(
        "--iterations",
        type=int,
        default=None,
        help="EM iterations at most (15; with --skip-align 30 per start)",
    )
    parser.add_argument(
        "--ini-high",
        type=float,
        default=60.0,
        help="low-pass of the references and first limit, Å (60)",
    )
    parser.add_argument(
        "--angular-step",
        type=float,
        default=7.5,
        help="pose grid step, deg (7.5; searched at twice the step, then refined)",
    )
    parser.add_argument(
        "--max-particles-per-class", type=int, default=None, help="class-size cap"
    )
    parser.add_argument("--tau2-fudge", type=float, default=4.0, help="T (4)")
    parser.add_argument(
        "--particle-diameter-a",
        type=float,
        default=None,
        help="mask diameter in Å (default 0.9 of the box)",
    )
    parser.add_argument(
        "--skip-align",
        action="store_true",
        help="keep the STAR's poses; classify over classes only (RELION's)",
    )
    parser.add_argument(
        "--starts",
        type=int,
        default=4,
        help="with --skip-align and one map: random splits tried (4)",
    )
    parser.add_argument(
        "--strict-highres-exp",
        type=float,
        default=DEFAULT_RESOLUTION_A,
        help="with --skip-align: the E-step's resolution limit, Å (40)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    parser.add_argument("--json", action="store_true", help="print a JSON summary")


def read_references(
    paths: list[Path], n_classes: int, box_px: int, pixel_size_a: float
) -> np.ndarray:
    """The maps ``(K, N, N, N)``: one per path, or the one map K times; each
    checked against the particles' box and pixel size."""
    maps = []
    for path in paths:  # a loop over maps
        volume, voxel_a = load_map(path)
        if volume.shape != (box_px,) * 3:
            raise StageInputError(
                path, "box", volume.shape, f"must be the particles' box {box_px}"
            )
        if voxel_a is not None and (
            abs(voxel_a - pixel_size_a) > PIXEL_SIZE_TOLERANCE * pixel_size_a
        ):
            raise StageInputError(
                path,
                "voxel size",
                round(voxel_a, 4),
                f"must be the particles' pixel size {pixel_size_a:.4f} Å",
            )
        maps.append(volume)
    if len(maps) == 1:
        maps = maps * n_classes
    return np.stack(maps).astype(np.float32)


def _read_inputs(
    args: argparse.Namespace, *, skip_align: bool
) -> tuple[InitialModelConfig, np.ndarray, PosedParticles]:
    """The sampling, the references and the particles of either mode (the
    poses in the STAR are required without alignment)."""
    n_refs = len(args.refs)
    n_classes = args.classes or n_refs
    if n_refs > 1 and n_classes != n_refs:
        raise StageInputError(
            "<argument>", "classes", n_classes, f"must be the number of maps {n_refs}"
        )
    particles = read_posed_particles(args.particles, require_poses=skip_align)
    sampling: dict[str, Any] = (
        {}
        if skip_align
        else {
            "angular_step_deg": args.angular_step,
            "initial_resolution_a": args.ini_high,
        }
    )
    config = classification_config(
        n_classes,
        box_px=particles.box_px,
        pixel_size_a=particles.pixel_size_a,
        particle_diameter_a=args.particle_diameter_a,
        tau2_fudge=args.tau2_fudge,
        **sampling,
    )
    refs = read_references(
        args.refs, n_classes, particles.box_px, particles.pixel_size_a
    )
    return config, refs, particles


def _setup(
    args: argparse.Namespace,
) -> tuple[InitialModelConfig, ClassificationOptions, np.ndarray, PosedParticles]:
    config, refs, particles = _read_inputs(args, skip_align=False)
    options = ClassificationOptions(
        n_iterations=args.iterations or DEFAULT_ITERATIONS,
        max_particles_per_class=args.max_particles_per_class,
    )
    return config, options, refs, particles


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class _Run:
    """What either mode leaves for the files and the summary."""

    config: InitialModelConfig
    state: InitialModelState
    assignment: Assignment
    changed_fraction: list[float]
    extra: dict[str, Any]


def _classify_with_alignment(args: argparse.Namespace) -> _Run:
    config, options, refs, particles = _setup(args)
    with Progress(
        options.n_iterations, label="class3d", unit="iteration", json_output=args.json
    ) as progress:
        result = classify_particles(
            config,
            refs,
            particles,
            rng=np.random.default_rng(args.seed),
            options=options,
            on_progress=progress.update,
        )
    return _Run(
        config=config,
        state=result.state,
        assignment=result.assignment,
        changed_fraction=result.changed_fraction,
        extra={},
    )


def _skip_align_setup(
    args: argparse.Namespace,
) -> tuple[InitialModelConfig, SkipAlignOptions, np.ndarray | None, PosedParticles]:
    config, refs, particles = _read_inputs(args, skip_align=True)
    options = SkipAlignOptions(
        n_iterations=args.iterations or SKIP_ALIGN_ITERATIONS,
        n_starts=args.starts,
        resolution_a=args.strict_highres_exp,
    )
    return config, options, (refs if len(args.refs) > 1 else None), particles


def _classify_without_alignment(args: argparse.Namespace) -> _Run:
    config, options, refs, particles = _skip_align_setup(args)
    total = options.n_iterations * (1 if refs is not None else options.n_starts)
    with Progress(
        total, label="class3d", unit="iteration", json_output=args.json
    ) as progress:
        result = classify_without_alignment(
            config,
            particles,
            rng=np.random.default_rng(args.seed),
            options=options,
            references=refs,
            on_progress=progress.update,
        )
    return _Run(
        config=config,
        state=result.state,
        assignment=result.assignment,
        changed_fraction=result.changed_fraction,
        extra={
            "skip_align": True,
            "start_log_likelihoods": [
                round(v, 2) for v in result.start_log_likelihoods
            ],
            "start_iterations": result.start_iterations,
            "chosen_start": result.chosen_start,
        },
    )


def main(args: argparse.Namespace) -> int:
    require_file(args.particles, "particles STAR")
    require_files(args.refs, "reference map")
    start = time.perf_counter()
    try:
        optics, table = read_particles_star(args.particles)
        if args.skip_align:
            run = _classify_without_alignment(args)
        else:
            run = _classify_with_alignment(args)
    except StageInputError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return INPUT_ERROR_STATUS
    config, state = run.config, run.state
    out: Path = args.out
    files = write_initial_model(
        out,
        iteration=len(run.changed_fraction),
        config=config,
        state=state,
        maps=state.maps,
        optics=optics,
        particles=table,
        assignment=run.assignment,
    )
    save_checkpoint(out / "run_checkpoint.npz", config, state)
    seconds = time.perf_counter() - start
    resolution = class_resolution_a(config, state)
    counts = np.bincount(run.assignment.class_index, minlength=config.n_classes)
    n_particles = len(run.assignment.class_index)
    summary = {
        "maps": [str(p) for p in files.maps],
        "slices_png": [str(p) for p in files.slices],
        "data_star": str(files.data_star),
        "model_star": str(files.model_star),
        "class_fractions": [round(float(f), 4) for f in state.class_fractions],
        "class_counts": [int(c) for c in counts],
        "resolution_a": [round(float(r), 2) for r in resolution],
        "n_particles": n_particles,
        "iterations": len(run.changed_fraction),
        "changed_fraction": [round(c, 4) for c in run.changed_fraction],
        "substitutions": state.substitutions,
        "seconds": round(seconds, 3),
        **run.extra,
    }
    if args.json:
        print_json(summary, sort_keys=True)
    else:
        print(
            f"{n_particles} particles, {len(run.changed_fraction)} iterations, "
            f"{config.n_classes} classes of {', '.join(str(c) for c in counts)} "
            f"particles, {seconds:.1f} s; maps in {out}"
        )
    return 0


if __name__ == "__main__":  # python -m livestream.cli.class3d: this command alone
    sys.exit(run_alone(PROG, __doc__, add_args, main))
