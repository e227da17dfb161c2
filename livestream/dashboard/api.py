"""The dashboard's JSON documents, read from the ledger and the project folder.

Every function here is synchronous and opens its own read-only connection to the
ledger, so the server runs them off the event loop (``asyncio.to_thread``) and the
service's own connection is never shared between threads.  Each document carries
``"schema": "livestream.dashboard/<n>"`` (:data:`DASHBOARD_SCHEMA`); a change that
removes or renames a field bumps the number.  The fields are in docs/dashboard.md.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from livestream.intake.pairing import parse_exposure
from livestream.intake.settle import FileKind
from livestream.ledger.schema import (
    Curation,
    StageResult,
    StageState,
    curation_of,
    rejections_of,
    result_from_json,
)
from livestream.ledger.store import Ledger
from livestream.ledger.summary import summarize_ledger
from livestream.project.jobs import INITIAL_MODEL
from livestream.stages.params import CurateParams
from mdcatch.errors import InputFieldError
from mdcatch.profiles.detectors import load_profiles

__all__ = [
    "CLASS3D_IMAGES",
    "DASHBOARD_SCHEMA",
    "PLOT_FIGURES",
    "ProjectView",
    "class2d_document",
    "class3d_document",
    "class3d_image_path",
    "exposures_document",
    "find_exposure_outputs",
    "is_registered_output",
    "montage_path",
    "session_document",
]

DASHBOARD_SCHEMA = "livestream.dashboard/1"

# the per-exposure figures the page plots (stage figures, as the ledger names them)
PLOT_FIGURES = (
    "defocus_a",
    "fit_resolution_a",
    "total_motion_a",
    "early_motion_a",
    "astigmatism_a",
    "figure_of_merit",
    "n_picks",
    "n_particles",
)
_WINDOW_S = 3600.0  # rates over the last hour, as LedgerSummary's throughput
_MIN_SPAN_S = 60.0
_MAX_EXPOSURES = 5000  # the most exposures one document lists (newest)
_MAX_PROBLEMS = 50
CLASS2D_SUMMARY = "run_class2d.json"  # written by livestream.class2d.live
CLASS3D_SUMMARY = "run_class3d.json"  # written by livestream.class3d.live
CLASS3D_IMAGES = ("slices", "fsc", "directions")  # /api/v1/class3d/<name>.png


@dataclass(frozen=True, slots=True, kw_only=True)
class ProjectView:
    """What the documents need to know about the running service."""

    project: Path
    session: Path
    software: str
    class2d_job: str  # the Class2D job folder, relative to the project
    thresholds: Mapping[str, CurateParams]  # curate stage -> thresholds in force
    path_map: Mapping[str, Path] = field(default_factory=dict)  # session.path_map
    class3d_job: str = INITIAL_MODEL.folder  # the InitialModel job folder

    @property
    def ledger_path(self) -> Path:
        return self.project / "livestream.sqlite"


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


@contextmanager
def _read_only(path: Path) -> Iterator[sqlite3.Connection]:
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        db.execute("PRAGMA busy_timeout=5000")
        yield db


def _rate_per_hour(times: list[float], now: float) -> float:
    """Events per hour over the last hour (at least a minute's span)."""
    if not times:
        return 0.0
    start = max(now - _WINDOW_S, min(times))
    n = sum(1 for t in times if t >= start)
    return n / max(now - start, _MIN_SPAN_S) * 3600.0


def _backlog(db: sqlite3.Connection) -> int:
    """Exposures neither done nor given up (quarantined somewhere)."""
    (n,) = db.execute(
        "SELECT count(*) FROM exposures e WHERE e.done_unix_s IS NULL AND NOT EXISTS"
        " (SELECT 1 FROM stages s WHERE s.exposure_id = e.exposure_id"
        " AND s.state = ?)",
        (StageState.QUARANTINED.value,),
    ).fetchone()
    return int(n)


def _problems(db: sqlite3.Connection) -> list[dict[str, Any]]:
    cursor = db.execute(
        "SELECT exposure_id, stage, state, attempts, error, finished_unix_s"
        " FROM stages WHERE state IN (?, ?) ORDER BY finished_unix_s DESC LIMIT ?",
        (StageState.QUARANTINED.value, StageState.FAILED.value, _MAX_PROBLEMS),
    )
    return [
        {
            "exposure_id": eid,
            "stage": stage,
            "state": state,
            "attempts": int(attempts),
            "error": error or "",
            "finished_unix_s": finished,
        }
        for eid, stage, state, attempts, error, finished in cursor
    ]


def _microscope(view: ProjectView, db: sqlite3.Connection) -> dict[str, Any] | None:
    """The instrument of the newest imported exposure, read from its metadata
    (``None`` before the first, or when it cannot be read again)."""
    row = db.execute(
        "SELECT exposure_id, metadata_path, movie_path FROM exposures"
        " WHERE ready_unix_s IS NOT NULL ORDER BY ready_unix_s DESC LIMIT 1"
    ).fetchone()
    if row is None or row[1] is None or row[2] is None:
        return None
    metadata = Path(row[1])
    kind = FileKind.MDOC if metadata.suffix == ".mdoc" else FileKind.EPU_XML
    try:
        exposure = parse_exposure(
            str(row[0]),
            metadata,
            kind,
            Path(row[2]),
            load_profiles(),
            view.path_map or None,
        )
    except (InputFieldError, OSError, ValueError):  # moved, rewritten, unreadable
        return None
    optics = exposure.optics
    return {
        "instrument_id": optics.instrument_id,
        "detector": optics.detector,
        "camera_mode": optics.camera_mode.value,
        "voltage_kv": _finite(optics.voltage_kv),
        "pixel_size_a": _finite(optics.pixel_size_a),
        "software_version": exposure.software_version,
    }


def session_document(
    view: ProjectView, *, state: str, in_flight: int, queued: int
) -> dict[str, Any]:
    """The session at a glance: counts, rates, backlog, problems, thresholds.

    ``n_exposures`` and ``exposures`` are :class:`LedgerSummary`'s, the figures
    ``livestream status --json`` prints.
    """
    now = time.time()
    ledger = Ledger(view.ledger_path, read_only=True)
    try:
        summary = summarize_ledger(ledger, now)
    finally:
        ledger.close()
    with _read_only(view.ledger_path) as db:
        discovered = [
            float(t)
            for (t,) in db.execute(
                "SELECT discovered_unix_s FROM exposures WHERE discovered_unix_s >= ?",
                (now - _WINDOW_S,),
            )
        ]
        backlog = _backlog(db)
        problems = _problems(db)
        microscope = _microscope(view, db)
    acquisition = _rate_per_hour(discovered, now)
    throughput = summary.exposures_per_hour
    gain = throughput - acquisition
    catch_up_s = (
        0.0 if backlog == 0 else (backlog / gain * 3600.0 if gain > 0 else None)
    )
    return {
        "schema": DASHBOARD_SCHEMA,
        "session": {
            "name": view.session.name,
            "path": str(view.session),
            "software": view.software,
        },
        "microscope": microscope,
        "project": str(view.project),
        "state": state,
        "now_unix_s": now,
        **summary.to_json(),
        "acquired_per_hour": acquisition,
        "backlog": backlog,
        "in_flight": in_flight,
        "queued": queued,
        "catch_up_s": catch_up_s,
        "problems": problems,
        "curation": {
            stage: {
                key: value
                for key, value in params.model_dump(mode="json").items()
                if key.startswith(("min_", "max_"))
            }
            for stage, params in view.thresholds.items()
        },
    }


def _exposure_entry(
    eid: str, acquired: float | None, rows: list[tuple[str, str, str, str]]
) -> dict[str, Any]:
    """One exposure: its stage states, plotted figures, curation and images."""
    states: dict[str, str] = {}
    figures: dict[str, float | None] = {}
    accepted: bool | None = None
    rejected: dict[str, float | None] = {}
    images: dict[str, str] = {}
    url = f"api/v1/exposures/{quote(eid, safe='')}"
    for stage, state, outputs, figures_json in rows:
        states[stage] = state
        if state != StageState.DONE.value:
            continue
        result = result_from_json(stage, outputs, figures_json)
        for name in PLOT_FIGURES:
            if name in result.figures:
                figures[name] = _finite(result.figures[name])
        decision = curation_of(result)
        if decision is not Curation.UNDECIDED:
            accepted = decision is Curation.ACCEPTED
            rejected = {k: _finite(v) for k, v in rejections_of(result).items()}
        if "thumbnail" in result.outputs:
            images["picks"] = f"{url}/picks.png"
        if "png" in result.outputs:
            images["ctf"] = f"{url}/ctf.png"
        if "micrograph" in result.outputs and "picks" not in images:
            images["picks"] = f"{url}/picks.png"
    return {
        "exposure_id": eid,
        "acquired_unix_s": acquired,
        "states": states,
        "figures": figures,
        "accepted": accepted,
        "rejected": rejected,
        "images": images,
    }


def exposures_document(
    view: ProjectView, *, limit: int = _MAX_EXPOSURES
) -> dict[str, Any]:
    """Every exposure (the newest ``limit``) in acquisition order, numbered from 1."""
    limit = max(1, min(limit, _MAX_EXPOSURES))
    with _read_only(view.ledger_path) as db:
        (total,) = db.execute("SELECT count(*) FROM exposures").fetchone()
        first = max(0, int(total) - limit)
        exposures = db.execute(
            "SELECT exposure_id, acquired_unix_s FROM exposures"
            " ORDER BY coalesce(acquired_unix_s, discovered_unix_s), exposure_id"
            " LIMIT ? OFFSET ?",
            (limit, first),
        ).fetchall()
        rows: dict[str, list[tuple[str, str, str, str]]] = {e: [] for e, _ in exposures}
        cursor = db.execute(
            "SELECT exposure_id, stage, state, outputs, figures FROM stages"
            " ORDER BY position"
        )
        for eid, stage, state, outputs, figures in cursor:
            if eid in rows:
                rows[eid].append((stage, state, outputs, figures))
    items = []
    for number, (eid, acquired) in enumerate(exposures, start=first + 1):
        entry = _exposure_entry(eid, acquired, rows[eid])
        entry["index"] = number
        items.append(entry)
    return {"schema": DASHBOARD_SCHEMA, "n_exposures": int(total), "items": items}


def find_exposure_outputs(view: ProjectView, exposure_id: str) -> dict[str, str]:
    """Role -> project-relative path of every done stage output of one exposure
    (an unknown exposure has none)."""
    outputs: dict[str, str] = {}
    with _read_only(view.ledger_path) as db:
        cursor = db.execute(
            "SELECT stage, outputs, figures FROM stages WHERE exposure_id = ?"
            " AND state = ? ORDER BY position",
            (exposure_id, StageState.DONE.value),
        )
        for stage, outputs_json, figures_json in cursor:
            result: StageResult = result_from_json(stage, outputs_json, figures_json)
            outputs.update(result.outputs)
    return outputs


def _class2d_payload(view: ProjectView) -> dict[str, Any] | None:
    path = view.project / view.class2d_job / CLASS2D_SUMMARY
    try:
        payload: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    return payload


def _project_relative(view: ProjectView, value: object) -> str | None:
    if not value:
        return None
    path = Path(str(value))
    if path.is_absolute():
        root = view.project.resolve()
        resolved = path.resolve()
        if not resolved.is_relative_to(root):
            return None
        return str(resolved.relative_to(root))
    return str(path)


def class2d_document(view: ProjectView) -> dict[str, Any]:
    """The latest 2D snapshot: per-class counts, scores and selection."""
    payload = _class2d_payload(view)
    if payload is None:
        return {"schema": DASHBOARD_SCHEMA, "snapshot": None}
    counts = list(payload.get("class_counts", []))
    selected = set(payload.get("selected_classes", []))
    scores = list(payload.get("class_scores", []))
    resolutions = list(payload.get("class_resolution_a", []))
    classes = [
        {
            "class": number,
            "particles": counts[number - 1],
            "score": scores[number - 1] if number - 1 < len(scores) else None,
            "resolution_a": resolutions[number - 1]
            if number - 1 < len(resolutions)
            else None,
            "selected": number in selected,
        }
        for number in range(1, len(counts) + 1)
    ]
    keys = (
        "iteration",
        "particles_seen",
        "active_classes",
        "selected_particles",
        "resolution_a",
        "score_threshold",
    )
    snapshot = {key: payload.get(key) for key in keys}
    snapshot["n_selected_classes"] = len(selected)
    snapshot["classes"] = classes
    snapshot["montage"] = (
        f"api/v1/class2d/montage.png?v={payload.get('iteration', 0)}"
        if _project_relative(view, payload.get("montage_png"))
        else None
    )
    return {"schema": DASHBOARD_SCHEMA, "snapshot": snapshot}


def _class3d_payload(view: ProjectView) -> dict[str, Any] | None:
    path = view.project / view.class3d_job / CLASS3D_SUMMARY
    try:
        payload: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    return payload


def class3d_image_path(view: ProjectView, name: str) -> str | None:
    """The latest 3D snapshot's ``name`` PNG (one of :data:`CLASS3D_IMAGES`; the
    slices of the largest class), relative to the project."""
    payload = _class3d_payload(view)
    if payload is None or name not in CLASS3D_IMAGES:
        return None
    if name == "slices":
        slices = list(payload.get("slices_png") or [None])
        largest = int(payload.get("largest_class", 1))
        value = slices[max(1, min(largest, len(slices))) - 1]
    else:
        value = payload.get(f"{name}_png")
    return _project_relative(view, value)


def class3d_document(view: ProjectView) -> dict[str, Any]:
    """The latest 3D initial-model snapshot: progress figures and its pictures."""
    payload = _class3d_payload(view)
    if payload is None:
        return {"schema": DASHBOARD_SCHEMA, "snapshot": None}
    keys = (
        "iteration",
        "particles_seen",
        "pool_particles",
        "classes",
        "symmetry",
        "resolution_a",
        "class_fractions",
        "orientation_coverage",
        "largest_class",
    )
    snapshot: dict[str, Any] = {key: payload.get(key) for key in keys}
    version = payload.get("iteration", 0)
    for name in CLASS3D_IMAGES:
        snapshot[f"{name}_png"] = (
            f"api/v1/class3d/{name}.png?v={version}"
            if class3d_image_path(view, name)
            else None
        )
    return {"schema": DASHBOARD_SCHEMA, "snapshot": snapshot}


def montage_path(view: ProjectView) -> str | None:
    """The latest snapshot's montage PNG, relative to the project."""
    payload = _class2d_payload(view)
    return (
        None if payload is None else _project_relative(view, payload.get("montage_png"))
    )


def is_registered_output(view: ProjectView, relative: str) -> bool:
    """Whether ``relative`` (a project-relative path) is an output the ledger
    or the latest 2D snapshot names; only those are served."""
    if relative == montage_path(view):
        return True
    needle = json.dumps(relative)  # as it appears inside the outputs JSON
    with _read_only(view.ledger_path) as db:
        cursor = db.execute(
            "SELECT outputs FROM stages WHERE state = ? AND instr(outputs, ?) > 0",
            (StageState.DONE.value, needle),
        )
        return any(relative in json.loads(o).values() for (o,) in cursor)
