"""Refine particles' poses and a 3D map, gold standard (relion_refine --auto_refine).

Example:
    livestream refine3d Select/job014/particles.star --ref InitialModel/job015/\\
run_it060_class001.mrc --out Refine3D/job016 --sym D2 --json

Reads a RELION 3.1+ particle STAR (CTF per particle and its optics group's
voltage, Cs and amplitude contrast; poses are not needed, origins are the start)
and a start map of the particles' box.  The two half sets (rlnRandomSubset, else
by row parity) are refined apart, each against its own map, from the map
low-passed to --ini-high-a (40 Å): the first iteration scores every rotation of a
15° grid and every origin within 3 px by cross-correlation; later ones score the
likelihood, globally while the step is above 7.5°, then locally around each
particle's previous pose.  The step halves when an iteration gains no resolution
(half-map FSC 0.143) and the poses stop moving, until it is as fine as the
resolution asks; then one last iteration uses all frequencies.  The final map is
the Wiener-filtered map of both halves; the masked FSC (phase-randomisation
corrected) and a sharpened map come from post-processing it with --mask (default:
a soft mask made from the map, as `livestream mask` makes it).

Writes to --out: run_itNNN_half1_class001.mrc and run_itNNN_half2_class001.mrc per
iteration, run_half1_class001_unfil.mrc, run_half2_class001_unfil.mrc,
run_class001.mrc, run_data.star (refined poses, rlnRandomSubset), run_model.star
(data_model_class_1: the gold-standard FSC per shell), run_postprocess_masked.mrc
and run_fsc.png.  With --json prints one object: map_path, half1_path, half2_path,
data_star, model_star, resolution_a (half maps, FSC 0.143), resolution_masked_a,
bfactor_a2, iterations, n_particles, symmetry, seconds.  Exit status 2, with one
line naming the file, field and value, when an input is missing or unusable (a
map whose box is not the particles', an unreadable map or mask).
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
    run_alone,
)
from pipelines.class3d.refine import RefineConfig, RefineIteration, refine
from pipelines.class3d.refine_outputs import (
    write_refine_iteration,
    write_refine_result,
)
from pipelines.errors import StageInputError
from pipelines.extraction.particles_star import read_particles_star
from pipelines.reconstruct import (
    PostprocessResult,
    Reconstruction,
    create_mask,
    postprocess,
    read_posed_particles,
)
from pipelines.reconstruct.outputs import write_fsc_png, write_map
from pipelines.simulate.volumes import load_map

PROG = "livestream refine3d"


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("particles", type=Path, metavar="PARTICLES.star")
    parser.add_argument("--ref", type=Path, required=True, help="start map (MRC)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--sym", default="C1", help="point group (C1)")
    parser.add_argument(
        "--mask", type=Path, default=None, help="soft mask for the masked FSC"
    )
    parser.add_argument(
        "--ini-high-a",
        type=float,
        default=40.0,
        help="low-pass of the start map in Å (40)",
    )
    parser.add_argument(
        "--particle-diameter-a",
        type=float,
        default=None,
        help="mask diameter in Å (default 0.9 of the box)",
    )
    parser.add_argument(
        "--max-iterations", type=int, default=20, help="at most this many (20)"
    )
    parser.add_argument("--json", action="store_true", help="print a JSON summary")


def _volume(path: Path, box_px: int, what: str) -> np.ndarray:
    """A map of the particles' box, or an error naming the file."""
    volume, _ = load_map(path)
    if volume.shape != (box_px,) * 3:
        raise StageInputError(
            path, "box", volume.shape, f"{what} must be {box_px}^3, the particles' box"
        )
    return volume


def _postprocess(
    reconstruction: Reconstruction, mask: np.ndarray, pixel_size_a: float
) -> PostprocessResult:
    """Post-processing with a fitted B-factor; at resolutions too low for a
    Guinier fit (fewer than 3 shells beyond 10 Å), with none."""
    try:
        return postprocess(
            reconstruction.half1, reconstruction.half2, mask, pixel_size_a=pixel_size_a
        )
    except StageInputError:
        return postprocess(
            reconstruction.half1,
            reconstruction.half2,
            mask,
            pixel_size_a=pixel_size_a,
            bfactor_a2=0.0,
        )


def main(args: argparse.Namespace) -> int:
    require_file(args.particles, "particles STAR")
    require_file(args.ref, "reference map")
    if args.mask is not None:
        require_file(args.mask, "mask")
    start = time.perf_counter()
    try:
        particles = read_posed_particles(args.particles, require_poses=False)
        optics, table = read_particles_star(args.particles)
        reference = _volume(args.ref, particles.box_px, "the reference")
        mask = (
            None
            if args.mask is None
            else _volume(args.mask, particles.box_px, "the mask")
        )
        config = RefineConfig(
            box_px=particles.box_px,
            pixel_size_a=particles.pixel_size_a,
            symmetry=args.sym,
            particle_diameter_a=args.particle_diameter_a,
            initial_lowpass_a=args.ini_high_a,
            max_iterations=args.max_iterations,
        )
    except StageInputError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return INPUT_ERROR_STATUS
    out: Path = args.out
    with Progress(
        config.max_iterations, label="refine3d", unit="iteration", json_output=args.json
    ) as progress:

        def on_iteration(record: RefineIteration, rec: Reconstruction) -> None:
            write_refine_iteration(out, record.iteration, rec)
            progress.describe(
                f"it {record.iteration}: {record.step_deg:.2f}°, "
                f"{record.resolution_a:.1f} Å"
            )
            progress.advance()

        result = refine(particles, reference, config, on_iteration=on_iteration)
    files = write_refine_result(
        out, config=config, result=result, optics=optics, particles=table
    )
    rec = result.reconstruction
    px = config.pixel_size_a
    if mask is None:
        mask = create_mask(rec.full, pixel_size_a=px, lowpass_a=max(15.0, 2.0 * px))
    post = _postprocess(rec, mask, px)
    masked = write_map(
        out / "run_postprocess_masked.mrc", post.sharpened_masked, pixel_size_a=px
    )
    write_fsc_png(
        out / "run_fsc.png",
        {"half maps": rec.fsc, "masked, corrected": post.fsc_corrected},
    )
    seconds = time.perf_counter() - start
    summary = {
        "map_path": str(files.map_path),
        "half1_path": str(files.half1_path),
        "half2_path": str(files.half2_path),
        "postprocess_masked_path": str(masked),
        "data_star": str(files.data_star),
        "model_star": str(files.model_star),
        "resolution_a": round(result.resolution_a, 3),
        "resolution_masked_a": round(post.resolution_a, 3),
        "bfactor_a2": round(post.bfactor_a2, 1),
        "iterations": len(result.iterations),
        "final_step_deg": result.iterations[-1].step_deg,
        "n_particles": particles.n_particles,
        "n_half1": rec.n_half1,
        "n_half2": rec.n_half2,
        "symmetry": rec.symmetry,
        "seconds": round(seconds, 3),
    }
    if args.json:
        print_json(summary, sort_keys=True)
    else:
        print(
            f"{particles.n_particles} particles, {len(result.iterations)} iterations: "
            f"{result.resolution_a:.1f} Å (half maps), {post.resolution_a:.1f} Å "
            f"(masked), {seconds:.1f} s; map {files.map_path}"
        )
    return 0


if __name__ == "__main__":  # python -m livestream.cli.refine3d: this command alone
    sys.exit(run_alone(PROG, __doc__, add_args, main))
