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

Writes to --out: run_itNNN_classKKK.mrc, run_itNNN_classKKK_slices.png,
run_itNNN_data.star (input rows plus rlnClassNumber, rlnAngleRot/Tilt/Psi,
rlnOriginX/YAngst, rlnMaxValueProbDistribution), run_itNNN_model.star
(rlnClassDistribution, rlnEstimatedResolution per class) and run_checkpoint.npz.
With --json prints one object: maps, class_fractions, resolution_a, iterations,
changed_fraction, data_star, model_star, seconds.  Exit status 2, with one line
naming the file, field and value, when an input is missing or unusable (a map of
another box, an unreadable map, a STAR without the optics RELION requires).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

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
    ClassificationOptions,
    InitialModelConfig,
    classify_particles,
    save_checkpoint,
)
from pipelines.class3d.classify import classification_config
from pipelines.class3d.outputs import class_resolution_a, write_initial_model
from pipelines.errors import StageInputError
from pipelines.extraction.particles_star import read_particles_star
from pipelines.reconstruct import PosedParticles, read_posed_particles
from pipelines.simulate.volumes import load_map

PROG = "livestream class3d"
PIXEL_SIZE_TOLERANCE = 0.01  # relative difference of map and particle pixel sizes


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
        "--iterations", type=int, default=15, help="EM iterations at most (15)"
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


def _setup(
    args: argparse.Namespace,
) -> tuple[InitialModelConfig, ClassificationOptions, np.ndarray, PosedParticles]:
    n_refs = len(args.refs)
    n_classes = args.classes or n_refs
    if n_refs > 1 and n_classes != n_refs:
        raise StageInputError(
            "<argument>", "classes", n_classes, f"must be the number of maps {n_refs}"
        )
    options = ClassificationOptions(
        n_iterations=args.iterations,
        max_particles_per_class=args.max_particles_per_class,
    )
    particles = read_posed_particles(args.particles, require_poses=False)
    config = classification_config(
        n_classes,
        box_px=particles.box_px,
        pixel_size_a=particles.pixel_size_a,
        particle_diameter_a=args.particle_diameter_a,
        angular_step_deg=args.angular_step,
        initial_resolution_a=args.ini_high,
        tau2_fudge=args.tau2_fudge,
    )
    refs = read_references(
        args.refs, n_classes, particles.box_px, particles.pixel_size_a
    )
    return config, options, refs, particles


def main(args: argparse.Namespace) -> int:
    require_file(args.particles, "particles STAR")
    require_files(args.refs, "reference map")
    start = time.perf_counter()
    try:
        config, options, refs, particles = _setup(args)
        optics, table = read_particles_star(args.particles)
    except StageInputError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return INPUT_ERROR_STATUS
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
    state = result.state
    out: Path = args.out
    files = write_initial_model(
        out,
        iteration=result.iterations,
        config=config,
        state=state,
        maps=state.maps,
        optics=optics,
        particles=table,
        assignment=result.assignment,
    )
    save_checkpoint(out / "run_checkpoint.npz", config, state)
    seconds = time.perf_counter() - start
    resolution = class_resolution_a(config, state)
    counts = np.bincount(result.assignment.class_index, minlength=config.n_classes)
    summary = {
        "maps": [str(p) for p in files.maps],
        "slices_png": [str(p) for p in files.slices],
        "data_star": str(files.data_star),
        "model_star": str(files.model_star),
        "class_fractions": [round(float(f), 4) for f in state.class_fractions],
        "class_counts": [int(c) for c in counts],
        "resolution_a": [round(float(r), 2) for r in resolution],
        "n_particles": particles.n_particles,
        "iterations": result.iterations,
        "changed_fraction": [round(c, 4) for c in result.changed_fraction],
        "substitutions": state.substitutions,
        "seconds": round(seconds, 3),
    }
    if args.json:
        print_json(summary, sort_keys=True)
    else:
        print(
            f"{particles.n_particles} particles, {result.iterations} iterations, "
            f"{config.n_classes} classes of {', '.join(str(c) for c in counts)} "
            f"particles, {seconds:.1f} s; maps in {out}"
        )
    return 0


if __name__ == "__main__":  # python -m livestream.cli.class3d: this command alone
    sys.exit(run_alone(PROG, __doc__, add_args, main))
