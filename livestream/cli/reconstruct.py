"""Reconstruct a 3D map from particles with poses (relion_reconstruct, two halves).

Example:
    livestream reconstruct Refine3D/job020/run_data.star --out Reconstruct/job021 \\
        --sym D7 --json

Reads a RELION 3.1+ particle STAR with poses (rlnAngleRot/Tilt/Psi, ZYZ),
origins (rlnOriginX/YAngst) and CTF (per particle, with its optics group's voltage,
Cs and amplitude contrast); half sets from rlnRandomSubset, else by row parity.
Each image's transform is CTF-weighted and inserted in Fourier space, its
coordinates scaled by --padding (2) into the finer grid as RELION does, once per
operator of --sym (C<n>, D<n>, T, O, I, I1-I4, RELION's axes); the half maps and
the full map are regularised by the SSNR from the FSC of the halves and, like
RELION's, set to the background outside the box's sphere (3 px soft edge).
--box-px crops (or pads) the images about their centre first: a smaller, faster map
at the same pixel size.

Writes to --out: run_half1_class001_unfil.mrc, run_half2_class001_unfil.mrc,
run_class001.mrc (float32, voxel size in the header), run_fsc.star (data_fsc:
rlnSpectralIndex, rlnResolution, rlnAngstromResolution, rlnFourierShellCorrelation),
run_fsc.png and run_central_slices.png.  With --json prints one object: map_path,
half1_path, half2_path, fsc_path, fsc_resolution_a (FSC 0.143 of those half maps),
n_particles, symmetry, box_px, pixel_size_a, seconds.  A progress bar shows on a terminal.  Exit
status 2, with one line naming the file, when an input is missing or unusable.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from livestream.cli.console import (
    INPUT_ERROR_STATUS,
    Progress,
    print_json,
    require_file,
)
from pipelines.errors import StageInputError
from pipelines.reconstruct import read_posed_particles, reconstruct_halves
from pipelines.reconstruct.outputs import (
    write_central_slices_png,
    write_fsc_png,
    write_fsc_star,
    write_map,
)

PROG = "livestream reconstruct"


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("particles", type=Path, metavar="PARTICLES.star")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--sym", default="C1", help="point group (C1)")
    parser.add_argument(
        "--box-px", type=int, default=None, help="crop/pad the images to this box"
    )
    parser.add_argument(
        "--padding", type=int, default=2, help="Fourier padding factor (2)"
    )
    parser.add_argument(
        "--ssnr",
        type=float,
        default=None,
        help="constant spectral SNR for the Wiener term (default: from the FSC)",
    )
    parser.add_argument(
        "--no-ctf", action="store_true", help="do not correct for the CTF"
    )
    parser.add_argument("--json", action="store_true", help="print a JSON summary")


def main(args: argparse.Namespace) -> int:
    require_file(args.particles, "particles STAR")
    start = time.perf_counter()
    try:
        particles = read_posed_particles(args.particles)
        if args.box_px is not None:
            particles = particles.windowed(args.box_px)
        with Progress(
            particles.n_particles,
            label="reconstruct",
            unit="particle",
            json_output=args.json,
        ) as progress:
            result = reconstruct_halves(
                particles,
                symmetry=args.sym,
                padding=args.padding,
                ctf_correct=not args.no_ctf,
                ssnr=args.ssnr,
                on_progress=progress.update,
            )
    except StageInputError as exc:  # e.g. a stack the STAR names is missing
        print(f"{PROG}: {exc}", file=sys.stderr)
        return INPUT_ERROR_STATUS
    px = result.pixel_size_a
    out: Path = args.out
    half1 = write_map(
        out / "run_half1_class001_unfil.mrc", result.half1, pixel_size_a=px
    )
    half2 = write_map(
        out / "run_half2_class001_unfil.mrc", result.half2, pixel_size_a=px
    )
    full = write_map(out / "run_class001.mrc", result.full, pixel_size_a=px)
    fsc_star = write_fsc_star(out / "run_fsc.star", result.fsc)
    fsc_png = write_fsc_png(out / "run_fsc.png", {"half maps": result.fsc})
    slices = write_central_slices_png(out / "run_central_slices.png", result.full)
    seconds = time.perf_counter() - start
    summary = {
        "map_path": str(full),
        "half1_path": str(half1),
        "half2_path": str(half2),
        "fsc_path": str(fsc_star),
        "fsc_png": str(fsc_png),
        "slices_png": str(slices),
        "fsc_resolution_a": round(result.resolution_a, 3),
        "n_particles": particles.n_particles,
        "n_half1": result.n_half1,
        "n_half2": result.n_half2,
        "symmetry": result.symmetry,
        "box_px": particles.box_px,
        "pixel_size_a": px,
        "seconds": round(seconds, 3),
    }
    if args.json:
        print_json(summary, sort_keys=True)
    else:
        print(
            f"{particles.n_particles} particles, {result.symmetry}: "
            f"{result.resolution_a:.2f} Å at FSC 0.143 (half maps, no solvent mask), "
            f"{seconds:.1f} s; map {full}"
        )
    return 0
