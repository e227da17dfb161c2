"""Extract picked particles into float16 stacks and a RELION particles.star.

Example:
    livestream extract MotionCorr/job002/Movies/*.mrc --picks AutoPick/job006/*.star \\
        --pixel-size-a 1.06 --box-px 256 --downscale-px 96 \\
        --defocus-a 15000 14500 30 --out Extract/job007 --json

--picks takes coordinate STAR files (matched to a micrograph when the file name
starts with the micrograph's name, e.g. <stem>_autopick.star) or the JSON written
by `livestream pick --json` (.json; the JSON lines of older versions too).  The CTF
of each particle comes from --ctf-star (a micrographs_ctf.star, matched by
micrograph name) or --defocus-a.
Stacks go to <out>/<sub>/<stem>.mrcs (mode 12), rows are appended to
<out>/particles.star; image names are relative to --project-dir (default: the
current folder).  Boxes that would cross the micrograph's edge are skipped and
counted.  With --json, one object {"items": [...], "failed": [{"path", "error"}]}
with per micrograph an item {"micrograph", "stack", "n_extracted",
"n_skipped_edge", "pixel_size_a", "box_px"}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import starfile

from livestream.cli.console import (
    InputError,
    Progress,
    print_batch_json,
    require_file,
    require_files,
)
from livestream.cli.optics import add_ctf_args, ctf_from_args, ctf_of
from pipelines.ctf.model import (
    CtfParams,
)
from pipelines.errors import StageInputError
from pipelines.extraction.extract import downscaled_box_px
from pipelines.extraction.job import run_extract
from pipelines.io.micrographs import read_micrograph
from pipelines.picking.picks import Picks, read_picks_star


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("micrographs", nargs="+", type=Path, metavar="MICROGRAPH")
    parser.add_argument("--picks", type=Path, nargs="+", required=True, metavar="FILE")
    parser.add_argument("--pixel-size-a", type=float, required=True)
    parser.add_argument("--box-px", type=int, required=True)
    parser.add_argument(
        "--downscale-px",
        type=int,
        help="output box after Fourier cropping (default: no downscaling)",
    )
    parser.add_argument(
        "--relion-it-box",
        action="store_true",
        help="downscale to RELION-it's box (pixel finer than 3.75 Å)",
    )
    parser.add_argument("--diameter-a", type=float, help="normalisation circle")
    add_ctf_args(parser, defocus_help="one CTF for every micrograph (no --ctf-star)")
    parser.add_argument("--ctf-star", type=Path, help="micrographs_ctf.star")
    parser.add_argument("--no-invert", action="store_true", help="keep the contrast")
    parser.add_argument("--out", type=Path, required=True, help="Extract job folder")
    parser.add_argument("--project-dir", type=Path, default=Path())
    parser.add_argument("--json", action="store_true", help="one JSON object")


def _picks_from_json(
    rows: list[dict[str, float]], pixel_size_a: float, shape: tuple[int, int]
) -> Picks:
    def column(key: str, default: float) -> np.ndarray:
        return np.array([float(r.get(key, default)) for r in rows], dtype=np.float64)

    return Picks(
        x_px=column("x_px", 0.0),
        y_px=column("y_px", 0.0),
        score=column("score", 0.0),
        power=column("power", 1.0),
        diameter_a=column("diameter_a", float("nan")),
        pixel_size_a=pixel_size_a,
        shape=shape,
    )


def _pick_records(file: Path) -> list[dict[str, Any]]:
    """The per-micrograph records of a ``livestream pick --json`` file: one object
    ``{"items": [...]}``, or one object per line (older versions)."""
    text = file.read_text()
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        try:
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise InputError(
                file, f"picks file is not JSON (line {exc.lineno}): {exc.msg}"
            ) from None
    items = document.get("items", [document]) if isinstance(document, dict) else None
    if not isinstance(items, list) or not all(
        isinstance(item, dict) and "micrograph" in item for item in items
    ):
        raise InputError(file, "picks file is not the JSON of `livestream pick`")
    return items


def _picks_for(
    micrograph: Path, files: list[Path], pixel_size_a: float, shape: tuple[int, int]
) -> Picks:
    for file in files:
        if file.suffix in {".json", ".jsonl"}:
            for record in _pick_records(file):
                if Path(record["micrograph"]).stem == micrograph.stem:
                    return _picks_from_json(record["picks"], pixel_size_a, shape)
        elif file.name.startswith(micrograph.stem):
            return read_picks_star(file, pixel_size_a=pixel_size_a, shape=shape)
    raise StageInputError(micrograph, "picks", None, "no picks file names it")


def _ctf_for(
    micrograph: Path, args: argparse.Namespace
) -> tuple[CtfParams, float, float]:
    """The CTF, fit resolution and figure of merit of one micrograph."""
    if args.ctf_star is not None:
        blocks = starfile.read(args.ctf_star, always_dict=True)
        table = blocks.get("micrographs", next(iter(blocks.values())))
        stems = [Path(str(n)).stem for n in table["rlnMicrographName"]]
        if micrograph.stem in stems:
            row = table.iloc[stems.index(micrograph.stem)]
            ctf = ctf_of(
                args,
                (row["rlnDefocusU"], row["rlnDefocusV"], row["rlnDefocusAngle"]),
                phase_shift_deg=float(row.get("rlnPhaseShift", 0.0)),
            )
            return (
                ctf,
                float(row.get("rlnCtfMaxResolution", np.nan)),
                float(row.get("rlnCtfFigureOfMerit", np.nan)),
            )
    given = ctf_from_args(args)
    if given is None:
        raise StageInputError(
            micrograph, "defocus", None, "no --ctf-star row, no --defocus-a"
        )
    return given, float("nan"), float("nan")


def main(args: argparse.Namespace) -> int:
    require_files(args.micrographs, "micrograph")
    require_files(args.picks, "picks file")
    if args.ctf_star is not None:
        require_file(args.ctf_star, "CTF STAR file")
    for file in args.picks:  # a broken JSON file stops the batch before it starts
        if file.suffix in {".json", ".jsonl"}:
            _pick_records(file)
    out = args.out if args.out.is_absolute() else args.project_dir / args.out
    project = args.project_dir.resolve()
    try:
        job_dir: Path = out.resolve().relative_to(project)
    except ValueError:
        job_dir = out.resolve()
    downscale = args.downscale_px
    if downscale is None and args.relion_it_box:
        downscale = downscaled_box_px(args.box_px, args.pixel_size_a)
    items: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    with Progress(
        len(args.micrographs), label="extract", unit="micrograph", json_output=args.json
    ) as progress:
        for path in args.micrographs:
            try:
                image, _ = read_micrograph(path)
                picks = _picks_for(path, args.picks, args.pixel_size_a, image.shape)
                ctf, resolution_a, merit = _ctf_for(path, args)
                result = run_extract(
                    path,
                    picks,
                    project_dir=project,
                    job_dir=job_dir,
                    pixel_size_a=args.pixel_size_a,
                    ctf=ctf,
                    box_px=args.box_px,
                    diameter_a=args.diameter_a,
                    downscale_box_px=downscale,
                    ctf_max_resolution_a=resolution_a,
                    ctf_figure_of_merit=merit,
                    append_to=out / "particles.star",
                    invert_contrast=not args.no_invert,
                )
            except StageInputError as exc:
                progress.warn(f"livestream extract: {exc}")
                failed.append({"path": str(path), "error": str(exc)})
                continue
            finally:
                progress.advance()
            if args.json:
                items.append(
                    {
                        "micrograph": str(path),
                        "stack": str(result.stack_path),
                        "n_extracted": result.n_extracted,
                        "n_skipped_edge": result.n_skipped_edge,
                        "pixel_size_a": float(
                            result.optics["rlnImagePixelSize"].iloc[0]
                        ),
                        "box_px": int(result.optics["rlnImageSize"].iloc[0]),
                    }
                )
            else:
                progress.write(
                    f"{path}: {result.n_extracted} particles "
                    f"({result.n_skipped_edge} skipped at the edge)"
                )
    if args.json:
        print_batch_json(items, failed)
    return 1 if failed else 0
