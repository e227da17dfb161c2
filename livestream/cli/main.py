"""The ``livestream`` command line: one sub-command per module in ``livestream/cli/``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from types import ModuleType

from livestream import __version__
from livestream.cli import (
    class2d,
    class3d,
    ctf,
    curate,
    export_cryosparc,
    extract,
    import_cryosparc,
    initial_model,
    mask,
    motion,
    pick,
    plan3d,
    postprocess,
    rebalance,
    reconstruct,
    refine3d,
    refine_now,
    run,
    slurm_script,
    star,
    status,
)
from livestream.cli.console import INPUT_ERROR_STATUS, InputError
from livestream.demo import command as demo_command

# name -> command module; each has a docstring (its help), add_args(parser) and
# main(args) -> int.
COMMANDS: dict[str, ModuleType] = {
    "run": run,
    "status": status,
    "demo": demo_command,
    "motion": motion,
    "ctf": ctf,
    "pick": pick,
    "extract": extract,
    "class2d": class2d,
    "curate": curate,
    "reconstruct": reconstruct,
    "initial-model": initial_model,
    "class3d": class3d,
    "plan3d": plan3d,
    "refine3d": refine3d,
    "refine-now": refine_now,
    "mask": mask,
    "postprocess": postprocess,
    "rebalance": rebalance,
    "export-cryosparc": export_cryosparc,
    "import-cryosparc": import_cryosparc,
    "slurm-script": slurm_script,
    "star": star,
}


def build_parser() -> argparse.ArgumentParser:
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
    for name, module in COMMANDS.items():
        doc = (module.__doc__ or "").strip()
        summary = doc.splitlines()[0] if doc else name
        command = sub.add_parser(
            name,
            help=summary,
            description=doc,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_args(command)
        command.set_defaults(_main=module.main)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args._main(args)
    except InputError as exc:  # a missing or unreadable input: one line, no traceback
        print(f"livestream {args.command}: {exc}", file=sys.stderr)
        return INPUT_ERROR_STATUS
    return result


if __name__ == "__main__":
    sys.exit(main())
