"""Re-evaluate the curation of a project's exposures with new thresholds.

Example::

    livestream curate --project /data/cm40593-1 --config krios1.toml --json

Every exposure that was curated is decided again from the figures in the ledger
(no reprocessing) with the ``[stages.<curate>]`` thresholds of ``--config``.  The
decisions go into the ledger (curate rows' figures, the ``curation_thresholds``
table), the decision files, ``Select/job004/micrographs.star`` and the
particle pool.  Newly accepted exposures, whose picking was skipped, get pending
pick/extract rows: the next ``livestream run`` processes them.  Do not run it on a
project while its service runs; send the service SIGHUP (``systemctl reload``)
instead.  Prints the counts and the rejection reasons.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from pathlib import Path
from typing import Any

from livestream.cli.console import (
    INPUT_ERROR_STATUS,
    InputError,
    Progress,
    print_json,
    require_file,
    require_folder,
)
from livestream.config import ConfigError, load_config
from livestream.curation.live import (
    reevaluate_curation,
    reopen_skipped,
    write_decision_files,
)
from livestream.ledger.store import Ledger
from livestream.project.job_index import JobIndex, index_targets
from livestream.stages.registry import build_chain

__all__ = ["add_args", "main", "recurate_project"]


# what recurate_project does, in order (the steps of the progress bar)
STEPS = ("re-deciding exposures", "writing decision files", "writing job STAR files")


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--project", type=Path, required=True)
    parser.add_argument("--config", type=Path, required=True, help="TOML config")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def recurate_project(
    project: Path, config_path: Path, *, progress: Progress | None = None
) -> dict[str, Any]:
    """Re-evaluate ``project`` with the curation thresholds of ``config_path``.

    ``progress``, if given, shows which of :data:`STEPS` runs."""

    def step(name: str) -> None:
        if progress is not None:
            progress.update(STEPS.index(name), len(STEPS))
            progress.describe(name)

    config = load_config(config_path, {"project": {"path": project}})
    chain = build_chain(config.stages)
    curate = [link for link in chain.links if link.kind.decides_curation]
    if not curate:
        raise ConfigError(f"{config_path}: key 'stages.chain': no stage of kind curate")
    link = curate[0]
    later = chain.names[chain.names.index(link.name) + 1 :]
    step(STEPS[0])
    ledger = Ledger(config.ledger_path)
    try:
        with ledger.transaction() as db:
            result = reevaluate_curation(db, link.params, curate_stage=link.name)
            reopened = reopen_skipped(db, result.newly_accepted, later)
    finally:
        ledger.close()
    step(STEPS[1])
    job = str(link.job)
    write_decision_files(project, job, result.changed, result.version)
    step(STEPS[2])
    JobIndex(config.ledger_path, project, index_targets(chain)).write_all()
    return {
        "project": str(project),
        "thresholds_version": result.version,
        "curation": result.counts.as_json(),
        "newly_accepted": list(result.newly_accepted),
        "newly_rejected": list(result.newly_rejected),
        "reopened": reopened,
    }


def main(args: argparse.Namespace) -> int:

    require_folder(args.project, "project folder")
    ledger = require_file(args.project / "livestream.sqlite", "ledger")
    require_file(args.config, "config file")
    try:
        with Progress(
            len(STEPS), label="curate", unit="step", json_output=args.json
        ) as progress:
            report = recurate_project(args.project, args.config, progress=progress)
    except ConfigError as exc:
        print(f"livestream curate: {exc}", file=sys.stderr)
        return INPUT_ERROR_STATUS
    except sqlite3.DatabaseError as exc:  # not a ledger, or not one of ours
        raise InputError(ledger, f"ledger cannot be read: {exc}") from None
    if args.json:
        print_json(report, indent=2)
        return 0
    counts = report["curation"]
    print(
        f"thresholds version {report['thresholds_version']}: "
        f"{counts['accepted']} accepted, {counts['rejected']} rejected; "
        f"{len(report['newly_accepted'])} newly accepted "
        f"({len(report['reopened'])} to pick on the next run), "
        f"{len(report['newly_rejected'])} newly rejected"
    )
    for figure, n in counts["reasons"].items():
        print(f"  {figure:<24} {n:>6}")
    return 0
