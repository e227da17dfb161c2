"""Motion-correct movies offline with the same code the live service runs.

Writes <stem>.mrc (dose-weighted, float16), <stem>_PS.mrc and <stem>.star
(RELION motion STAR) per movie into --out; <stem>_noDW.mrc with --save-no-dw.

Example:
    livestream motion Movies/*.tiff --out MotionCorr/job002/Movies \\
        --gain gain.mrc --pixel-size-a 0.83 --dose-per-frame 1.0 --voltage-kv 300 --json
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from livestream.cli.console import (
    Progress,
    print_batch_json,
    require_file,
    require_files,
)
from pipelines.errors import PipelineError
from pipelines.motion.job import run_motion


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
    parser.add_argument(
        "--save-no-dw",
        action="store_true",
        help="also write <stem>_noDW.mrc, the plain (not dose-weighted) sum "
        "(RELION's --save_noDW; off by default)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help='one JSON object: {"items": [one per movie], "failed": [...]}',
    )


def main(args: argparse.Namespace) -> int:
    require_files(args.movies, "movie")
    if args.gain is not None:
        require_file(args.gain, "gain reference")
    patches = tuple(args.patches)
    items: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    with Progress(
        len(args.movies), label="motion", unit="movie", json_output=args.json
    ) as progress:
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
                    save_no_dw=args.save_no_dw,
                )
            except (PipelineError, OSError) as exc:
                progress.warn(f"livestream motion: {movie}: {exc}")
                failed.append({"path": str(movie), "error": str(exc)})
                continue
            finally:
                progress.advance()
            if args.json:
                items.append(
                    {
                        "movie": str(movie),
                        "output_path": str(outputs.micrograph_path),
                        "no_dw_path": None
                        if outputs.micrograph_no_dw_path is None
                        else str(outputs.micrograph_no_dw_path),
                        "power_spectrum_path": str(outputs.power_spectrum_path),
                        "star_path": str(outputs.star_path),
                        "shifts_px": [
                            [float(x), float(y)] for x, y in outputs.shifts_px
                        ],
                        "total_motion_a": outputs.total_motion_a,
                        "early_motion_a": outputs.early_motion_a,
                        "late_motion_a": outputs.late_motion_a,
                        "pixel_size_a": outputs.pixel_size_a,
                        "n_frames": outputs.n_frames,
                    }
                )
            else:
                progress.write(
                    f"{movie} -> {outputs.micrograph_path}  "
                    f"total motion {outputs.total_motion_a:.2f} Å "
                    f"(early {outputs.early_motion_a:.2f}, "
                    f"late {outputs.late_motion_a:.2f})"
                )
    if args.json:
        print_batch_json(items, failed)
    return 1 if failed else 0
