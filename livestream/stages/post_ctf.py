"""Stages after CTF estimation: curation and particle picking.

``curate`` applies :func:`pipelines.curation.rules.curate` to the motion and CTF figures
of the earlier stages and writes the decision (``Select/job004/<id>.json``).  A
rejected exposure is *done with a decision*: its result has ``accepted = False``
and one ``rejected_<figure>`` figure per failed rule; the scheduler does not
dispatch the stages after it (pick, extract) but marks them done and ``skipped``
(should they run anyway, after a restart between the two, they return at once,
``skipped``).  New thresholds re-decide past exposures from the ledger
without running this stage again (:mod:`livestream.curation.live`).

``pick`` runs the blob (LoG) or the template picker on the motion-corrected
micrograph and writes ``AutoPick/job005/<stem>_autopick.star`` and a pick-overlay
thumbnail ``<stem>_picks.png``; the figure ``n_picks`` counts the picks.  With a
live template set (:mod:`livestream.templates`) the figure ``template_set`` is its
version.
"""

from __future__ import annotations

import json
from pathlib import Path

import mrcfile
import numpy as np

from livestream.ledger.schema import (
    Curation,
    StageResult,
    curation_of,
    rejection_figures,
)
from livestream.stages.motion_ctf import cs_mm_of
from livestream.stages.params import CurateParams, PickParams
from livestream.stages.task import StageTask
from livestream.stages.thumbnails import write_pick_overlay
from pipelines.ctf.model import CtfParams
from pipelines.curation.rules import CurationThresholds, ExposureFigures, curate
from pipelines.errors import StageInputError
from pipelines.io.micrographs import read_micrograph
from pipelines.io.outputs import write_text_atomic
from pipelines.picking.blob import pick_blob
from pipelines.picking.learned import pick_learned
from pipelines.picking.picks import Picks, write_picks_star
from pipelines.picking.template import pick_template

__all__ = [
    "ctf_params_of",
    "is_rejected",
    "job_subfolder",
    "micrograph_of",
    "pick_particles",
    "run_curate",
    "run_pick",
]


def _previous_figure(task: StageTask, stage: str, name: str) -> float:
    result = task.previous.get(stage)
    if result is None or name not in result.figures:
        raise StageInputError(
            task.project_path, f"{stage}.figures.{name}", None, "needed by curation"
        )
    return float(result.figures[name])


def run_curate(task: StageTask, params: CurateParams) -> StageResult:
    """Accept or reject the exposure on its motion and CTF figures."""
    motion, ctf = params.motion_stage, params.ctf_stage
    figures = ExposureFigures(
        ctf_resolution_a=_previous_figure(task, ctf, "fit_resolution_a"),
        defocus_u_a=_previous_figure(task, ctf, "defocus_u_a"),
        defocus_v_a=_previous_figure(task, ctf, "defocus_v_a"),
        total_motion_a=_previous_figure(task, motion, "total_motion_a"),
        early_motion_a=_previous_figure(task, motion, "early_motion_a"),
        ctf_figure_of_merit=_previous_figure(task, ctf, "figure_of_merit"),
    )
    thresholds = CurationThresholds(
        max_ctf_resolution_a=params.max_ctf_resolution_a,
        min_defocus_a=params.min_defocus_a,
        max_defocus_a=params.max_defocus_a,
        max_astigmatism_a=params.max_astigmatism_a,
        max_total_motion_a=params.max_total_motion_a,
        max_early_motion_a=params.max_early_motion_a,
        min_ctf_figure_of_merit=params.min_ctf_figure_of_merit,
        max_relative_ice_thickness=None,
    )
    decision = curate(figures, thresholds)
    relative = Path(params.job) / f"{task.exposure.exposure_id}.json"
    document = {"accepted": decision.accepted, "reasons": list(decision.reasons)}
    write_text_atomic(task.project_path / relative, json.dumps(document) + "\n")
    return StageResult(
        stage=task.stage,
        outputs={"decision": str(relative)},
        figures=rejection_figures(decision.reasons),
        accepted=decision.accepted,
    )


def is_rejected(task: StageTask, curate_stage: str) -> bool:
    """Whether the curation stage rejected this exposure (not when it made no
    decision: an undecided exposure is processed as without curation)."""
    return curation_of(task.previous.get(curate_stage)) is Curation.REJECTED


def micrograph_of(task: StageTask, motion_stage: str) -> tuple[Path, float]:
    """The motion-corrected micrograph (absolute path) and its pixel size in Å."""
    source = task.previous.get(motion_stage)
    name = None if source is None else source.outputs.get("micrograph")
    if source is None or name is None:
        raise StageInputError(
            task.project_path,
            f"{motion_stage}.outputs.micrograph",
            None,
            f"stage {task.stage!r} needs a motion-corrected micrograph",
        )
    pixel = source.figures.get("pixel_size_a", task.exposure.optics.pixel_size_a)
    return task.project_path / name, float(pixel)


def job_subfolder(micrograph_rel: Path) -> Path:
    """``MotionCorr/job002/<sub>/<stem>.mrc`` -> ``<sub>`` (RELION keeps it)."""
    parts = micrograph_rel.parts
    return Path(*parts[2:-1]) if len(parts) > 3 else Path()


def ctf_params_of(task: StageTask, ctf_stage: str) -> CtfParams | None:
    """The CTF the CTF stage fitted (``None`` when it did not run)."""
    result = task.previous.get(ctf_stage)
    if result is None or "defocus_u_a" not in result.figures:
        return None
    f, optics = result.figures, task.exposure.optics
    return CtfParams(
        defocus_u_a=f["defocus_u_a"],
        defocus_v_a=f["defocus_v_a"],
        astigmatism_angle_deg=f.get("astigmatism_angle_deg", 0.0),
        phase_shift_deg=f.get("phase_shift_deg", 0.0),
        voltage_kv=f.get("voltage_kv", optics.voltage_kv),
        cs_mm=f.get("cs_mm", cs_mm_of(optics)),
        amplitude_contrast=f.get("amplitude_contrast", optics.amplitude_contrast),
    )


def pick_particles(
    task: StageTask, params: PickParams
) -> tuple[Picks, np.ndarray, Path, float]:
    """The picks on the task's motion-corrected micrograph, the micrograph, its
    path and its pixel size in Å (what :func:`run_pick` writes; the demo scores
    the blob and template pickers with it)."""
    path, pixel_size_a = micrograph_of(task, params.motion_stage)
    image, _ = read_micrograph(path)
    ctf = ctf_params_of(task, params.ctf_stage)
    if params.picker == "template":
        picks = _pick_with_templates(task, params, image, ctf, pixel_size_a)
    elif params.picker == "learned":  # measured without a CTF only (docs/picking.md)
        picks = pick_learned(
            image,
            pixel_size_a=pixel_size_a,
            diameter_range_a=(params.diameter_min_a, params.diameter_max_a),
            edge_px=params.edge_px,
            workers=params.fft_workers,
        )
    else:  # threshold_sd None: chosen per micrograph from its peak scores
        picks = pick_blob(
            image,
            pixel_size_a=pixel_size_a,
            diameter_range_a=(params.diameter_min_a, params.diameter_max_a),
            threshold_sd=params.threshold_sd,
            edge_px=params.edge_px,
            downscale_to_a=params.downscale_to_a,
            ctf=ctf,
            workers=params.fft_workers,
        )
    return picks, image, path, pixel_size_a


def run_pick(task: StageTask, params: PickParams) -> StageResult:
    """Pick particles; write the coordinate STAR and the overlay thumbnail."""
    if is_rejected(task, params.curate_stage):
        return StageResult(stage=task.stage, figures={"n_picks": 0.0}, skipped=True)
    picks, image, path, pixel_size_a = pick_particles(task, params)
    rel = path.resolve().relative_to(task.project_path.resolve())
    folder = Path(params.job) / job_subfolder(rel)
    star = folder / f"{path.stem}_autopick.star"
    write_picks_star(task.project_path / star, picks)
    diameters = np.where(
        np.isfinite(picks.diameter_a), picks.diameter_a, params.diameter_min_a
    )
    thumbnail = folder / f"{path.stem}_picks.png"
    write_pick_overlay(
        task.project_path / thumbnail,
        image,
        picks.x_px,
        picks.y_px,
        diameters / pixel_size_a,
        max_px=params.thumbnail_px,
    )
    return StageResult(
        stage=task.stage,
        outputs={"coordinates": str(star), "thumbnail": str(thumbnail)},
        figures=_pick_figures(params, len(picks), pixel_size_a),
    )


def _pick_figures(
    params: PickParams, n_picks: int, pixel_size_a: float
) -> dict[str, float]:
    figures = {
        "n_picks": float(n_picks),
        "pixel_size_a": pixel_size_a,
        "diameter_max_a": params.diameter_max_a,
    }
    if params.picker == "template" and params.template_set is not None:
        figures["template_set"] = float(params.template_set)
    return figures


def _pick_with_templates(
    task: StageTask,
    params: PickParams,
    image: np.ndarray,
    ctf: CtfParams | None,
    pixel_size_a: float,
) -> Picks:
    if params.templates_path is None:
        raise StageInputError(
            task.project_path,
            f"stages.{task.stage}.templates_path",
            None,
            "the template picker needs an MRC stack of templates",
        )
    with mrcfile.open(params.templates_path, permissive=True) as mrc:
        templates = np.asarray(mrc.data, dtype=np.float32)
        header_pixel = float(mrc.voxel_size.x) or None
    return pick_template(
        image,
        templates,
        pixel_size_a=pixel_size_a,
        diameter_a=0.5 * (params.diameter_min_a + params.diameter_max_a),
        ctf=ctf,
        template_pixel_size_a=params.template_pixel_size_a or header_pixel,
        threshold_sd=params.threshold_sd,
        edge_px=params.edge_px,
        downscale_to_a=params.downscale_to_a,
        score=params.template_score,
        whitening=params.template_whitening,
        workers=params.fft_workers,
    )
