"""Convert and divide particle STAR files: downgrade, from-dynamo, subset, split-halves.

Examples:
    livestream star downgrade Refine3D/job030/run_data.star --out run_data_30.star
    livestream star from-dynamo crop.tbl --pixel-size-a 4.4 --vll tomograms.vll \\
        --out particles.star
    livestream star subset particles.star --n 5000 --seed 1 --out subset.star
    livestream star split-halves particles.star --seed 7 --out halves.star

downgrade: a RELION 3.1/4/5 particle STAR (data_optics + data_particles) -> RELION
3.0's one table: the optics on every row, rlnMagnification 10000 and
rlnDetectorPixelSize = the pixel size in Å (3.0 takes 10000 × DetectorPixelSize /
Magnification), rlnOriginX/Y/ZAngst -> rlnOriginX/Y/Z in pixels; labels RELION 3.0
does not know are dropped and listed.
from-dynamo: a Dynamo .tbl -> a RELION STAR of 3D particles: rlnCoordinateX/Y/Z
(columns 24-26), rlnOriginX/Y/ZAngst = -(dx, dy, dz) × --pixel-size-a, Euler angles
from Dynamo's ZXZ (tdrot, tilt, narot) to RELION's ZYZ (rot = narot - 90, tilt,
psi = tdrot + 90: the same rotation), rlnClassNumber, rlnParticleNumber (the tag),
rlnMicrographName from --vll (else the tomogram number); the optics group gets
--voltage-kv, --cs-mm and --amplitude-contrast (a Dynamo table has none; RELION
needs them).
subset: --n rows drawn at random (seeded; the order kept); split-halves: sets
rlnRandomSubset 1/2 at random, halves equal to within one row.  Both keep every other
block and value as written.

Every input is read strictly: a row with the wrong number of values, a label RELION
does not know, a value that is not a finite number in a numeric label, or a missing
data_optics is one line naming the file, line and column; exit status 2.  --json
prints {out_path, n_in, n_out, ...}.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from livestream.cli.console import INPUT_ERROR_STATUS, print_json, require_file
from mdcatch.crosscheck import DEFAULT_CS_MM
from pipelines.ctf.model import DEFAULT_AMPLITUDE_CONTRAST, DEFAULT_VOLTAGE_KV
from pipelines.errors import StageInputError
from pipelines.particlesets import (
    downgrade_to_relion30,
    dynamo_table_to_star,
    main_table_name,
    random_subset,
    read_dynamo_table,
    read_dynamo_volume_list,
    read_star_tables,
    split_halves,
    write_star_tables,
)

PROG = "livestream star"


def add_args(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="star_command", required=True, metavar="ACTION")

    def action(name: str, help_text: str, source: str) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=help_text, description=help_text)
        command.add_argument("input", type=Path, metavar=source)
        command.add_argument("--out", type=Path, required=True, help="STAR to write")
        command.add_argument("--json", action="store_true", help="print JSON")
        return command

    action("downgrade", "RELION 3.1+ STAR -> RELION 3.0 single table", "IN.star")
    dynamo = action("from-dynamo", "Dynamo .tbl -> RELION STAR", "TBL")
    dynamo.add_argument("--pixel-size-a", type=float, required=True, help="Å/px")
    dynamo.add_argument("--vll", type=Path, help="Dynamo volume list (tomograms)")
    dynamo.add_argument(
        "--voltage-kv", type=float, default=DEFAULT_VOLTAGE_KV, help="(%(default)s)"
    )
    dynamo.add_argument(
        "--cs-mm", type=float, default=DEFAULT_CS_MM, help="(%(default)s)"
    )
    dynamo.add_argument(
        "--amplitude-contrast",
        type=float,
        default=DEFAULT_AMPLITUDE_CONTRAST,
        help="(%(default)s)",
    )
    subset = action("subset", "a reproducible random subset", "IN.star")
    subset.add_argument("--n", type=int, required=True, help="rows to keep")
    subset.add_argument("--seed", type=int, default=0, help="(0)")
    halves = action("split-halves", "set rlnRandomSubset 1/2", "IN.star")
    halves.add_argument("--seed", type=int, default=0, help="(0)")


def main(args: argparse.Namespace) -> int:
    require_file(args.input)
    start = time.perf_counter()
    try:
        summary = _ACTIONS[args.star_command](args)
    except StageInputError as exc:
        print(f"{PROG} {args.star_command}: {exc}", file=sys.stderr)
        return INPUT_ERROR_STATUS
    summary = {"out_path": str(args.out), **summary}
    summary["seconds"] = round(time.perf_counter() - start, 3)
    if args.json:
        print_json(summary, sort_keys=True)
    else:
        print(
            f"{args.out}: {summary['n_out']} of {summary['n_in']} rows"
            + "".join(
                f"; {key} {value}"
                for key, value in summary.items()
                if key in ("dropped_labels", "half1", "half2") and value
            )
        )
    return 0


def _downgrade(args: argparse.Namespace) -> dict[str, Any]:
    tables = read_star_tables(args.input)
    if "optics" not in tables:
        raise StageInputError(
            args.input,
            "data_optics",
            None,
            "missing: not a RELION 3.1+ particle STAR (a 3.0 file needs no downgrade)",
        )
    name = main_table_name(args.input, tables)
    result = downgrade_to_relion30(args.input, tables["optics"], tables[name])
    write_star_tables(args.out, {"": result.table})
    n = len(result.table)
    return {"n_in": n, "n_out": n, "dropped_labels": list(result.dropped_labels)}


def _from_dynamo(args: argparse.Namespace) -> dict[str, Any]:
    table, _ = read_dynamo_table(args.input)
    names = None
    if args.vll is not None:
        names = read_dynamo_volume_list(require_file(args.vll, "volume list"))
    optics, particles = dynamo_table_to_star(
        table,
        pixel_size_a=args.pixel_size_a,
        tomogram_names=names,
        voltage_kv=args.voltage_kv,
        cs_mm=args.cs_mm,
        amplitude_contrast=args.amplitude_contrast,
        source=args.input,
    )
    write_star_tables(args.out, {"optics": optics, "particles": particles})
    return {"n_in": len(table), "n_out": len(particles)}


def _subset(args: argparse.Namespace) -> dict[str, Any]:
    tables = read_star_tables(args.input)
    name = main_table_name(args.input, tables)
    chosen = random_subset(
        tables[name].frame, args.n, seed=args.seed, source=args.input
    )
    blocks = {key: table.as_block() for key, table in tables.items()}
    blocks[name] = chosen
    write_star_tables(args.out, blocks)
    return {"n_in": len(tables[name].frame), "n_out": len(chosen), "seed": args.seed}


def _split_halves(args: argparse.Namespace) -> dict[str, Any]:
    tables = read_star_tables(args.input)
    name = main_table_name(args.input, tables)
    split = split_halves(tables[name].frame, seed=args.seed, source=args.input)
    blocks = {key: table.as_block() for key, table in tables.items()}
    blocks[name] = split
    write_star_tables(args.out, blocks)
    half1 = int((split["rlnRandomSubset"] == 1).sum())
    return {
        "n_in": len(split),
        "n_out": len(split),
        "half1": half1,
        "half2": len(split) - half1,
        "seed": args.seed,
    }


_ACTIONS = {
    "downgrade": _downgrade,
    "from-dynamo": _from_dynamo,
    "subset": _subset,
    "split-halves": _split_halves,
}
