"""Import a cryoSPARC particle set (.cs) as a RELION particle STAR for the 3D tools.

Example:
    livestream import-cryosparc J24/J24_001_particles.cs --out Import/cs/particles.star
    livestream reconstruct Import/cs/particles.star --out Reconstruct/cs

Reads the .cs with cryosparc-tools.  Needs blob/path, blob/idx, blob/shape,
blob/psize_A and the CTF (ctf/accel_kv, cs_mm, amp_contrast, df1_A, df2_A,
df_angle_rad); writes data_optics (one group per distinct exposure group, pixel
size, box, voltage, Cs and amplitude contrast) and data_particles: rlnImageName
(blob/idx + 1 @ blob/path, relative to where cryoSPARC kept the stacks),
rlnDefocusU/V/Angle, rlnPhaseShift, rlnCtfBfactor, rlnCtfScalefactor, and when
present rlnMicrographName + rlnCoordinateX/Y (location/*),
rlnAutopickFigureOfMerit (pick_stats/ncc_score), and poses: alignments3D/pose
(rotation vector) -> rlnAngleRot/Tilt/Psi, shift -> rlnOriginX/YAngst, class ->
rlnClassNumber, split -> rlnRandomSubset; else alignments2D -> rlnAnglePsi and
origins.  With --json prints one object: star_path, n_particles, n_optics_groups,
poses (alignments3D, alignments2D or none), fields_missing (optional fields the
.cs lacks, given RELION's defaults).  Exit status 2, with one line naming the
file and field, when a required field is missing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from livestream.cli.console import INPUT_ERROR_STATUS, print_json, require_file
from pipelines.errors import StageInputError
from pipelines.exchange import dataset_to_particles, read_particle_set
from pipelines.extraction.particles_star import write_particles_star

PROG = "livestream import-cryosparc"
_OPTIONAL = (
    "ctf/phase_shift_rad",
    "ctf/bfactor",
    "ctf/scale",
    "location/micrograph_path",
    "pick_stats/ncc_score",
    "alignments3D/pose",
)


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("particles", type=Path, metavar="PARTICLES.cs")
    parser.add_argument("--out", type=Path, required=True, help="particle STAR")
    parser.add_argument("--json", action="store_true", help="print a JSON summary")


def main(args: argparse.Namespace) -> int:
    require_file(args.particles, "cryoSPARC particles")
    try:
        if args.particles.suffix != ".cs":
            raise StageInputError(
                args.particles, "suffix", args.particles.suffix, "must be .cs"
            )
        dataset = read_particle_set(args.particles).dataset
        assert dataset is not None  # a .cs always reads as a dataset
        optics, particles = dataset_to_particles(dataset, source=args.particles)
    except StageInputError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return INPUT_ERROR_STATUS
    star = write_particles_star(args.out, optics, particles)
    fields = dataset.fields()
    poses = next(
        (p for p in ("alignments3D", "alignments2D") if f"{p}/pose" in fields), "none"
    )
    summary = {
        "star_path": str(star),
        "n_particles": len(particles),
        "n_optics_groups": len(optics),
        "poses": poses,
        "fields_missing": [f for f in _OPTIONAL if f not in fields],
    }
    if args.json:
        print_json(summary, sort_keys=True)
    else:
        print(
            f"{len(particles)} particles in {len(optics)} optics groups "
            f"(poses: {poses}) -> {star}"
        )
    return 0
