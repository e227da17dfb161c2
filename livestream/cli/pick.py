"""Pick particles in micrographs (blob/LoG picker, or templates with --templates).

Example:
    livestream pick MotionCorr/job002/Movies/*.mrc --pixel-size-a 1.06 \\
        --diameter-a 180 260 --json > picks.json
    livestream pick mic.mrc --pixel-size-a 1.06 --diameter-a 180 260 \\
        --templates Class2D/job010/run_it025_classes.mrcs --defocus-a 15000 14500 30 \\
        --out AutoPick/job006

Without --templates (or --templates-volume) the blob picker runs: a multi-scale
Laplacian of Gaussian; its threshold is chosen per micrograph from the peak
scores (two Gaussians fitted, the score where a peak is as likely one as the
other; at least 2 SD where the scores are not bimodal) unless
--threshold-sd is given.  --learned adds a second stage that needs no labels: a
classifier self-trained on the blob picker's generous candidates of all the
micrographs given (one model for the set), whose log-odds threshold is chosen the
same way (docs/picking.md); it takes no CTF and no --threshold-sd.
The template picker correlates 2D templates (class averages, white particles) or
projections of a volume, multiplied by the CTF given with --defocus-a, and keeps
peaks above a threshold chosen per micrograph from its own score peaks (target-decoy
counting, --max-false-rate, where there are too few to fit) unless --min-ncc or
--threshold-sd is given.  Its score (--template-score, --template-whitening) is the
pick stage's default: the correlation over the micrograph's mean local SD, not
whitened; "ncc" with whitening 1 is the earlier whitened NCC (docs/picking.md).  With --json, one object on stdout: {"items": [...],
"failed": [{"path", "error"}]} with per micrograph an item {"micrograph", "picker",
"pixel_size_a", "n_picks", "picks": [{"x_px", "y_px", "score", "power",
"diameter_a"}]} in the micrograph's own pixels (x = column, y = row).  With --out, a RELION coordinate STAR <stem>_autopick.star per micrograph.
Exit status 1 when any micrograph could not be processed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from livestream.cli.console import (
    INPUT_ERROR_STATUS,
    Progress,
    print_batch_json,
    require_file,
    require_files,
)
from livestream.cli.optics import add_ctf_args, ctf_from_args
from livestream.stages.params import PickParams
from pipelines.ctf.model import (
    CtfParams,
)
from pipelines.errors import StageInputError
from pipelines.io.micrographs import read_micrograph
from pipelines.picking.blob import pick_blob
from pipelines.picking.learned import pick_learned_set
from pipelines.picking.picks import Picks, picks_to_dicts, write_picks_star
from pipelines.picking.template import TEMPLATE_SCORES, pick_template
from pipelines.simulate.projection import project, random_rotations
from pipelines.simulate.volumes import load_map


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("micrographs", nargs="+", type=Path, metavar="MICROGRAPH")
    parser.add_argument("--pixel-size-a", type=float, required=True)
    parser.add_argument(
        "--diameter-a", type=float, nargs=2, required=True, metavar=("MIN", "MAX")
    )
    parser.add_argument("--templates", type=Path, help="MRC stack of 2D templates")
    parser.add_argument(
        "--learned",
        action="store_true",
        help="blob candidates, then a classifier self-trained on them (no labels)",
    )
    parser.add_argument("--templates-volume", type=Path, help="3D map to project")
    parser.add_argument("--template-pixel-size-a", type=float)
    parser.add_argument(
        "--n-views", type=int, default=100, help="projections of the map (100)"
    )
    add_ctf_args(
        parser, defocus_help="CTF of the micrographs (template picker); omit for no CTF"
    )
    parser.add_argument("--threshold-sd", type=float)
    parser.add_argument(
        "--min-ncc", type=float, help="threshold on the template score (either kind)"
    )
    parser.add_argument(
        "--template-score",
        choices=TEMPLATE_SCORES,
        default=PickParams().template_score,
    )
    parser.add_argument(
        "--template-whitening", type=float, default=PickParams().template_whitening
    )
    parser.add_argument(
        "--max-false-rate",
        type=float,
        default=0.025,
        help="target-decoy false-pick rate that sets the NCC threshold where a "
        "micrograph has too few NCC peaks for its own threshold (0.025)",
    )
    parser.add_argument("--edge-px", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0, help="for the map's views")
    parser.add_argument("--json", action="store_true", help="one JSON object")
    parser.add_argument("--out", type=Path, help="folder for coordinate STAR files")


def _templates(args: argparse.Namespace) -> tuple[np.ndarray | None, float]:
    """The template stack and its pixel size, or None for the blob picker."""
    if args.templates is not None:
        stack, header_px = read_stack(args.templates)
        return stack, args.template_pixel_size_a or header_px or args.pixel_size_a
    if args.templates_volume is not None:
        volume, map_px = load_map(args.templates_volume)
        rng = np.random.default_rng(args.seed)
        views = project(volume, random_rotations(args.n_views, rng))
        return np.asarray(
            views
        ), args.template_pixel_size_a or map_px or args.pixel_size_a
    return None, args.pixel_size_a


def read_stack(path: Path) -> tuple[np.ndarray, float]:
    """``(n, box, box)`` float32 images of an MRC stack and the header pixel size."""
    import mrcfile

    try:
        with mrcfile.open(path, permissive=True) as mrc:
            data = np.asarray(mrc.data, dtype=np.float32)
            pixel = float(mrc.voxel_size.x)
    except (OSError, ValueError) as exc:
        raise StageInputError(path, "mrc", None, f"cannot read: {exc}") from exc
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3 or data.shape[-1] != data.shape[-2]:
        raise StageInputError(path, "shape", data.shape, "need (n, box, box) templates")
    return data, pixel


def _pick_one(
    path: Path,
    args: argparse.Namespace,
    templates: np.ndarray | None,
    template_px: float,
    ctf: CtfParams | None,
) -> Picks:
    image, _ = read_micrograph(path)
    d_min, d_max = sorted(args.diameter_a)
    if templates is None:
        return pick_blob(
            image,
            pixel_size_a=args.pixel_size_a,
            diameter_range_a=(d_min, d_max),
            threshold_sd=args.threshold_sd,  # None: from the peak scores
            edge_px=args.edge_px,
            ctf=ctf,  # with a CTF the blob picker works on CTF-weighted local energy
        )
    return pick_template(
        image,
        templates,
        pixel_size_a=args.pixel_size_a,
        diameter_a=0.5 * (d_min + d_max),
        ctf=ctf,
        template_pixel_size_a=template_px,
        threshold_sd=args.threshold_sd,
        min_ncc=args.min_ncc,
        score=args.template_score,
        whitening=args.template_whitening,
        max_false_rate=args.max_false_rate,
        edge_px=args.edge_px,
    )


def _pick_learned(
    args: argparse.Namespace, progress: Progress, failed: list[dict[str, str]]
) -> list[tuple[Path, Picks]]:
    """All micrographs with one self-trained model (those that cannot be read are
    reported and left out)."""
    paths: list[Path] = []
    images: list[np.ndarray] = []
    for path in args.micrographs:
        try:
            image, _ = read_micrograph(path)
        except StageInputError as exc:
            progress.warn(f"livestream pick: {exc}")
            failed.append({"path": str(path), "error": str(exc)})
            progress.advance()
            continue
        paths.append(path)
        images.append(image)
    d_min, d_max = sorted(args.diameter_a)
    picks = pick_learned_set(
        images,
        pixel_size_a=args.pixel_size_a,
        diameter_range_a=(d_min, d_max),
        edge_px=args.edge_px,
    )
    for _ in paths:
        progress.advance()
    return list(zip(paths, picks, strict=True))


def _learned_conflict(args: argparse.Namespace) -> str | None:
    """The first option that --learned cannot be combined with, if given."""
    if not args.learned:
        return None
    for flag, value in (
        ("--templates", args.templates),
        ("--templates-volume", args.templates_volume),
        ("--threshold-sd", args.threshold_sd),
        ("--min-ncc", args.min_ncc),
        ("--defocus-a", getattr(args, "defocus_a", None)),
    ):
        if value is not None:
            return flag
    return None


def _option_error(args: argparse.Namespace) -> str | None:
    """Why the options cannot run together or are out of range, if so."""
    conflict = _learned_conflict(args)
    if conflict is not None:
        return f"--learned cannot be combined with {conflict}"
    if not 0.0 <= args.template_whitening <= 1.0:
        return f"--template-whitening has value {args.template_whitening}: need 0 to 1"
    return None


def main(args: argparse.Namespace) -> int:
    require_files(args.micrographs, "micrograph")
    refused = _option_error(args)
    if refused is not None:
        print(f"livestream pick: {refused}", file=sys.stderr)
        return INPUT_ERROR_STATUS
    for path, what in (
        (args.templates, "template stack"),
        (args.templates_volume, "template map"),
    ):
        if path is not None:
            require_file(path, what)
    templates, template_px = _templates(args)
    ctf = ctf_from_args(args)
    items: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    with Progress(
        len(args.micrographs), label="pick", unit="micrograph", json_output=args.json
    ) as progress:
        done: list[tuple[Path, Picks]] = []
        if args.learned:
            done = _pick_learned(args, progress, failed)
        for path in [] if args.learned else args.micrographs:
            try:
                done.append((path, _pick_one(path, args, templates, template_px, ctf)))
            except StageInputError as exc:
                progress.warn(f"livestream pick: {exc}")
                failed.append({"path": str(path), "error": str(exc)})
            finally:
                progress.advance()
        picker = (
            "learned" if args.learned else "blob" if templates is None else "template"
        )
        for path, picks in done:
            if args.out is not None:
                write_picks_star(args.out / f"{path.stem}_autopick.star", picks)
            if args.json:
                items.append(
                    {
                        "micrograph": str(path),
                        "picker": picker,
                        "pixel_size_a": args.pixel_size_a,
                        "n_picks": len(picks),
                        "picks": picks_to_dicts(picks),
                    }
                )
            else:
                progress.write(f"{path}: {len(picks)} picks")
    if args.json:
        print_batch_json(items, failed)
    return 1 if failed else 0
