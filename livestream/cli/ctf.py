"""Estimate the CTF of micrographs (the stage code the live service runs).

Example:
    livestream ctf MotionCorr/job002/Movies/*.mrc --pixel-size-a 0.83 \\
        --voltage-kv 300 --cs-mm 2.7 --json --out CtfFind/job003

Prints one line per micrograph (or, with --json, one JSON object {"items": [...],
"failed": [{"path", "error"}]} with per micrograph an item with micrograph_path,
defocus_u_a, defocus_v_a, astigmatism_angle_deg, phase_shift_deg, fit_resolution_a,
figure_of_merit, ...).  With --out, writes per micrograph a diagnostic image
(<name>.ctf MRC and <name>_ctf.png) and a JSON record, plus micrographs_ctf.star.
Exit status 1 when any micrograph could not be processed.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from livestream.cli.console import Progress, print_batch_json, require_files
from pipelines.ctf.estimate import estimate_ctf
from pipelines.ctf.job import run_ctf
from pipelines.ctf.outputs import (
    MicrographCtfRow,
    ctf_record,
    make_optics_table,
    write_micrographs_ctf_star,
)
from pipelines.errors import StageInputError
from pipelines.io.micrographs import read_micrograph


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("micrographs", nargs="+", type=Path, metavar="MICROGRAPH")
    parser.add_argument("--pixel-size-a", type=float, required=True)
    parser.add_argument("--voltage-kv", type=float, required=True)
    parser.add_argument("--cs-mm", type=float, required=True)
    parser.add_argument("--amplitude-contrast", type=float, default=0.1)
    parser.add_argument(
        "--defocus-range-a",
        type=float,
        nargs=2,
        default=(3000.0, 50000.0),
        metavar=("MIN", "MAX"),
    )
    parser.add_argument(
        "--resolution-range-a",
        type=float,
        nargs=2,
        default=(30.0, 5.0),
        metavar=("LOW", "HIGH"),
        help="fitting band in Å (default 30 5)",
    )
    parser.add_argument("--tile-px", type=int, default=512)
    parser.add_argument("--phase-plate", action="store_true")
    parser.add_argument("--json", action="store_true", help="one JSON object")
    parser.add_argument("--out", type=Path, help="folder for diagnostics and STAR")


def _options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "pixel_size_a": args.pixel_size_a,
        "voltage_kv": args.voltage_kv,
        "cs_mm": args.cs_mm,
        "amplitude_contrast": args.amplitude_contrast,
        "defocus_range_a": tuple(args.defocus_range_a),
        "resolution_range_a": tuple(args.resolution_range_a),
        "tile_px": args.tile_px,
        "phase_plate": args.phase_plate,
    }


def main(args: argparse.Namespace) -> int:
    require_files(args.micrographs, "micrograph")
    options = _options(args)
    rows: list[MicrographCtfRow] = []
    items: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    with Progress(
        len(args.micrographs), label="ctf", unit="micrograph", json_output=args.json
    ) as progress:
        for path in args.micrographs:
            try:
                if args.out is None:
                    fit = estimate_ctf(read_micrograph(path)[0], **options)
                    record = ctf_record(fit) | {"micrograph_path": str(path)}
                else:
                    outputs = run_ctf(path, args.out, **options)
                    fit = outputs.fit
                    ctf_image = os.path.relpath(outputs.ctf_image_path, args.out)
                    record = ctf_record(fit) | {
                        "micrograph_path": str(path),
                        "ctf_image_path": str(outputs.ctf_image_path),
                        "png_path": str(outputs.png_path),
                    }
                    rows.append(
                        MicrographCtfRow(
                            micrograph_name=str(path),
                            ctf_image=f"{ctf_image}:mrc",
                            fit=fit,
                        )
                    )
            except StageInputError as exc:
                progress.warn(f"livestream ctf: {exc}")
                failed.append({"path": str(path), "error": str(exc)})
                continue
            finally:
                progress.advance()
            if args.json:
                items.append(record)
            else:
                flag = "" if fit.trusted else "  UNTRUSTED: " + "; ".join(fit.reasons)
                progress.write(
                    f"{path}: U {fit.defocus_u_a:.0f} Å  V {fit.defocus_v_a:.0f} Å  "
                    f"angle {fit.astigmatism_angle_deg:.1f}°  "
                    f"phase {fit.phase_shift_deg:.1f}°  "
                    f"FOM {fit.figure_of_merit:.3f}  "
                    f"fit {fit.fit_resolution_a:.2f} Å{flag}"
                )
    if args.out is not None and rows:
        optics = make_optics_table(
            pixel_size_a=args.pixel_size_a,
            voltage_kv=args.voltage_kv,
            cs_mm=args.cs_mm,
            amplitude_contrast=args.amplitude_contrast,
        )
        write_micrographs_ctf_star(args.out / "micrographs_ctf.star", rows, optics)
    if args.json:
        print_batch_json(items, failed, sort_keys=True)
    return 1 if failed else 0
