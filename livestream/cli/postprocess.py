"""Post-process two half maps: masked FSC, resolution, B-factor, sharpening.

Example:
    livestream postprocess Reconstruct/job021/run_half1_class001_unfil.mrc \\
        Reconstruct/job021/run_half2_class001_unfil.mrc --mask MaskCreate/mask.mrc \\
        --mtf mtf_falcon4EC_300kV.star --out PostProcess/job023 --json

As relion_postprocess: the FSC of the masked halves is corrected by phase
randomisation beyond the shell where the unmasked FSC falls below 0.8 (Chen et al.
2013); the resolution is where the corrected FSC falls below 0.143.  The average
of the halves (divided by the detector MTF with --mtf; its pixel is
--mtf-pixel-size-a, default the map's) is sharpened with the B-factor fitted on the
Guinier plot from 10 Å to that resolution (or --bfactor-a2), weighted by the FSC
and low-passed at the resolution.

Writes to --out (default: HALF1's folder) postprocess.mrc, postprocess_masked.mrc,
postprocess_fsc.star (data_fsc with the corrected, unmasked, masked and
phase-randomised curves; data_guinier) and postprocess_fsc.png.  Prints the
resolution and B-factor; --json prints one object: resolution_a, bfactor_a2,
map_path, masked_map_path, fsc_path, randomise_from_shell, seconds.  Exit status 2,
with one line naming the file, when an input is missing or unusable.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from livestream.cli.console import INPUT_ERROR_STATUS, print_json, require_file
from pipelines.errors import StageInputError
from pipelines.io.outputs import write_star
from pipelines.reconstruct.outputs import fsc_table, write_fsc_png, write_map
from pipelines.reconstruct.postprocess import (
    PostprocessResult,
    postprocess,
    read_mtf_star,
)
from pipelines.simulate.volumes import load_map

PROG = "livestream postprocess"


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("half1", type=Path, metavar="HALF1")
    parser.add_argument("half2", type=Path, metavar="HALF2")
    parser.add_argument("--mask", type=Path, required=True, help="soft mask MRC")
    parser.add_argument("--out", type=Path, default=None, help="output folder")
    parser.add_argument("--mtf", type=Path, default=None, help="detector MTF STAR")
    parser.add_argument("--mtf-pixel-size-a", type=float, default=None)
    parser.add_argument(
        "--bfactor-a2", type=float, default=None, help="force this B-factor"
    )
    parser.add_argument(
        "--pixel-size-a", type=float, default=None, help="when the header has none"
    )
    parser.add_argument("--json", action="store_true", help="print a JSON summary")


def _fsc_blocks(result: PostprocessResult) -> dict[str, pd.DataFrame]:
    table = fsc_table(result.fsc_corrected).rename(
        columns={"rlnFourierShellCorrelation": "rlnFourierShellCorrelationCorrected"}
    )
    table["rlnFourierShellCorrelationUnmaskedMaps"] = result.fsc_unmasked.fsc
    table["rlnFourierShellCorrelationMaskedMaps"] = result.fsc_masked.fsc
    table["rlnCorrectedFourierShellCorrelationPhaseRandomizedMaskedMaps"] = (
        result.fsc_phase_randomised.fsc
    )
    finite = np.isfinite(result.guinier_ln_amplitude)
    guinier = pd.DataFrame(
        {
            "rlnResolutionSquared": result.guinier_s2_per_a2[finite],
            "rlnLogAmplitudesOriginal": result.guinier_ln_amplitude[finite],
        }
    )
    return {"fsc": table, "guinier": guinier}


def main(args: argparse.Namespace) -> int:
    require_file(args.half1, "half map 1")
    require_file(args.half2, "half map 2")
    require_file(args.mask, "mask")
    if args.mtf is not None:
        require_file(args.mtf, "MTF STAR")
    start = time.perf_counter()
    try:
        half1, header_px = load_map(args.half1)
        half2, _ = load_map(args.half2)
        mask, _ = load_map(args.mask)
        px = args.pixel_size_a or header_px
        if px is None:
            raise StageInputError(
                args.half1,
                "voxel size",
                0.0,
                "the header has none: give --pixel-size-a",
            )
        mtf = (
            read_mtf_star(args.mtf, detector_pixel_size_a=args.mtf_pixel_size_a or px)
            if args.mtf is not None
            else None
        )
        result = postprocess(
            half1, half2, mask, pixel_size_a=px, mtf=mtf, bfactor_a2=args.bfactor_a2
        )
    except StageInputError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return INPUT_ERROR_STATUS
    out: Path = args.out if args.out is not None else args.half1.parent
    sharpened = write_map(out / "postprocess.mrc", result.sharpened, pixel_size_a=px)
    masked = write_map(
        out / "postprocess_masked.mrc", result.sharpened_masked, pixel_size_a=px
    )
    fsc_path = write_star(out / "postprocess_fsc.star", _fsc_blocks(result))
    write_fsc_png(
        out / "postprocess_fsc.png",
        {
            "corrected": result.fsc_corrected,
            "unmasked": result.fsc_unmasked,
            "masked": result.fsc_masked,
            "phase randomised": result.fsc_phase_randomised,
        },
    )
    summary = {
        "resolution_a": round(result.resolution_a, 3),
        "bfactor_a2": round(result.bfactor_a2, 2),
        "map_path": str(sharpened),
        "masked_map_path": str(masked),
        "fsc_path": str(fsc_path),
        "randomise_from_shell": result.randomise_from_shell,
        "pixel_size_a": px,
        "seconds": round(time.perf_counter() - start, 3),
    }
    if args.json:
        print_json(summary, sort_keys=True)
    else:
        print(
            f"resolution {result.resolution_a:.2f} Å (FSC 0.143, corrected), "
            f"B-factor {result.bfactor_a2:.1f} Å^2; map {sharpened}"
        )
    return 0
