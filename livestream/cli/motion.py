"""Motion-correct movies offline with the same code the live service runs.

Writes <stem>.mrc (dose-weighted, float16), <stem>_noDW.mrc, <stem>_PS.mrc and
<stem>.star (RELION motion STAR) per movie into --out.

Example:
    livestream motion Movies/*.tiff --out MotionCorr/job002/Movies \\
        --gain gain.mrc --pixel-size-a 0.83 --dose-per-frame 1.0 --voltage-kv 300 --json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipelines.errors import PipelineError


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("movies", nargs="+", type=Path, metavar="MOVIE")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--gain", type=Path, default=None, help="gain reference (MRC/TIFF)"
    )
    parser.add_argument(
        "--gain-rotation-deg",
        type=int,
        default=0,
        choices=(0, 90, 180, 270),
        help="counter-clockwise rotation of the gain (default 0)",
    )
    parser.add_argument(
        "--gain-flip",
        choices=("x", "y"),
        default=None,
        help="flip the gain after rotation",
    )
    parser.add_argument(
        "--pixel-size-a", type=float, default=1.0, help="Å/px (default 1.0)"
    )
    parser.add_argument(
        "--dose-per-frame",
        type=float,
        default=1.0,
        help="e/Å² per frame; per raw frame for EER (default 1.0)",
    )
    parser.add_argument("--voltage-kv", type=float, default=300.0, help="default 300")
    parser.add_argument(
        "--pre-exposure", type=float, default=0.0, help="e/Å² (default 0)"
    )
    parser.add_argument(
        "--eer-group-dose",
        type=float,
        default=None,
        help="EER: e/Å² per frame group (1.0)",
    )
    parser.add_argument("--eer-upsampling", type=int, choices=(1, 2), default=1)
    parser.add_argument(
        "--patches",
        type=int,
        nargs=2,
        default=(5, 5),
        metavar=("NY", "NX"),
        help="local-motion patches (0 0 for global only; default 5 5)",
    )
    parser.add_argument(
        "--float32", action="store_true", help="write float32 micrographs"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per movie")


def main(args: argparse.Namespace) -> int:
    from pipelines.motion.job import run_motion

    patches = tuple(args.patches)
    status = 0
    for movie in args.movies:
        try:
            outputs = run_motion(
                movie,
                args.out,
                pixel_size_a=args.pixel_size_a,
                dose_per_frame_e_per_a2=args.dose_per_frame,
                voltage_kv=args.voltage_kv,
                pre_exposure_e_per_a2=args.pre_exposure,
                gain_path=args.gain,
                gain_rotation_deg=args.gain_rotation_deg,
                gain_flip=args.gain_flip,
                eer_group_dose_e_per_a2=args.eer_group_dose,
                eer_upsampling=args.eer_upsampling,
                patches=None if min(patches) <= 0 else (patches[0], patches[1]),
                float32=args.float32,
            )
        except (PipelineError, OSError) as exc:
            print(f"livestream motion: {movie}: {exc}", file=sys.stderr)
            status = 1
            continue
        if args.json:
            record = {
                "movie": str(movie),
                "output_path": str(outputs.micrograph_path),
                "no_dw_path": str(outputs.micrograph_no_dw_path),
                "power_spectrum_path": str(outputs.power_spectrum_path),
                "star_path": str(outputs.star_path),
                "shifts_px": [[float(x), float(y)] for x, y in outputs.shifts_px],
                "total_motion_a": outputs.total_motion_a,
                "early_motion_a": outputs.early_motion_a,
                "late_motion_a": outputs.late_motion_a,
                "pixel_size_a": outputs.pixel_size_a,
                "n_frames": outputs.n_frames,
            }
            print(json.dumps(record), flush=True)
        else:
            print(
                f"{movie} -> {outputs.micrograph_path}  "
                f"total motion {outputs.total_motion_a:.2f} Å "
                f"(early {outputs.early_motion_a:.2f}, late {outputs.late_motion_a:.2f})"
            )
    return status
