"""``mdcatch inspect``: show what EPU or SerialEM recorded for a session.

Examples::

    mdcatch inspect /data/EPU/MySession                 # a readable table
    mdcatch inspect FoilHole_1_Data_2_3_20250108_154915.xml --json
    mdcatch inspect /data/SerialEM/grid1 --star movies.star

PATH is a session folder, an EPU XML, a SerialEM mdoc or a movie.  The exit code is
2 with one line on stderr when PATH (or a --movie-root) is missing or unreadable, or
when the metadata cannot be trusted (the MetadataError message).
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
from collections.abc import Sequence
from pathlib import Path

from mdcatch.errors import MetadataError
from mdcatch.inspect import Inspection, exposure_to_json, inspect_path, session_to_json
from mdcatch.star import write_movies_star

__all__ = ["main"]

# exit status for a missing or unreadable input and for untrustworthy metadata
INPUT_ERROR_STATUS = 2


def _unreadable(path: Path, *, folder: bool) -> str | None:
    """Why ``path`` cannot be read (a folder, or with ``folder=False`` also a
    regular file), or ``None``.  FIFOs are refused before anything opens them."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "is a broken link" if path.is_symlink() else "does not exist"
    except OSError as exc:
        return f"cannot be read: {exc.strerror}"
    if stat.S_ISDIR(mode):
        readable = os.access(path, os.R_OK | os.X_OK)
        return None if readable else "cannot be read: permission denied"
    if folder:
        return "is not a folder"
    if not stat.S_ISREG(mode):
        return "is not a regular file or a folder (FIFO, socket or device)"
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        return f"cannot be read: {exc.strerror}"
    return None


def _parse_path_map(items: Sequence[str]) -> dict[str, Path]:
    mapping = {}
    for item in items:
        remote, sep, local = item.partition("=")
        if not sep:
            raise SystemExit(f"--path-map expects REMOTE=LOCAL, got {item!r}")
        mapping[remote] = Path(local)
    return mapping


def _table(inspection: Inspection) -> str:
    session = inspection.session
    lines = [
        f"session  {session.name}  ({session.software.value}"
        + (f" {session.software_version}" if session.software_version else "")
        + ")",
        f"folder   {session.session_path}",
    ]
    if session.start_utc is not None:
        lines.append(f"started  {session.start_utc.isoformat()}")
    lines.append(f"exposures {len(inspection.exposures)}")
    header = (
        f"{'exposure':<48} {'acquired (UTC)':<20} {'Å/px':>7} {'kV':>5} "
        f"{'e/Å²':>6} {'frames':>6} {'df µm':>6} {'detector':<16} movie"
    )
    lines += ["", header, "-" * len(header)]
    for e in inspection.exposures:
        lines.append(
            f"{e.exposure_id[:48]:<48} {e.acquired_utc:%Y-%m-%d %H:%M:%S} "
            f"{e.optics.pixel_size_a:>7.4f} {e.optics.voltage_kv:>5.0f} "
            f"{e.total_dose_e_per_a2:>6.2f} {e.n_frames:>6d} "
            f"{e.target_defocus_um:>6.2f} {e.optics.detector[:16]:<16} "
            f"{'yes' if e.movie_path else 'missing'}"
        )
        lines += [f"    warning: {w}" for w in e.warnings]
    return "\n".join(lines)


def _inspect(args: argparse.Namespace) -> int:
    inputs = [(args.path, False)] + [(root, True) for root in args.movie_root]
    for path, folder in inputs:
        problem = _unreadable(path, folder=folder)
        if problem is not None:
            print(f"mdcatch: {path}: {problem}", file=sys.stderr)
            return INPUT_ERROR_STATUS
    try:
        inspection = inspect_path(
            args.path,
            movie_roots=args.movie_root,
            path_map=_parse_path_map(args.path_map),
        )
        if args.star is not None:
            with_movies = [e for e in inspection.exposures if e.movie_path is not None]
            write_movies_star(args.star, with_movies)
    except MetadataError as exc:
        print(f"mdcatch: {exc}", file=sys.stderr)
        return INPUT_ERROR_STATUS
    if args.json:
        document = {
            "session": session_to_json(inspection.session),
            "exposures": [exposure_to_json(e) for e in inspection.exposures],
        }
        json.dump(document, sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif args.star is None:
        print(_table(inspection))
    else:
        print(f"wrote {args.star} ({len(inspection.exposures)} exposures)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mdcatch",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    inspect = sub.add_parser(
        "inspect", help="show the metadata of a session, file or movie"
    )
    inspect.add_argument("path", type=Path, help="session folder, XML, mdoc or movie")
    out = inspect.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print one JSON object")
    out.add_argument(
        "--star", type=Path, metavar="FILE", help="write a RELION movies STAR"
    )
    inspect.add_argument(
        "--movie-root",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="another folder tree where movies are (EPU DoseFractions); repeatable",
    )
    inspect.add_argument(
        "--path-map",
        action="append",
        default=[],
        metavar="REMOTE=LOCAL",
        help=r"map a Windows/UNC prefix to a local folder, e.g. 'X:\data=/mnt/data'",
    )
    inspect.set_defaults(_main=_inspect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args._main(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
