"""Print the Slurm batch script the service submits for its Dask workers.

Example::

    livestream slurm-script --config live.toml

The service starts its workers as Slurm jobs when the config has a
``[workers.slurm]`` table (see docs/operations.md); this prints one job's script,
exactly as dask-jobqueue will give it to ``sbatch``, so that it can be reviewed or
tried by hand (``--scheduler`` sets the address the workers connect to; the service
fills in its own).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from livestream.cli.console import INPUT_ERROR_STATUS, InputError, require_file
from livestream.config import ConfigError, load_config
from livestream.scheduling.clusters import slurm_job_script

__all__ = ["add_args", "main"]


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True, help="service TOML")
    parser.add_argument(
        "--scheduler",
        default="tcp://SCHEDULER:8786",
        help="scheduler address written into the script (default: a placeholder)",
    )


def main(args: argparse.Namespace) -> int:
    require_file(args.config, "config file")
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"livestream slurm-script: {exc}", file=sys.stderr)
        return INPUT_ERROR_STATUS
    if config.workers.slurm is None:
        raise InputError(args.config, "no [workers.slurm] table")
    script = slurm_job_script(
        config.workers.slurm,
        args.scheduler,
        keep_freed_memory=config.workers.keep_freed_memory,
    )
    print(script, end="")
    return 0
