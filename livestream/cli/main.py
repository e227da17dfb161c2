"""The ``livestream`` command line: one sub-command per module in ``livestream/cli/``."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType

from livestream import __version__
from livestream.cli.console import INPUT_ERROR_STATUS, InputError
from livestream.scheduling.openmp import passive_openmp

# name -> the command's module; each has a docstring (its help), add_args(parser)
# and main(args) -> int.  Only the command that runs is imported (the others'
# dependencies, pandas, matplotlib, aiohttp, ..., cost ~2 CPU s of start-up);
# ``livestream --help`` imports them all for their summaries.
COMMANDS: dict[str, str] = {
    "run": "livestream.cli.run",
    "status": "livestream.cli.status",
    "demo": "livestream.demo.command",
    "motion": "livestream.cli.motion",
    "ctf": "livestream.cli.ctf",
    "pick": "livestream.cli.pick",
    "extract": "livestream.cli.extract",
    "class2d": "livestream.cli.class2d",
    "curate": "livestream.cli.curate",
    "reconstruct": "livestream.cli.reconstruct",
    "initial-model": "livestream.cli.initial_model",
    "class3d": "livestream.cli.class3d",
    "plan3d": "livestream.cli.plan3d",
    "refine3d": "livestream.cli.refine3d",
    "refine-now": "livestream.cli.refine_now",
    "mask": "livestream.cli.mask",
    "postprocess": "livestream.cli.postprocess",
    "rebalance": "livestream.cli.rebalance",
    "export-cryosparc": "livestream.cli.export_cryosparc",
    "import-cryosparc": "livestream.cli.import_cryosparc",
    "slurm-script": "livestream.cli.slurm_script",
    "star": "livestream.cli.star",
}


def command_module(name: str) -> ModuleType:
    """The module of command ``name`` (imported on first use)."""
    return importlib.import_module(COMMANDS[name])


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with ``command`` only that command's module is
    imported and given its arguments (the others are named, so a wrong name
    still lists them all)."""
    parser = argparse.ArgumentParser(
        prog="livestream",
        description="Live cryo-EM processing beside the microscope.",
        epilog="Exit status: 0 done; 1 some files of a batch could not be processed "
        "(the others were); 2 a bad command line, config, or a missing or "
        "unreadable input (one line on stderr names it).",
    )
    parser.add_argument(
        "--version", action="version", version=f"livestream {__version__}"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        if command is not None and name != command:
            sub.add_parser(name)
            continue
        module = command_module(name)
        doc = (module.__doc__ or "").strip()
        summary = doc.splitlines()[0] if doc else name
        command_parser = sub.add_parser(
            name,
            help=summary,
            description=doc,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_args(command_parser)
        command_parser.set_defaults(_main=module.main)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # before any numba kernel loads libgomp; the daemon's workers inherit it
    passive_openmp()
    words = list(sys.argv[1:] if argv is None else argv)
    command = words[0] if words and words[0] in COMMANDS else None
    args = build_parser(command).parse_args(words)
    try:
        result: int = args._main(args)
    except InputError as exc:  # a missing or unreadable input: one line, no traceback
        print(f"livestream {args.command}: {exc}", file=sys.stderr)
        return INPUT_ERROR_STATUS
    return result


if __name__ == "__main__":
    sys.exit(main())
