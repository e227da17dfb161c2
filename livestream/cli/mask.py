"""Make a soft solvent mask from a map (relion_mask_create).

Example:
    livestream mask Reconstruct/job021/run_class001.mrc --out MaskCreate/mask.mrc \\
        --lowpass-a 15 --threshold 0.02 --extend-px 3 --soft-edge-px 6

Low-passes the map to --lowpass-a Å (0 = none), binarises it at --threshold (or,
with --auto, at background mean + max(5 background sd, 10 % of the peak), the
background being outside 0.45 of the box), extends the binary mask by --extend-px
(every voxel within that distance) and adds a raised-cosine edge of
--soft-edge-px.  Writes a float32 MRC with the map's voxel size; --json prints
{mask_path, threshold, volume_fraction, pixel_size_a, seconds}.  Exit status 2, with
one line naming the file, when the map is missing or unusable.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from livestream.cli.console import INPUT_ERROR_STATUS, print_json, require_file
from pipelines.errors import StageInputError
from pipelines.reconstruct.mask import auto_threshold, create_mask, lowpass_map
from pipelines.reconstruct.outputs import write_map
from pipelines.simulate.volumes import load_map

PROG = "livestream mask"


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("map", type=Path, metavar="MAP")
    parser.add_argument("--out", type=Path, required=True, help="mask MRC to write")
    parser.add_argument(
        "--lowpass-a", type=float, default=15.0, help="Å (15; 0 = none)"
    )
    level = parser.add_mutually_exclusive_group(required=True)
    level.add_argument("--threshold", type=float, help="binarisation threshold")
    level.add_argument("--auto", action="store_true", help="pick the threshold")
    parser.add_argument("--extend-px", type=float, default=3.0, help="(3)")
    parser.add_argument("--soft-edge-px", type=float, default=6.0, help="(6)")
    parser.add_argument(
        "--pixel-size-a", type=float, default=None, help="when the header has none"
    )
    parser.add_argument("--json", action="store_true", help="print a JSON summary")


def main(args: argparse.Namespace) -> int:
    require_file(args.map, "map")
    start = time.perf_counter()
    try:
        volume, header_px = load_map(args.map)
        px = args.pixel_size_a or header_px
        if px is None:
            raise StageInputError(
                args.map, "voxel size", 0.0, "the header has none: give --pixel-size-a"
            )
        lowpass_a = args.lowpass_a or None
        threshold = args.threshold
        if args.auto:
            smooth = (
                lowpass_map(volume, pixel_size_a=px, resolution_a=lowpass_a)
                if lowpass_a
                else volume
            )
            threshold = auto_threshold(smooth)
        mask = create_mask(
            volume,
            pixel_size_a=px,
            lowpass_a=lowpass_a,
            threshold=threshold,
            extend_px=args.extend_px,
            soft_edge_px=args.soft_edge_px,
        )
    except StageInputError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return INPUT_ERROR_STATUS
    path = write_map(args.out, mask, pixel_size_a=px)
    summary = {
        "mask_path": str(path),
        "threshold": float(threshold),
        "volume_fraction": round(float(np.mean(mask)), 5),
        "pixel_size_a": px,
        "seconds": round(time.perf_counter() - start, 3),
    }
    if args.json:
        print_json(summary, sort_keys=True)
    else:
        print(
            f"mask {path}: threshold {threshold:.4g}, "
            f"{100 * summary['volume_fraction']:.1f} % of the box"
        )
    return 0
