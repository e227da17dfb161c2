"""Show what the service has done: counts per stage and state, failures, throughput.

Example::

    livestream status --project /data/cm40593-1
    livestream status --project /data/cm40593-1 --json | jq .exposures

Reads the ledger ``<project>/livestream.sqlite`` without writing to it; works while
the service runs.  With a curation stage it also shows how many exposures are
accepted and rejected and the most frequent rejection reasons; with the online 2D
classifier, its latest snapshot (mini-batches, particles seen, active and selected
classes, best resolution, montage); with the online 3D initial model, its latest
snapshot (mini-batches, particles seen of the selected pool, resolution from the
half-set FSC, orientation coverage, central slices PNG).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
from pathlib import Path
from typing import Any

from livestream.class2d.live import SUMMARY_NAME
from livestream.class3d.live import SUMMARY_NAME as CLASS3D_SUMMARY_NAME
from livestream.class3d.refinement import (
    REBALANCE_SUMMARY_NAME,
    REQUEST_NAME,
    read_request,
)
from livestream.class3d.refinement import SUMMARY_NAME as REFINE3D_SUMMARY_NAME
from livestream.cli.console import InputError, require_file, require_folder
from livestream.curation.live import curation_counts
from livestream.ledger.store import Ledger
from livestream.ledger.summary import summarize_ledger

__all__ = ["add_args", "main", "read_status"]


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--project", type=Path, default=Path("demo-project"))
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--failures", type=int, default=20, help="failures to list")


def read_status(project: Path, *, n_failures: int = 20) -> dict[str, Any]:
    """The status document of the ledger in ``project`` (see ``--json``)."""
    ledger = Ledger(project / "livestream.sqlite", read_only=True)
    try:
        status: dict[str, Any] = summarize_ledger(ledger).to_json()
        status["project"] = str(project)
        status["curation"] = _curation(ledger.path)
        status["class2d"] = _class2d(project)
        status["class3d"] = _class3d(project)
        status["refine3d"] = _refine3d(project)
        status["failures"] = [
            {
                "exposure_id": row.exposure_id,
                "stage": row.stage,
                "state": row.state.value,
                "attempts": row.attempts,
                "error": row.error,
            }
            for row in ledger.problems(n_failures)
        ]
    finally:
        ledger.close()
    return status


def _curation(ledger_path: Path) -> dict[str, Any] | None:
    """``{"accepted", "rejected", "reasons": {figure: n}}`` of the curate stage
    (the stage whose done rows hold ``accepted``); ``None`` without one."""
    db = sqlite3.connect(f"file:{ledger_path}?mode=ro", uri=True)
    try:
        db.execute("PRAGMA busy_timeout=5000")
        found = db.execute(  # a string test: figures may hold NaN (not JSON)
            "SELECT stage FROM stages WHERE state = 'done'"
            " AND figures LIKE '%\"accepted\":%' LIMIT 1"
        ).fetchone()
        if found is None:
            return None
        counts: dict[str, Any] = curation_counts(db, str(found[0])).as_json()
    finally:
        db.close()
    return counts


def _class2d(project: Path) -> dict[str, Any] | None:
    """The newest ``Class2D/job*/run_class2d.json`` (a snapshot's event body)
    without the per-class lists; ``None`` before the first snapshot."""
    found = sorted(
        project.glob(f"Class2D/job*/{SUMMARY_NAME}"), key=lambda p: p.stat().st_mtime
    )
    if not found:
        return None
    payload = json.loads(found[-1].read_text())
    keys = ("iteration", "particles_seen", "active_classes", "resolution_a")
    summary = {key: payload.get(key) for key in keys}
    summary["selected_classes"] = len(payload.get("selected_classes", []))
    summary["montage_png"] = payload.get("montage_png")
    return summary


def _class3d(project: Path) -> dict[str, Any] | None:
    """The newest ``InitialModel/job*/run_class3d.json`` without the per-class
    lists and paths but the largest class's slices PNG; ``None`` before the
    first snapshot."""
    found = sorted(
        project.glob(f"InitialModel/job*/{CLASS3D_SUMMARY_NAME}"),
        key=lambda p: p.stat().st_mtime,
    )
    if not found:
        return None
    payload = json.loads(found[-1].read_text())
    keys = (
        "iteration",
        "particles_seen",
        "pool_particles",
        "classes",
        "symmetry",
        "resolution_a",
        "orientation_coverage",
        "initial_model",
    )
    summary = {key: payload.get(key) for key in keys}
    slices = payload.get("slices_png") or [None]
    largest = int(payload.get("largest_class", 1))
    summary["slices_png"] = slices[min(largest, len(slices)) - 1]
    return summary


def _newest(project: Path, pattern: str) -> dict[str, Any] | None:
    found = sorted(project.glob(pattern), key=lambda p: p.stat().st_mtime)
    return json.loads(found[-1].read_text()) if found else None


def _refine3d(project: Path) -> dict[str, Any] | None:
    """The newest finished refinement (``Refine3D/job*/run_refine3d.json``), its
    rebalance (``External/job*/run_rebalance.json``, when of this refinement) and
    whether a request waits; ``None`` when there is none of these."""
    refined = _newest(project, f"Refine3D/job*/{REFINE3D_SUMMARY_NAME}")
    rebalanced = _newest(project, f"External/job*/{REBALANCE_SUMMARY_NAME}")
    try:
        request = read_request(project)
    except ValueError:  # not a request: the service drops it
        request = None
    if refined is None and request is None:
        return None
    summary: dict[str, Any] = {
        "requested": None if request is None else request["request_id"],
        "request_path": None if request is None else str(project / REQUEST_NAME),
    }
    if refined is not None:
        keys = (
            "job",
            "trigger",
            "finished_utc",
            "n_particles",
            "resolution_a",
            "resolution_masked_a",
            "iterations",
            "map_path",
            "data_star",
            "fsc_png",
        )
        summary |= {key: refined.get(key) for key in keys}
        same = rebalanced is not None and rebalanced.get(
            "refinement_utc"
        ) == refined.get("finished_utc")
        summary["rebalance"] = (
            {
                key: rebalanced.get(key)
                for key in ("job", "n_rebalanced", "n_excluded", "rebalanced_path")
            }
            if same and rebalanced is not None
            else None
        )
    return summary


def _refine3d_line(refined: dict[str, Any]) -> str:
    waiting = refined["requested"]
    if refined.get("job") is None:
        return f"refine3d: request {waiting} waiting ({refined['request_path']})"
    line = (
        f"refine3d: {refined['job']} ({refined['trigger']}, "
        f"{refined['finished_utc']}): {refined['n_particles']} particles, "
        f"{refined['resolution_a']:.1f} Å (half maps), "
        f"{refined['resolution_masked_a']:.1f} Å (masked); map {refined['map_path']}"
    )
    rebalance = refined.get("rebalance")
    if rebalance is not None:
        line += (
            f"; rebalanced {rebalance['n_rebalanced']} kept, "
            f"{rebalance['n_excluded']} excluded ({rebalance['rebalanced_path']})"
        )
    if waiting is not None:
        line += f"; request {waiting} waiting"
    return line


def _class3d_line(model: dict[str, Any]) -> str:
    coverage = model["orientation_coverage"]
    return (
        f"class3d: mini-batch {model['iteration']}, {model['particles_seen']} of "
        f"{model['pool_particles']} selected particles seen, {model['classes']} "
        f"class(es) {model['symmetry']}, {model['resolution_a']:.1f} Å (half-set "
        f"FSC), {coverage:.0%} of directions; slices {model['slices_png']}"
    )


def _table(status: dict[str, Any]) -> str:
    states = ["pending", "running", "done", "failed", "quarantined"]
    lines = [f"project {status['project']}"]
    lines.append(f"{'stage':<12}" + "".join(f"{s:>13}" for s in states))
    for stage, counts in status["exposures"].items():
        lines.append(
            f"{stage:<12}" + "".join(f"{counts.get(s, 0):>13}" for s in states)
        )
    age = status["newest_exposure_age_s"]
    lines.append(
        f"{status['n_done']} of {status['n_exposures']} exposures done; "
        f"{status['exposures_per_hour']:.1f} exposures/hour; newest exposure "
        + ("none yet" if age is None else f"appeared {age:.0f} s ago")
    )
    curation = status.get("curation")
    if curation is not None:
        reasons = ", ".join(
            f"{figure} {n}" for figure, n in list(curation["reasons"].items())[:5]
        )
        lines.append(
            f"curation: {curation['accepted']} accepted, {curation['rejected']} "
            f"rejected" + (f"; top reasons: {reasons}" if reasons else "")
        )
    classes = status.get("class2d")
    if classes is not None:
        resolution = classes["resolution_a"]
        lines.append(
            f"class2d: mini-batch {classes['iteration']}, "
            f"{classes['particles_seen']} particles seen, "
            f"{classes['active_classes']} active / {classes['selected_classes']} "
            "selected classes"
            + ("" if resolution is None else f", best {resolution:.1f} Å")
            + f"; montage {classes['montage_png']}"
        )
    model = status.get("class3d")
    if model is not None:
        lines.append(_class3d_line(model))
    refined = status.get("refine3d")
    if refined is not None:
        lines.append(_refine3d_line(refined))
    if status["failures"]:
        lines.append("failures:")
        for failure in status["failures"]:
            lines.append(
                f"  {failure['exposure_id']} {failure['stage']} {failure['state']} "
                f"(attempts {failure['attempts']}): {failure['error']}"
            )
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    require_folder(args.project, "project folder")
    ledger = require_file(args.project / "livestream.sqlite", "ledger")
    try:
        status = read_status(args.project, n_failures=args.failures)
    except sqlite3.DatabaseError as exc:  # not a ledger, or not one of ours
        raise InputError(ledger, f"ledger cannot be read: {exc}") from None
    print(json.dumps(status, indent=2) if args.json else _table(status))
    return 0
