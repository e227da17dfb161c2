"""The ``livestream`` command line: one sub-command per module in ``livestream/cli/``."""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path

from livestream import __version__
from livestream.cli.console import INPUT_ERROR_STATUS, InputError

# name -> the module of the command; each has a docstring (its help), add_args(parser)
# and main(args) -> int.  Only the command that runs is imported: importing all of
# them (numba, pandas, the pipelines) cost ~1 CPU s per call, ~4 s on a loaded machine.
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


def _docstring(module: str) -> str:
    """A command module's docstring, read from its source without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ImportError(f"no module {module}")
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    return ast.get_docstring(tree) or ""


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """All commands with their help; the options of ``only`` (of all when None)."""
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
    for name, module_name in COMMANDS.items():
        doc = _docstring(module_name).strip()
        summary = doc.splitlines()[0] if doc else name
        command = sub.add_parser(
            name,
            help=summary,
            description=doc,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if only is None or name == only:
            module = importlib.import_module(module_name)
            module.add_args(command)
            command.set_defaults(_main=module.main)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    chosen = next((w for w in words if not w.startswith("-")), None)
    args = build_parser(chosen if chosen in COMMANDS else None).parse_args(words)
    try:
        result: int = args._main(args)
    except InputError as exc:  # a missing or unreadable input: one line, no traceback
        print(f"livestream {args.command}: {exc}", file=sys.stderr)
        return INPUT_ERROR_STATUS
    return result


if __name__ == "__main__":
    sys.exit(main())
